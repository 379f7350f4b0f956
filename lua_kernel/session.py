"""One Lua state (Lua 5.4, 5.5 or LuaJIT): run cells, route their output,
interrupt them.

This is the Python API that the kernel is built on; it works without Jupyter:

    >>> from lua_kernel import Session
    >>> s = Session()
    >>> s.execute("return 1 + 1, 'two'")
    (2, 'two')
"""
from __future__ import annotations

import base64
import codecs
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import native
from .widgets import WidgetHost
from .runtime import (Runtime, c_modules_load, get_runtime, is_lua_object, is_python_object,
                      load_lua, lua_type, methods_table, module_paths, name_test, new_runtime,
                      to_bytes)

DEFAULT_MAX_MEMORY = 2 * 1024**3
MAX_MEMORY_ENV = "LUA_KERNEL_MAX_MEMORY"
EMULATED_STREAMS_ENV = "LUA_KERNEL_EMULATED_STREAMS"   # set: Lua's streams emulated
FLUSH_BYTES = 65536       # output goes out in pieces of at most about this size
FLUSH_SECONDS = 0.05      # ... and no later than this


class LuaError(Exception):
    """A Lua error raised by a cell: the message, the Lua traceback, the value."""

    ename = "LuaError"

    def __init__(self, message: str, traceback: str = "", value: Any = None):
        super().__init__(message)
        self.message = message
        self.traceback = traceback
        self.value = value

    def __str__(self) -> str:
        return f"{self.message}\n{self.traceback}" if self.traceback else self.message


class LuaSyntaxError(LuaError):
    ename = "LuaSyntaxError"


class LuaMemoryError(LuaError):
    ename = "LuaMemoryError"


class LuaInterrupt(LuaError):
    """The cell was interrupted (the frontend's interrupt, or `interrupt()`)."""

    ename = "KeyboardInterrupt"


@dataclass
class CellResult:
    values: tuple     # the cell's result values
    show: bool        # False for statements and for a trailing ";"


