"""Where snapshots live: a local directory by default, or any fsspec URL.

Layout under the root, one folder per notebook key:

    <root>/<slug of the key>/
        key                      the notebook key itself (the slug is lossy)
        auto-<time>.luasnap      autosaves; the newest `keep` are kept
        <name>.luasnap           named saves (%save NAME), never pruned
        restart, ended           marks left for the next kernel (see Persistence)
        lease, lease.lock        who may write here (see Lease)

Writes are atomic: a temporary file is written and renamed into place (on
object stores: a put of a temporary name and a move). The previous snapshot
stays until the new one is complete, so a crash mid-write loses nothing; a
temporary file left by a killed writer is removed by the next lease holder.
A write may be *handed to the OS* only (`durable=False`: it survives the
death of the process, not of the machine) and made durable later with
`sync`, so that the kernel can commit a cell's state before its reply and
fsync after it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".luasnap"
AUTO_PREFIX = "auto-"
STORE_ENV = "LUA_KERNEL_SNAPSHOTS"      # directory or fsspec URL; "off" disables
KEEP_ENV = "LUA_KERNEL_SNAPSHOT_KEEP"
DEFAULT_KEEP = 3
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PARTIAL = ".partial"                    # temporary files: '.partial-*' locally, '*.partial' remote


def default_root() -> str:
    from jupyter_core.paths import jupyter_data_dir

    return str(Path(jupyter_data_dir()) / "lua_kernel" / "snapshots")


def slug(key: str) -> str:
    """A folder name for a notebook key: readable, short, collision-free."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", key.rsplit("/", 1)[-1])[:60].strip("._") or "notebook"
    return f"{tail}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def check_name(name: str) -> str:
    if not _NAME_OK.match(name) or name.startswith(AUTO_PREFIX):
        raise ValueError(f"snapshot names use letters, digits, '.', '_' and '-' "
                         f"(and do not start with '{AUTO_PREFIX}'): {name!r}")
    return name


@dataclass
class Entry:
    key: str        # notebook key
    name: str       # file name without the suffix
    size: int
    modified: float
    path: str = ""

    @property
    def auto(self) -> bool:
        return self.name.startswith(AUTO_PREFIX)


