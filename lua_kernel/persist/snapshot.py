"""The snapshot envelope: what is around the serialized Lua state.

    magic        8 bytes   b"LUAKSNAP"
    version      u16       FORMAT_VERSION (big-endian, like every number here)
    header_len   u32
    header       JSON      lua version, notebook, created, counts, timings, kernel extras
    body_len     u64
    body         bytes     the serialized state (persist/state.py), zstd-compressed
    mac          32 bytes  HMAC-SHA256 over everything above, with the user's secret

Bytecode and pickles execute code when loaded, so nothing after the magic is
parsed before the MAC matches: an altered, truncated or foreign snapshot is a
SnapshotError with a clear message, never a crash. The secret is a per-user
random key kept with mode 0600 in the Jupyter data directory
($LUA_KERNEL_SECRET overrides it).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ..runtime import RUNTIMES

MAGIC = b"LUAKSNAP"
FORMAT_VERSION = 1
MAC_SIZE = 32
_PREFIX = struct.Struct(">8sHI")        # magic, version, header_len
_BODY_LEN = struct.Struct(">Q")
MAX_BODY = 1 << 36                       # refuse to inflate past 64 GiB
SECRET_ENV = "LUA_KERNEL_SECRET"


class SnapshotError(Exception):
    """A snapshot that cannot be used: not ours, altered, truncated, or foreign."""


@dataclass
class SnapshotInfo:
    notebook: str
    created: float                  # seconds since the epoch
    lua_version: str
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    kernel: dict = field(default_factory=dict)   # the kernel's own extras
    size: int = 0                   # bytes of the whole snapshot

    @classmethod
    def from_header(cls, header: dict, size: int) -> "SnapshotInfo":
        return cls(notebook=header.get("notebook", ""), created=header.get("created", 0.0),
                   lua_version=header.get("lua", ""), counts=header.get("counts", {}),
                   timings=header.get("timings", {}), kernel=header.get("kernel", {}),
                   size=size)


# -- the secret ------------------------------------------------------------------

def secret_path() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "lua_kernel" / "secret"


def load_secret() -> bytes:
    """The signing key: $LUA_KERNEL_SECRET, else the 0600 file (made on first use)."""
    env = os.environ.get(SECRET_ENV)
    if env:
        return env.encode()
    path = secret_path()
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:          # made concurrently by another kernel
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# -- sealing and opening ---------------------------------------------------------

def seal(body: bytes, *, notebook: str, lua_version: str, counts: dict | None = None,
         timings: dict | None = None, kernel: dict | None = None,
         key: bytes | None = None, level: int = 3) -> bytes:
    """Compress and sign a serialized state."""
    t0 = time.perf_counter()
    compressed = zstandard.ZstdCompressor(level=level).compress(body)
    timings = dict(timings or {}, compress=time.perf_counter() - t0)
    header = json.dumps({
        "lua": lua_version, "notebook": notebook, "created": time.time(),
        "counts": counts or {}, "timings": timings, "kernel": kernel or {},
        "compression": "zstd", "body_size": len(body),
    }, separators=(",", ":")).encode()
    unsigned = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header,
                         _BODY_LEN.pack(len(compressed)), compressed])
    return unsigned + _mac(key or load_secret(), unsigned)


def verify(data: bytes, key: bytes | None = None) -> None:
    """Raise SnapshotError unless data is a lua_kernel snapshot signed with key."""
    if len(data) < _PREFIX.size + MAC_SIZE or not data.startswith(MAGIC):
        raise SnapshotError("this is not a lua_kernel snapshot")
    if not hmac.compare_digest(_mac(key or load_secret(), data[:-MAC_SIZE]), data[-MAC_SIZE:]):
        raise SnapshotError(
            "the snapshot's signature does not match: it was changed or cut short, "
            "or it was signed with another user's key. If you trust where it came "
            "from: python -m lua_kernel snapshots trust FILE")


def read_header(data: bytes) -> tuple[dict, int]:
    """(header, offset of body_len) of a VERIFIED snapshot."""
    _, version, header_len = _PREFIX.unpack_from(data)
    if version > FORMAT_VERSION:
        raise SnapshotError(f"the snapshot was written by a newer lua_kernel "
                            f"(format {version}; this one reads up to {FORMAT_VERSION})")
    end = _PREFIX.size + header_len
    try:
        header = json.loads(data[_PREFIX.size:end])
    except ValueError as e:
        raise SnapshotError(f"the snapshot's header is damaged: {e}") from None
    return header, end


def lua_family(release: str) -> str:
    """What a snapshot must match: "Lua 5.4" for "5.4.8", "LuaJIT 2.1" for
    "LuaJIT 2.1.1774896198" (the serializer's format follows the language
    and its bytecode, which change between these, not within)."""
    if release.startswith("LuaJIT"):
        return "LuaJIT " + ".".join(release.split()[-1].split(".")[:2])
    return "Lua " + ".".join(release.split(".")[:2])


def _named(release: str) -> str:
    return release if release.startswith("LuaJIT") else "Lua " + release


def open_snapshot(data: bytes, *, lua_version: str,
                  key: bytes | None = None) -> tuple[SnapshotInfo, bytes]:
    """Verify, then decode: (info, serialized state)."""
    verify(data, key)
    header, pos = read_header(data)
    info = SnapshotInfo.from_header(header, len(data))
    saved, here = lua_family(info.lua_version), lua_family(lua_version)
    if saved != here:
        kernel = next((r.display_name for r in RUNTIMES.values()
                       if r.display_name == saved), None)
        raise SnapshotError(
            f"the snapshot was saved by {_named(info.lua_version)}; this kernel runs "
            f"{_named(lua_version)}" + (f" (open it in a {kernel} kernel)" if kernel else ""))
    try:
        (body_len,) = _BODY_LEN.unpack_from(data, pos)
        compressed = data[pos + _BODY_LEN.size:pos + _BODY_LEN.size + body_len]
        size = header.get("body_size", 0)
        if not 0 <= size <= MAX_BODY or len(compressed) != body_len:
            raise ValueError("sizes do not add up")
        body = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=size)
    except (struct.error, ValueError, zstandard.ZstdError) as e:
        raise SnapshotError(f"the snapshot's body is damaged: {e}") from None
    return info, body


def info_of(data: bytes, key: bytes | None = None) -> SnapshotInfo:
    verify(data, key)
    header, _ = read_header(data)
    return SnapshotInfo.from_header(header, len(data))


def resign(data: bytes, key: bytes | None = None) -> bytes:
    """`trust`: sign a snapshot received from elsewhere with our key. Checks
    that it is structurally a snapshot first."""
    if len(data) < _PREFIX.size + MAC_SIZE or not data.startswith(MAGIC):
        raise SnapshotError("this is not a lua_kernel snapshot")
    unsigned = data[:-MAC_SIZE]
    try:
        read_header(unsigned)
    except (struct.error, SnapshotError) as e:
        raise SnapshotError(f"refusing to trust a damaged snapshot: {e}") from None
    return unsigned + _mac(key or load_secret(), unsigned)
