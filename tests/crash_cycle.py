"""Kill a kernel at a random moment during a burst of quick cells; the next
kernel for the same notebook must hold every cell whose reply arrived.

Used by tests/test_durability.py (10 kills) and benchmarks/crash_stress.py
(100 kills, figures for RESULTS.md).
"""
from __future__ import annotations

import os
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass

from jupyter_client.manager import start_new_kernel

CELL = "n = (n or 0) + 1; log = log or {}; log[#log + 1] = n"
CHECK = """(function()
  local ok = true
  for i, v in ipairs(log or {}) do ok = ok and v == i end
  return n or 0, #(log or {}), ok
end)()"""


@dataclass
class Cycle:
    mode: str          # "queued" (the whole burst sent at once) or "sequential"
    sent: int          # cells sent to the killed kernel
    acked: int         # of those, replies received (status ok)
    restored: int      # n in the next kernel
    expected: int      # every acknowledged cell so far
    consistent: bool   # #log == n and log[i] == i

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.restored)


def start(env: dict):
    return start_new_kernel(kernel_name="lua", startup_timeout=60,
                            env={**os.environ, **env})


def _kill_later(km, delay: float) -> threading.Timer:
    pid = km.provisioner.process.pid
    timer = threading.Timer(delay, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def _alive(km) -> bool:
    return km.provisioner.process.poll() is None


def burst(km, kc, rng: random.Random, mode: str, cells: int = 50) -> tuple[int, int]:
    """Send quick cells and SIGKILL the kernel at a random moment;
    returns (sent, acknowledged)."""
    timer = _kill_later(km, rng.uniform(0.0, 0.25))
    acked, sent, pending = 0, 0, set()
    try:
        if mode == "queued":
            pending = {kc.execute(CELL) for _ in range(cells)}
            sent = cells
        while _alive(km) or pending:
            if mode == "sequential" and not pending and sent < cells and _alive(km):
                pending.add(kc.execute(CELL))
                sent += 1
            try:
                msg = kc.get_shell_msg(timeout=0.3 if not _alive(km) else 0.05)
            except queue.Empty:
                if not _alive(km):
                    break          # dead, and nothing more in flight
                if mode == "sequential" and sent >= cells and not pending:
                    time.sleep(0.01)
                continue
            parent = msg["parent_header"].get("msg_id")
            if parent in pending:
                pending.discard(parent)
                acked += msg["content"]["status"] == "ok"
    finally:
        timer.join()
        km.provisioner.process.wait(10)
    return sent, acked


def check(kc) -> tuple[int, int, bool]:
    msg_id = kc.execute(CHECK)
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_result":
            n, length, ok = msg["content"]["data"]["text/plain"].split("\t")
            return int(n), int(length), ok == "true"
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "error":
            raise AssertionError(msg["content"])


def run(kills: int, notebook: str, seed: int = 0, env: dict | None = None) -> list[Cycle]:
    """`kills` cycles of burst, SIGKILL, restart and check, alternating the
    two burst modes; the state carries on from kernel to kernel."""
    rng = random.Random(seed)
    env = {"JPY_SESSION_NAME": notebook, **(env or {})}
    expected = 0
    cycles = []
    km, kc = start(env)
    try:
        for i in range(kills):
            mode = ("queued", "sequential")[i % 2]
            sent, acked = burst(km, kc, rng, mode)
            kc.stop_channels()
            km.cleanup_resources()
            expected += acked
            km, kc = start(env)
            n, length, ok = check(kc)
            cycles.append(Cycle(mode, sent, acked, n, expected, ok and length == n))
            expected = n        # the next burst counts on from what came back
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return cycles
