"""Jupyter messages -> Session.

All Lua runs in one worker thread, so the kernel's event loop stays free while
a cell runs: SIGINT and interrupt_request are noticed at once and turned into
Session.interrupt(). Output, displays and input requests made by the running
cell are sent from the worker thread with the cell's request as parent.
"""
from __future__ import annotations

import asyncio
import fnmatch
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import zmq
from ipykernel.kernelbase import Kernel

from . import __version__, introspect
from .magics import Magics, is_magic_cell
from .native import lua_release
from .runtime import to_bytes
from .session import LuaError, Session

ANSI_RED, ANSI_RESET = "\x1b[0;31m", "\x1b[0m"
HELP_QUERY = re.compile(r"^\s*([A-Za-z_][\w]*(?:[.:][A-Za-z_]\w*)*)\s*(\?\??)\s*$")


def clean(text: str) -> str:
    """Lua strings may hold any bytes; Jupyter messages must be UTF-8."""
    return to_bytes(text).decode("utf-8", "replace")


class LuaKernel(Kernel):
    implementation = "lua_kernel"
    implementation_version = __version__
    language = "lua"
    language_version = lua_release()
    language_info = {
        "name": "lua",
        "version": language_version,
        "mimetype": "text/x-lua",
        "file_extension": ".lua",
        "codemirror_mode": "lua",
        "pygments_lexer": "lua",
    }
    banner = (f"Lua {language_version} (lupa) — lua_kernel {__version__}\n"
              "Magics: %lsmagic. Help on a name: name? or Shift-Tab.")
    help_links = [
        {"text": "Lua 5.4 Reference Manual", "url": "https://www.lua.org/manual/5.4/"},
        {"text": "Programming in Lua", "url": "https://www.lua.org/pil/"},
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="lua")
        self._cell_parent = None      # the execute_request being run
        self._cell_ident = None
        self._cell_allow_stdin = False
        self.history: list[tuple[int, int, str, str | None]] = []  # session, line, in, out
        self.history_session = 1
        self.lua_session: Session = self._worker.submit(self._new_session).result()
        self.magics = Magics(self.lua_session, self._chunkname)

    def _new_session(self) -> Session:
        return Session(
            stdout=lambda text: self._stream("stdout", text),
            stderr=lambda text: self._stream("stderr", text),
            stdin=self._read_input,
            display=self._display,
            clear_output=self._clear_output,
        )

    def _chunkname(self) -> str:
        return f"In[{self.execution_count}]"

    async def _in_lua(self, fn, *args):
        """Run fn in the Lua worker thread and wait for it without blocking."""
        return await asyncio.wrap_future(self._worker.submit(fn, *args))

    # -- messages sent on behalf of the running cell ---------------------------

    def _iopub(self, msg_type: str, content: dict) -> None:
        self.session.send(self.iopub_socket, msg_type, content,
                          parent=self._cell_parent, ident=self._topic(msg_type))

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
        if not self._cell_allow_stdin:
            raise RuntimeError("this frontend does not support input requests (stdin)")
        while True:   # drop stale replies
            try:
                self.stdin_socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
        self.session.send(self.stdin_socket, "input_request",
                          {"prompt": clean(prompt), "password": False},
                          parent=self._cell_parent, ident=self._cell_ident)
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

    def _on_sigint(self, signum, frame):
        self.lua_session.interrupt()

    # -- execute ----------------------------------------------------------------

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, *, cell_meta=None, cell_id=None):
        self._cell_parent = self.get_parent("shell")
        self._cell_ident = self._shell_ident()
        self._cell_allow_stdin = allow_stdin
        output = None
        try:
            result = await self._in_lua(self._run, code)
        except LuaError as e:
            return self._error_reply(e, silent)
        finally:
            if store_history and not silent:
                self.history.append((self.history_session, self.execution_count, code, None))
        if result is not None and result.show and result.values and not silent:
            data, metadata = await self._in_lua(self.lua_session.format, *result.values)
            data = _clean_bundle(data)
            self._iopub("execute_result", {"execution_count": self.execution_count,
                                           "data": data, "metadata": metadata})
            output = data.get("text/plain")
            if store_history:
                self.history[-1] = self.history[-1][:3] + (output,)
        return {"status": "ok", "execution_count": self.execution_count,
                "payload": self._payload, "user_expressions": {}}

    def _run(self, code: str):
        self._payload = []
        introspect.remember_source(self.lua_session, self._chunkname(), code)
        query = HELP_QUERY.match(code)
        if query:
            self._payload = [self._help_page(code, query)]
            return None
        if is_magic_cell(code):
            return self.magics.run_cell(code)
        return self.lua_session.run_cell(code, self._chunkname())

    def _help_page(self, code: str, query: re.Match) -> dict:
        name, marks = query.groups()
        reply = introspect.inspect(self.lua_session, name, len(name), len(marks) - 1)
        data = reply["data"] if reply["found"] else {"text/plain": f"No Lua value named {name}."}
        return {"source": "page", "data": _clean_bundle(data), "start": 0}

    def _error_reply(self, e: LuaError, silent: bool) -> dict:
        evalue = clean(e.message)
        traceback = [f"{ANSI_RED}{e.ename}{ANSI_RESET}: {evalue}"]
        if e.traceback:
            traceback += clean(e.traceback).split("\n")
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
        return await self._in_lua(introspect.complete, self.lua_session, code, cursor_pos)

    async def do_inspect(self, code, cursor_pos, detail_level=0, omit_sections=()):
        reply = await self._in_lua(introspect.inspect, self.lua_session, code, cursor_pos,
                                   detail_level)
        reply["data"] = _clean_bundle(reply.get("data", {}))
        return reply

    async def do_is_complete(self, code):
        return await self._in_lua(introspect.is_complete, self.lua_session, code)

    async def do_shutdown(self, restart):
        self._worker.shutdown(wait=False, cancel_futures=True)
        return {"status": "ok", "restart": restart}


def _clean_bundle(data: dict) -> dict:
    return {k: clean(v) if isinstance(v, str) else v for k, v in data.items()}
