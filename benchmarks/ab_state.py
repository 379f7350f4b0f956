"""A/B of the serializer alone: state.capture and state.apply, CPU time.

    PYTHONPATH=<tree> python benchmarks/ab_state.py [REPS] [--only TEXT]

For bench_snapshot.py's data sets and 1,000 coroutines suspended 10 frames
deep: the min and median of REPS (default 9) captures of one session, and of
REPS applies of that body into fresh sessions (the session's creation not
counted), in the process's CPU time (time.process_time), which the other
processes of a shared machine disturb less than the wall clock. Run it for
two trees in turn, several times, and compare the minima: it is how the
state.lua restructuring was held to its old speed (RESULTS.md).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_snapshot import DATASETS

from lua_kernel import persist
from lua_kernel.persist import state

DATA = dict(DATASETS)
DATA["1,000 coroutines suspended 10 deep"] = """
local function deep(n, a) local b, c = a * 2, {a}
  if n == 0 then coroutine.yield(a) else deep(n - 1, a + 1) end return b, c end
data = {}
for i = 1, 1000 do
  local co = coroutine.create(deep); coroutine.resume(co, 9, i); data[i] = co
end"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reps", type=int, nargs="?", default=9)
    ap.add_argument("--only", default="", help="only the data sets whose name has this text")
    args = ap.parse_args()
    for name, code in DATA.items():
        if args.only not in name:
            continue
        s = persist.new_session()
        s.execute(code)
        caps, apps = [], []
        for _ in range(args.reps):
            gc.collect()
            t = time.process_time()
            body, issues, _ = state.capture(s)
            caps.append(time.process_time() - t)
            assert not issues, issues[:2]
            fresh = persist.new_session()
            gc.collect()
            t = time.process_time()
            state.apply(fresh, body)
            apps.append(time.process_time() - t)
            del fresh
        print(f"{name[:40]:40s} capture {min(caps) * 1e3:7.1f} {statistics.median(caps) * 1e3:7.1f}"
              f"  apply {min(apps) * 1e3:7.1f} {statistics.median(apps) * 1e3:7.1f}"
              f"  body {len(body):,} bytes", flush=True)


if __name__ == "__main__":
    main()
