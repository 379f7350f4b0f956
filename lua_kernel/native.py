"""Reaching under lupa: the Lua C API that lupa exports, and safe memory reads.

Three things here cannot be done through the Lua language itself:

* Interrupting a running Lua state. Lua documents `lua_sethook` as safe to
  call asynchronously (the `lua` executable calls it from its SIGINT handler).
  lupa's extension module exports the Lua C API, so we call it through ctypes
  from whichever thread received the interrupt, arming a count hook only then:
  no hook is active while code runs normally.

* Finding which coroutines are running. A hook armed on the main thread does
  not fire while a coroutine runs, so we walk the chain of resumes: the
  innermost frame of a resuming thread is `coroutine.resume` (its first
  argument is the thread) or a `coroutine.wrap` closure (its first upvalue is
  the thread). The walk reads the frame records with the struct layout of the
  Lua 5.4.8 that lupa bundles, through /proc/self/mem, where a wrong address
  gives an error instead of a crash. A self-check against a coroutine whose
  address we know runs before the walk is trusted; if it fails, interrupts
  still work everywhere except inside a running coroutine.

* Reading the error of a coroutine dead at its base level. Lua 5.5 lets a
  coroutine close itself; if a __close fails then, the coroutine is dead by
  that error with no level left for the debug library to show it.
  `LuaLibrary.copy_error` copies it to another (suspended) thread through
  the C API, for persist/lua/frames.lua to save.

Each lupa runtime is its own extension module with its own copy of the C
API (`LuaLibrary`). The struct layout below is Lua 5.4.8's; another
runtime's walk fails its self-check and is not used. LuaJIT keeps one hook
for the whole VM (global_State), so arming any of its threads arms all of
them: no walk is needed there.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import struct
from types import ModuleType
from typing import Callable

from lupa import lua54

from .runtime import lua_callback

# lua.h
LUA_MASKCOUNT = 1 << 3
LUA_ERRRUN = 2           # thread statuses from here up are errors (LUA_YIELD is 1)

# Struct layout of lupa's Lua 5.4.8 on 64-bit platforms (lstate.h, lobject.h),
# checked against the source; the interrupter's and framepeek's self-checks
# confirm it at run time.
L_CI = 32                # lua_State.ci: the innermost CallInfo
L_STACK = 48             # lua_State.stack: the stack base (StkId)
L_TBCLIST = 64           # lua_State.tbclist: the innermost to-be-closed slot
STACKVALUE_SIZE = 16     # StackValue; its tbclist.delta (unsigned short) at +10
TBC_DELTA = 10
MAXDELTA = 0xFFFF        # lfunc.c: USHRT_MAX, a gap bridged by dummy nodes (delta 0)
CI_FUNC = 0              # CallInfo.func: the frame's function slot (StkId)
CI_PREVIOUS = 16         # CallInfo.previous
CI_SAVEDPC = 32          # CallInfo.u.l.savedpc (Lua frames)
CI_U2 = 56               # CallInfo.u2 (int: funcidx, nyield, nres, ...)
CI_CALLSTATUS = 62       # CallInfo.callstatus (unsigned short)
CI_SIZE = 64
CIST_C = 1 << 1          # the frame runs a C function
TVALUE_SIZE = 16         # TValue: 8-byte value, tag byte at +8
TVALUE_TAG = 8
TAG_LCL = 0x46           # Lua closure
TAG_LCF = 0x16           # light C function
TAG_CCL = 0x66           # C closure (collectable)
TAG_THREAD = 0x48        # thread (collectable)
LCL_P = 24               # LClosure.p
CCL_F = 24               # CClosure.f
CCL_UPVALUE = 32         # CClosure.upvalue[0]
P_SIZECODE = 24          # Proto: int sizecode
P_SIZELINEINFO = 28      #        int sizelineinfo
P_SIZEABSLINEINFO = 40   #        int sizeabslineinfo
P_LINEDEFINED = 44       #        int linedefined
P_CODE = 64              #        Instruction *code
P_LINEINFO = 88          #        ls_byte *lineinfo
P_ABSLINEINFO = 96       #        AbsLineInfo *abslineinfo ({int pc; int line})
P_HEADER = 104           # the bytes of Proto read at once
LUAI_MAXCCALLS = 200     # llimits.h: nested resumes cannot go deeper


class CallStatus:
    """Where a CallInfo's `callstatus` is and what its bits mean, per Lua
    (lstate.h). Lua 5.5.1 keeps 5.4's lua_State, CallInfo, Proto and
    closure offsets and type tags (checked against its lstate.h/lobject.h)
    except this: `callstatus` became an l_uint32 at 60 (5.4: unsigned short
    at 62, after `short nresults`, which 5.5 folded into its low bits),
    CIST_C is bit 15 and CIST_RECST bits 12-14 (5.4: bit 1, bits 10-12)."""

    def __init__(self, offset: int, fmt: str, cist_c: int, recst: int):
        self.offset, self.fmt, self.cist_c, self.recst = offset, fmt, cist_c, recst
        self.size = struct.calcsize(fmt)

    def read(self, ci_bytes: bytes, base: int = 0) -> int:
        """The callstatus in the bytes of a CallInfo read from `base`."""
        return struct.unpack_from(self.fmt, ci_bytes, self.offset - base)[0]


CALLSTATUS = {"5.4": CallStatus(CI_CALLSTATUS, "<H", CIST_C, 10),
              "5.5": CallStatus(60, "<I", 1 << 15, 12)}


class MemoryReader:
    """Reads this process's memory without ever faulting (Linux only)."""

    def __init__(self):
        try:
            self._fd = os.open("/proc/self/mem", os.O_RDONLY)
        except OSError:
            self._fd = None

    @property
    def available(self) -> bool:
        return self._fd is not None

    def read(self, addr: int, size: int) -> bytes | None:
        if self._fd is None or addr <= 0:
            return None
        try:
            data = os.pread(self._fd, size, addr)
        except (OSError, OverflowError, ValueError):
            return None
        return data if len(data) == size else None

    def pointer(self, addr: int) -> int | None:
        data = self.read(addr, 8)
        return struct.unpack("<Q", data)[0] if data else None

    def tvalue(self, addr: int) -> tuple[int, int] | None:
        """(value, tag) of the TValue at addr."""
        data = self.read(addr, TVALUE_TAG + 1)
        return struct.unpack("<QB", data) if data else None


