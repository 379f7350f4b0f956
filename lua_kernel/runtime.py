"""Making lupa runtimes and loading the package's Lua files into them.

C modules built for Lua 5.4 (lpeg, lfs, cjson, a rock's .so) call the Lua C
API, which lupa's extension module exports; Python loads extension modules
with RTLD_LOCAL, so those symbols were invisible to them ("undefined symbol:
lua_setfield"). The module's symbols are made global once, here.

Lua strings are byte strings; lupa converts them with the runtime's encoding,
strictly, so one invalid UTF-8 byte would make a value unreadable from Python.
We register a codec that is UTF-8 with `surrogateescape` in both directions:
text reads as ordinary `str`, and any other byte survives the trip to Python
and back exactly (`to_bytes` recovers the bytes).
"""
from __future__ import annotations

import codecs
import ctypes
import os
import sysconfig
from importlib import resources

from lupa import lua54

LUA_VERSION = "5.4"
# Lua's reserved words: the one list the package has (the Lua files get it
# through lua/names.lua, see name_test)
KEYWORDS = frozenset(
    "and break do else elseif end false for function goto if in local nil not "
    "or repeat return then true until while".split())

CODEC = "lua_kernel_bytes"


def _search(name: str):
    if name != CODEC:
        return None
    return codecs.CodecInfo(
        name=CODEC,
        encode=lambda s, errors="surrogateescape": codecs.utf_8_encode(s, "surrogateescape"),
        decode=lambda b, errors="surrogateescape": codecs.utf_8_decode(b, "surrogateescape", True),
    )


codecs.register(_search)


def _export_lua_api() -> None:
    """Make lupa's Lua C API visible to C modules that `require` loads."""
    try:
        ctypes.CDLL(lua54.__file__, mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL
                    | getattr(os, "RTLD_NOLOAD", 0))
    except OSError:         # not a shared object we can reopen: C modules cannot load
        pass


_export_lua_api()


def module_paths(version: str = LUA_VERSION) -> tuple[str, str, str, str]:
    """Where `require` looks beyond Lua's built-in defaults, as Lua users
    install modules: (path before, path after, cpath before, cpath after).
    First the notebook's own LuaRocks tree (`luarocks --tree lua_modules`,
    relative to the kernel's directory, which is the notebook's), then the
    user's tree (`luarocks --local`); after the defaults, the system's
    (Debian's lua-* packages)."""
    home = os.path.expanduser("~")
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    trees = ["lua_modules", f"{home}/.luarocks"]
    before = [f"{t}/share/lua/{version}/?{end}" for t in trees for end in (".lua", "/init.lua")]
    after = [f"/usr/share/lua/{version}/?.lua", f"/usr/share/lua/{version}/?/init.lua"]
    cbefore = [f"{t}/lib/lua/{version}/?.so" for t in trees]
    cafter = [f"/usr/lib/{multiarch}/lua/{version}/?.so" if multiarch else "",
              f"/usr/lib/lua/{version}/?.so"]
    return (";".join(before), ";".join(after), ";".join(c for c in cbefore if c),
            ";".join(c for c in cafter if c))


def to_bytes(s: str | bytes) -> bytes:
    """The exact bytes of a Lua string received from the runtime."""
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def new_runtime(max_memory: int = 0) -> lua54.LuaRuntime:
    """A fresh Lua 5.4 state. `max_memory` 0 means no limit (but changeable)."""
    return lua54.LuaRuntime(
        encoding=CODEC,
        unpack_returned_tuples=True,
        max_memory=max_memory,
    )


def _lua_path(name: str) -> str:
    """A file name without "/" means lua/<name>; a path is relative to the package."""
    return name if "/" in name else "lua/" + name


def lua_source(name: str) -> str:
    return resources.files("lua_kernel").joinpath(*_lua_path(name).split("/")).read_text("utf-8")


def load_lua(lua: lua54.LuaRuntime, name: str, *args):
    """Run lua/<name> (or <path> inside the package, such as
    "persist/lua/state.lua") as a chunk named after its file; return its results."""
    # lupa compiles with the C API, so a user's replacement of `load` cannot
    # interfere with our own files.
    try:
        chunk = lua.compile(lua_source(name), name="=lua_kernel/" + name, mode="t")
    except lua54.LuaSyntaxError as e:
        raise RuntimeError(f"cannot load lua_kernel/{name}: {e}") from None
    return chunk(*args)


def name_test(lua: lua54.LuaRuntime):
    """lua/names.lua's is_name for this runtime: a name that can be written bare."""
    return load_lua(lua, "names.lua", lua.table_from(sorted(KEYWORDS)))


def is_lua_object(value) -> bool:
    """True for values lupa wraps from Lua (tables, functions, threads, userdata)."""
    return lua54.lua_type(value) is not None


def is_python_object(value) -> bool:
    """True for Python objects that Lua holds (not Lua values, not plain data)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return False
    return not is_lua_object(value)
