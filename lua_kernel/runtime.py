"""Making lupa runtimes and loading the package's Lua files into them.

Three Lua runtimes come with lupa and are offered (RUNTIMES): Lua 5.4 (the
default, kernel `lua`), Lua 5.5 (`lua55`) and LuaJIT 2.1 (`luajit`). Each is
its own extension module, with its own LuaRuntime, lua_type and exception
classes; `Runtime.module` is the one to use for a given state, and
`module_of(lua)` finds it from a LuaRuntime.

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
import importlib
import os
import sys
import sysconfig
import weakref
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import Any, Callable, Mapping


# Lua's reserved words: the one list the package has (the Lua files get it
# through lua/names.lua, see name_test); Lua 5.5 adds `global`.
KEYWORDS = frozenset(
    "and break do else elseif end false for function goto if in local nil not "
    "or repeat return then true until while".split())


@dataclass(frozen=True)
class Runtime:
    """One Lua implementation lupa bundles."""

    key: str            # "5.4", "5.5", "luajit": what Session(runtime=...) takes
    module_name: str    # the lupa extension module
    language: str       # the language version: module paths (share/lua/5.1/), docs
    kernel_name: str    # its kernelspec
    display_name: str
    keywords: frozenset = KEYWORDS

    @property
    def module(self) -> ModuleType:
        module = importlib.import_module(self.module_name)
        _export_lua_api(module)
        return module

    @property
    def is_luajit(self) -> bool:
        return self.key == "luajit"


RUNTIMES = {r.key: r for r in (
    Runtime("5.4", "lupa.lua54", "5.4", "lua", "Lua 5.4"),
    Runtime("5.5", "lupa.lua55", "5.5", "lua55", "Lua 5.5", KEYWORDS | {"global"}),
    Runtime("luajit", "lupa.luajit21", "5.1", "luajit", "LuaJIT 2.1"),
)}
DEFAULT_RUNTIME = "5.4"
LUA_VERSION = RUNTIMES[DEFAULT_RUNTIME].language


def get_runtime(name: str | Runtime | None = None) -> Runtime:
    """A runtime by key ("5.4", "5.5", "luajit") or kernel name ("lua",
    "lua55"); None is the default (Lua 5.4)."""
    if isinstance(name, Runtime):
        return name
    if name is None:
        return RUNTIMES[DEFAULT_RUNTIME]
    for r in RUNTIMES.values():
        if name in (r.key, r.kernel_name, r.module_name.rsplit(".", 1)[-1]):
            return r
    raise ValueError(f"unknown Lua runtime {name!r}; choose one of: "
                     + ", ".join(RUNTIMES))


def module_of(lua) -> ModuleType:
    """The lupa extension module of a LuaRuntime (or of any lupa object)."""
    return sys.modules[type(lua).__module__]


def runtime_of(lua) -> Runtime:
    name = type(lua).__module__
    return next(r for r in RUNTIMES.values() if r.module_name == name)

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


_EXPORTED: list[str] = []


def _export_lua_api(module: ModuleType) -> None:
    """Make lupa's Lua C API visible to C modules that `require` loads.
    Only the first runtime a process uses gets this (a kernel process uses
    one), and only after every lupa runtime module is loaded: each binds its
    own lua_* calls at load time, and would bind them to the global ones of
    another Lua if those were there first."""
    if _EXPORTED:
        return
    for r in RUNTIMES.values():
        importlib.import_module(r.module_name)
    _EXPORTED.append(module.__name__)
    try:
        ctypes.CDLL(module.__file__, mode=os.RTLD_NOW | ctypes.RTLD_GLOBAL
                    | getattr(os, "RTLD_NOLOAD", 0))
    except OSError:         # not a shared object we can reopen: C modules cannot load
        pass


def c_modules_load(lua) -> bool:
    """True when C modules can load into this state: its runtime's C API is
    the one this process made visible to them."""
    return _EXPORTED[:1] == [type(lua).__module__]


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


# What Lua may call into, kept for the life of the process (see lua_callback)
_CALLBACKS: list = []


def lua_callback(method: Callable, dead: Any = None) -> Callable:
    """A bound method as a Lua state may hold it. Lua calls a Python object
    through a borrowed pointer; lupa keeps the owning reference in the
    LuaRuntime, where Python's cyclic collector may drop it before the
    state closes, and the state's finalizers (a `__gc` that prints) then
    call a freed object: a crash. So the callback is kept for the life of
    the process (a small closure), and holds its object weakly, which also
    keeps the object and its Lua state out of a cycle: once the object is
    gone, a call answers `dead`."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        return dead if bound is None else bound(*args)

    _CALLBACKS.append(call)
    return call


def methods_table(lua, owner, names: Mapping[str, str]):
    """A Lua table of `owner`'s methods (Lua name -> method name), each a
    lua_callback."""
    return lua.table_from({key: lua_callback(getattr(owner, name))
                           for key, name in names.items()})


def to_bytes(s: str | bytes) -> bytes:
    """The exact bytes of a Lua string received from the runtime."""
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def new_runtime(max_memory: int = 0, runtime: str | Runtime | None = None):
    """A fresh Lua state (Lua 5.4 unless `runtime` says otherwise).
    `max_memory` 0 means no limit (but changeable)."""
    return get_runtime(runtime).module.LuaRuntime(
        encoding=CODEC,
        unpack_returned_tuples=True,
        max_memory=max_memory,
    )


def _lua_path(name: str) -> str:
    """A file name without "/" means lua/<name>; a path is relative to the package."""
    return name if "/" in name else "lua/" + name


def lua_source(name: str) -> str:
    return resources.files("lua_kernel").joinpath(*_lua_path(name).split("/")).read_text("utf-8")


def load_lua(lua, name: str, *args):
    """Run lua/<name> (or <path> inside the package, such as
    "persist/lua/state.lua") as a chunk named after its file; return its results."""
    # lupa compiles with the C API, so a user's replacement of `load` cannot
    # interfere with our own files.
    try:
        chunk = lua.compile(lua_source(name), name="=lua_kernel/" + name, mode="t")
    except module_of(lua).LuaSyntaxError as e:
        raise RuntimeError(f"cannot load lua_kernel/{name}: {e}") from None
    return chunk(*args)


def name_test(lua):
    """lua/names.lua's is_name for this runtime: a name that can be written bare."""
    return load_lua(lua, "names.lua", lua.table_from(sorted(runtime_of(lua).keywords)))


def lua_type(value) -> str | None:
    """Lua's type name of a value lupa wraps from any runtime ("table",
    "function", ...), None for anything else."""
    module = sys.modules.get(type(value).__module__)
    if module is None or not module.__name__.startswith("lupa."):
        return None
    return module.lua_type(value)


def is_lua_object(value) -> bool:
    """True for values lupa wraps from Lua (tables, functions, threads, userdata)."""
    return lua_type(value) is not None


def is_python_object(value) -> bool:
    """True for Python objects that Lua holds (not Lua values, not plain data)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return False
    return not is_lua_object(value)