class StringLayout:
    """Where a long string object (`%p` of the string) keeps its type tag,
    its length and its bytes, per runtime:
    - Lua 5.4 (lobject.h TString): CommonHeader (next, tt at 8, marked),
      extra, shrlen, hash, u.lnglen (size_t at 16), then the bytes at 24;
    - Lua 5.5: the same, but at 24 a pointer to the bytes (TString.contents,
      for its external strings);
    - LuaJIT 2.1 with GC64 (lj_obj.h GCstr): nextgc, marked, gct (~LJ_TSTR = 4
      at 9), reserved, hashalg, sid, hash, len (MSize at 20), then the bytes
      at 24 (strdata)."""

    def __init__(self, tag_at: int, tag: int, len_fmt: str, len_at: int,
                 data_at: int, indirect: bool = False):
        self.tag_at, self.tag, self.len_fmt, self.len_at = tag_at, tag, len_fmt, len_at
        self.data_at, self.indirect = data_at, indirect


STRING_LAYOUTS = {"5.4": StringLayout(8, 0x14, "<Q", 16, 24),
                  "5.5": StringLayout(8, 0x14, "<Q", 16, 24, indirect=True),
                  "luajit": StringLayout(9, 4, "<I", 20, 24)}


def long_string_bytes(addr: int, size: int, layout: StringLayout = STRING_LAYOUTS["5.4"]
                      ) -> bytes | None:
    """The bytes of the long string object at addr, if its header says it is
    a string of `size` bytes in `layout`; None otherwise. Callers still
    check the contents against what Lua says."""
    header = MEMORY.read(addr, layout.data_at + 8)
    if header is None or header[layout.tag_at] != layout.tag:
        return None
    if struct.unpack_from(layout.len_fmt, header, layout.len_at)[0] != size:
        return None
    if layout.indirect:
        return MEMORY.read(struct.unpack_from("<Q", header, layout.data_at)[0], size)
    return MEMORY.read(addr + layout.data_at, size)


