"""Where snapshots live: a local directory by default, or any fsspec URL.

Layout under the root, one folder per notebook key:

    <root>/<slug of the key>/
        key                      the notebook key itself (the slug is lossy)
        auto-<time>.luasnap      autosaves; the newest `keep` are kept
        <name>.luasnap           named saves (%save NAME), never pruned
        restart                  marker: the last kernel was restarted on purpose

Writes are atomic: a temporary file is written, fsynced and renamed into
place (on object stores a single put is atomic). The previous snapshot stays
until the new one is complete, so a crash mid-write loses nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".luasnap"
AUTO_PREFIX = "auto-"
STORE_ENV = "LUA_KERNEL_SNAPSHOTS"      # directory or fsspec URL; "off" disables
KEEP_ENV = "LUA_KERNEL_SNAPSHOT_KEEP"
DEFAULT_KEEP = 3
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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

    @property
    def auto(self) -> bool:
        return self.name.startswith(AUTO_PREFIX)


class Store:
    """Snapshots of every notebook, in one root (directory or URL)."""

    def __init__(self, root: str | None = None, keep: int | None = None):
        root = root or os.environ.get(STORE_ENV) or default_root()
        self.root = root.rstrip("/")
        self.keep = max(1, int(keep or os.environ.get(KEEP_ENV) or DEFAULT_KEEP))
        self._local = "://" not in self.root or self.root.startswith("file://")
        if self._local:
            self.root = self.root.removeprefix("file://")
            self.fs = None
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.root)

    @staticmethod
    def disabled() -> bool:
        return os.environ.get(STORE_ENV, "").strip().lower() in ("off", "none", "0", "false")

    def describe(self) -> str:
        if self._local:
            return self.root
        proto = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{proto}://{self.root}"

    # -- primitive file operations (local or fsspec) -----------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write(self, path: str, data: bytes) -> None:
        if not self._local:
            tmp = path + ".partial"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _read(self, path: str) -> bytes | None:
        try:
            if self._local:
                return Path(path).read_bytes()
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None

    def _remove(self, path: str) -> bool:
        try:
            if self._local:
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
            if self._local:
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

    def save(self, key: str, data: bytes, name: str | None = None) -> Entry:
        """Write a snapshot: an autosave when name is None. Prunes old autosaves."""
        folder = slug(key)
        if name is None:
            now = time.time()
            name = AUTO_PREFIX + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) \
                + f"-{int(now % 1 * 1e6):06d}"
        else:
            check_name(name)
        if self._read(self._path(folder, "key")) is None:
            self._write(self._path(folder, "key"), key.encode())
        self._write(self._path(folder, name + SUFFIX), data)
        if name.startswith(AUTO_PREFIX):
            autos = [e for e in self.list(key) if e.auto]
            for old in autos[:-self.keep]:
                self._remove(self._path(folder, old.name + SUFFIX))
        return Entry(key, name, len(data), time.time())

    def list(self, key: str) -> list[Entry]:
        """The snapshots of one notebook, oldest first."""
        entries = [Entry(key, n[:-len(SUFFIX)], size, mtime)
                   for n, size, mtime in self._listdir(self._path(slug(key)))
                   if n.endswith(SUFFIX)]
        return sorted(entries, key=lambda e: (e.modified, e.name))

    def keys(self) -> list[str]:
        """Every notebook key that has a folder here."""
        out = []
        if self._local:
            folders = [e.path for e in os.scandir(self.root)] if os.path.isdir(self.root) else []
        else:
            folders = [i["name"] for i in self.fs.ls(self.root, detail=True)
                       if i.get("type") == "directory"] if self.fs.exists(self.root) else []
        for folder in folders:
            raw = self._read(folder.rstrip("/") + "/key")
            if raw is not None:
                out.append(raw.decode("utf-8", "replace"))
        return sorted(out)

    def load(self, key: str, name: str | None = None) -> tuple[Entry, bytes] | None:
        """A named snapshot, or the newest one; None if there is none."""
        entries = self.list(key)
        if name is not None:
            entries = [e for e in entries if e.name == name]
        for entry in reversed(entries):
            data = self._read(self._path(slug(key), entry.name + SUFFIX))
            if data is not None:
                return entry, data
        return None

    def delete(self, key: str, name: str | None = None) -> int:
        """Delete one snapshot, or all of a notebook's; returns how many."""
        entries = self.list(key)
        if name is not None:
            entries = [e for e in entries if e.name == name]
        n = sum(self._remove(self._path(slug(key), e.name + SUFFIX)) for e in entries)
        if name is None:                  # the notebook is forgotten entirely
            self._remove(self._path(slug(key), "restart"))
            self._remove(self._path(slug(key), "key"))
            if self._local:
                try:
                    os.rmdir(self._path(slug(key)))
                except OSError:
                    pass
        return n

    # -- the restart marker ----------------------------------------------------------

    def mark_restart(self, key: str) -> None:
        self._write(self._path(slug(key), "restart"), str(time.time()).encode())

    def take_restart_mark(self, key: str) -> bool:
        """True (and the mark is gone) if the last kernel was restarted on purpose."""
        return self._remove(self._path(slug(key), "restart"))