def parse_memory(text: str | int | None) -> int:
    """'512M', '2G', '1000000', 0/'none' (no limit) -> bytes."""
    if text is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(text, int):
        return max(text, 0)
    t = text.strip().lower()
    if t in ("", "0", "none", "off", "unlimited"):
        return 0
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = t.removesuffix("ib").removesuffix("b")
    if t[-1:] in scale:
        return int(float(t[:-1]) * scale[t[-1]])
    return int(float(t))


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _default_stdin(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def _default_display(data: dict, metadata: dict) -> None:
    sys.stdout.write(data.get("text/plain", "") + "\n")


class Session:
    """A Lua state that runs notebook cells: Lua 5.4 unless `runtime` says
    "5.5" or "luajit" (see lua_kernel.runtime.RUNTIMES).

    Output callbacks receive text; `stdin(prompt)` returns a line or None at
    end of input; `display(data, metadata)` receives a MIME bundle and
    `clear_output(wait)` a request to clear the cell's output. `max_memory`
    is bytes, a string such as "512M", or 0 for no limit; by default
    $LUA_KERNEL_MAX_MEMORY or 2 GiB.

    `companions` are other rooms' halves that must see the Lua state from
    its first line: name -> make(session), made at the start of every Lua
    state (and again after reset()) before any user code, and found with
    companion(name). Persistence is one (lua_kernel.persist.new_session):
    it tracks the coroutines and files user code makes.
    """

    def __init__(
        self,
        *,
        stdout: Callable[[str], Any] | None = None,
        stderr: Callable[[str], Any] | None = None,
        stdin: Callable[[str], str | None] | None = None,
        display: Callable[[dict, dict], Any] | None = None,
        clear_output: Callable[[bool], Any] | None = None,
        max_memory: int | str | None = None,
        companions: Mapping[str, Callable[["Session"], Any]] | None = None,
        runtime: str | Runtime | None = None,
    ):
        self.runtime = get_runtime(runtime)
        self.stdout = stdout or (lambda text: sys.stdout.write(text))
        self.stderr = stderr or (lambda text: sys.stderr.write(text))
        self.stdin = stdin or _default_stdin
        self.display = display or _default_display
        self.clear_output = clear_output or (lambda wait: None)
        if max_memory is None:
            max_memory = os.environ.get(MAX_MEMORY_ENV)
        self.max_memory = parse_memory(max_memory)
        self.execution_count = 0
        self._lock = threading.Lock()
        self._companions: dict[str, tuple] = {}
        self._eager = dict(companions or {})
        self._running = False
        self._interrupted = False
        self._flush_timer: threading.Timer | None = None
        self._reserve_lent = False       # the limit is raised after a memory error
        self.cell_sources: dict[str, str] = {}   # chunk name -> cell text (inspection)
        self._start()

    # -- the Lua state ------------------------------------------------------

    def _start(self) -> None:
        if getattr(self, "widgets", None) is not None:
            self.widgets.release()          # reset(): the old state's widgets let go of it
        self.lua = new_runtime(self.max_memory, self.runtime)
        self._reserve_lent = False
        self._print_threads: list[int] = []
        self._interrupter = None
        self._streams = self._native_streams()
        host = methods_table(self.lua, self, {
            "emit": "_emit", "readline": "_readline", "interrupted": "_is_interrupted",
            "output_pending": "_output_pending", "publish": "_publish",
            "display_value": "_display_value", "flush_output": "_flush_output",
            "print_thread": "_print_thread"})
        host["native_streams"] = self._streams is not None
        host["is_name"] = name_test(self.lua)
        self._lua_side = load_lua(self.lua, "session.lua", host)
        before, after, cbefore, cafter = module_paths(self.runtime.language)
        if not c_modules_load(self.lua):     # another Lua's C API is the visible one
            cbefore = cafter = None
        self._lua_side.search_paths(before, after, cbefore, cafter)
        self._repr = load_lua(self.lua, "repr.lua", self._lua_side.is_name)
        self._repr.init(self.lua.globals())
        self.widgets = WidgetHost(self)     # the `widgets` module (ipywidgets, lazily)
        self._interrupter = self._make_interrupter()
        self._fresh_globals = self._globals_now()
        self._companions = {}
        for name, make in self._eager.items():     # before any user code
            self._companions[name] = (self.lua, make(self))

    def _native_streams(self) -> native.NativeStreams | None:
        """io.stdin/io.stdout/io.stderr as Lua's own handles over the notebook
        (docs/design.md, "Output"), where the platform allows; None otherwise
        (lua/session.lua then emulates them)."""
        self._out: list[tuple[str, str]] = []
        self._out_bytes = 0
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("surrogateescape")
                          for name in ("stdout", "stderr")}
        if not native.NativeStreams.supported() or os.environ.get(EMULATED_STREAMS_ENV):
            return None
        streams = native.NativeStreams(self._write_bytes, self._read_bytes)
        where = self.lua.eval("function(f) return string.format('%p', f) end")
        addresses = {name: native.parse_address(where(self.lua.globals().io[name]))
                     for name in ("stdin", "stdout", "stderr")}
        return streams if streams.install(addresses) else None

    def _write_bytes(self, stream: str, data: bytes) -> None:
        """What Lua wrote into a standard stream: gathered into pieces, in order."""
        self._gather(stream, self._decoders[stream].decode(data), len(data))

    def _gather(self, stream: str, text: str, size: int) -> None:
        if self._out and self._out[-1][0] != stream:
            self._emit_gathered()
        self._out.append((stream, text))
        self._out_bytes += size
        if self._out_bytes >= FLUSH_BYTES:
            self._emit_gathered()

    def _emit_gathered(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if out:
            self._emit(out[0][0], "".join(text for _, text in out))

    def _flush_output(self, final: bool = False) -> None:
        """Hand all of Lua's output to the callbacks (`final`: at the end of a
        cell, with an unfinished UTF-8 sequence as it is)."""
        if self._streams is None:
            return
        self._streams.flush()
        if final:
            for stream, decoder in self._decoders.items():
                if tail := decoder.decode(b"", final=True):
                    self._gather(stream, tail, len(tail))
        self._emit_gathered()

    def _read_bytes(self) -> bytes | None:
        """The next line of input for io.stdin: b"" at end of input, None when
        interrupted or when the frontend has no input (said on stderr)."""
        ok, line = self._readline("")
        if not ok:
            if line is not None:
                self._write_bytes("stderr", f"{line}\n".encode("utf-8", "surrogateescape"))
                self._emit_gathered()
            return None
        if line is None:
            return b""
        return (line + "\n").encode("utf-8", "surrogateescape")

    def _make_interrupter(self) -> native.Interrupter | None:
        api = native.library(self.runtime.module)
        if not native.Interrupter.supported(api):
            return None
        # kept: for LuaJIT, probe.main is a thread the probe keeps alive
        self._probe = probe = load_lua(self.lua, "interrupt_probe.lua", self._lua_side.hook,
                                       self._lua_side.sethook)
        main = native.parse_address(probe.main)
        # The hook is registered with a huge count only so that lua_gethook
        # tells us the address of Lua's C hook; then it is disarmed.
        hookf = native.Interrupter.current_hook(api, main)
        probe.disarm()
        wrap_fn = native.MEMORY.pointer(native.parse_address(probe.wrap_closure) + native.CCL_F)
        interrupter = native.Interrupter(
            api, main, hookf, native.parse_address(probe.resume), wrap_fn or 0)
        if not self.runtime.is_luajit:      # the walk reads Lua 5.4 structs (5.5 keeps them)
            probe.check(lambda *chain: interrupter.self_check(
                [native.parse_address(a) for a in chain]))
        interrupter.extra = self._print_threads
        return interrupter

    def _print_thread(self, address: str) -> None:
        """A thread print runs in (lua/session.lua): armed on interrupts."""
        self._print_threads.append(native.parse_address(address))

    def _globals_now(self) -> dict:
        return dict(self.lua.eval(
            "function() local r = {} for k, v in next, _G do "
            "if type(k) == 'string' then r[k] = v end end return r end")().items())

    def user_globals(self) -> list[tuple[str, object]]:
        """(name, value) of the globals the user made or replaced, by name:
        those a fresh state does not have, or has with another value."""
        fresh = self._fresh_globals
        same = self.lua.eval("rawequal")
        return sorted((k, v) for k, v in self._globals_now().items()
                      if k not in fresh or not same(fresh[k], v))

    @property
    def globals(self):
        """The Lua globals table (`_G`)."""
        return self.lua.globals()

    @property
    def lua_side(self):
        """lua/session.lua's module for this runtime: the kernel's Lua half
        (run, flush, display, watch, is_name, hook, ...), for other rooms'
        Lua files."""
        return self._lua_side

    @property
    def repr_lua(self):
        """lua/repr.lua's module for this runtime: how values look."""
        return self._repr

    def companion(self, name: str, make: Callable[["Session"], Any] | None = None):
        """Another room's companion for this Lua runtime (the inspector's Lua
        half, ...): made by `make(session)` at first use, and made again for
        the new runtime after reset(). Without `make`, one given to
        Session(companions=...) or made before; LookupError if there is none."""
        found = self._companions.get(name)
        if found is None or found[0] is not self.lua:
            if make is None:
                raise LookupError(f"this Session has no companion {name!r}")
            found = (self.lua, make(self))
            self._companions[name] = found
        return found[1]

    @property
    def native_streams(self) -> bool:
        """io.stdin/io.stdout/io.stderr are Lua's own handles (see
        docs/design.md, "Output"), not the Lua emulation."""
        return self._streams is not None

    @property
    def interrupts_in_coroutines(self) -> bool:
        # LuaJIT has one hook for the whole VM: arming it reaches every coroutine
        return bool(self._interrupter and (self._interrupter.walk_ok or self.runtime.is_luajit))

    def memory_used(self) -> int:
        return self.lua.get_memory_used()

    def reset(self) -> None:
        """Replace the Lua state with a fresh one (the old one is freed)."""
        self._start()

    # -- running cells ------------------------------------------------------

    def execute(self, code: str, name: str | None = None) -> tuple:
        """Run one cell; return its result values (raise LuaError on errors)."""
        return self.run_cell(code, name).values

    def run_cell(self, code: str, name: str | None = None) -> CellResult:
        """Run one cell; CellResult.show says whether its values should show."""
        if name is None:
            self.execution_count += 1
            name = f"In[{self.execution_count}]"
        self._lua_side.reset_input()
        if self._streams:
            self._streams.reset_input()
        fn, show = self.compile(code, name)
        if fn is None:
            raise LuaSyntaxError(show)
        values = self.call(fn)
        if not values or all(self._lua_side.is_stream(v) for v in values):
            show = False
        return CellResult(values, show)

    def compile(self, code: str, name: str):
        """(function, show) for a cell, or (None, syntax error message)."""
        return self._lua_side.compile(code, "=" + name)

    def call(self, fn, *args) -> tuple:
        """Call a Lua function as a cell would run: interruptible, output
        flushed, errors raised as LuaError with a Lua traceback."""
        with self._lock:
            self._interrupted = False
            self._running = True
        if self._streams:
            self._output_pending()     # the flush tick runs while the cell does
        try:
            result = self._lua_side.run(fn, *args)
        except self.runtime.module.LuaMemoryError:
            result = (False, "memory", "not enough memory", "", None)
        except self.runtime.module.LuaError as e:
            # only an interrupt raised outside the cell's own handler gets here
            if not self._interrupted:
                raise LuaError(str(e)) from None
            result = (False, "interrupt", "interrupted", "", None)
        finally:
            with self._lock:
                self._running = False
                if self._interrupter:
                    self._interrupter.disarm()
        self._mind_reserve(not result[0] and result[1] == "memory")
        self._lua_side.flush()
        self._flush_output(final=True)
        if result[0]:
            return tuple(result[2:2 + result[1]])
        _, kind, message, traceback, value = result
        if kind == "interrupt":
            raise LuaInterrupt("interrupted", traceback or "")
        if kind == "memory":
            limit = format_bytes(self.max_memory) if self.max_memory else "none"
            raise LuaMemoryError(
                f"not enough memory (memory limit: {limit}; "
                f"set {MAX_MEMORY_ENV} to change it)", traceback, value)
        raise LuaError(message, traceback, value)

    def _mind_reserve(self, out_of_memory: bool) -> None:
        """After a cell ran out of memory, the state sits at the limit, and any
        allocation outside a protected call (lupa pushing the next cell's
        source, say) would make Lua panic and end the process; LuaJIT stops
        that close to the limit. So the limit is raised by a reserve until a
        cell ends below the real limit again (after `t = nil`, say)."""
        if not self.max_memory:
            return
        if out_of_memory and not self._reserve_lent:
            reserve = max(self.max_memory // 16, 4 * 1024**2)
            self.lua.set_max_memory(self.max_memory + reserve)
            self._reserve_lent = True
        elif self._reserve_lent and self.memory_used() < self.max_memory:
            self.lua.set_max_memory(self.max_memory)
            self._reserve_lent = False

    def _output_pending(self) -> bool:
        """Lua has buffered output: flush it within FLUSH_SECONDS even if the
        cell goes quiet, by arming the hook from a timer. False when Lua must
        arm a tick itself (no native hook access)."""
        if self._interrupter is None:
            return False
        with self._lock:
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(FLUSH_SECONDS, self._flush_tick)
                self._flush_timer.daemon = True
                self._flush_timer.start()
        return True

    def _flush_tick(self) -> None:
        with self._lock:
            self._flush_timer = None
            if self._running:
                self._interrupter.arm()   # the hook flushes, sees no interrupt, disarms
        if self._streams and self._running:
            self._output_pending()        # native streams: Python cannot see io.write

    @property
    def interrupted(self) -> bool:
        """True once the running cell was asked to stop."""
        return self._interrupted

    def _is_interrupted(self) -> bool:     # for Lua (host.interrupted)
        return self._interrupted

    def interrupt(self) -> bool:
        """Stop the running cell as soon as possible; safe from any thread or
        a signal handler. Returns False when no cell is running."""
        with self._lock:
            if not self._running:
                return False
            self._interrupted = True
            if self._interrupter:
                self._interrupter.arm()
        return True

    # -- how values look ----------------------------------------------------

    def text(self, value) -> str:
        """text/plain for one Lua value."""
        return self._repr.text(value)

    def format(self, *values) -> tuple[dict, dict]:
        """A MIME bundle (data, metadata) showing the values."""
        if len(values) == 1 and is_python_object(values[0]):
            return _python_bundle(values[0])
        if len(values) == 1 and (bundle := self.widgets.bundle(values[0])) is not None:
            return bundle
        texts = [self.text(v) for v in values]
        sep = "\n" if any("\n" in t for t in texts) else "\t"
        data = {"text/plain": sep.join(texts)}
        if len(values) == 1 and lua_type(values[0]) == "table":
            html = self._lua_side.html_of(values[0], self._repr)
            if html is not None:
                data["text/html"] = html
        return data, {}

    # -- callbacks from Lua -------------------------------------------------

    def _emit(self, stream: str, text: str) -> None:
        (self.stdout if stream == "stdout" else self.stderr)(text)

    def _readline(self, prompt: str):
        """(True, line) or (True, None) at end of input, (False, message) on
        failure, (False, None) when interrupted while waiting."""
        try:
            line = self.stdin(prompt)
        except Exception as e:  # noqa: BLE001 - reported to Lua as an error
            return False, f"input is not available: {e}"
        if self._interrupted:
            return False, None
        return True, line

    def _publish(self, kind: str, data, meta=None) -> None:
        metadata = dict(meta.items()) if is_lua_object(meta) else {}
        if kind == "clear":
            self.clear_output(bool(data))
            return
        mime, plain = _DISPLAY_KINDS[kind]
        if kind in ("png", "jpeg"):
            payload = base64.b64encode(to_bytes(data)).decode("ascii")
        elif kind == "json":
            payload = lua_to_json(data, self._lua_side.address)
        else:
            payload = data
        bundle = {mime: payload, "text/plain": data if plain is None else plain}
        self.display(bundle, {mime: metadata} if metadata else {})

    def _display_value(self, value) -> None:
        self.display(*self.format(value))


# kind -> (MIME type, text/plain fallback; None means the data itself)
_DISPLAY_KINDS = {
    "html": ("text/html", "<HTML>"),
    "markdown": ("text/markdown", None),
    "svg": ("image/svg+xml", "<SVG image>"),
    "png": ("image/png", "<PNG image>"),
    "jpeg": ("image/jpeg", "<JPEG image>"),
    "latex": ("text/latex", None),
    "json": ("application/json", "<JSON>"),
    "javascript": ("application/javascript", "<JavaScript>"),
}


def _python_bundle(obj) -> tuple[dict, dict]:
    """Python objects display through their own reprs (IPython's formatter)."""
    try:
        from IPython.core.formatters import DisplayFormatter
    except ImportError:  # pragma: no cover - ipykernel always brings IPython
        return {"text/plain": repr(obj)}, {}
    data, metadata = DisplayFormatter().format(obj)
    return data, metadata


def lua_to_json(value, address: Callable[[Any], str], _seen: frozenset = frozenset()):
    """A Lua table as JSON-able Python data: sequences become lists.
    `address(t)` names a table's identity (lupa wrappers do not)."""
    if not is_lua_object(value):
        if isinstance(value, str):
            return to_bytes(value).decode("utf-8", "replace")
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return str(value)
    if lua_type(value) != "table":
        return str(value)
    ident = address(value)
    if ident in _seen:
        raise ValueError("display.json: the table contains itself")
    seen = _seen | {ident}
    items = list(value.items())
    keys = [k for k, _ in items]
    if keys and all(type(k) is int for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        return [lua_to_json(value[i], address, seen) for i in range(1, len(keys) + 1)]
    return {str(k): lua_to_json(v, address, seen) for k, v in items}