class LuaLibrary:
    """The C API of one lupa runtime module (lua54, lua55, luajit21)."""

    def __init__(self, module: ModuleType):
        self.module = module
        try:
            self.lib = ctypes.CDLL(module.__file__)
            sethook, gethook = self.lib.lua_sethook, self.lib.lua_gethook
        except (OSError, AttributeError):
            self.lib = self.sethook = self.gethook = None
            return
        sethook.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        sethook.restype = None
        gethook.argtypes = [ctypes.c_void_p]
        gethook.restype = ctypes.c_void_p
        self.sethook, self.gethook = sethook, gethook

    @property
    def hooks(self) -> bool:
        return self.sethook is not None

    @functools.cached_property
    def _threads(self):
        """lua_status, lua_gettop, lua_checkstack, lua_pushvalue, lua_xmove
        (the same in 5.4 and 5.5), or None."""
        if self.lib is None:
            return None
        try:
            fns = [getattr(self.lib, f"lua_{n}") for n in
                   ("status", "gettop", "checkstack", "pushvalue", "xmove")]
        except AttributeError:
            return None
        voidp, cint = ctypes.c_void_p, ctypes.c_int
        for fn, args in zip(fns, ([voidp], [voidp], [voidp, cint],
                                  [voidp, cint], [voidp, voidp, cint]), strict=True):
            fn.argtypes, fn.restype = args, cint
        fns[3].restype = fns[4].restype = None
        return fns

    @functools.cached_property
    def errored(self) -> Callable[[int], bool]:
        """errored(thread): whether `thread` (a lua_State*) is dead by an
        error (lua_status). Asked of every dead coroutine a capture meets,
        from Lua: one C call, and it never raises."""
        fns = self._threads
        status = fns[0] if fns else None

        def errored(thread: int) -> bool:
            try:
                return status(thread) >= LUA_ERRRUN
            except (TypeError, ctypes.ArgumentError):
                return False

        return errored

    def copy_error(self, thread: int, into: int) -> bool:
        """If `thread` (a lua_State* that is not running) is dead by an error
        (lua_status), push a copy of its error, the top of its stack where
        lua_resume and lua_closethread leave it (ldo.c, lstate.c), onto the
        stack of `into`, another thread of the same state that is not running
        either: True. False, and nothing changes, otherwise. Neither call can
        raise a Lua error: lua_checkstack fails by returning 0, and the rest
        allocate nothing."""
        fns = self._threads
        if fns is None:
            return False
        status, gettop, checkstack, pushvalue, xmove = fns
        if status(thread) < LUA_ERRRUN or gettop(thread) < 1:
            return False
        if not (checkstack(thread, 1) and checkstack(into, 1)):
            return False
        pushvalue(thread, -1)
        xmove(thread, into, 1)
        return True

    @functools.cached_property
    def release(self) -> str:
        """The exact release lupa bundles ("5.4.8", "LuaJIT 2.1.1774896198"),
        from lua_ident / the runtime. Read once: every snapshot names it, on
        the path of the cell's reply, and reading makes a Lua state."""
        runtime = self.module.LuaRuntime()
        if runtime.lua_implementation.startswith("LuaJIT"):
            return runtime.lua_implementation     # "LuaJIT 2.1.1774896198"
        try:
            ident = (ctypes.c_char * 160).in_dll(self.lib, "lua_ident").value.decode()
            return ident.split("Lua ", 1)[1].split()[0]
        except (AttributeError, IndexError, ValueError, TypeError):
            return ".".join(map(str, runtime.lua_version))


_LIBRARIES: dict[str, LuaLibrary] = {}


def library(module: ModuleType = lua54) -> LuaLibrary:
    found = _LIBRARIES.get(module.__name__)
    if found is None:
        found = _LIBRARIES[module.__name__] = LuaLibrary(module)
    return found


def lua_release(module: ModuleType = lua54) -> str:
    """The exact release of a runtime (Lua 5.4's by default), e.g. "5.4.8"."""
    return library(module).release


MEMORY = MemoryReader()


def parse_address(text: str) -> int:
    """The address in `tostring(x)` / `string.format("%p", x)` output."""
    return int(text.rsplit(" ", 1)[-1], 16)


