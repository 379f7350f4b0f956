"""Suspended coroutines (issue 4): capture and restore cost, and the finisher's speed.

    python benchmarks/bench_coroutines.py [--reps N]

A. 1,000 coroutines, each suspended 10 Lua frames deep (a recursive function
   with three locals per frame yields at the bottom). Timed, in one Session:
     * capture  — state.capture(): the serialization of the whole state,
                  including the saved-pc reads and the sentinel probing;
     * restore  — state.apply() into a fresh Session: rebuilding the state,
                  the coroutines ready to continue;
     * size     — the body's bytes (uncompressed) and the snapshot's.
   Baselines, same run: (1) the same values the frames hold (per coroutine,
   ten tables of the five locals of a frame) in plain tables, and the
   1,000 coroutines not started; the ratio to (1) is what holding the data
   in live stacks costs; (2) the 1,000 coroutines not started (nothing on
   their stacks).
   Then every restored coroutine is resumed to its end and the results are
   checked against a native run (so the figures are of a working restore).

B. The finisher's speed on a loop-heavy restored frame: a coroutine
   suspended just before a loop (arithmetic, a table write and read, a call,
   a comparison per iteration) is restored and resumed, so the loop runs in
   the finisher; baseline: the same function run natively in the same state.
   Reported: the time of each and finisher / native (target <= 25).

Times are medians of --reps runs (default 5).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from lua_kernel import Session
from lua_kernel.persist import new_session
from lua_kernel.persist import state
from lua_kernel.persist import seal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_snapshot import median_time

# the recursive function of bench_eris.py's coroutine data set (one copy)
DATASET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eris", "datasets",
                       "coroutines.lua")
DEEP = "local deep = dofile(" + repr(DATASET).replace("%", "%%") + ").deep\n" + """
cos = {}
for i = 1, 1000 do
  local co = coroutine.create(deep)
  cos[i] = co
  %s
end
"""
START = 'assert(coroutine.resume(co, 10, "c" .. i))'

PLAIN = """
cos, plain = {}, {}
for i = 1, 1000 do
  cos[i] = coroutine.create(deep)
  local frames = {}
  for d = 1, 10 do frames[d] = {d, "c" .. i, d * 2, "c" .. i .. ":" .. d, {d}} end
  plain[i] = frames
end
"""

FINISH = """
local sum = 0
for i = 1, #cos do
  local ok, v = coroutine.resume(cos[i], i)
  assert(ok, v)
  sum = sum + v
end
return sum
"""

LOOP = """
function body(n)
  local go = coroutine.yield("ready")
  local t, acc = {}, 0
  for i = 1, n do
    local v = (i * 7) %% 13
    t[v] = (t[v] or 0) + 1
    if v > 6 then acc = acc + math.abs(v - i) else acc = acc - 1 end
  end
  return acc + t[3]
end
looper = coroutine.create(body)
assert(coroutine.resume(looper, %d))
"""


def run(session: Session, code: str, name: str = "bench"):
    fn = session.lua.eval("function(c, n) return assert(load(c, '=' .. n)) end")(code, name)
    return session.call(fn)


def part_a(reps: int):
    rows = {}
    expected = None
    for label, start in (("not started", ""), ("same data in plain tables", PLAIN),
                         ("suspended 10 frames deep", START)):
        s = new_session()
        run(s, DEEP % "" + start if start == PLAIN else DEEP % start)
        body = None

        def capture(s=s):
            nonlocal body
            body, issues, _ = state.capture(s)
            assert not issues, issues[:3]

        t_capture = median_time(capture, reps)
        sealed = seal(body, {})
        restored = []

        def restore(body=body, restored=restored):
            fresh = new_session()
            assert state.apply(fresh, body) == []
            restored.append(fresh)

        t_restore = median_time(restore, reps)
        if start == START:
            native = new_session()
            run(native, DEEP % start)
            expected = run(native, FINISH)
            got = run(restored[-1], FINISH)
            assert got == expected, (got, expected)
        rows[label] = (t_capture, t_restore, len(body), len(sealed))
    return rows


def part_b(reps: int, n: int):
    native_t, finisher_t = [], []
    result = None
    for _ in range(reps):
        s = new_session()
        run(s, LOOP % n)
        run(s, f"native = coroutine.create(body); coroutine.resume(native, {n})")
        t0 = time.perf_counter()
        want = run(s, "return coroutine.resume(native, true)")
        native_t.append(time.perf_counter() - t0)
        body, issues, _ = state.capture(s)
        assert not issues
        fresh = new_session()
        state.apply(fresh, body)
        t0 = time.perf_counter()
        got = run(fresh, "return coroutine.resume(looper, true)")
        finisher_t.append(time.perf_counter() - t0)
        assert got == want and got[0] is True, (got, want)
        result = want
    return statistics.median(native_t), statistics.median(finisher_t), result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--loop", type=int, default=200_000)
    args = ap.parse_args()
    print(f"# {platform.node()} — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    rows = part_a(args.reps)
    print("\nA. 1,000 coroutines (medians of", args.reps, "runs)")
    print(f"{'':28} {'capture':>9} {'restore':>9} {'body':>10} {'snapshot':>10}")
    for label, (c, r, size, sealed) in rows.items():
        print(f"{label:28} {c * 1e3:7.1f}ms {r * 1e3:7.1f}ms {size / 1e3:8.1f}kB "
              f"{sealed / 1e3:8.1f}kB")
    live = rows["suspended 10 frames deep"]
    for label in ("same data in plain tables", "not started"):
        base = rows[label]
        print(f"ratio live / {label}: capture {live[0] / base[0]:.2f}, "
              f"restore {live[1] / base[1]:.2f}")
    print("target: under 100 ms each way")
    native, fin, _ = part_b(args.reps, args.loop)
    print(f"\nB. a loop of {args.loop:,} iterations in a restored frame")
    print(f"native {native * 1e3:.1f} ms, finisher {fin * 1e3:.1f} ms, "
          f"ratio {fin / native:.1f} (target <= 25)")


if __name__ == "__main__":
    main()
