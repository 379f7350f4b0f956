"""A session's whole Lua state as bytes, and back into a fresh session.

The serializer itself is Lua (`persist/lua/state.lua`, where the format is
documented), one file for every runtime with a small per-runtime codec
(`persist/lua/codec53.lua`; in LuaJIT `codec_jit.lua`, and state.lua's
integer operators rewritten by `jitsource.py`); this is its Python glue:

    Session(companions={COMPANION: attach})   # before any user code
    body, issues, counts = capture(session)
    issues = apply(fresh_session, body)   # ValueError if the body is malformed

Python objects reached from Lua are pickled with dill (`pyobjects.py`) in one
call per snapshot. What cannot be saved (an unpicklable Python object, an
unknown C function, a coroutine suspended with a live call stack, ...) does
not sink the snapshot: it is an `Issue` naming where it was found, and comes
back as nil, with the same issue reported again by `apply`.

Bytes cross from Lua to Python as `str` with surrogate escapes, which costs
several nanoseconds a byte for binary data. The body is binary, so `capture`
copies it straight out of the Lua string's memory instead (the address comes
from `string.format("%p", body)`; the read goes through /proc/self/mem, so a
wrong address is an error, never a crash, and the copy is checked against
the string's length field and against its first and last 64 bytes, which Lua
gives through the normal path). When that is not possible the normal path is
used. In the other direction Python bytes become Lua strings exactly.
"""
from __future__ import annotations

import functools
import os
import time
import weakref
from dataclasses import dataclass

from .. import native
from ..runtime import get_runtime, load_lua, lua_source, module_of, to_bytes
from . import framepeek, jitsource, pyobjects

LUA_FILE = "persist/lua/state.lua"
# the number streams, by runtime (see the header of codec53.lua)
CODEC_FILES = {"luajit": "persist/lua/codec_jit.lua"}
CODEC_FILE = "persist/lua/codec53.lua"
FRAMES_FILE = "persist/lua/frames.lua"
COMPANION = "persist.state"     # the serializer, as a Session companion


@dataclass
class Issue:
    """Something that could not be saved or restored."""

    path: str      # where in the object graph: "_G.conn", "_G.f<upvalue 'x'>"
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# The runtimes whose suspended coroutines the frame readers and the finisher
# know (5.5: its tests, conformance run and fuzzer pass as 5.4's).
FRAME_RUNTIMES = {"5.4", "5.5"}


def attach(session):
    """Load the serializer into a fresh session's Lua state (the companion
    COMPANION): it starts tracking the coroutines and files user code makes
    (track.lua) and takes the baseline of permanents (standard library,
    kernel objects) now, before any user code. With it come the parts for
    suspended coroutines: the bytecode reader, the finisher, the saved-pc
    reader and frames.lua."""
    lua = session.lua
    lua_side = session.lua_side
    tracked = load_lua(lua, "persist/lua/track.lua", lua_side, os.path.abspath)
    module = load_serializer(lua, session.runtime, lua_side, tracked)
    if session.runtime.key not in FRAME_RUNTIMES:
        module.use_frames(None, None, no_frames_reason(session.runtime))
        return module
    bytecode = load_lua(lua, "persist/lua/bytecode.lua")
    finisher = load_lua(lua, "persist/lua/finisher.lua", bytecode)
    peek = session.companion(framepeek.COMPANION, lambda s: load_lua(
        lua, framepeek.LUA_FILE, module.permanent, bytecode, finisher.proto_of))
    frames = load_lua(lua, FRAMES_FILE, bytecode, finisher, peek, lua_side)
    module.use_frames(frames, _saved_pcs_many(session))
    tbc, states, errored, copy = framepeek.readers(session)
    # errored is asked of every dead coroutine and never raises: unwrapped
    frames.use_readers(_reader(tbc), _reader(states), errored, copy and _reader(copy))
    return module


def load_serializer(lua, runtime, kernel, tracked):
    """state.lua in `lua` (a state of `runtime`), with the kernel's module
    and track.lua's tables; its module. In LuaJIT the source goes through
    jitsource.rewrite (its integer operators as arithmetic) and gets
    codec_jit.lua, elsewhere codec53.lua."""
    runtime = get_runtime(runtime)
    codec = load_lua(lua, CODEC_FILES.get(runtime.key, CODEC_FILE))
    source = lua_source(LUA_FILE)
    if runtime.is_luajit:
        source = jitsource.rewrite(source)
    return _compile(lua, LUA_FILE, source)(kernel, tracked, codec)


def _compile(lua, name, source):
    try:
        return lua.compile(source, name="=lua_kernel/" + name, mode="t")
    except module_of(lua).LuaSyntaxError as e:
        raise RuntimeError(f"cannot load lua_kernel/{name}: {e}") from None


def no_frames_reason(runtime) -> str:
    """Why a coroutine suspended with a call stack cannot be saved in this
    runtime."""
    runtime = get_runtime(runtime)
    if runtime.is_luajit:
        return ("its call stack cannot be saved in LuaJIT: its frames are out of reach "
                "from outside the VM")
    return (f"its call stack can be saved in Lua 5.4 and 5.5 only, not yet in "
            f"{runtime.display_name}")


