"""Our capture and restore against Eris's persist and unpersist, same data, same run.

    python benchmarks/bench_eris.py [--quick] [--reps N] [--json]
        [--eris-git DIR] [--eris-branch BRANCH] [--datasets small_tables,...]

Eris (github.com/MightyPirates/OC-Eris, branch master-lua5.4: Lua 5.4.6
with eris.c) is built from a git directory with its own Makefile into
~/.cache/lua_kernel/eris-<commit>/ (once; --eris-cache to choose); if it
cannot be built the script says why and exits with status 2. Eris is not a
dependency: this is a benchmark, never a test.

Each data set is one Lua file in benchmarks/eris/datasets/ returning
{name, build(), check(data)}; both sides run the same file:
  * Eris  — benchmarks/eris/run.lua in the built `lua` (a process per data
            set): data = build() as a global, then eris.persist(perms, data)
            and eris.unpersist(uperms, s), where the permanents are _G and
            everything reachable from it two levels deep (the standard
            library); Eris saves just `data`;
  * ours  — a persist.new_session() with data = build() as a global;
            capture = persist.capture() (the serialization of the WHOLE
            session state, which holds `data`: the comparison the project's
            anchor figures use); restore = state.apply() of that body into a
            fresh persist.new_session() made beforehand, untimed.
Not in Eris and reported apart: seal (zstd + HMAC of the body) and open
(verify + inflate), with a fixed key, not the user's secret, and making the
fresh session a restore goes into.
Times are CPU time (os.clock() in Lua, time.process_time() here; wall time
is in the JSON too), medians of --reps runs (default 5, --quick 3), each
after a full collection, untimed. Ratios are ours / Eris. After the runs,
check() of the last restored copy must equal check() of a native copy on
each side (for the coroutines: every one resumed to its end).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ERIS_DIR = HERE / "eris"
DATASETS = ["small_tables", "closures", "coroutines", "floats"]
DEFAULT_GIT = "/work/.mirror/MightyPirates+OC-Eris/repo"
KEY = b"bench_eris: a fixed key, not the user's secret"

sys.path.insert(0, str(HERE))
from bench_snapshot import machine  # noqa: E402  (stdlib-only at import time)


class ErisUnavailable(Exception):
    pass


# -- building Eris ------------------------------------------------------------------

def _eris_works(lua: Path) -> bool:
    try:
        r = subprocess.run([str(lua), "-e", "assert(eris and eris.persist and eris.unpersist)"],
                           capture_output=True, timeout=30)
    except OSError:
        return False
    return r.returncode == 0


def build_eris(git_dir: str, branch: str, cache: Path) -> tuple[Path, str]:
    """The path of a `lua` with the eris library built from branch's newest
    commit in git_dir, and that commit; built once per commit into cache."""
    if not Path(git_dir).is_dir():
        raise ErisUnavailable(f"{git_dir} is not a directory (the OC-Eris git directory)")
    r = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "--verify",
                        f"{branch}^{{commit}}"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ErisUnavailable(f"no branch {branch!r} in {git_dir}: {r.stderr.strip()}")
    commit = r.stdout.strip()
    dest = cache / f"eris-{commit[:12]}"
    lua = dest / "lua"
    if lua.exists() and _eris_works(lua):
        return lua, commit
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="eris-build-") as tmp:
        archive = subprocess.Popen(["git", "--git-dir", git_dir, "archive", commit],
                                   stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout,
                               capture_output=True)
        archive.stdout.close()
        if archive.wait() != 0 or untar.returncode != 0:
            raise ErisUnavailable(f"cannot extract {commit} from {git_dir}: "
                                  f"{untar.stderr.decode(errors='replace').strip()}")
        src = Path(tmp) / "src"
        log = []
        # only the interpreter: the repository's test programs (ALL's default)
        # do not build with its own Makefile (test/persist.c misses lua.h)
        for target in ("linux", "posix"):
            cmd = ["make", "-C", str(src), "-j2", target, "ALL=lua"]
            b = subprocess.run(cmd, capture_output=True, text=True)
            log.append(f"$ {' '.join(cmd)}\n{b.stdout[-2000:]}{b.stderr[-2000:]}")
            if b.returncode == 0:
                if _eris_works(src / "lua"):
                    break
                log.append(f"(built, but {src / 'lua'} has no working eris library)")
            subprocess.run(["make", "-C", str(src), "clean"], capture_output=True)
        else:
            raise ErisUnavailable("the Eris build failed:\n" + "\n".join(log))
        shutil.copy2(src / "lua", dest / "lua.tmp")
        os.replace(dest / "lua.tmp", lua)
    return lua, commit


# -- the two sides ------------------------------------------------------------------

def eris_side(lua: Path, dataset: Path, reps: int) -> dict:
    r = subprocess.run([str(lua), "run.lua", str(dataset), str(reps)], cwd=ERIS_DIR,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]}
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return {"name": out["name"], "version": out["version"], "perms": int(out["perms"]),
            "lua_kb": float(out["lua_kb"]), "size": int(out["size"]),
            "persist": [float(t) for t in out["persist"].split()],
            "unpersist": [float(t) for t in out["unpersist"].split()],
            "expected": out["expected"], "got": out["got"], "ok": out["check"] == "ok"}


def _clocks():
    return time.process_time(), time.perf_counter()


def ours_side(dataset: Path, reps: int) -> dict:
    from lua_kernel import native, persist
    from lua_kernel.persist import snapshot as envelope
    from lua_kernel.persist import state

    source, name = dataset.read_text(), f"datasets/{dataset.name}"

    def load(session):
        return session.execute(source, name=name)[0]

    s = persist.new_session()      # a native copy, used up by check()
    expected = s.call(s.lua.eval("function(m) return m.check(m.build()) end"), load(s))[0]
    s = persist.new_session()
    m = load(s)
    label = m.name
    s.call(s.lua.eval("function(m) data = m.build() end"), m)
    del m                          # only `data` stays, as a global
    collect = s.lua.eval("function() collectgarbage() collectgarbage() end")
    collect()
    lua_kb = s.execute("collectgarbage('count')")[0]

    cpu = {what: [] for what in ("capture", "restore", "new_session", "seal", "open")}
    wall = {what: [] for what in cpu}

    def timed(what, fn, before=None):
        result = None
        for _ in range(reps):
            result = None
            setup = before() if before else None
            gc.collect()
            c0, w0 = _clocks()
            result = fn(setup)
            c1, w1 = _clocks()
            cpu[what].append(c1 - c0)
            wall[what].append(w1 - w0)
        return result

    body, issues, counts = timed("capture", lambda _: persist.capture(s), before=collect)
    assert not issues, issues[:3]

    fresh = None

    def new():
        nonlocal fresh
        fresh = None          # the previous copy goes before the next is made
        gc.collect()
        c0, w0 = _clocks()
        fresh = persist.new_session()
        c1, w1 = _clocks()
        cpu["new_session"].append(c1 - c0)
        wall["new_session"].append(w1 - w0)
        fresh.lua.eval("collectgarbage")()
        return fresh

    def apply(session):
        issues = state.apply(session, body)
        assert issues == [], issues[:3]

    timed("restore", apply, before=new)
    got = fresh.call(fresh.lua.eval("function(m) return m.check(data) end"), load(fresh))[0]
    fresh = None

    sealed = timed("seal", lambda _: persist.seal(body, counts, key=KEY))
    release = native.lua_release()
    timed("open", lambda _: envelope.open_snapshot(sealed, lua_version=release, key=KEY))
    return {"name": label, "lua_kb": lua_kb, "body": len(body), "snapshot": len(sealed),
            "cpu": cpu, "wall": wall, "expected": expected, "got": got,
            "ok": got == expected}


# -- report -------------------------------------------------------------------------

def med(xs) -> float:
    return statistics.median(xs)


def report(rows: list[dict], out) -> None:
    def p(*a):
        print(*a, file=out)

    for r in rows:
        e, o = r["eris"], r["ours"]
        p(f"\n{o['name']}   (Lua heap with the data: ours {o['lua_kb'] / 1024:.1f} MB"
          + (f", Eris {e['lua_kb'] / 1024:.1f} MB)" if "error" not in e else ")"))
        if "error" in e:
            p(f"  Eris failed: {' '.join(e['error'])}")
            p(f"  ours: capture {med(o['cpu']['capture']) * 1e3:.1f} ms, restore "
              f"{med(o['cpu']['restore']) * 1e3:.1f} ms, body {o['body'] / 1e6:.2f} MB")
            continue
        p(f"  {'':26} {'Eris':>10} {'ours':>10} {'ours/Eris':>10}")
        for label, et, ot in (("save (persist / capture)", e["persist"], o["cpu"]["capture"]),
                              ("restore (unpersist / apply)", e["unpersist"],
                               o["cpu"]["restore"])):
            p(f"  {label:26} {med(et) * 1e3:8.1f}ms {med(ot) * 1e3:8.1f}ms "
              f"{med(ot) / med(et):10.2f}")
        p(f"  {'size (Eris string / body)':26} {e['size'] / 1e6:8.2f}MB "
          f"{o['body'] / 1e6:8.2f}MB {o['body'] / e['size']:10.2f}")
        p(f"  not in Eris: seal (zstd + HMAC) {med(o['cpu']['seal']) * 1e3:.1f} ms -> "
          f"{o['snapshot'] / 1e6:.2f} MB snapshot; open (verify + inflate) "
          f"{med(o['cpu']['open']) * 1e3:.1f} ms;\n  {'':13}the fresh session a restore "
          f"goes into (made untimed) {med(o['cpu']['new_session']) * 1e3:.1f} ms")
        same = e["ok"] and o["ok"] and e["expected"] == o["expected"]
        p(f"  check: {'native = Eris copy = our copy' if same else 'MISMATCH'}: "
          f"{o['expected']}")
        if not same:
            p(f"    Eris native {e['expected']!r}, Eris copy {e['got']!r}, "
              f"our native {o['expected']!r}, our copy {o['got']!r}")
    p(f"\n{'ours / Eris (CPU time, medians)':44} {'capture':>8} {'restore':>8} {'size':>8}")
    for r in rows:
        e, o = r["eris"], r["ours"]
        if "error" in e:
            p(f"{o['name']:44} {'Eris failed':>26}")
            continue
        p(f"{o['name']:44} {med(o['cpu']['capture']) / med(e['persist']):8.2f} "
          f"{med(o['cpu']['restore']) / med(e['unpersist']):8.2f} "
          f"{o['body'] / e['size']:8.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions (default 5)")
    ap.add_argument("--reps", type=int, help="repetitions per measurement")
    ap.add_argument("--json", action="store_true", help="results as JSON on stdout")
    ap.add_argument("--eris-git", default=DEFAULT_GIT,
                    help="git directory of OC-Eris (default: %(default)s)")
    ap.add_argument("--eris-branch", default="master-lua5.4",
                    help="its branch to build (default: %(default)s)")
    ap.add_argument("--eris-cache", default=str(Path.home() / ".cache" / "lua_kernel"),
                    help="where eris-<commit>/lua is built (default: %(default)s)")
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help="comma-separated, of: " + ", ".join(DATASETS))
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    out = sys.stderr if args.json else sys.stdout
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    for n in names:
        if not (ERIS_DIR / "datasets" / f"{n}.lua").exists():
            ap.error(f"no data set {n!r} (have: {', '.join(DATASETS)})")

    t0 = time.perf_counter()
    try:
        lua, commit = build_eris(args.eris_git, args.eris_branch, Path(args.eris_cache))
    except (ErisUnavailable, OSError) as e:
        print(f"bench_eris: cannot build Eris from {args.eris_git} "
              f"({args.eris_branch}): {e}", file=sys.stderr)
        return 2
    print(f"Eris {args.eris_branch} {commit[:12]}: {lua}", file=out)
    rows = []
    for n in names:
        dataset = ERIS_DIR / "datasets" / f"{n}.lua"
        print(f"[{n}] Eris ...", file=sys.stderr, flush=True)
        e = eris_side(lua, dataset, reps)
        print(f"[{n}] ours ...", file=sys.stderr, flush=True)
        o = ours_side(dataset, reps)
        rows.append({"dataset": n, "eris": e, "ours": o})
    version = next((r["eris"]["version"] for r in rows if "version" in r["eris"]), "?")
    print(f"\nlua_kernel vs Eris — {time.strftime('%Y-%m-%d')}, {machine()}; "
          f"Eris: {version} ({args.eris_branch} {commit[:12]}), medians of {reps}, CPU time",
          file=out)
    print("Eris saves `data` with _G and the standard library as permanents; ours "
          "captures the whole session state (which holds `data`).", file=out)
    report(rows, out)
    print(f"total benchmark time: {time.perf_counter() - t0:.1f} s", file=out)
    if args.json:
        json.dump({"machine": machine(), "eris": {"commit": commit, "branch": args.eris_branch,
                                                  "lua": str(lua), "version": version},
                   "reps": reps, "clock": "CPU (os.clock / time.process_time)",
                   "datasets": rows}, sys.stdout, indent=2)
    bad = [r["dataset"] for r in rows
           if "error" in r["eris"] or not (r["eris"]["ok"] and r["ours"]["ok"])]
    if bad:
        print(f"bench_eris: failed or wrong copies: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
