"""python -m lua_kernel: install | snapshots ... | kernel."""
from __future__ import annotations

import argparse
import sys


def _install(args) -> int:
    from .install import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    user = args.user or (prefix is None and not _can_write_system())
    for where in install(user=user, prefix=prefix):
        print(f"Installed the kernelspec in {where}")
    return 0


def _can_write_system() -> bool:
    import os

    from jupyter_core.paths import SYSTEM_JUPYTER_PATH

    # where jupyter_client's KernelSpecManager installs a system-wide kernelspec
    parent = os.path.join(SYSTEM_JUPYTER_PATH[0], "kernels")
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return os.access(parent, os.W_OK)


def _snapshots(args) -> int:
    import time
    from pathlib import Path

    from .persist import snapshot
    from .persist.store import Store

    store = Store(args.store)
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
    if args.action == "list":
        keys = [args.key] if args.key else store.keys()
        if not keys:
            print(f"No saved Lua sessions in {store.describe()}.")
        for key in keys:
            print(key)
            for e in reversed(store.list(key)):
                print(f"  {e.name:<32} {stamp(e.modified)}  {e.size:>12,} bytes")
        return 0
    if args.action == "trust":
        path = Path(args.key)
        path.write_bytes(snapshot.resign(path.read_bytes()))
        print(f"{path} is now signed with your key; %restore {path} brings it into a notebook.")
        return 0
    if args.action == "show":
        path = Path(args.key)
        if args.name is None and path.is_file() and _is_snapshot_file(path):
            data = path.read_bytes()
        else:
            found = store.load(args.key, args.name)
            if found is None:
                print(f"No saved state for {args.key!r}" + (f" named {args.name!r}" if args.name
                                                             else ""), file=sys.stderr)
                return 1
            data = found[1]
        info = snapshot.info_of(data)
        print(f"notebook:  {info.notebook}\ncreated:   {stamp(info.created)}\n"
              f"lua:       {info.lua_version}\nsize:      {info.size:,} bytes")
        for k, v in sorted(info.counts.items()):
            print(f"  {k:<16} {v:,}" if isinstance(v, int) else f"  {k:<16} {v}")
        return 0
    # delete
    n = store.delete(args.key, args.name)
    print(f"Deleted {n} snapshot{'s' if n != 1 else ''} of {args.key}.")
    return 0


def _is_snapshot_file(path) -> bool:
    """A snapshot file, as opposed to a notebook (whose path is its key)."""
    from .persist.snapshot import MAGIC

    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _kernel(args, rest) -> int:
    # The Lua kernel has no debugger: keep ipykernel from importing debugpy,
    # which would advertise a "debugger" feature we do not have and print a
    # frozen-modules warning into `jupyter console` at every start.
    sys.modules.setdefault("debugpy", None)
    from ipykernel.kernelapp import IPKernelApp

    from .kernel import kernel_class

    runtime = None
    if "--runtime" in rest:           # which Lua: the kernelspec says (lua55, luajit)
        i = rest.index("--runtime")
        runtime = rest[i + 1]
        del rest[i:i + 2]
    IPKernelApp.launch_instance(argv=rest, kernel_class=kernel_class(runtime),
                                outstream_class="lua_kernel.kernel.QuietOutStream")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lua_kernel",
                                     description="Jupyter kernels for Lua 5.4, Lua 5.5 "
                                                 "and LuaJIT 2.1.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install the kernelspecs (lua, lua55, luajit)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only")
    where.add_argument("--sys-prefix", action="store_true",
                       help="into sys.prefix (e.g. the active virtualenv)")
    where.add_argument("--prefix", help="into this prefix (PREFIX/share/jupyter/kernels)")
    p = sub.add_parser("snapshots", help="list, show, delete or trust saved Lua sessions")
    p.add_argument("action", choices=["list", "show", "delete", "trust"])
    p.add_argument("key", nargs="?", help="notebook key (e.g. its path), or a FILE for "
                                          "show and trust")
    p.add_argument("name", nargs="?", help="one snapshot of that notebook")
    p.add_argument("--store", help="directory or fsspec URL (default: "
                                   "$LUA_KERNEL_SNAPSHOTS or the Jupyter data directory)")
    sub.add_parser("kernel", help="run the kernel (Jupyter starts it this way)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "install":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _install(args)
    if args.command == "snapshots":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.action in ("show", "delete", "trust") and not args.key:
            parser.error(f"snapshots {args.action} needs a notebook key or a file")
        from .persist.snapshot import SnapshotError

        try:
            return _snapshots(args)
        except (SnapshotError, OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return _kernel(args, rest)


if __name__ == "__main__":
    sys.exit(main())
