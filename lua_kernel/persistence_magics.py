"""The persistence room's magics: %save %restore %snapshots %session, and
what %reset keeps.

The kernel hands them a Magics registry and a small Host (the running
Session, how to make one from snapshot bytes, how to switch to one, and the
kernel's own part of a snapshot); every change of persistence state happens
in Persistence's methods.
"""
from __future__ import annotations

import time
from typing import Protocol

from .magics import MagicError, Magics
from .persist import Restored
from .persist.snapshot import SnapshotError
from .persistence import Persistence, describe_issues, when
from .session import Session, format_bytes


class Host(Protocol):
    """What the magics need from the kernel."""

    lua_session: Session

    def make_session(self, data: bytes) -> Restored: ...

    def use_session(self, session: Session) -> None: ...

    def snapshot_extras(self) -> dict: ...


class PersistenceMagics:
    def __init__(self, persistence: Persistence, magics: Magics, host: Host):
        self.p, self.magics, self.host = persistence, magics, host
        for name, usage, help_, fn in (
            ("save", "%save [NAME]", "save the Lua state now (as NAME: kept until deleted)",
             self.save),
            ("restore", "%restore [NAME | FILE.luasnap]",
             "bring back the saved state (newest, NAME, or a file)", self.restore),
            ("snapshots", "%snapshots", "list this notebook's saved states", self.snapshots),
            ("session", "%session [NAME | off | takeover]",
             "show or set the name this notebook's state is saved under; takeover: save "
             "here although another kernel holds the notebook", self.session),
        ):
            magics.register(name, usage, help_, fn)
        magics.extend_reset(self.before_reset, "%reset [--delete]",
                            "the old state is kept as 'before-reset'; --delete removes "
                            "this notebook's snapshots")

    def out(self, text: str) -> None:
        self.magics.out(text)

    def _active(self, magic: str) -> None:
        if not self.p.active:
            raise MagicError(f"%{magic}: {self.p.why_inactive()}")

    def save(self, args: str) -> None:
        t0 = time.perf_counter()
        try:
            entry = self.p.save(self.host.lua_session, self.host.snapshot_extras(), args or None)
        except (SnapshotError, ValueError) as e:
            raise MagicError(f"%save: {e}") from None
        took = (time.perf_counter() - t0) * 1000
        self.out(f"Saved the Lua state as '{entry.name}' ({format_bytes(entry.size)}, "
                 f"{took:.0f} ms) in {self.p.store.describe()}.")
        issues = describe_issues(self.p.save_issues, "saved")
        if issues:
            self.out(issues)

    def restore(self, args: str) -> None:
        self._active("restore")
        try:
            session = self.p.restore_chosen(self.host.make_session, args or None)
        except SnapshotError as e:
            raise MagicError(f"%restore: {e}\nThe current Lua state is unchanged.") from None
        self.host.use_session(session)
        for note in self.p.skipped:
            self.out("Passed over: " + note)
        self.out(self.p.restore_report())

    def snapshots(self, args: str) -> None:
        self._active("snapshots")
        entries = self.p.store.list(self.p.key)
        if not entries:
            self.out("No saved states for this notebook yet.")
            return
        lines = [f"Saved states of {self.p.key} in {self.p.store.describe()}:"]
        lines += [f"  {e.name:<32} {when(e.modified)}  {format_bytes(e.size):>10}"
                  for e in reversed(entries)]
        self.out("\n".join(lines))

    def session(self, args: str) -> None:
        arg = args.strip()
        if arg.lower() == "off":
            self.p.stop_autosave()
            self.out("Autosave is off for this kernel; %save still saves on request.")
        elif arg.lower() == "takeover":
            self._active("session")
            before = self.p.take_over()
            self.out(f"This kernel now saves session '{self.p.key}' (it was held by "
                     f"{before}, which stops saving at its next save).")
        elif arg:
            if self.p.store is None:
                raise MagicError(f"%session: {self.p.why_inactive()}")
            self._attach(arg)
        else:
            self.out(self.p.status())

    def _attach(self, key: str) -> None:
        has_state = bool(self.host.lua_session.user_globals())
        outcome = self.p.attach(key, has_state)
        if outcome == "new":
            self.out(f"This notebook's state is now saved as session '{key}'.")
        elif outcome == "restore":      # nothing to lose here: the saved session comes in
            session = self.p.restore(self.host.make_session)
            self.host.use_session(session)
            self.out(self.p.restore_report())
        else:
            self.out(f"Session '{key}' has a saved state: %restore brings it back, %save "
                     f"replaces it with this one (nothing is saved until you choose).")

    def before_reset(self, args: str) -> str:
        """%reset's persistence part: what happened to the old state."""
        delete = args in ("--delete", "-d")
        if args and not delete:
            raise MagicError("usage: %reset [--delete]")
        try:
            return self.p.before_reset(self.host.lua_session, self.host.snapshot_extras(), delete)
        except SnapshotError as e:
            raise MagicError(f"%reset: the old state could not be kept ({e}); nothing was "
                             f"reset. %reset --delete resets without keeping it.") from None
