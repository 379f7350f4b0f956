"""Jupyter messages -> Session.

All Lua runs in one worker thread, so the kernel's event loop stays free while
a cell runs: SIGINT and interrupt_request are noticed at once and turned into
Session.interrupt(). Output, displays and input requests made by the running
cell are sent from the worker thread with the cell's request as parent.
"""
from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import zmq
from ipykernel.iostream import OutStream
from ipykernel.kernelbase import Kernel
from traitlets import Float

from . import __version__, introspect, persist, widgets
from .magics import Magics, is_magic_cell
from .native import lua_release
from .persistence import Persistence, key_from_cell_id
from .persistence_magics import PersistenceMagics
from .runtime import Runtime, get_runtime, to_bytes
from .session import LuaError, Session

ANSI_RED, ANSI_RESET = "\x1b[0;31m", "\x1b[0m"
# An interrupt that has not landed after this many seconds (a __gc finalizer
# that loops, one huge C call) makes the next interrupt end the kernel.
ESCALATE_ENV, ESCALATE_AFTER = "LUA_KERNEL_INTERRUPT_GRACE", 3.0
HELP_QUERY = re.compile(r"^\s*([A-Za-z_][\w]*(?:[.:][A-Za-z_]\w*)*)\s*(\?\??)\s*$")


def kernel_class(runtime: str | None = None) -> type:
    """The kernel class for a runtime ("5.5", "luajit"; None: Lua 5.4)."""
    rt = get_runtime(runtime)
    if rt is LuaKernel.runtime:
        return LuaKernel
    return type(f"LuaKernel_{rt.kernel_name}", (LuaKernel,), _describe(rt))


def clean(text: str) -> str:
    """Lua strings may hold any bytes; Jupyter messages must be UTF-8."""
    return to_bytes(text).decode("utf-8", "replace")


class ShuttingDown(Exception):
    """A request that arrived after shutdown_request."""


class QuietOutStream(OutStream):
    """sys.stdout/sys.stderr of the kernel process (Python's own output, such
    as Python's print called from Lua). ipykernel flushes both four times per
    execute_request, each a round trip to its IO thread; Lua's output never
    passes here (the kernel sends it itself), so a flush waits only when
    something was written since the last one. `interleave()`, set by the
    kernel, says whether a write comes from a running Lua job (having sent
    Lua's buffered output first): then it is sent at once, in order."""

    dirty = False
    interleave: Callable[[], bool] | None = None

    def write(self, string):
        interleave = self.interleave is not None and self.interleave()
        self.dirty = True
        n = super().write(string)
        if interleave:
            self.flush()
        return n

    def flush(self):
        if self.dirty:
            self.dirty = False
            super().flush()


def _describe(runtime: Runtime) -> dict:
    """What a kernel of this runtime says about itself (kernel_info)."""
    release = lua_release(runtime.module)          # "5.4.8", "LuaJIT 2.1.1774896198"
    named = release if runtime.is_luajit else f"Lua {release}"
    manual = f"https://www.lua.org/manual/{runtime.language}/"
    links = [{"text": f"Lua {runtime.language} Reference Manual", "url": manual}]
    if runtime.is_luajit:
        links.append({"text": "LuaJIT extensions", "url": "https://luajit.org/extensions.html"})
    return {
        "runtime": runtime,
        "language_version": release.split()[-1],
        "language_info": {
            "name": "lua",
            "version": release.split()[-1],
            "mimetype": "text/x-lua",
            "file_extension": ".lua",
            "codemirror_mode": "lua",
            "pygments_lexer": "lua",
        },
        "banner": (f"{named} (lupa) — lua_kernel {__version__}\n"
                   "Magics: %lsmagic. Help on a name: name? or Shift-Tab."),
        "help_links": links + [{"text": "Programming in Lua", "url": "https://www.lua.org/pil/"}],
    }


