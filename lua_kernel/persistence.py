"""When a notebook's Lua state is saved and brought back.

- Keyed by notebook: $JPY_SESSION_NAME (jupyter_server sets it to the
  notebook's path), else the path in a VS Code cell id, else `%session NAME`.
  Without a key nothing is saved or restored automatically.
- Saved after every cell: the serialization runs in the Lua thread (it must
  see a state no cell is changing); compression, signing and the write run in
  a writer thread, off the request path. Saved on shutdown and on SIGTERM.
- Restored when a kernel starts for a notebook whose last kernel shut down or
  died. After an explicit restart the kernel starts fresh, and says that
  `%restore` brings the previous state back.
"""
from __future__ import annotations

import os
import threading
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor

from .persist.snapshot import SnapshotError
from .persist.store import Store
from .session import Session, format_bytes, seal

KEY_ENV = "JPY_SESSION_NAME"
AUTOSAVE_ENV = "LUA_KERNEL_AUTOSAVE"
BEFORE_RESTART = "before-restart"
IMMEDIATE_CAPTURE = 0.1     # seconds: states this quick to capture save after every cell
BEFORE_RESET = "before-reset"


def key_from_cell_id(cell_id: str | None) -> str | None:
    """The notebook path in a VS Code cell id
    (vscode-notebook-cell:/home/me/nb.ipynb#W1sZmlsZQ%3D%3D)."""
    if not cell_id or not cell_id.startswith("vscode-notebook-cell:"):
        return None
    path = cell_id.split(":", 1)[1].split("#", 1)[0]
    return urllib.parse.unquote(path) or None


