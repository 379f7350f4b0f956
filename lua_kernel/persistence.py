"""When a notebook's Lua state is saved and brought back.

- Keyed by notebook: $JPY_SESSION_NAME (jupyter_server sets it to the
  notebook's path), else the path in a VS Code cell id, else `%session NAME`.
  Without a key nothing is saved or restored automatically.
- The durability contract: a cell's state is committed before its reply.
  A small state (one whose recent saves took under COMMIT_LIMIT) is captured,
  sealed and handed to the OS in the Lua thread before the reply goes out,
  so a kernel killed at any moment comes back with every acknowledged cell;
  the fsync that protects against a machine crash follows in the writer
  thread (newest file only: older ones are superseded). A bigger state is
  captured after the reply whenever the writer is free, and written and
  fsynced in the writer thread; cells acknowledged meanwhile wait for the
  next save, so the window in which they can be lost is one save long.
- One writer per notebook (store.Lease); a second kernel restores but writes
  nothing until the user chooses (%session takeover | NAME).
- Nothing fails silently: a failed save is told once per run of failures in
  the cell's output, logged, and shown by %session.
- Restored when a kernel starts for a notebook whose last kernel shut down or
  died. After an explicit restart the kernel starts fresh, and says that
  `%restore` brings the previous state back.
"""
from __future__ import annotations

import logging
import os
from collections import deque
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .persist import Restored, capture, seal
from .persist.snapshot import SnapshotError, info_of, load_secret
from .persist.store import SUFFIX, Entry, Store
from .session import Session, format_bytes

KEY_ENV = "JPY_SESSION_NAME"
AUTOSAVE_ENV = "LUA_KERNEL_AUTOSAVE"
BEFORE_RESTART = "before-restart"
BEFORE_RESET = "before-reset"
RESTART_MARK = "restart"        # the last kernel was restarted on purpose
ENDED_MARK = "ended"            # the last kernel ended itself (an interrupt that never landed)
COMMIT_LIMIT = 0.05             # seconds: states this quick to save commit before the reply
RECENT_SAVES = 5                # ... judged by the quickest of the last few saves, so that
                                # a busy machine does not make a small state look big

_log = logging.getLogger("lua_kernel.persistence")


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


def describe_holder(h: dict) -> str:
    since = f", since {when(h['since'])}" if h.get("since") else ""
    return f"kernel process {h.get('pid', '?')} on {h.get('host', '?')}{since}"