class Store:
    """Snapshots of every notebook, in one root (directory or URL)."""

    def __init__(self, root: str | None = None, keep: int | None = None):
        root = root or os.environ.get(STORE_ENV) or default_root()
        self.root = root.rstrip("/")
        self.keep = max(1, int(keep or os.environ.get(KEEP_ENV) or DEFAULT_KEEP))
        self._keyed: set[str] = set()      # folders whose key file is written
        self.local = "://" not in self.root or self.root.startswith("file://")
        if self.local:
            self.root = self.root.removeprefix("file://")
            self.fs = None
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.root)

    @staticmethod
    def disabled() -> bool:
        return os.environ.get(STORE_ENV, "").strip().lower() in ("off", "none", "0", "false")

    def describe(self) -> str:
        if self.local:
            return self.root
        proto = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{proto}://{self.root}"

    # -- primitive file operations (local or fsspec) -----------------------------

    def path(self, *parts: str) -> str:
        """The store's path (or URL) of a file inside it."""
        return "/".join([self.root, *parts])

    def write_file(self, path: str, data: bytes, durable: bool = True) -> None:
        """Atomic: the file appears whole or not at all. durable=False leaves
        the fsync to `sync` (the bytes survive the process, not the machine)."""
        if not self.local:
            tmp = path + PARTIAL
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=PARTIAL + "-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if durable:
            _fsync_path(folder)

    def sync(self, entry: Entry) -> None:
        """Make a snapshot written with durable=False survive a machine crash."""
        if self.local and entry.path:
            try:
                _fsync_path(entry.path)
            except FileNotFoundError:      # pruned meanwhile: nothing to keep
                return
            _fsync_path(os.path.dirname(entry.path))

    def read_file(self, path: str) -> bytes | None:
        try:
            if self.local:
                return Path(path).read_bytes()
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def remove_file(self, path: str) -> bool:
        try:
            if self.local:
                os.unlink(path)
            else:
                self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False

    def _listdir(self, path: str) -> list[tuple[str, int, float]]:
        """(name, size, modified) of the files directly in path."""
        out = []
        try:
            if self.local:
                with os.scandir(path) as it:
                    for e in it:
                        if e.is_file():
                            st = e.stat()
                            out.append((e.name, st.st_size, st.st_mtime))
            else:
                for info in self.fs.ls(path, detail=True):
                    if info.get("type") == "file":
                        mtime = info.get("mtime") or info.get("LastModified") or 0
                        if hasattr(mtime, "timestamp"):
                            mtime = mtime.timestamp()
                        out.append((info["name"].rsplit("/", 1)[-1], info.get("size", 0),
                                    float(mtime)))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    # -- snapshots -----------------------------------------------------------------

    def save(self, key: str, data: bytes, name: str | None = None, *,
             durable: bool = True, prune: bool = True) -> Entry:
        """Write a snapshot: an autosave when name is None. Prunes old
        autosaves unless told not to (then call `prune`)."""
        folder = slug(key)
        if name is None:
            now = time.time()
            name = AUTO_PREFIX + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) \
                + f"-{int(now % 1 * 1e6):06d}"
        else:
            check_name(name)
        if folder not in self._keyed:
            if self.read_file(self.path(folder, "key")) is None:
                self.write_file(self.path(folder, "key"), key.encode())
            self._keyed.add(folder)
        path = self.path(folder, name + SUFFIX)
        self.write_file(path, data, durable)
        if prune and name.startswith(AUTO_PREFIX):
            self.prune(key)
        return Entry(key, name, len(data), time.time(), path)

    def prune(self, key: str) -> None:
        """Keep the newest `keep` autosaves."""
        autos = [e for e in self.list(key) if e.auto]
        for old in autos[:-self.keep]:
            self.remove_file(self.path(slug(key), old.name + SUFFIX))

    def clean_partials(self, key: str) -> int:
        """Remove temporary files left by writes that were killed midway."""
        names = [n for n, _, _ in self._listdir(self.path(slug(key)))
                 if n.startswith(PARTIAL + "-") or n.endswith(PARTIAL)]
        return sum(self.remove_file(self.path(slug(key), n)) for n in names)

    def list(self, key: str) -> list[Entry]:
        """The snapshots of one notebook, oldest first."""
        entries = [Entry(key, n[:-len(SUFFIX)], size, mtime, self.path(slug(key), n))
                   for n, size, mtime in self._listdir(self.path(slug(key)))
                   if n.endswith(SUFFIX)]
        return sorted(entries, key=lambda e: (e.modified, e.name))

    def keys(self) -> list[str]:
        """Every notebook key that has a folder here."""
        out = []
        if self.local:
            folders = [e.path for e in os.scandir(self.root)] if os.path.isdir(self.root) else []
        else:
            folders = [i["name"] for i in self.fs.ls(self.root, detail=True)
                       if i.get("type") == "directory"] if self.fs.exists(self.root) else []
        for folder in folders:
            raw = self.read_file(folder.rstrip("/") + "/key")
            if raw is not None:
                out.append(raw.decode("utf-8", "replace"))
        return sorted(out)

    def read(self, entry: Entry) -> bytes | None:
        return self.read_file(entry.path or self.path(slug(entry.key), entry.name + SUFFIX))

    def readable(self, key: str) -> bool:
        """Can this notebook's snapshots be read (even if not written)?"""
        folder = self.path(slug(key))
        try:
            if self.local:
                return os.path.isdir(folder) or not os.path.exists(folder)
            return not self.fs.exists(folder) or self.fs.isdir(folder)
        except OSError:
            return False

    def load(self, key: str, name: str | None = None) -> tuple[Entry, bytes] | None:
        """A named snapshot, or the newest one; None if there is none."""
        entries = self.list(key)
        if name is not None:
            entries = [e for e in entries if e.name == name]
        for entry in reversed(entries):
            data = self.read_file(self.path(slug(key), entry.name + SUFFIX))
            if data is not None:
                return entry, data
        return None

    def delete(self, key: str, name: str | None = None) -> int:
        """Delete one snapshot, or all of a notebook's; returns how many."""
        entries = self.list(key)
        if name is not None:
            entries = [e for e in entries if e.name == name]
        n = sum(self.remove_file(self.path(slug(key), e.name + SUFFIX)) for e in entries)
        if name is None:                  # the notebook is forgotten entirely
            self.remove_file(self.path(slug(key), "restart"))
            self.remove_file(self.path(slug(key), "key"))
            if self.local:
                try:
                    os.rmdir(self.path(slug(key)))
                except OSError:
                    pass
        return n

    # -- marks left for the next kernel -------------------------------------------

    def mark(self, key: str, name: str, text: str = "") -> None:
        self.write_file(self.path(slug(key), name), text.encode())

    def take_mark(self, key: str, name: str) -> str | None:
        """The mark's text (and the mark is gone), or None if there is none.
        A mark that cannot be removed (read-only store) is still read."""
        path = self.path(slug(key), name)
        raw = self.read_file(path)
        if raw is None:
            return None
        try:
            self.remove_file(path)
        except OSError:
            pass
        return raw.decode("utf-8", "replace")

    def lease(self, key: str) -> "Lease":
        return Lease(self, key)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Lease:
    """One writer per notebook.

    The holder's record, `lease` in the notebook's folder, says who writes
    (an id, pid, host, since); a writer checks it is still named there
    before every write (`mine`), so a kernel that was taken over stops.
    Locally the holder also keeps an OS lock (portalocker: flock) on
    `lease.lock`, which the OS releases when the process dies: a crashed
    kernel never leaves its notebook held. The lock is taken on a read-only
    descriptor, so holding it keeps no file open for writing (a disk can
    still be remounted read-only under a running kernel). An object store
    has no such lock, so the record carries an expiry that the holder renews
    while it lives; a record of a process on this machine that is gone is
    free at once.
    """

    TTL = 60.0          # seconds a remote lease lasts without renewal

    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key
        self.id = uuid.uuid4().hex
        self._path = store.path(slug(key), "lease")
        self._lock = None
        self._renewer: threading.Timer | None = None
        self.held = False

    def _record(self) -> dict:
        return {"id": self.id, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.time(), "expires": time.time() + self.TTL}

    def holder(self) -> dict | None:
        raw = self.store.read_file(self._path)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def acquire(self) -> dict | None:
        """Take the lease: None when it is ours now, else the holder's record.
        Raises OSError when the store cannot be written."""
        if self.store.local:
            lock = self._open_lock()
            other = self.holder()
            if not _try_lock(lock):
                lock.close()
                return other or {"pid": "?", "host": "?", "since": 0}
            if other and other.get("id") != self.id and _alive_here(other):
                lock.close()        # a kernel that took over and waits for the lock
                return other
            self._lock = lock
        else:
            other = self.holder()
            if other and other.get("id") != self.id and other.get("expires", 0) > time.time() \
                    and (other.get("host") != socket.gethostname() or _alive_here(other)):
                return other        # held, unexpired, and not by a dead process here
        self._claim()
        return None

    def _claim(self) -> None:
        self.store.write_file(self._path, json.dumps(self._record()).encode())
        self.held = True
        if not self.store.local:
            self._renew_later()

    def _renew_later(self) -> None:
        self._renewer = threading.Timer(self.TTL / 3, self._renew)
        self._renewer.daemon = True
        self._renewer.start()

    def _renew(self) -> None:
        try:
            if self.mine():
                self.store.write_file(self._path, json.dumps(self._record()).encode())
                self._renew_later()
        except Exception:  # noqa: BLE001 - any backend's error: a write will report it
            self._renew_later()     # try again

    def mine(self) -> bool:
        """Still the holder? (False once another kernel took over.)"""
        if not self.held:
            return False
        current = self.holder()
        if current is not None and current.get("id") != self.id:
            self.release()
            return False
        return True

    def take_over(self) -> dict | None:
        """Become the holder although another kernel holds the lease; it
        stops writing at its next save. Returns the previous holder's record."""
        before = self.holder()
        self._claim()
        if self.store.local and self._lock is None:
            threading.Thread(target=self._wait_for_lock, daemon=True).start()
        return before

    def _open_lock(self):
        path = self._path + ".lock"
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab"):
                pass
        return open(path, "rb")

    def _wait_for_lock(self) -> None:
        """After a take-over: hold the OS lock once the old holder lets go."""
        lock = self._open_lock()
        while self.held and not _try_lock(lock):
            time.sleep(0.5)
        if self.held:
            self._lock = lock
        else:
            lock.close()

    def end(self) -> None:
        """A kernel that shuts down: the record goes, then the lock."""
        try:
            if self.mine():
                self.store.remove_file(self._path)
        except OSError:
            pass
        self.release()

    def release(self) -> None:
        self.held = False
        if self._renewer is not None:
            self._renewer.cancel()
        if self._lock is not None:
            self._lock.close()          # closing the descriptor releases the lock
            self._lock = None


def _alive_here(record: dict) -> bool:
    """The record's process runs on this machine (the lock is free while a
    kernel that took over waits for the old holder to let it go)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == os.getpid():
        return True
    try:
        os.kill(record["pid"], 0)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def _try_lock(f) -> bool:
    import portalocker

    try:
        portalocker.lock(f, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        return True
    except portalocker.exceptions.LockException:
        return False