class Interrupter:
    """Arms the debug hook of one Lua state (and its running coroutines).

    Built with the runtime's C API, the state's main thread address (for
    LuaJIT: any thread kept alive), the address of the C hook (`lua_gethook`
    while a hook is registered), and the addresses of `coroutine.resume` and
    of the C function behind `coroutine.wrap` closures.
    """

    def __init__(self, api: LuaLibrary, main: int, hookf: int, resume_fn: int, wrap_fn: int):
        self.api = api
        self.main = main
        self.hookf = hookf
        self.resume_fn = resume_fn
        self.wrap_fn = wrap_fn
        self.walk_ok = False   # set by self_check()
        # Threads armed besides the walk's: those the walk cannot find. print
        # runs in a coroutine.wrap closure whose upvalue is swapped for a spare
        # while it runs (lua/session.lua), so the walk stops at the spare.
        # They must live as long as the state (session.lua keeps them).
        self.extra: list[int] = []

    @staticmethod
    def supported(api: LuaLibrary) -> bool:
        return api.hooks

    @staticmethod
    def current_hook(api: LuaLibrary, thread: int) -> int:
        return api.gethook(thread) or 0

    def running_chain(self) -> list[int]:
        """The threads to arm: the main one, plus the running coroutines when
        the walk passed its self-check."""
        if not self.walk_ok:
            return [self.main, *self.extra]
        chain = self._walk()
        for thread in list(self.extra):
            if thread not in chain:
                chain.extend(t for t in self._walk(thread) if t not in chain)
        return chain

    def _walk(self, start: int | None = None) -> list[int]:
        """The thread (the main one) followed by the coroutines it is
        resuming, innermost last."""
        thread = self.main if start is None else start
        chain = [thread]
        for _ in range(LUAI_MAXCCALLS):
            resumed = self._resumed_by(thread)
            if resumed is None or resumed in chain:
                break
            chain.append(resumed)
            thread = resumed
        return chain

    def _resumed_by(self, thread: int) -> int | None:
        ci = MEMORY.pointer(thread + L_CI)
        func = MEMORY.pointer(ci + CI_FUNC) if ci else None
        fv = MEMORY.tvalue(func) if func else None
        if fv is None:
            return None
        value, tag = fv
        if tag == TAG_LCF and value == self.resume_fn:
            arg = MEMORY.tvalue(func + TVALUE_SIZE)
        elif tag == TAG_CCL and MEMORY.pointer(value + CCL_F) == self.wrap_fn:
            arg = MEMORY.tvalue(value + CCL_UPVALUE)
        else:
            return None
        if arg is None or arg[1] != TAG_THREAD:
            return None
        return arg[0]

    def self_check(self, expected_chain: list[int]) -> bool:
        """Called from inside a known chain of running coroutines."""
        self.walk_ok = MEMORY.available and self._walk() == expected_chain
        return self.walk_ok

    def arm(self) -> None:
        """Make every running thread call its hook at its next instruction."""
        for thread in self.running_chain():
            self.api.sethook(thread, self.hookf, LUA_MASKCOUNT, 1)

    def disarm(self) -> None:
        self.api.sethook(self.main, None, 0, 0)


# -- the standard streams as real FILE* handles --------------------------------
#
# A Lua state's io.stdin/io.stdout/io.stderr are full userdata holding an
# LStream (liolib.c): {FILE *f; lua_CFunction closef}. NativeStreams points
# their `f` at FILE*s made with glibc's fopencookie, whose read and write go
# to Python callbacks, so that the io library's own C functions serve the
# notebook: no other process-wide state (fd 1/2, the C `stdout`) changes.

class _CookieIO(ctypes.Structure):
    _fields_ = [("read", ctypes.c_void_p), ("write", ctypes.c_void_p),
                ("seek", ctypes.c_void_p), ("close", ctypes.c_void_p)]


_READ = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_char),
                         ctypes.c_size_t, use_errno=True)
_WRITE = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                          use_errno=True)
_IOFBF, _IONBF = 0, 2
STDOUT_BUFFER = 65536     # stdio's default (8 KiB) meant a GIL round per 8 KiB


def _load_libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fns = {name: getattr(libc, name) for name in
               ("fopencookie", "setvbuf", "fflush", "clearerr", "__fpurge", "lseek")}
        std = {name: ctypes.c_void_p.in_dll(libc, name).value
               for name in ("stdin", "stdout", "stderr")}
    except (OSError, AttributeError, ValueError):
        return None
    fns["fopencookie"].argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CookieIO]
    fns["fopencookie"].restype = ctypes.c_void_p
    fns["setvbuf"].argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    for name in ("fflush", "clearerr", "__fpurge"):
        fns[name].argtypes = [ctypes.c_void_p]
    return fns, std


_LIBC = _load_libc()