class LuaKernel(Kernel):
    implementation = "lua_kernel"
    implementation_version = __version__
    language = "lua"
    # Lua 5.4; kernel_class() makes the subclasses of the other runtimes
    _about = _describe(get_runtime())
    runtime, language_version, language_info = (
        _about["runtime"], _about["language_version"], _about["language_info"])
    banner, help_links = _about["banner"], _about["help_links"]
    del _about

    # ipykernel sleeps 0.5 ms before every execute_reply so that output
    # flushed through sys.stdout reaches the frontend first; ours is sent in
    # order before the reply is (the cell's job ends with its flush), and
    # QuietOutStream.flush still waits for Python's own output.
    _execute_sleep = Float(0.0).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="lua")
        self._shut_down = False
        self._cell_parent = None      # the execute_request being run
        self._cell_ident = None
        self._cell_allow_stdin = False
        # what the Lua thread's current job answers (a cell or a widget comm):
        # (parent, ident, allow_stdin, thread id); its output goes out under it
        self._job: tuple | None = None
        self.history: list[tuple[int, int, str, str | None]] = []  # session, line, in, out
        self.history_session = 1
        self.persistence = Persistence(log=self.log, request_capture=self._request_capture,
                                       runtime=self.runtime)
        self._interrupt_since: float | None = None    # the running cell's first interrupt
        self._escalate_after = float(os.environ.get(ESCALATE_ENV) or ESCALATE_AFTER)
        # widgets (issue 11): comms, answered in the Lua thread like cells
        self.comm_manager = widgets.install_comms(self)
        for msg_type in ("comm_open", "comm_msg", "comm_close"):
            self.shell_handlers[msg_type] = self._comm_request
        widgets.FRONTEND.parent = lambda: self._request()[0]
        widgets.FRONTEND.show_error = lambda session, e: self._error_reply(e, False)
        restored = self._worker.submit(self.persistence.at_start, self.make_session).result()
        self.lua_session: Session = restored or self._worker.submit(self._new_session).result()
        self.magics = Magics(self.lua_session, self._chunkname)
        PersistenceMagics(self.persistence, self.magics, self)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, QuietOutStream):
                stream.interleave = self._python_output

    def _session_kwargs(self) -> dict:
        return dict(
            stdout=lambda text: self._stream("stdout", text),
            stderr=lambda text: self._stream("stderr", text),
            stdin=self._read_input,
            display=self._display,
            clear_output=self._clear_output,
            runtime=self.runtime,
        )

    def _new_session(self) -> Session:
        return persist.new_session(**self._session_kwargs())

    # -- what persistence needs from the kernel (persistence_magics.Host):
    #    lua_session, make_session, use_session, snapshot_extras

    def make_session(self, data: bytes) -> persist.Restored:
        """A session from a snapshot; the kernel's counters continue from it, so
        chunk names (In[n]) of restored functions stay unique."""
        restored = persist.restore(data, **self._session_kwargs())
        extras = restored.info.kernel
        restored.session.cell_sources = dict(extras.get("cell_sources", {}))
        self.execution_count = max(self.execution_count, extras.get("execution_count", 0))
        return restored

    def use_session(self, session: Session) -> None:
        self.lua_session = session
        self.magics.session = session

    def snapshot_extras(self) -> dict:
        """The kernel's own part of a snapshot."""
        return {"execution_count": self.execution_count,
                "cell_sources": self.lua_session.cell_sources}

    def _chunkname(self) -> str:
        return f"In[{self.execution_count}]"

    async def _in_lua(self, fn, *args):
        """Run fn in the Lua worker thread and wait for it without blocking.
        Requests still queued when the kernel shuts down are aborted."""
        try:
            return await asyncio.wrap_future(self._worker.submit(fn, *args))
        except (RuntimeError, asyncio.CancelledError):
            if self._shut_down:
                raise ShuttingDown from None
            raise

    # -- messages sent on behalf of the running cell ---------------------------

    def _request(self) -> tuple:
        """(parent, ident, allow_stdin) of the request being answered here: in
        the Lua thread its job's (a widget callback queued behind a cell may
        still run while the next cell is set up), elsewhere the cell's."""
        job = self._job
        if job is not None and job[3] == threading.get_ident():
            return job[:3]
        return self._cell_parent, self._cell_ident, self._cell_allow_stdin

    def _start_job(self, parent, ident, allow_stdin: bool) -> None:
        self._job = (parent, ident, allow_stdin, threading.get_ident())
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, OutStream):     # Python's own output, under the job
                stream.set_parent(parent)

    def _python_output(self) -> bool:
        """Python writes to sys.stdout/stderr: from the Lua thread (Python's
        print called from Lua), Lua's buffered output goes out first."""
        job = self._job
        if job is None or job[3] != threading.get_ident():
            return False
        self.lua_session.lua_side.flush()
        return True

    def _iopub(self, msg_type: str, content: dict) -> None:
        self.session.send(self.iopub_socket, msg_type, content,
                          parent=self._request()[0], ident=self._topic(msg_type))

    def _stream(self, name: str, text: str) -> None:
        self._iopub("stream", {"name": name, "text": clean(text)})

    def _display(self, data: dict, metadata: dict) -> None:
        self._iopub("display_data", {"data": _clean_bundle(data), "metadata": metadata,
                                     "transient": {}})

    def _clear_output(self, wait: bool) -> None:
        self._iopub("clear_output", {"wait": wait})

    def _read_input(self, prompt: str) -> str | None:
        """Jupyter's input_request, from the worker thread; None at EOF or
        when the cell is interrupted while waiting."""
        parent, ident, allow_stdin = self._request()
        if not allow_stdin:
            raise RuntimeError("this frontend does not support input requests (stdin)")
        while True:   # drop stale replies
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self.session.send(self.stdin_socket, "input_request",
                          {"prompt": clean(prompt), "password": False},
                          parent=parent, ident=ident)
        while not self.lua_session.interrupted:
            if self.stdin_socket.poll(50):
                _, reply = self.session.recv(self.stdin_socket)
                if reply is None:
                    continue
                value = reply["content"].get("value", "")
                return None if value == "\x04" else value
        return None

    # -- interrupts -------------------------------------------------------------

    def pre_handler_hook(self):
        # SIGINT (the frontend's interrupt button; interrupt_request sends it
        # too) stops the running cell instead of raising KeyboardInterrupt in
        # the event loop.
        self.saved_sigint_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def post_handler_hook(self):
        # ipykernel ignores SIGINT between handlers; ours stays, so Ctrl-C
        # reaches a widget callback queued behind a cell or sent on a
        # subshell. Between cells it does nothing (interrupt() is False).
        pass

    def _on_sigint(self, signum, frame):
        if self.lua_session.interrupt():
            now = time.monotonic()
            if self._interrupt_since is None:
                self._interrupt_since = now
            elif now - self._interrupt_since >= self._escalate_after:
                self._end_unresponsive(now - self._interrupt_since)

    def _end_unresponsive(self, waited: float) -> None:
        """The interrupt never landed (Lua runs __gc finalizers with hooks off;
        one C call can run for minutes): end this process on purpose. The
        frontend starts a new kernel, which restores the state committed
        after the last completed cell and says what happened."""
        why = (f"an interrupt had not landed after {waited:.0f} s (Lua was stuck where it "
               f"cannot be interrupted: a __gc finalizer, a long C call, ...)")
        self._stream("stderr", f"\nThe interrupt did not land for {waited:.0f} s: ending this "
                               f"kernel. The next kernel comes back with the state after the "
                               f"last completed cell.\n")
        self.log.error("lua_kernel: %s; ending the kernel process", why)
        self.persistence.mark_ended(why)
        time.sleep(0.2)             # let the message leave
        os._exit(70)

    # -- execute ----------------------------------------------------------------

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, *, cell_meta=None, cell_id=None):
        self._cell_parent = self.get_parent("shell")
        self._cell_ident = self._shell_ident()
        self._cell_allow_stdin = allow_stdin
        if self.persistence.key is None:
            await self._key_from_frontend(cell_meta, cell_id)
        notice = None if silent else self.persistence.take_notice()
        if notice:
            self._stream("stdout", notice + "\n")
        self._tell_persistence(silent)
        if store_history and not silent:
            self.history.append((self.history_session, self.execution_count, code, None))
        try:
            result, shown = await self._in_lua(self._cell, code, silent)
        except LuaError as e:
            return self._error_reply(e, silent)
        except ShuttingDown:
            return {"status": "aborted", "execution_count": self.execution_count}
        finally:
            self._interrupt_since = None
            self._tell_persistence(silent)
        if shown is not None:
            data = _clean_bundle(shown[0])
            self._iopub("execute_result", {"execution_count": self.execution_count,
                                           "data": data, "metadata": shown[1]})
            if store_history:
                self.history[-1] = self.history[-1][:3] + (data.get("text/plain"),)
        return {"status": "ok", "execution_count": self.execution_count,
                "payload": self._payload, "user_expressions": {}}

    def _cell(self, code: str, silent: bool):
        """In the Lua thread: run the cell, format what it shows, and commit
        the new state before the reply can go out (Persistence.after_cell)."""
        self._start_job(self._cell_parent, self._cell_ident, self._cell_allow_stdin)
        try:
            result = self._run(code)
            shown = None
            if result is not None and result.show and result.values and not silent:
                shown = self.lua_session.format(*result.values)
            return result, shown
        finally:
            if not silent:
                self.persistence.after_cell(self.lua_session, self.snapshot_extras())

    def _tell_persistence(self, silent: bool) -> None:
        """Save failures and lease news go to the cell's stderr, once."""
        if not silent:
            for text in self.persistence.take_messages():
                self._stream("stderr", text + "\n")

    async def _key_from_frontend(self, cell_meta, cell_id) -> None:
        """VS Code names the notebook in its cell ids; a kernel that had no key
        takes it from the first cell, and restores if it has run nothing yet."""
        key = key_from_cell_id(cell_id or (cell_meta or {}).get("cellId"))
        if key is None:
            return
        self.persistence.use_key(key)
        if self.execution_count <= 1 and not self.lua_session.user_globals():
            restored = await self._in_lua(self.persistence.at_start, self.make_session)
            if restored is not None:
                self.use_session(restored)

    def _request_capture(self) -> None:
        """A big state is captured in the Lua thread between cells."""
        try:
            self._worker.submit(self._capture_due)
        except RuntimeError:        # shutting down: the final save covers it
            pass

    def _capture_due(self) -> None:
        try:
            self.persistence.capture_due(self.lua_session, self.snapshot_extras())
        except Exception as e:  # noqa: BLE001 - a failed autosave must not kill the kernel
            self.log.error("autosave failed: %s", e)

    def _run(self, code: str):
        self._payload = []
        introspect.remember_source(self.lua_session, self._chunkname(), code)
        query = HELP_QUERY.match(code)
        if query:
            self._payload = [self._help_page(query)]
            return None
        if is_magic_cell(code):
            return self.magics.run_cell(code)
        return self.lua_session.run_cell(code, self._chunkname())

    def _help_page(self, query: re.Match) -> dict:
        name, marks = query.groups()
        reply = introspect.inspect(self.lua_session, name, len(name), len(marks) - 1)
        data = reply["data"] if reply["found"] else {"text/plain": f"No Lua value named {name}."}
        return {"source": "page", "data": _clean_bundle(data), "start": 0}

    def _error_reply(self, e: LuaError, silent: bool) -> dict:
        evalue = clean(e.message)
        traceback = [f"{ANSI_RED}{e.ename}{ANSI_RESET}: {evalue}"]
        frames = [f for f in clean(e.traceback).split("\n")[1:] if f.strip()]
        if frames:
            # as IPython shows it: the cell's own line first, the error last
            traceback = (["Traceback (most recent call last):"]
                         + ["  " + f.strip() for f in reversed(frames)] + traceback)
        content = {"ename": e.ename, "evalue": evalue, "traceback": traceback}
        if not silent:
            self._iopub("error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    def _shell_ident(self):
        # ipykernel 7 keeps the requester's identity in a context variable,
        # ipykernel 6 in a dict; the input request must be addressed to it.
        getter = getattr(self, "_get_shell_context_var", None)
        if getter is not None:
            return getter(self._shell_parent_ident)
        return self._parent_ident.get("shell")

    # -- comms (widgets) ----------------------------------------------------------

    async def _comm_request(self, stream, ident, msg):
        """comm_open / comm_msg / comm_close run in the Lua thread, after the
        cell before them and never beside one; output and errors of the Lua
        callbacks they cause have the comm message as parent, and the idle
        status follows them (a widget manager's Output capture needs the
        request alive until then). ipykernel 7 dispatches a comm that arrives
        while another request runs at once, without busy/idle, and restores
        the shell parent when the handler returns: such a comm is queued and
        not waited for, or that restore would land on a later request (whose
        idle then went out under the wrong parent). JupyterLab sends widget
        comms on a subshell (another thread): see post_handler_hook."""
        if _dispatched_beside_another_request():
            try:
                job = self._worker.submit(self._comm_in_lua, stream, ident, msg)
            except RuntimeError:        # shutting down
                return
            job.add_done_callback(self._log_comm_failure)
            return
        try:
            await self._in_lua(self._comm_in_lua, stream, ident, msg)
        except ShuttingDown:
            pass

    def _log_comm_failure(self, job) -> None:
        if not job.cancelled() and job.exception() is not None:
            self.log.error("a comm message failed: %r", job.exception())

    def _comm_in_lua(self, stream, ident, msg):
        self._start_job(msg, ident, False)
        try:
            getattr(self.comm_manager, msg["header"]["msg_type"])(stream, ident, msg)
            self.lua_session.widgets.run_events()
        finally:
            self._interrupt_since = None

    # -- history ----------------------------------------------------------------

    async def do_history(self, hist_access_type, output, raw, session=None, start=None,
                         stop=None, n=None, pattern=None, unique=False, **kwargs):
        entries = self.history
        if hist_access_type == "range":
            session = session or self.history_session
            entries = [h for h in entries if h[0] == session
                       and (start is None or h[1] >= start) and (stop is None or h[1] < stop)]
        elif hist_access_type == "search":
            glob = fnmatch.translate(pattern or "*")
            entries = [h for h in entries if re.match(glob, h[2], re.S)]
            if unique:
                seen, kept = set(), []
                for h in reversed(entries):
                    if h[2] not in seen:
                        seen.add(h[2])
                        kept.append(h)
                entries = kept[::-1]
        if hist_access_type in ("tail", "search") and n is not None:
            entries = entries[-n:] if n else []
        history = [(s, line, (code, out) if output else code) for s, line, code, out in entries]
        return {"status": "ok", "history": history}

    # -- introspection ----------------------------------------------------------

    async def do_complete(self, code, cursor_pos):
        return await self._ask(introspect.complete, code, cursor_pos)

    async def do_inspect(self, code, cursor_pos, detail_level=0, omit_sections=()):
        reply = await self._ask(introspect.inspect, code, cursor_pos, detail_level)
        reply["data"] = _clean_bundle(reply.get("data", {}))
        return reply

    async def do_is_complete(self, code):
        return await self._ask(introspect.is_complete, code)

    async def _ask(self, fn, *args) -> dict:
        try:
            return await self._in_lua(fn, self.lua_session, *args)
        except ShuttingDown:
            return {"status": "aborted"}

    async def do_shutdown(self, restart):
        try:
            await self._in_lua(self.persistence.shutdown, self.lua_session, self.snapshot_extras(),
                               restart)
        except Exception as e:  # noqa: BLE001 - shutting down regardless
            self.log.warning("could not save the Lua state at shutdown: %s", e)
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._shut_down = True
        return {"status": "ok", "restart": restart}

    def _on_sigterm(self, signum, frame):
        """Save, then exit: a running cell is interrupted first. After a
        shutdown request (which saved already; a kernel manager may still
        send SIGTERM) there is nothing left to save."""
        if self._shut_down:
            os._exit(0)         # saved already; exiting from here is quiet
        self.lua_session.interrupt()
        try:
            self._worker.submit(self.persistence.shutdown, self.lua_session, self.snapshot_extras(),
                                False).result(timeout=60)
        except Exception as e:  # noqa: BLE001
            self.log.warning("could not save the Lua state on SIGTERM: %s", e)
        sys.exit(0)


def _dispatched_beside_another_request() -> bool:
    """True when ipykernel 7 runs this handler concurrently (its
    dispatch_shell(concurrent=True), the frame that awaits the handler)."""
    frame = sys._getframe(2)      # _comm_request's caller: dispatch_shell
    return frame.f_code.co_name == "dispatch_shell" and bool(frame.f_locals.get("concurrent"))


def _clean_bundle(data: dict) -> dict:
    return {k: clean(v) if isinstance(v, str) else v for k, v in data.items()}

