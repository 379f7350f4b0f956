"""A small synchronous driver for a real kernel process (jupyter_client)."""
from __future__ import annotations

import queue
import time
from contextlib import contextmanager

from jupyter_client.manager import start_new_kernel


@contextmanager
def running_kernel(stderr=None, cwd=None, kernel_name="lua", **env):
    """Start an installed kernel (`lua`, `lua55`, `luajit`); yield (manager,
    client). `stderr`: a file for the kernel process's log; `cwd`: its
    directory (Jupyter starts a notebook's kernel in the notebook's directory)."""
    import os

    kw = {"env": {**os.environ, **env}} if env else {}
    if stderr is not None:
        kw["stderr"] = stderr
    if cwd is not None:
        kw["cwd"] = str(cwd)
    km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=60, **kw)
    try:
        yield km, kc
    finally:
        # a graceful shutdown_request, as frontends send (the kernel saves its
        # state); jupyter_client kills the kernel if it does not exit in time
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def execute(kc, code: str, timeout: float = 30, stdin=None, metadata=None):
    """Run a cell; return (reply, iopub messages of that cell, in order).

    `stdin`, if given, is a list of answers to the cell's input requests
    (and allows them); the input requests themselves are collected in
    `reply["input_requests"]`. `metadata` is the request's metadata (VS Code
    sends {"cellId": ...})."""
    if metadata is None:
        msg_id = kc.execute(code, allow_stdin=stdin is not None)
    else:
        msg = kc.session.msg("execute_request", {
            "code": code, "silent": False, "store_history": True,
            "allow_stdin": stdin is not None, "user_expressions": {}, "stop_on_error": True})
        msg["metadata"].update(metadata)
        kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
    answers = list(stdin or [])
    requests = []
    deadline = time.monotonic() + timeout
    reply = None
    while reply is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {code!r} within {timeout}s")
        if stdin is not None:
            try:
                req = kc.get_stdin_msg(timeout=0.02)
                requests.append(req)
                if answers:
                    kc.input(answers.pop(0))
            except queue.Empty:
                pass
        try:
            msg = kc.get_shell_msg(timeout=0.02)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            reply = msg
    reply["input_requests"] = requests
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        if msg["msg_type"] not in ("status", "execute_input"):
            messages.append(msg)
    return reply, messages


def stdout_of(messages, name="stdout") -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def value(kc, code):
    """A cell's text/plain result (None when it shows nothing); the cell must succeed."""
    reply, msgs = execute(kc, code)
    assert reply["content"]["status"] == "ok", msgs
    results = [m for m in msgs if m["msg_type"] == "execute_result"]
    return results[0]["content"]["data"]["text/plain"] if results else None


def interrupt_until_the_kernel_ends(km, kc, code: str) -> str:
    """Run `code` (a cell no interrupt can stop) and interrupt it twice: the
    first interrupt must not land; the second, after the grace period (set
    LUA_KERNEL_INTERRUPT_GRACE=1 in the kernel's environment), must end the
    kernel with exit code 70. Returns what the cell printed."""
    import time

    msg_id = kc.execute(code)
    time.sleep(0.5)
    km.interrupt_kernel()
    time.sleep(1.5)
    assert km.is_alive()                                 # the first one did not land
    km.interrupt_kernel()
    km.provisioner.process.wait(15)
    assert km.provisioner.process.returncode == 70
    said = ""
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty: nothing more
            break
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            said += msg["content"]["text"]
    return said