class NativeStreams:
    """The notebook's standard streams for one Lua state.

    `write(stream, data)` receives what Lua writes ("stdout"/"stderr", bytes);
    stderr is unbuffered and flushes stdout first, so the two stay in order.
    `read()` returns the next line of input as bytes (with "\\n"), b"" at end
    of input, or None for a read error (io.read then returns fail, as for a
    failing stdin). The FILE*s are never closed: Lua code may still write
    while its state is closed (a __gc), so they live as long as the process
    (about 75 KiB a state, most of it stdout's 64 KiB buffer).
    """

    def __init__(self, write, read):
        # the C callbacks live as long as the process (_KEEP); `write` and
        # `read` are methods of the session, which must not (lua_callback:
        # once the session is gone, what the FILE*s still do goes nowhere)
        self._write, self._read = lua_callback(write), lua_callback(read)
        self._pending = b""
        self._callbacks = (_READ(self._on_read), _WRITE(self._on_write_out),
                           _WRITE(self._on_write_err))
        self.files: dict[str, int] = {}
        _KEEP.append(self._callbacks)   # a FILE* may call them until the process ends

    @staticmethod
    def supported() -> bool:
        return _LIBC is not None and MEMORY.available

    def install(self, addresses: dict[str, int]) -> bool:
        """Point the LStreams at `addresses` (name -> `%p` of io.<name>) at
        cookie FILE*s. Each must hold the C library's own FILE* of that name
        (the layout check); otherwise nothing is changed and False returned."""
        fns, std = _LIBC
        if any(MEMORY.pointer(addr) != std[name] for name, addr in addresses.items()):
            return False
        read, write_out, write_err = (ctypes.cast(c, ctypes.c_void_p).value
                                      for c in self._callbacks)
        # Seeking is lseek on a pipe (the cookie): "Illegal seek", as on a
        # terminal, and no call into Python, which glibc's exit would make
        # (it syncs every stream) after Python has finished.
        seek = ctypes.cast(fns["lseek"], ctypes.c_void_p).value
        pipe = ctypes.c_void_p(_seek_pipe())
        made = {"stdin": fns["fopencookie"](pipe, b"r", _CookieIO(read, None, seek, None)),
                "stdout": fns["fopencookie"](pipe, b"w", _CookieIO(None, write_out, seek, None)),
                "stderr": fns["fopencookie"](pipe, b"w", _CookieIO(None, write_err, seek, None))}
        if not all(made.values()):
            return False
        fns["setvbuf"](made["stderr"], None, _IONBF, 0)
        buffer = ctypes.create_string_buffer(STDOUT_BUFFER)
        _KEEP.append(buffer)             # as long as the FILE*: the process
        fns["setvbuf"](made["stdout"], ctypes.addressof(buffer), _IOFBF, STDOUT_BUFFER)
        for name, addr in addresses.items():
            ctypes.c_void_p.from_address(addr).value = made[name]
        self.files = made
        _ALL.append(made)
        return True

    def flush(self) -> None:
        """Hand what stdout buffers to `write`."""
        _LIBC[0]["fflush"](self.files["stdout"])

    def reset_input(self) -> None:
        """Drop buffered input and the end-of-file mark: a new cell starts
        with no pending input."""
        fns = _LIBC[0]
        fns["__fpurge"](self.files["stdin"])
        fns["clearerr"](self.files["stdin"])
        self._pending = b""

    def _on_write_out(self, _cookie, buf, size):
        return self._on_write("stdout", buf, size)

    def _on_write_err(self, _cookie, buf, size):
        return self._on_write("stderr", buf, size)

    exiting = False

    def _on_write(self, stream, buf, size):
        if NativeStreams.exiting:
            return size
        try:
            if stream == "stderr":
                self.flush()             # what stdout buffers comes first
            self._write(stream, ctypes.string_at(buf, size))
        except BaseException:  # noqa: BLE001 - must not unwind into C
            pass
        return size

    def _on_read(self, _cookie, buf, size):
        if NativeStreams.exiting:
            return 0
        try:
            if not self._pending:
                self.flush()
                line = self._read()
                if line is None:
                    ctypes.set_errno(5)      # EIO: "Input/output error"
                    return -1
                self._pending = line
            n = min(size, len(self._pending))
            ctypes.memmove(buf, self._pending, n)
            self._pending = self._pending[n:]
            return n
        except BaseException:  # noqa: BLE001 - must not unwind into C
            ctypes.set_errno(5)
            return -1



_KEEP: list = []      # callbacks and buffers of every FILE*: never freed
_ALL: list = []       # every state's FILE*s
_PIPE: list = []


def _seek_pipe() -> int:
    if not _PIPE:
        _PIPE.extend(os.pipe())
    return _PIPE[0]


@atexit.register
def _quiet_at_exit() -> None:
    """glibc's exit flushes and syncs every FILE*, after Python has finished:
    nothing may be left for it to hand to a callback. Output still buffered
    now is dropped (no cell runs any more), pending input too; from now on
    stdout is unbuffered, so a late write (a __gc while a state is freed)
    calls its callback at once, while Python still runs."""
    if _LIBC is None:
        return
    fns = _LIBC[0]
    NativeStreams.exiting = True
    for made in _ALL:
        fns["fflush"](made["stdout"])
        fns["setvbuf"](made["stdout"], None, _IONBF, 0)
        fns["__fpurge"](made["stdin"])
    # the callbacks must outlive the interpreter's teardown of this module
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(_KEEP))