def ago(t: float) -> str:
    s = max(0, time.time() - t)
    for unit, size in (("day", 86400), ("hour", 3600), ("min", 60)):
        if s >= size:
            n = int(s // size)
            return f"{n} {unit}{'s' if n > 1 and unit != 'min' else ''} ago"
    return "just now"


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def describe_issues(issues, verb: str) -> str:
    if not issues:
        return ""
    lines = [f"Not {verb}:"] + [f"  {i.path}: {i.reason}" for i in issues]
    return "\n".join(lines)


class Persistence:
    """The autosave and restore policy of one kernel."""

    def __init__(self, key: str | None = None, store: Store | None = None):
        self.store = None if Store.disabled() else (store or Store())
        self.key = key if key is not None else os.environ.get(KEY_ENV) or None
        self.autosave = os.environ.get(AUTOSAVE_ENV, "1").strip().lower() not in (
            "0", "off", "no", "false")
        # after a failed restore nothing is written until the user restores or
        # saves on purpose, so the snapshots on disk are not pruned away
        self.protecting = False
        self.started_fresh_after_restart = False
        self.notice: str | None = None        # shown with the next cell's output
        self.last_saved = None                # store Entry
        self.last_error: str | None = None
        self.last_capture_seconds = 0.0
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="snapshot-writer")
        self._lock = threading.Lock()
        self._pending: list[Future] = []

    @property
    def active(self) -> bool:
        return self.store is not None and self.key is not None

    # -- saving --------------------------------------------------------------------

    def _write(self, body: bytes, counts: dict, issues: list, name: str | None,
               kernel: dict):
        data = seal(body, counts, notebook=self.key, kernel=kernel)
        try:
            entry = self.store.save(self.key, data, name)
        except Exception as e:  # noqa: BLE001 - reported, never fatal
            self.last_error = f"{type(e).__name__}: {e}"
            raise
        self.last_saved, self.last_error = entry, None
        entry.issues = issues
        return entry

    def autosave_now(self, session: Session, kernel: dict) -> None:
        """Called in the Lua thread after a cell: serialize now, write later."""
        if not (self.active and self.autosave) or self.protecting:
            return
        body, issues, counts = session.capture()
        self.last_capture_seconds = counts.get("seconds") or 0.0
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._writer.submit(
                self._write, body, counts, issues, None, kernel))

    def autosave_delay(self) -> float:
        """0: save right after each cell. A state that takes long to capture
        is saved once the kernel has been idle for twice that (at least 1 s),
        so running cells in quick succession never waits for it."""
        if self.last_capture_seconds < IMMEDIATE_CAPTURE:
            return 0.0
        return max(1.0, 2 * self.last_capture_seconds)

    def save(self, session: Session, kernel: dict, name: str | None = None):
        """Serialize and write now; returns the store entry."""
        if not self.active:
            raise SnapshotError(self.why_inactive())
        body, issues, counts = session.capture()
        self.wait()
        entry = self._write(body, counts, issues, name, kernel)
        self.protecting = False
        return entry

    def wait(self, timeout: float | None = 60) -> None:
        """Let pending writes finish (shutdown, SIGTERM, explicit saves)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for f in pending:
            try:
                f.result(timeout)
            except Exception:  # noqa: BLE001 - already recorded in last_error
                pass

    def why_inactive(self) -> str:
        if self.store is None:
            return "snapshots are off ($LUA_KERNEL_SNAPSHOTS=off)"
        return ("this notebook has no session key yet: name one with %session NAME "
                "(Jupyter and VS Code notebooks get one automatically)")

    # -- restoring -----------------------------------------------------------------

    def load(self, name: str | None = None) -> bytes | None:
        found = self.store.load(self.key, name) if self.active else None
        return found[1] if found else None

    def restore(self, make: callable, name: str | None = None) -> Session | None:
        """A Session restored from this notebook's newest (or named) snapshot,
        or None if there is none. Raises SnapshotError for unusable data."""
        data = self.load(name)
        if data is None:
            return None
        t0 = time.perf_counter()
        session = make(data)
        session.restore_seconds = time.perf_counter() - t0
        return session

    def at_start(self, make: callable) -> Session | None:
        """What a new kernel does first: restore, unless it was restarted."""
        if not self.active:
            return None
        if self.store.take_restart_mark(self.key):
            self.started_fresh_after_restart = True
            found = self.store.load(self.key, BEFORE_RESTART)
            if found:
                self.notice = (f"Restarted with a fresh Lua state. The state from before the "
                               f"restart ({when(found[0].modified)}) is kept: %restore "
                               f"brings it back.")
            return None
        try:
            session = self.restore(make)
        except SnapshotError as e:
            self.notice = (f"Could not restore this notebook's saved Lua state: {e}\n"
                           f"Starting fresh; the snapshots stay where they are "
                           f"({self.store.describe()}), and nothing is saved until you "
                           f"%restore one (see %snapshots) or %save.")
            self.protecting = True
            return None
        if session is not None:
            self.notice = self.restore_report(session)
        return session

    def restore_name(self, name: str | None) -> str | None:
        """%restore with no name after a restart means the pre-restart state."""
        if name is None and self.started_fresh_after_restart:
            return BEFORE_RESTART
        return name

    @staticmethod
    def restore_report(session: Session) -> str:
        info = session.restored_from
        c = info.counts
        parts = [f"{c[k]:,} {one if c[k] == 1 else many}" for k, one, many in (
            ("tables", "table", "tables"), ("functions", "function", "functions"),
            ("threads", "coroutine", "coroutines")) if c.get(k)]
        took = getattr(session, "restore_seconds", 0) * 1000
        text = (f"Restored the Lua state saved {when(info.created)} ({ago(info.created)}): "
                f"{', '.join(parts) or 'no tables or functions'}; "
                f"{format_bytes(info.size)}, restored in {took:.0f} ms.")
        more = describe_issues(session.restore_issues, "restored")
        return text + ("\n" + more if more else "")

    def shutdown(self, session: Session, kernel: dict, restart: bool) -> None:
        """Save the final state (also when autosave is off); after an explicit
        restart, the next kernel starts fresh."""
        try:
            if self.active and not self.protecting:
                self.save(session, kernel, BEFORE_RESTART if restart else None)
                if restart:
                    self.store.mark_restart(self.key)
        finally:
            self.wait()
            self._writer.shutdown(wait=True)