class Persistence:
    """The autosave and restore policy of one kernel."""

    def __init__(self, key: str | None = None, store: Store | None = None,
                 log: logging.Logger | None = None,
                 request_capture: Callable[[], None] | None = None,
                 runtime: str | None = None):
        """`request_capture()` asks the kernel to call capture_due() in its Lua
        thread when it is free (a big state is saved between cells);
        `runtime` is the kernel's Lua (lua_kernel.runtime), named in every
        snapshot."""
        self.runtime = runtime
        self.store = None if Store.disabled() else (store or Store())
        self.key = key if key is not None else os.environ.get(KEY_ENV) or None
        self.autosave = os.environ.get(AUTOSAVE_ENV, "1").strip().lower() not in (
            "0", "off", "no", "false")
        self.log = log or _log
        # after a failed restore nothing is written until the user restores or
        # saves on purpose, so the snapshots on disk are not pruned away
        self.protecting = False
        self.read_only: str | None = None     # why this kernel may not write here
        self.lease = None
        self.started_fresh_after_restart = False
        self.notice: str | None = None        # shown with the next cell's output
        self.last_saved: Entry | None = None
        self.save_issues: list = []           # what the last save could not keep
        self.failure: tuple[str, float] | None = None   # (what went wrong, since)
        self._told: list[str] = []            # messages for the next cell's stderr
        self._save_times: deque[float] = deque([0.0], maxlen=RECENT_SAVES)
        self.restore_seconds = 0.0
        self.restored: Restored | None = None  # the last restore: its issues and header
        # cell generations: every cell bumps `cells`; `saved` is the newest on disk
        self.cells = 0
        self.saved = 0
        self.request_capture = request_capture
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="snapshot-writer")
        self._lock = threading.Lock()
        self._in_flight = 0                   # big-state writes queued or running
        self._newest_write = 0
        self.skipped: list[str] = []          # snapshots the last restore passed over
        self._secret: bytes | None = None
        self._closed = False

    @property
    def active(self) -> bool:
        return self.store is not None and self.key is not None

    @property
    def save_seconds(self) -> float:
        """How long a save of this state takes: the quickest recent one (a
        busy machine slows single saves down), unless the last one was
        clearly big (a cell made the state big just now)."""
        last = self._save_times[-1]
        return last if last >= 10 * COMMIT_LIMIT else min(self._save_times)

    @property
    def writable(self) -> bool:
        return self.active and not self.protecting and self.read_only is None

    # -- the store and the lease ---------------------------------------------------

    def open(self) -> None:
        """Take this notebook's lease and tidy its folder. A store that cannot
        be written makes this kernel read-only; one that cannot be reached at
        all turns persistence off; the kernel starts either way."""
        if not self.active:
            return
        if self.lease is not None:
            self.lease.end()                # another key now: let the old one go
        self.lease, self.read_only = self.store.lease(self.key), None
        try:
            holder = self.lease.acquire()
        except OSError as e:
            where = self.store.describe()
            if self.store.readable(self.key):
                self.read_only = f"the snapshot store cannot be written ({e})"
                self._tell(f"Snapshots: {where} cannot be written ({e}). This kernel restores "
                           f"but saves nothing; its state will not survive it.")
            else:
                self._tell(f"Snapshots are off for this kernel: {where} cannot be used ({e}). "
                           f"Nothing is saved or restored.")
                self.store = None
            self.log.error("lua_kernel snapshots: %s: %s", where, e)
            return
        if holder is not None:
            self.read_only = f"another kernel holds this notebook ({describe_holder(holder)})"
            self._tell(f"Another kernel is saving this notebook's Lua state "
                       f"({describe_holder(holder)}). This kernel restored the newest state "
                       f"but saves nothing over it. %session takeover makes this kernel "
                       f"the one that saves; %session NAME saves under another name.")
            return
        try:
            self.store.clean_partials(self.key)
        except OSError as e:
            self.log.warning("could not remove unfinished snapshot files: %s", e)

    def take_over(self) -> str:
        before = self.lease.take_over() if self.lease else None
        self.read_only = None
        return describe_holder(before) if before else "no other kernel"

    def _may_write(self) -> bool:
        if self.lease is not None and not self.lease.mine():
            h = self.lease.holder() or {}
            self.read_only = f"another kernel took this notebook over ({describe_holder(h)})"
            self._tell(f"Another kernel took over saving this notebook's Lua state "
                       f"({describe_holder(h)}); this kernel no longer saves. "
                       f"%session takeover takes it back; %session NAME saves under "
                       f"another name.")
            return False
        return True

    # -- telling the user ----------------------------------------------------------

    def _tell(self, text: str) -> None:
        with self._lock:
            self._told.append(text)

    def take_messages(self) -> list[str]:
        """What the user must hear, for the cell's stderr."""
        with self._lock:
            told, self._told = self._told, []
        return told

    def _failed(self, e: BaseException, what: str) -> None:
        reason = f"{type(e).__name__}: {e}"
        first = self.failure is None
        self.failure = (f"{what}: {reason}", self.failure[1] if self.failure else time.time())
        self.log.error("lua_kernel: %s failed: %s (store %s)", what, reason,
                       self.store.describe() if self.store else "-")
        if first:
            self._tell(f"Could not save the Lua state ({what}) in {self.store.describe()}: "
                       f"{reason}. The last good snapshot is kept; this message is not "
                       f"repeated while saving keeps failing (see %session).")

    def _succeeded(self, entry: Entry, generation: int) -> None:
        with self._lock:
            self.last_saved = entry
            self.saved = max(self.saved, generation)
        if self.failure is not None:
            self.failure = None
            self._tell(f"Saving works again: the Lua state was saved at "
                       f"{when(entry.modified)}.")
            self.log.warning("lua_kernel: saving works again")

    # -- saving --------------------------------------------------------------------

    def after_cell(self, session: Session, kernel: dict) -> None:
        """In the Lua thread, before the cell's reply: commit a small state now;
        a bigger one is captured as soon as the writer is free (request_capture)."""
        self.cells += 1
        if not (self.writable and self.autosave):
            return
        if self.save_seconds >= COMMIT_LIMIT or self._in_flight:
            if self.request_capture is not None:
                self.request_capture()
            return
        t0 = time.perf_counter()
        try:
            body, issues, counts = capture(session)
            if not self._may_write():
                return
            data = self._seal(body, counts, kernel)
            entry = self.store.save(self.key, data, durable=False, prune=False)
        except Exception as e:  # noqa: BLE001 - told, never fatal
            self._failed(e, "autosave")
            return
        self._save_times.append(time.perf_counter() - t0)
        self.save_issues = issues
        self._succeeded(entry, self.cells)
        self._submit(self._settle, entry, big=False)

    def capture_due(self, session: Session, kernel: dict) -> None:
        """In the Lua thread, between cells: capture a big state unless a
        newer one is on disk already or the writer is still busy (it asks
        again when done)."""
        if not (self.writable and self.autosave) or self.saved >= self.cells \
                or self._in_flight:
            return
        generation = self.cells
        t0 = time.perf_counter()
        try:
            body, issues, counts = capture(session)
        except Exception as e:  # noqa: BLE001
            self._failed(e, "autosave")
            return
        self._submit(self._write_big, body, counts, issues, kernel, generation, t0, big=True)

    def _seal(self, body: bytes, counts: dict, kernel: dict) -> bytes:
        """Sign with the user's secret, read once per kernel (finding and
        reading the key file cost 0.3 ms, on every cell's request path)."""
        if self._secret is None:
            self._secret = load_secret()
        return seal(body, counts, notebook=self.key, kernel=kernel, key=self._secret,
                    runtime=self.runtime)

    def _submit(self, fn, *args, big: bool) -> None:
        """Hand work to the writer thread. Big-state writes are counted: while
        one is under way, no other state is committed (the newest snapshot on
        disk must be the newest state)."""
        with self._lock:
            if self._closed:
                return
            self._in_flight += big
            self._newest_write += 1
            self._writer.submit(self._run_write, fn, self._newest_write, big, *args)

    def _run_write(self, fn, number, big, *args) -> None:
        try:
            fn(number, *args)
        finally:
            with self._lock:
                self._in_flight -= big
                again = big and self._in_flight == 0 and self.saved < self.cells \
                    and not self._closed
            if again and self.request_capture is not None:
                self.request_capture()

    def _settle(self, number: int, entry: Entry) -> None:
        """After a commit: fsync the newest snapshot (older ones are
        superseded, so only the newest of a burst is synced), prune."""
        if number != self._newest_write:
            return
        try:
            self.store.sync(entry)
            self.store.prune(self.key)
        except Exception as e:  # noqa: BLE001
            self._failed(e, "making the autosave durable")

    def _write_big(self, number, body, counts, issues, kernel, generation, t0) -> None:
        try:
            if not self._may_write():
                return
            data = self._seal(body, counts, kernel)
            entry = self.store.save(self.key, data)
        except Exception as e:  # noqa: BLE001
            self._failed(e, "autosave")
            return
        self._save_times.append(time.perf_counter() - t0)
        self.save_issues = issues
        self._succeeded(entry, generation)

    def save(self, session: Session, kernel: dict, name: str | None = None) -> Entry:
        """Serialize and write now, durably; returns the store entry. Raises
        SnapshotError with what went wrong and where."""
        if not self.active:
            raise SnapshotError(self.why_inactive())
        if self.read_only:
            raise SnapshotError(f"this kernel does not save: {self.read_only}")
        body, issues, counts = capture(session)
        self.wait()
        if not self._may_write():
            raise SnapshotError(f"this kernel does not save: {self.read_only}")
        try:
            entry = self.store.save(self.key, self._seal(body, counts, kernel), name)
        except OSError as e:
            self._failed(e, f"%save {name or ''}".strip())
            raise SnapshotError(f"could not write to {self.store.describe()}: "
                                f"{type(e).__name__}: {e}") from None
        self.save_issues = issues
        self._succeeded(entry, self.cells)
        self.protecting = False
        return entry

    def wait(self, timeout: float = 60) -> None:
        """Let pending writes finish (shutdown, SIGTERM, explicit saves)."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.005)

    def why_inactive(self) -> str:
        if self.store is None:
            return "snapshots are off for this kernel"
        return ("this notebook has no session key yet: name one with %session NAME "
                "(Jupyter and VS Code notebooks get one automatically)")

    def status(self) -> str:
        """%session's answer."""
        p = self
        if p.store is None:
            return p.why_inactive()
        if p.key is None:
            return (f"No session name yet; snapshots would go to {p.store.describe()}. "
                    f"Set one with %session NAME.")
        lines = [f"Session '{p.key}' in {p.store.describe()}; autosave "
                 f"{'on' if p.autosave else 'off'}"
                 + (f"; last saved {when(p.last_saved.modified)}" if p.last_saved else "")
                 + "."]
        if p.failure:
            lines.append(f"Saving is FAILING since {when(p.failure[1])}: {p.failure[0]}")
        if p.read_only:
            lines.append(f"This kernel saves nothing: {p.read_only}. %session takeover "
                         f"makes it the one that saves; %session NAME saves under another "
                         f"name.")
        if p.protecting:
            lines.append("Nothing is saved until you %restore or %save (the saved state "
                         "could not be restored, or belongs to a session you attached to).")
        if p.saved < p.cells and p.writable and p.autosave:
            lines.append(f"{p.cells - p.saved} cell(s) not saved yet (a save is under way).")
        return "\n".join(lines)

    # -- restoring -----------------------------------------------------------------

    def restore(self, make: Callable[[bytes], Restored], name: str | None = None,
                *, only_own: bool = False) -> Session | None:
        """A Session restored from this notebook's newest (or named) snapshot,
        or None if there is none. Raises SnapshotError for unusable data.
        A newest snapshot that cannot be used (cut short by a machine crash,
        or one of another notebook) is passed over for the one before it,
        and the notice says so."""
        entries = self.store.list(self.key) if self.active else []
        if name is not None:
            entries = [e for e in entries if e.name == name]
        skipped: list[str] = []
        first_error: SnapshotError | None = None
        for entry in reversed(entries):
            data = self.store.read(entry)
            if data is None:
                continue
            try:
                if only_own:
                    owner = info_of(data).notebook
                    if owner and owner != self.key:
                        skipped.append(f"'{entry.name}' belongs to another notebook "
                                       f"({owner}); %restore {entry.name} loads it anyway")
                        continue
                session = self._restore_from(make, data)
            except SnapshotError as e:
                first_error = first_error or e
                skipped.append(f"'{entry.name}' cannot be restored: {e}")
                continue
            self.skipped = skipped
            return session
        self.skipped = skipped
        if first_error is not None:
            raise first_error
        return None

    def _restore_from(self, make: Callable[[bytes], Restored], data: bytes) -> Session:
        t0 = time.perf_counter()
        restored = make(data)
        self.restore_seconds = time.perf_counter() - t0
        self.restored = restored
        return restored.session

    def at_start(self, make: Callable[[bytes], Restored]) -> Session | None:
        """What a new kernel does first: restore, unless it was restarted."""
        if not self.active:
            return None
        self.open()
        if not self.active:
            return None
        ended = self._take_mark(ENDED_MARK)
        if self._take_mark(RESTART_MARK) is not None:
            self.started_fresh_after_restart = True
            found = self.store.load(self.key, BEFORE_RESTART)
            if found:
                self.notice = (f"Restarted with a fresh Lua state. The state from before the "
                               f"restart ({when(found[0].modified)}) is kept: %restore "
                               f"brings it back.")
            return None
        try:
            session = self.restore(make, only_own=True)
        except SnapshotError as e:
            self.notice = (f"Could not restore this notebook's saved Lua state: {e}\n"
                           f"Starting fresh; the snapshots stay where they are "
                           f"({self.store.describe()}), and nothing is saved until you "
                           f"%restore one (see %snapshots) or %save.")
            self.protecting = True
            return None
        notes = [ended] if ended else []
        if self.skipped:
            notes += ["Passed over: " + s for s in self.skipped]
        if session is not None:
            notes.append(self.restore_report())
        self.notice = "\n".join(notes) or None
        return session

    def _take_mark(self, name: str) -> str | None:
        try:
            return self.store.take_mark(self.key, name)
        except OSError as e:
            self.log.warning("could not read the %s mark: %s", name, e)
            return None

    def mark_ended(self, why: str) -> None:
        """Before the kernel ends itself: tell the next kernel what happened."""
        if not self.writable:
            return
        lost = self.cells - self.saved
        text = (f"The previous kernel was ended on purpose at {when(time.time())}: {why}. "
                + ("Its state after the last completed cell comes back here."
                   if lost <= 1 else
                   f"The state saved before its last {lost - 1} completed cell(s) comes "
                   f"back here (a bigger state's save was still under way)."))
        try:
            self.store.mark(self.key, ENDED_MARK, text)
        except OSError as e:
            self.log.error("could not leave a note for the next kernel: %s", e)

    def restore_chosen(self, make: Callable[[bytes], Restored], name: str | None) -> Session:
        """%restore: the newest snapshot, a named one, or a .luasnap file the
        user received. No name right after a restart means the pre-restart
        state. Raises SnapshotError when there is nothing usable."""
        if name is None and self.started_fresh_after_restart:
            name = BEFORE_RESTART
        self.wait()
        self.skipped = []
        if name and name.endswith(SUFFIX) and os.path.isfile(name):
            session = self._restore_from(make, Path(name).read_bytes())
        else:
            session = self.restore(make, name)
        if session is None:
            what = f"named '{name}'" if name else "at all"
            raise SnapshotError(f"this notebook has no saved state {what} (see %snapshots)")
        self.started_fresh_after_restart = self.protecting = False
        return session

    def attach(self, key: str, has_state: bool) -> str:
        """%session NAME: save under another key from now on. Returns "new"
        (nothing saved under it yet), "restore" (the caller brings the saved
        state in: this kernel has nothing to lose) or "ask" (this kernel has
        state of its own: nothing is written until the user restores or saves)."""
        self.key, self.autosave, self.protecting = key, True, False
        self.open()
        if self.store.load(key) is None:
            return "new"
        if not has_state:
            return "restore"
        self.protecting = True
        return "ask"

    def before_reset(self, session: Session, kernel: dict, delete: bool) -> str:
        """%reset: keep the old state as 'before-reset', or delete the
        notebook's snapshots; says which."""
        if not self.writable:
            return "Nothing was saved (snapshots are not active for this notebook)."
        if delete:
            self.wait()
            n = self.store.delete(self.key)
            return f"The saved state of this notebook is deleted ({n} snapshots)."
        self.save(session, kernel, BEFORE_RESET)
        return (f"The previous state is kept as '{BEFORE_RESET}': %restore {BEFORE_RESET} "
                f"brings it back.")

    def stop_autosave(self) -> None:
        """%session off: nothing is saved unless asked (%save, shutdown)."""
        self.autosave = False

    def use_key(self, key: str) -> None:
        """The notebook's key, learnt from the frontend after start (VS Code)."""
        self.key = key

    def take_notice(self) -> str | None:
        """What the kernel shows with the next cell's output, once."""
        notice, self.notice = self.notice, None
        return notice

    def restore_report(self) -> str:
        """What the last restore brought back (and what it could not)."""
        info = self.restored.info
        c = info.counts
        parts = [f"{c[k]:,} {one if c[k] == 1 else many}" for k, one, many in (
            ("tables", "table", "tables"), ("functions", "function", "functions"),
            ("threads", "coroutine", "coroutines")) if c.get(k)]
        text = (f"Restored the Lua state saved {when(info.created)} ({ago(info.created)}): "
                f"{', '.join(parts) or 'no tables or functions'}; "
                f"{format_bytes(info.size)}, restored in {self.restore_seconds * 1000:.0f} ms.")
        if self.key and info.notebook and info.notebook != self.key:
            text += f"\nNote: this snapshot was saved by another notebook ({info.notebook})."
        more = describe_issues(self.restored.issues, "restored")
        return text + ("\n" + more if more else "")

    def shutdown(self, session: Session, kernel: dict, restart: bool) -> None:
        """Save the final state (also when autosave is off); after an explicit
        restart, the next kernel starts fresh."""
        try:
            if self.writable:
                self.save(session, kernel, BEFORE_RESTART if restart else None)
                if restart:
                    self.store.mark(self.key, RESTART_MARK, str(time.time()))
        finally:
            self.close()

    def close(self) -> None:
        self.wait()
        with self._lock:
            self._closed = True
        self._writer.shutdown(wait=True)
        if self.lease is not None:
            self.lease.end()
