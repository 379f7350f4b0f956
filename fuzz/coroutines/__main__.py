"""python -m fuzz.coroutines show SEED | min SEED | run --seeds A:B --jobs N"""
from __future__ import annotations

import argparse
import collections
import queue
import threading
import time

from .driver import Result, WorkerFailed, check, first_difference, use_runtime
from .gen import Program, generate
from .minimize import minimize
from .worker import Worker


# programs per worker process: each makes about 8 Sessions, and each Session
# keeps its standard streams' FILE*s (about 75 KiB) for the life of the
# process (native.NativeStreams)
RECYCLE = 200


def campaign(seeds, jobs: int = 2, runtime: str = "5.4") -> list[Result]:
    """Check every seed in `jobs` worker processes (each with its own helper),
    on `runtime` ("5.4", "5.5")."""
    todo = queue.Queue()
    for seed in seeds:
        todo.put(seed)
    results: list[Result] = []

    def loop():
        worker = Worker(runtime=runtime)
        done = 0
        try:
            while True:
                try:
                    seed = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    r = worker.ask(("check", generate(seed)))
                except WorkerFailed as e:
                    r = Result(seed, e.outcome, detail=e.detail)
                results.append(r)
                done += 1
                if done % RECYCLE == 0:
                    worker.stop()     # the next program starts a fresh process
        finally:
            worker.stop()

    threads = [threading.Thread(target=loop) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r.seed)


def summary(results: list[Result], seconds: float) -> str:
    out = [f"{len(results)} programs in {seconds:.1f} s"]
    by_outcome = collections.Counter(r.outcome for r in results)
    out += [f"  {k:18} {n}" for k, n in by_outcome.most_common()]
    by_key = collections.defaultdict(list)
    for r in results:
        if r.outcome != "ok":
            by_key[r.key].append(r.seed)
    out.append("classes (count, seeds):")
    for key, seeds in sorted(by_key.items(), key=lambda kv: -len(kv[1])):
        more = " ..." if len(seeds) > 12 else ""
        out.append(f"  {len(seeds):4}  {key}\n        seeds {' '.join(map(str, seeds[:12]))}{more}")
    return "\n".join(out)


def show(p: Program, r: Result) -> None:
    print(p.text())
    print(f"\n-- modes per step: {' '.join(r.modes)}")
    print(f"-- outcome: {r.key}")
    for issue in r.issues:
        print(f"-- issue: {issue}")
    if r.detail:
        print(r.detail)
    n = first_difference(r.native, r.restored)
    for name, log in (("native", r.native), ("restored", r.restored)):
        print(f"\n-- {name} log")
        for i, line in enumerate(log):
            print(("!! " if i == n else "   ") + line)
    if n is not None:
        a = r.native[n] if n < len(r.native) else "<none>"
        b = r.restored[n] if n < len(r.restored) else "<none>"
        print(f"\n-- first difference, line {n + 1}:\n   native:   {a}\n   restored: {b}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m fuzz.coroutines")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("show", "min"):
        one = sub.add_parser(name)
        one.add_argument("seed", type=int)
        one.add_argument("--runtime", default="5.4", help="5.4 or 5.5")
    run = sub.add_parser("run")
    run.add_argument("--runtime", default="5.4", help="5.4 or 5.5")
    run.add_argument("--seeds", default="0:200", help="A:B, B excluded")
    run.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    use_runtime(args.runtime)

    if args.cmd == "run":
        a, b = map(int, args.seeds.split(":"))
        t0 = time.monotonic()
        results = campaign(range(a, b), args.jobs, args.runtime)
        print(summary(results, time.monotonic() - t0))
        return
    helper = Worker()
    try:
        p = generate(args.seed)
        if args.cmd == "min":
            p = minimize(p, lambda q: check(q, helper).key)
        show(p, check(p, helper))
    finally:
        helper.stop()


if __name__ == "__main__":
    main()
