"""Lua 5.4.8's sources and official test suite (testes/), from lupa's sdist.

Found in $LUA_KERNEL_LUA_SOURCES, else in the user's cache
(~/.cache/lua_kernel/lupa-2.8/third-party/lua54), else fetched there once
with `pip download --no-binary :all: lupa==2.8` (CI reaches PyPI).
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


def lua54_dir() -> Path:
    """The folder holding lvm.c, lopcodes.h, ... and testes/."""
    env = os.environ.get("LUA_KERNEL_LUA_SOURCES")
    if env:
        return Path(env)
    found = _cache() / "lupa-2.8" / "third-party" / "lua54"
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
                       if "/third-party/lua54/" in m.name or m.name.endswith("/third-party/lua54")]
            tar.extractall(_cache(), members=members, filter="data")
    if not (found / "testes").is_dir():
        raise RuntimeError(f"lupa's sdist did not contain {found}")
    return found
