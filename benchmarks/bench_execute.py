"""Execution overhead of lua_kernel (issue 2), each figure against a baseline
measured in the same run.

    python benchmarks/bench_execute.py            # full: 300 round trips per cell
    python benchmarks/bench_execute.py --quick    # 50 round trips per cell
    python benchmarks/bench_execute.py --json     # also the figures as JSON on stdout

A. Round trip of a trivial cell through jupyter_client, from kc.execute()
   until the request's `idle` status arrives on iopub (when a frontend
   considers the cell done). Cells `x = 1` and `1 + 1`; the kernels and cells
   are interleaved in rounds. Kernels: `lua`; the ipykernel floor
   (benchmarks/floor_kernel.py: do_execute returns at once, registered for
   this run only); ipykernel's `python3`. Ratios: lua over each of the others.

B. A CPU-heavy Lua cell (~0.5 s) through Session.execute and through the
   kernel (execute -> idle) vs the same code on a bare lupa.lua54.LuaRuntime()
   with lua.execute; plus a print-heavy cell (100,000 print calls) through
   Session (output into a Python list) vs bare lupa with print redirected to a
   Lua table. Repeated and interleaved; medians and ratios.

Nothing here is used by the tests. With --json, progress and the table go to
stderr and stdout holds only the JSON document, so `> file.json` works.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from jupyter_client.manager import start_new_kernel
from lupa import lua54

from lua_kernel import Session
from lua_kernel.native import lua_release
from lua_kernel.runtime import new_runtime

perf = time.perf_counter
OUT = sys.stdout       # where the human-readable report goes (stderr with --json)


def log(*args) -> None:
    print(*args, file=OUT, flush=True)


# -- workloads ----------------------------------------------------------------

HEAVY_N = 170_000      # ~0.5 s on a 2.x GHz Xeon core with lupa 2.8 / Lua 5.4.8
HEAVY = r"""
local function mix(a, b)
  return (a * 31 + b) % 1000003