def _never_raise(failure):
    """For the callbacks Lua calls: a Python exception must not cross into
    Lua (it would unwind the serializer half-way); it becomes the callback's
    answer `failure(exception, *args)`. KeyboardInterrupt and SystemExit
    still pass."""

    def wrap(fn):
        @functools.wraps(fn)
        def guarded(*args):
            try:
                return fn(*args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # noqa: BLE001 - answered, see the docstring
                return failure(e, *args)
        return guarded

    return wrap


def _reader(read):
    """One of frames.lua's readers of a thread (framepeek.readers), given
    threads' addresses (Lua integers): its answer, or None when it cannot
    read them."""
    return _never_raise(lambda e, *threads: None)(read)


def _saved_pcs_many(session):
    """The Python half of state.lua's batch of saved pcs (framepeek.py's
    saved_pcs_many: bytes in, bytes out). Held by Lua, so it holds the
    session weakly (runtime.lua_callback)."""
    session = weakref.ref(session)

    @_never_raise(lambda e, *_: (None, f"the saved pcs cannot be read: {type(e).__name__}: {e}"))
    def many(batch, tables):
        return framepeek.saved_pcs_many(session(), to_bytes(batch), tables)

    return many


def _module(session):
    try:
        return session.companion(COMPANION)
    except LookupError:
        raise RuntimeError("this Session's state cannot be saved: persistence must see it "
                           "from its first line (make it with lua_kernel.persist."
                           "new_session())") from None


def capture(session) -> tuple[bytes, list[Issue], dict]:
    """(body, issues, counts) for the session's Lua state."""
    t0 = time.perf_counter()
    module = _module(session)
    lua = session.lua
    # The callbacks Lua holds (until its collector frees them) must not hold
    # the runtime: a cycle through it is freed by Python's cyclic collector,
    # which may drop what the state's finalizers call (runtime.lua_callback)
    table_from = _table_maker(session)

    def none_pickled(e, objs, n):
        reason = f"Python objects cannot be pickled: {type(e).__name__}: {e}"
        return None, table_from({i: reason for i in range(1, int(n) + 1)})

    @_never_raise(none_pickled)
    def pickle_many(objs, n):
        items = [objs[i] for i in range(1, int(n) + 1)]
        blob, failures = pyobjects.pickle_many(items)
        return blob, table_from({i + 1: r for i, r in failures.items()})

    try:
        addr, size, head, tail, lua_issues, lua_counts = module.capture(pickle_many)
    except module_of(lua).LuaError as e:
        raise RuntimeError(f"cannot serialize the Lua state: {e}") from None
    try:
        body = _copy_out(addr, size, head, tail, native.STRING_LAYOUTS[session.runtime.key])
        if body is None:
            body = to_bytes(module.take())
    finally:
        module.release()
    issues = [Issue(str(r["path"]), str(r["reason"])) for r in _lua_list(lua_issues)]
    counts = {str(k): v for k, v in lua_counts.items()}
    counts["bytes"] = len(body)
    counts["seconds"] = time.perf_counter() - t0
    return body, issues, counts


def apply(session, body: bytes) -> list[Issue]:
    """Bring a captured state into a fresh session; what could not come back
    is returned as issues. ValueError if the body is not a valid state."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"a Lua state body must be bytes, not {type(body).__name__}")
    body = bytes(body)
    module = _module(session)
    lua = session.lua
    table_from = _table_maker(session)     # (see capture)

    @_never_raise(lambda e, *_: (False, f"{type(e).__name__}: {e}"))
    def unpickle_at(offset, length):
        offset, length = int(offset), int(length)
        if offset < 0 or length < 0 or offset + length > len(body):
            return False, "the Python objects record is outside the body"
        ok, objs = pyobjects.unpickle_many(body[offset:offset + length])
        if not ok:
            return False, objs
        return True, table_from({i + 1: o for i, o in enumerate(objs) if o is not None})

    try:
        ok, result = module.apply(body, unpickle_at)
    except module_of(lua).LuaError as e:
        raise ValueError(f"malformed Lua state: {e}") from None
    if not ok:
        raise ValueError(str(result))
    return [Issue(str(r["path"]), str(r["reason"])) for r in _lua_list(result)]


def _table_maker(session):
    """lua.table_from of the session's runtime, holding the session weakly."""
    session = weakref.ref(session)
    return lambda items: session().lua.table_from(items)


def _lua_list(table) -> list:
    out = []
    i = 1
    while True:
        item = table[i]
        if item is None:
            return out
        out.append(item)
        i += 1


def _copy_out(addr: str, size: int, head: str, tail: str,
              layout: native.StringLayout) -> bytes | None:
    """The bytes of the Lua string at `addr` (see the module docstring), or
    None when they cannot be read and checked."""
    try:
        where = native.parse_address(str(addr))
    except ValueError:
        return None
    data = native.long_string_bytes(where, size, layout)
    if data is None or data[:64] != to_bytes(head) or data[-64:] != to_bytes(tail):
        return None
    return data
