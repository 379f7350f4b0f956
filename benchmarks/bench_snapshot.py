"""Snapshot and restore speed and size (issue 3), against a Lua deep copy.

    python benchmarks/bench_snapshot.py [--quick] [--json]

For each data set, in one Session:
  * deep copy  — a Lua function copying the data: new tables, new closures
                 of the same prototypes with copied (and rejoined) upvalues;
                 strings are shared, being values: the baseline, measured in
                 the same run;
  * capture    — persist.capture(): the serialization, the only part on the
                 request path;
  * snapshot   — persist.snapshot_of(): capture + zstd + HMAC;
  * restore    — persist.restore(data): verify, inflate, a fresh Lua state,
                 and rebuilding the data in it;
  * size       — the snapshot's bytes.
Then the per-cell autosave overhead through a real kernel: the round trip of
a trivial cell (execute -> idle), cells in quick succession, with autosave on
versus off, for a small and a ~50 MB state; the capture time of each state;
and the commit window: from a cell's reply until a snapshot holding that
cell is on disk (0 for a small state, committed before the reply; one save
for a big one). Times are medians of several runs; ratios are ours / baseline.

    python benchmarks/bench_snapshot.py --autosave-only   # just the kernel part
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

DATASETS = {
    "100,000 small tables": """
        data = {}
        for i = 1, 100000 do data[i] = {x = i, y = i * 0.5, name = "n" .. i} end""",
    "100,000 closures sharing upvalues in pairs": """
        data = {}
        for i = 1, 50000 do
          local v = i
          data[2 * i - 1] = function() return v end
          data[2 * i] = function(n) v = n end
        end""",
    "ten 1 MB strings": """
        data = {}
        for i = 1, 10 do
          local parts = {}
          for j = 1, 1024 do parts[j] = string.pack("<i8", i * j * 2654435761):rep(128) end
          data[i] = table.concat(parts)
        end""",
    "1,000,000-element array of numbers": """
        data = {}
        for i = 1, 1000000 do data[i] = i % 3 == 0 and i * 0.25 or i end""",
}

DEEP_COPY = """
function deep_copy(v)
  -- An iterative deep copy: new tables, and new closures of the same
  -- prototypes whose upvalues are copied (shared ones rejoined, as they were
  -- shared); strings are values and C functions cannot be copied, so those
  -- are shared.
  local copies, stack, upvalues = {}, {}, {}
  local function copy_of(x)
    local tx = type(x)
    if tx ~= "table" and not (tx == "function" and debug.getinfo(x, "S").what ~= "C") then
      return x
    end
    local c = copies[x]
    if c == nil then
      c = tx == "table" and {} or load(string.dump(x))
      copies[x] = c
      stack[#stack + 1] = x
    end
    return c
  end
  local root = copy_of(v)
  while #stack > 0 do
    local src = table.remove(stack)
    local dst = copies[src]
    if type(src) == "table" then
      for k, x in next, src do dst[copy_of(k)] = copy_of(x) end
    else
      for i = 1, math.huge do
        local name, x = debug.getupvalue(src, i)
        if name == nil then break end
        local id = debug.upvalueid(src, i)
        local first = upvalues[id]
        if first then
          debug.upvaluejoin(dst, i, first[1], first[2])
        else
          upvalues[id] = {dst, i}
          debug.setupvalue(dst, i, copy_of(x))
        end
      end
    end
  end
  return root
end
"""


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# LuaJIT has no string.pack: the same kind of data (8 pseudo-random bytes
# repeated) from string.char
DATASETS_LUAJIT = {"ten 1 MB strings": """
        data = {}
        for i = 1, 10 do
          local parts = {}
          for j = 1, 1024 do
            local x, b = i * j * 2654435761, {}
            for k = 1, 8 do b[k] = string.char(x % 256) x = math.floor(x / 256) end
            parts[j] = table.concat(b):rep(128)
          end
          data[i] = table.concat(parts)
        end"""}


def bench_datasets(reps: int, runtime: str = "5.4") -> list[dict]:
    from lua_kernel import persist

    rows = []
    for name, setup in DATASETS.items():
        if runtime == "luajit":
            setup = DATASETS_LUAJIT.get(name, setup)
        s = persist.new_session(runtime=runtime)
        s.execute(setup + "\n" + DEEP_COPY, name="setup")
        copy = s.lua.eval("function() local c = deep_copy(data) return c ~= nil end")
        t_copy = median_time(copy, reps)
        t_capture = median_time(lambda s=s: persist.capture(s), reps)
        data = persist.snapshot_of(s).data
        t_snapshot = median_time(lambda s=s: persist.snapshot_of(s), reps)
        t_restore = median_time(lambda data=data: persist.restore(data, runtime=runtime), reps)
        r = persist.restore(data, runtime=runtime).session
        assert r.execute("#data")[0] == s.execute("#data")[0], name
        rows.append({"data": name, "runtime": runtime, "deep_copy": t_copy, "capture": t_capture,
                     "snapshot": t_snapshot, "restore": t_restore, "size": len(data),
                     "lua_kb": s.execute("collectgarbage('count')")[0]})
    return rows


def bench_autosave(rounds: int) -> list[dict]:
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from kernel_client import execute, running_kernel

    states = {"small state": "x = 1",
              "~50 MB state": "big = {} for i = 1, 400000 do "
                              "big[i] = {id = i, name = 'item' .. i, w = i * 0.5} end"}
    rows = []
    with tempfile.TemporaryDirectory() as store:
        for label, setup in states.items():
            times = {}
            for autosave in ("1", "0"):
                env = {"JPY_SESSION_NAME": f"bench/{uuid.uuid4().hex}.ipynb",
                       "LUA_KERNEL_SNAPSHOTS": store, "LUA_KERNEL_AUTOSAVE": autosave}
                with running_kernel(**env) as (km, kc):
                    execute(kc, setup, timeout=120)
                    mb = None
                    reply, msgs = execute(kc, "collectgarbage('count') / 1024")
                    for m in msgs:
                        if m["msg_type"] == "execute_result":
                            mb = float(m["content"]["data"]["text/plain"])
                    samples = []
                    for i in range(rounds):
                        t0 = time.perf_counter()
                        execute(kc, f"y = {i}", timeout=120)
                        samples.append(time.perf_counter() - t0)
                    times[autosave] = statistics.median(samples)
                    if autosave == "1":
                        window = commit_window(kc, env, execute)
            from lua_kernel import persist

            s = persist.new_session()
            s.execute(setup, name="setup")
            rows.append({"state": label, "lua_mb": mb, "autosave_on": times["1"],
                         "autosave_off": times["0"],
                         "capture": median_time(lambda s=s: persist.capture(s), 3),
                         "window": window})
    return rows


def commit_window(kc, env, execute, samples: int = 3) -> float:
    """Median seconds from a cell's reply until a snapshot holding it is on
    disk (the snapshot's kernel extras carry the cell's execution count)."""
    from lua_kernel.persist.snapshot import info_of
    from lua_kernel.persist.store import Store

    store, key = Store(env["LUA_KERNEL_SNAPSHOTS"]), env["JPY_SESSION_NAME"]
    windows = []
    for i in range(samples):
        time.sleep(0.5)
        reply, _ = execute(kc, f"w = {i}", timeout=120)
        replied = time.perf_counter()
        count = reply["content"]["execution_count"]
        while True:
            newest = store.list(key)[-1]
            data = store.read(newest)
            if data and info_of(data).kernel.get("execution_count", 0) >= count:
                break
            time.sleep(0.002)
        windows.append(time.perf_counter() - replied)
    return statistics.median(windows)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lupa

    from lua_kernel.native import lua_release
    return (f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}, "
            f"lupa {lupa.__version__}, Lua {lua_release()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", action="store_true", help="results as JSON on stdout")
    ap.add_argument("--autosave-only", action="store_true",
                    help="only the per-cell autosave part (real kernels)")
    ap.add_argument("--runtimes", default="5.4",
                    help="data sets in these runtimes, comma-separated (5.4,5.5,luajit)")
    ap.add_argument("--datasets-only", action="store_true", help="skip the kernel part")
    args = ap.parse_args()
    reps, rounds = (3, 10) if args.quick else (5, 30)
    report = sys.stderr if args.json else sys.stdout
    t0 = time.perf_counter()
    data_rows = [] if args.autosave_only else [
        row for rt in args.runtimes.split(",") for row in bench_datasets(reps, rt.strip())]
    autosave_rows = [] if args.datasets_only else bench_autosave(rounds)
    print(f"lua_kernel snapshots — {time.strftime('%Y-%m-%d')}, {machine()}", file=report)
    print(f"{'data':<44} {'runtime':>7} {'deep copy':>9} {'capture':>9} {'snapshot':>9} "
          f"{'restore':>9} {'snap/copy':>9} {'rest/copy':>9} {'size':>10}", file=report)
    for r in data_rows:
        # a deep copy shares strings (they are values): no baseline to speak of
        ratio = (lambda t, r=r: f"{t / r['deep_copy']:>9.2f}") if r["deep_copy"] > 1e-3 \
            else (lambda t: f"{'n/a':>9}")
        print(f"{r['data']:<44} {r['runtime']:>7} {r['deep_copy'] * 1e3:>7.1f}ms "
              f"{r['capture'] * 1e3:>7.1f}ms {r['snapshot'] * 1e3:>7.1f}ms "
              f"{r['restore'] * 1e3:>7.1f}ms "
              f"{ratio(r['snapshot'])} {ratio(r['restore'])} "
              f"{r['size'] / 1e6:>8.2f}MB", file=report)
    print(f"\n{'autosave: trivial cells in quick succession':<44} {'on':>9} {'off':>9} "
          f"{'ratio':>7} {'capture':>9} {'window':>9}", file=report)
    for r in autosave_rows:
        print(f"{r['state'] + ' (%.0f MB of Lua)' % r['lua_mb']:<44} "
              f"{r['autosave_on'] * 1e3:>7.1f}ms {r['autosave_off'] * 1e3:>7.1f}ms "
              f"{r['autosave_on'] / r['autosave_off']:>7.2f} {r['capture'] * 1e3:>7.0f}ms "
              f"{r['window'] * 1e3:>7.0f}ms",
              file=report)
    print(f"total benchmark time: {time.perf_counter() - t0:.1f} s", file=report)
    if args.json:
        json.dump({"machine": machine(), "datasets": data_rows, "autosave": autosave_rows},
                  sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
