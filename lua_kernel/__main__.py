"""python -m lua_kernel: install | kernel."""
from __future__ import annotations

import argparse
import sys


def _install(args) -> int:
    from .install import install

    prefix = sys.prefix if args.sys_prefix else args.prefix
    user = args.user or (prefix is None and not _can_write_system())
    where = install(user=user, prefix=prefix)
    print(f"Installed the Lua 5.4 kernelspec 'lua' in {where}")
    return 0


def _can_write_system() -> bool:
    import os

    from jupyter_client.kernelspec import KernelSpecManager

    target = KernelSpecManager()._get_destination_dir("lua", user=False, prefix=None)
    parent = os.path.dirname(target)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return os.access(parent, os.W_OK)


def _kernel(args, rest) -> int:
    from ipykernel.kernelapp import IPKernelApp

    from .kernel import LuaKernel

    IPKernelApp.launch_instance(argv=rest, kernel_class=LuaKernel)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lua_kernel",
                                     description="A Jupyter kernel for Lua 5.4.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install the 'lua' kernelspec")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user only")
    where.add_argument("--sys-prefix", action="store_true",
                       help="into sys.prefix (e.g. the active virtualenv)")
    where.add_argument("--prefix", help="into this prefix (PREFIX/share/jupyter/kernels)")
    sub.add_parser("kernel", help="run the kernel (Jupyter starts it this way)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "install":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _install(args)
    return _kernel(args, rest)


if __name__ == "__main__":
    sys.exit(main())