end
local acc, parts = 0, {}
for i = 1, @N@ do
  local t = {}
  for j = 1, 16 do
    t[#t + 1] = mix(i, j) * 0.5
  end
  table.insert(t, i)
  acc = mix(acc, #t) + t[3] // 1
  if i % 8 == 0 then
    local s = string.format("%d:%x", i, acc) .. tostring(t[5])
    parts[#parts + 1] = s:upper():sub(2, 7)
    if #parts > 256 then acc = acc + #table.concat(parts, ",") parts = {} end
  end
end
bench_result = acc
"""

PRINT_N = 100_000
PRINTS = "for i = 1, %d do print('line', i) end" % PRINT_N
# The baseline's print: what the brief prescribes, output kept in a Lua table.
BARE_PRINT = ("local out = {} "
              "print = function(...) out[#out+1] = table.concat({...}, '\\t') end "
              "bench_out = out")
PRINT_BYTES = sum(len(f"line\t{i}\n") for i in range(1, PRINT_N + 1))


# -- statistics -----------------------------------------------------------------

def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "median": statistics.median(xs), "p90": percentile(xs, 0.9),
            "min": min(xs), "max": max(xs)}


# -- kernels --------------------------------------------------------------------

class Kernel:
    def __init__(self, name: str):
        self.name = name
        self.km, self.kc = start_new_kernel(kernel_name=name, startup_timeout=60)

    def run(self, code: str, timeout: float = 60) -> tuple[float, dict]:
        """Seconds from execute() to this request's idle on iopub, and what
        arrived: stream bytes, message types, the reply status."""
        kc = self.kc
        t0 = perf()
        msg_id = kc.execute(code)
        stream_bytes, types = 0, []
        while True:
            msg = kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            mtype = msg["msg_type"]
            if mtype == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
                continue
            types.append(mtype)
            if mtype == "stream":
                stream_bytes += len(msg["content"]["text"])
            elif mtype == "error":
                raise RuntimeError(f"{self.name}: {code!r} failed: {msg['content']}")
        elapsed = perf() - t0
        while True:   # the reply has normally arrived already; not timed
            reply = kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{self.name}: {code!r}: {reply['content']}")
        return elapsed, {"stream_bytes": stream_bytes, "types": types}

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=False)


# -- A. trivial cells -------------------------------------------------------------

BASELINES = ("floor", "python3")
OTHER_RUNTIMES = ("lua55", "luajit")     # --runtimes: their round trips beside lua's


def extra_kernelspecs(folder: str) -> None:
    """The floor kernel's kernelspec, for this run only (JUPYTER_PATH)."""
    here = os.path.dirname(os.path.abspath(__file__))
    specs = {"floor": [sys.executable, os.path.join(here, "floor_kernel.py"),
                       "-f", "{connection_file}"]}
    for name, argv in specs.items():
        d = os.path.join(folder, "kernels", name)
        os.makedirs(d)
        with open(os.path.join(d, "kernel.json"), "w") as f:
            json.dump({"argv": argv, "display_name": name, "language": "lua"}, f)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [folder, *filter(None, [os.environ.get("JUPYTER_PATH")])])


def bench_roundtrip(kernels: list[Kernel], n: int) -> dict:
    cells = ["x = 1", "1 + 1"]
    for k in kernels:                      # warm-up: imports, first-call paths
        for _ in range(20):
            for c in cells:
                k.run(c)
    times = {(k.name, c): [] for k in kernels for c in cells}
    for r in range(n):
        order = kernels[r % len(kernels):] + kernels[:r % len(kernels)]
        for c in cells:
            for k in order:
                times[(k.name, c)].append(k.run(c)[0])
    result = {}
    for c in cells:
        stats = {k.name: summary(times[(k.name, c)]) for k in kernels}
        result[c] = {**stats, "ratio_median": {
            b: stats["lua"]["median"] / stats[b]["median"] for b in BASELINES},
            "ratio_p90": {b: stats["lua"]["p90"] / stats[b]["p90"] for b in BASELINES},
            "runtimes": {k: stats[k]["median"] / stats["floor"]["median"]
                         for k in OTHER_RUNTIMES if k in stats}}
    return result


# -- B. Lua-heavy and print-heavy cells ---------------------------------------------

def bench_heavy(lua_kernel: Kernel, reps: int) -> dict:
    code = HEAVY.replace("@N@", str(HEAVY_N))
    session = Session(stdout=lambda t: None, stderr=lambda t: None)
    bare = lua54.LuaRuntime()
    bare_rt = new_runtime()                # the runtime settings Session uses

    def gc_all():                          # untimed: every side starts clean
        session.globals.collectgarbage("collect")
        bare.globals().collectgarbage("collect")
        bare_rt.globals().collectgarbage("collect")
        lua_kernel.run("collectgarbage();")

    def timed(fn):
        t0 = perf()
        fn()
        return perf() - t0

    variants = {
        "session": lambda: timed(lambda: session.execute(code)),
        "bare": lambda: timed(lambda: bare.execute(code)),
        "bare_new_runtime": lambda: timed(lambda: bare_rt.execute(code)),
        "kernel": lambda: lua_kernel.run(code)[0],
    }
    for v in variants.values():            # warm-up
        v()
    times = {k: [] for k in variants}
    names = list(variants)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gc_all()
            times[name].append(variants[name]())
    expected = bare.globals().bench_result
    assert session.globals.bench_result == expected == bare_rt.globals().bench_result
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    return {"times": times, "median": med, "min": low,
            "ratio_session": med["session"] / med["bare"],
            "ratio_kernel": med["kernel"] / med["bare"],
            "ratio_bare_new_runtime": med["bare_new_runtime"] / med["bare"],
            "min_ratio_session": low["session"] / low["bare"],
            "min_ratio_kernel": low["kernel"] / low["bare"],
            "min_ratio_bare_new_runtime": low["bare_new_runtime"] / low["bare"]}


def bench_print(lua_kernel: Kernel, reps: int) -> dict:
    chunks: list[str] = []
    session = Session(stdout=chunks.append, stderr=chunks.append)
    bare = lua54.LuaRuntime()
    bare.execute(BARE_PRINT)

    def run_session():
        chunks.clear()
        t0 = perf()
        session.execute(PRINTS)
        dt = perf() - t0
        assert sum(map(len, chunks)) == PRINT_BYTES, "Session lost output"
        return dt

    def run_bare():
        bare.execute("for i = #bench_out, 1, -1 do bench_out[i] = nil end collectgarbage()")
        t0 = perf()
        bare.execute(PRINTS)
        dt = perf() - t0
        assert len(bare.globals().bench_out) == PRINT_N
        return dt

    def run_kernel():
        lua_kernel.run("collectgarbage();")
        dt, seen = lua_kernel.run(PRINTS)
        assert seen["stream_bytes"] == PRINT_BYTES, "kernel lost output"
        return dt, seen["types"].count("stream")

    run_session(), run_bare(), run_kernel()    # warm-up
    times = {"session": [], "bare": [], "kernel": []}
    streams = []
    for r in range(reps):
        for name in (["session", "bare", "kernel"] if r % 2 == 0
                     else ["kernel", "bare", "session"]):
            if name == "session":
                times[name].append(run_session())
            elif name == "bare":
                times[name].append(run_bare())
            else:
                dt, n = run_kernel()
                times[name].append(dt)
                streams.append(n)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    return {"times": times, "median": med, "min": low, "stream_messages": streams,
            "session_chunks": len(chunks),
            "ratio_session": med["session"] / med["bare"],
            "ratio_kernel": med["kernel"] / med["bare"],
            "min_ratio_session": low["session"] / low["bare"],
            "min_ratio_kernel": low["kernel"] / low["bare"]}


# -- the report -------------------------------------------------------------------------

def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import ipykernel
    import jupyter_client
    import lupa
    import zmq
    return {"date": datetime.date.today().isoformat(), "nproc": os.cpu_count(),
            "cpu": cpu, "python": platform.python_version(), "lupa": lupa.__version__,
            "lua": lua_release(), "ipykernel": ipykernel.__version__,
            "jupyter_client": jupyter_client.__version__, "pyzmq": zmq.__version__,
            "platform": platform.platform()}


def ms(s: float) -> str:
    return f"{s * 1000:.2f}"


def ratio(r: dict, what: str) -> str:
    """Ratio of medians, and of minimums (the CPU-bound floor) in brackets."""
    return f"{r['ratio_' + what]:.3f} (min {r['min_ratio_' + what]:.3f})"


def report(res: dict) -> None:
    m = res["machine"]
    log()
    log(f"lua_kernel execution overhead — {m['date']}, {m['nproc']} x {m['cpu']}, "
        f"Python {m['python']}, lupa {m['lupa']}, Lua {m['lua']}, ipykernel {m['ipykernel']}")
    rows = [("what", "ours", "baseline", "ratio", "target")]
    targets = {"floor": "<= 1", "python3": "<= 1"}
    for cell, r in res["roundtrip"].items():
        n = r["lua"]["n"]
        for b in BASELINES:
            rows.append((f"round trip `{cell}` median ms (n={n}) lua vs {b}",
                         ms(r["lua"]["median"]), ms(r[b]["median"]),
                         f"{r['ratio_median'][b]:.2f}", targets[b]))
        rows.append((f"round trip `{cell}` p90 ms lua vs floor",
                     ms(r["lua"]["p90"]), ms(r["floor"]["p90"]),
                     f"{r['ratio_p90']['floor']:.2f}", "<= 1"))
        for k, rk in r.get("runtimes", {}).items():
            rows.append((f"round trip `{cell}` median ms {k} vs floor",
                         ms(r[k]["median"]), ms(r["floor"]["median"]), f"{rk:.2f}", "<= 1"))
    h = res["heavy"]
    reps = len(h["times"]["bare"])
    rows.append((f"CPU-heavy cell, Session.execute vs bare lupa (median ms, n={reps})",
                 ms(h["median"]["session"]), ms(h["median"]["bare"]),
                 ratio(h, "session"), "~1.0"))
    rows.append(("CPU-heavy cell, kernel execute->idle vs bare lupa",
                 ms(h["median"]["kernel"]), ms(h["median"]["bare"]),
                 ratio(h, "kernel"), "~1.0"))
    rows.append(("  (info) bare new_runtime() vs bare LuaRuntime()",
                 ms(h["median"]["bare_new_runtime"]), ms(h["median"]["bare"]),
                 ratio(h, "bare_new_runtime"), "-"))
    p = res["print"]
    rows.append((f"100k prints, Session (Python list) vs bare (Lua table), n={reps}",
                 ms(p["median"]["session"]), ms(p["median"]["bare"]),
                 ratio(p, "session"), "report"))
    rows.append((f"100k prints, kernel execute->idle ({statistics.median(p['stream_messages']):.0f}"
                 " stream msgs) vs bare",
                 ms(p["median"]["kernel"]), ms(p["median"]["bare"]),
                 ratio(p, "kernel"), "report"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        log("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                      for j, (c, w) in enumerate(zip(r, widths, strict=True))))
        if i == 0:
            log("  ".join("-" * w for w in widths))
    log("B rows: ratio of medians (ratio of minimums in brackets).")
    log(f"total benchmark time: {res['seconds']:.1f} s")


def main(argv=None) -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 round trips instead of 300")
    ap.add_argument("-n", type=int, help="round trips per kernel and cell")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the heavy cells")
    ap.add_argument("--runtimes", action="store_true",
                    help="also time the round trip of the lua55 and luajit kernels (part A)")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON on stdout (the report goes to stderr)")
    args = ap.parse_args(argv)
    n = args.n or (50 if args.quick else 300)
    if args.json:
        OUT = sys.stderr

    t_start = perf()
    res = {"machine": machine(), "mode": "quick" if args.quick else "full",
           "heavy_iterations": HEAVY_N, "prints": PRINT_N}
    kernels: list[Kernel] = []
    specs = tempfile.TemporaryDirectory()
    try:
        log("starting kernels ...")
        extra_kernelspecs(specs.name)
        lua = Kernel("lua")
        kernels.append(lua)
        others = [Kernel(name) for name in BASELINES]
        if args.runtimes:
            others += [Kernel(name) for name in OTHER_RUNTIMES]
        kernels += others
        log(f"A. round trips: {n} per kernel and cell, interleaved ...")
        res["roundtrip"] = bench_roundtrip(kernels, n)
        for k in others:         # not needed below; keep the machine quiet
            k.shutdown()
            kernels.remove(k)
        log(f"B. CPU-heavy cell x {args.reps}, interleaved ...")
        res["heavy"] = bench_heavy(lua, args.reps)
        log(f"B. print-heavy cell x {args.reps}, interleaved ...")
        res["print"] = bench_print(lua, args.reps)
    finally:
        for k in kernels:
            try:
                k.shutdown()
            except Exception as e:  # noqa: BLE001 - keep shutting the others down
                log(f"shutting down {k.name}: {e}")
        specs.cleanup()
    res["seconds"] = perf() - t_start
    report(res)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
