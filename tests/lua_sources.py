"""Lua 5.4.8's and Lua 5.5.1's sources and official test suites (testes/),
from lupa's sdist.

Found in $LUA_KERNEL_LUA_SOURCES (5.4) or $LUA_KERNEL_LUA55_SOURCES (5.5),
else in the user's cache (~/.cache/lua_kernel/lupa-2.8/third-party/lua54 or
lua55), else fetched there once with `pip download --no-binary :all:
lupa==2.8` (CI reaches PyPI).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LUPA = "lupa==2.8"


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lua_kernel"


def _lua_dir(folder: str, env_var: str) -> Path:
    """The folder lupa's sdist has for one Lua (third-party/<folder>)."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    found = _cache() / "lupa-2.8" / "third-party" / folder
    if (found / "testes").is_dir():
        return found
    _cache().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--no-binary", ":all:", LUPA, "-d", tmp],
                       check=True, capture_output=True)
        (archive,) = Path(tmp).glob("lupa-*.tar.gz")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if f"/third-party/{folder}/" in m.name
                       or m.name.endswith(f"/third-party/{folder}")]
            tar.extractall(_cache(), members=members, filter="data")
    if not (found / "testes").is_dir():
        raise RuntimeError(f"lupa's sdist did not contain {found}")
    return found


def lua54_dir() -> Path:
    """The folder holding Lua 5.4's lvm.c, lopcodes.h, ... and testes/."""
    return _lua_dir("lua54", "LUA_KERNEL_LUA_SOURCES")


def lua55_dir() -> Path:
    """The folder holding Lua 5.5's lvm.c, lopcodes.h, ... and testes/."""
    return _lua_dir("lua55", "LUA_KERNEL_LUA55_SOURCES")
