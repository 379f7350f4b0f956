"""Persistence: a Session's Lua state as signed bytes, and back.

The room's parts: snapshot.py (the envelope: compression, signature,
header), store.py (where snapshots live), state.py with lua/ (the
serializer) and framepeek.py (saved pcs of suspended coroutines). This
module is its door for a Session:

    >>> from lua_kernel import persist
    >>> s = persist.new_session()
    >>> _ = s.execute("t = {1, 2, 3}; function f() return #t end")
    >>> saved = persist.snapshot_of(s)
    >>> back = persist.restore(saved.data)
    >>> back.session.execute("return f()"), back.issues
    ((3,), [])

A Session made plainly (Session()) carries none of this and cannot be saved:
persistence must see a Lua state from its first line.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import native
from ..runtime import Runtime, get_runtime
from ..session import Session
from . import snapshot as envelope
from . import state
from .snapshot import SnapshotError, SnapshotInfo
from .state import Issue

__all__ = ["new_session", "capture", "seal", "snapshot_of", "restore", "Saved", "Restored",
           "Issue", "SnapshotError", "SnapshotInfo"]


# Why a runtime's state cannot be saved (yet); absent: it can.
# (The serializer runs on LuaJIT; the kernel's lua/session.lua does not yet,
# and a restore needs a session to restore into.)
def new_session(**kwargs) -> Session:
    """A Session whose state can be saved (keyword arguments as for
    Session()): the serializer attaches to every fresh Lua state it starts."""
    companions = dict(kwargs.pop("companions", None) or {})
    companions[state.COMPANION] = state.attach
    return Session(companions=companions, **kwargs)


def capture(session: Session) -> tuple[bytes, list[Issue], dict]:
    """Serialize the Lua state: (body, issues, counts). Synchronous and fast;
    sealing (compression, signing) can happen in another thread."""
    return state.capture(session)


def seal(body: bytes, counts: dict, *, notebook: str = "", kernel: dict | None = None,
         key: bytes | None = None, runtime: str | Runtime | None = None) -> bytes:
    """Compress and sign a body from capture() of a session of `runtime`
    (Lua 5.4 by default), with the user's secret, or `key`."""
    release = native.lua_release(get_runtime(runtime).module)
    counts = dict(counts)
    seconds = counts.pop("seconds", None)
    return envelope.seal(body, notebook=notebook, lua_version=release,
                         counts=counts, timings={"serialize": seconds}, kernel=kernel,
                         key=key)


class Saved(NamedTuple):
    data: bytes            # the signed, compressed snapshot
    issues: list[Issue]    # what could not be saved, by path (restored as nil)


def snapshot_of(session: Session, *, notebook: str = "", kernel: dict | None = None,
                key: bytes | None = None) -> Saved:
    """The whole Lua state as a snapshot; anything that could not be saved
    is listed, by path, in `issues`."""
    body, issues, counts = capture(session)
    return Saved(seal(body, counts, notebook=notebook, kernel=kernel, key=key,
                      runtime=session.runtime), issues)


class Restored(NamedTuple):
    session: Session       # a new Session that behaves like the saved one
    issues: list[Issue]    # what could not be brought back
    info: SnapshotInfo     # the snapshot's header


def restore(data: bytes, **kwargs) -> Restored:
    """A new Session (keyword arguments as for Session(), `runtime` included)
    from a snapshot. Unsigned, altered, truncated or foreign data, and a
    snapshot of another runtime, raise SnapshotError."""
    runtime = get_runtime(kwargs.get("runtime"))
    info, body = envelope.open_snapshot(data, lua_version=native.lua_release(runtime.module))
    session = new_session(**kwargs)
    try:
        issues = state.apply(session, body)
    except ValueError as e:
        raise SnapshotError(f"the snapshot's Lua state cannot be read: {e}") from None
    return Restored(session, issues, info)
