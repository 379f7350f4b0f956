"""Crash stress (issue 12): SIGKILL a kernel at random moments during bursts
of quick cells, 100 times, and count acknowledged cells that did not come back.

    python benchmarks/crash_stress.py [--kills 100] [--seed 0]

Each cycle sends a burst of 50 cells (`n = n + 1; log[#log + 1] = n`), all
at once ("queued") or one after another's reply ("sequential"), kills the
kernel with SIGKILL after a random delay (0-250 ms), starts the next kernel
for the same notebook and checks that `n` holds every cell whose reply had
arrived and that `log` is consistent. The state carries on from kernel to
kernel. Baseline for the figures: the number of acknowledged cells (the
promise is 0 lost of them).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import crash_cycle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        cycles = crash_cycle.run(args.kills, f"stress/{uuid.uuid4().hex}.ipynb", args.seed,
                                 env={"LUA_KERNEL_SNAPSHOTS": store})
        took = time.perf_counter() - t0
    for mode in ("queued", "sequential"):
        cs = [c for c in cycles if c.mode == mode]
        print(f"{mode:<11} kills {len(cs):>4}  sent {sum(c.sent for c in cs):>6}  "
              f"acknowledged {sum(c.acked for c in cs):>6}  "
              f"lost {sum(c.lost for c in cs):>4}  "
              f"kernels losing cells {sum(c.lost > 0 for c in cs):>3}  "
              f"inconsistent {sum(not c.consistent for c in cs):>3}")
    for i, c in enumerate(cycles):
        if c.lost or not c.consistent:
            print(f"  kill {i + 1}: {c}")
    lost = sum(c.lost for c in cycles)
    print(f"total: {len(cycles)} kills, {sum(c.acked for c in cycles)} acknowledged cells, "
          f"{lost} lost, {sum(not c.consistent for c in cycles)} inconsistent states, "
          f"{took:.0f} s")
    return 1 if lost or not all(c.consistent for c in cycles) else 0


if __name__ == "__main__":
    sys.exit(main())
