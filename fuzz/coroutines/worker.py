"""Worker processes: `python -m fuzz.coroutines.worker` answers pickled
requests on stdin with pickled answers on (the original) stdout:
("step", args) -> driver.restored_step(*args), ("check", program) ->
driver.check(program) with a helper worker of its own for "process" steps.
"""
from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import traceback
from pathlib import Path

from . import driver
from .driver import Hang, WorkerFailed, check, restored_step

ROOT = Path(__file__).resolve().parents[2]
PROCESS_SECONDS = 120.0     # a process not answering in this time hangs


class Worker:
    """A Python process answering requests; started on first use, restarted
    after it died or did not answer in time."""

    def __init__(self, seconds: float = PROCESS_SECONDS, runtime: str | None = None):
        self.seconds = seconds
        self.runtime = runtime or driver.RUNTIME
        self.proc = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen([sys.executable, "-m", "fuzz.coroutines.worker",
                                      self.runtime],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def ask(self, request):
        """The answer, or WorkerFailed('hang' / 'crash', detail)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            pickle.dump(request, self.proc.stdin)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.seconds)
            if not ready:
                self.stop()
                raise WorkerFailed("hang", f"no answer from a worker process in {self.seconds}s")
            status, value = pickle.load(self.proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            code = self.proc.wait()
            self.proc = None
            raise WorkerFailed("crash", f"a worker process died (exit code {code})") from None
        if status != "ok":
            raise WorkerFailed(status, value)
        return value

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def serve(inp, out) -> None:
    helper = None
    while True:
        try:
            kind, arg = pickle.load(inp)
        except EOFError:
            break
        try:
            if kind == "step":
                answer = ("ok", restored_step(*arg))
            else:
                helper = helper or Worker()
                answer = ("ok", check(arg, helper))
        except Hang as e:
            answer = ("hang", str(e))
        except WorkerFailed as e:
            answer = (e.outcome, e.detail)
        except Exception:  # noqa: BLE001 - any Python exception is an outcome
            answer = ("crash", traceback.format_exc())
        pickle.dump(answer, out)
        out.flush()
    if helper:
        helper.stop()


if __name__ == "__main__":
    driver.use_runtime(sys.argv[1] if len(sys.argv) > 1 else "5.4")
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)            # whatever the Lua side prints goes to stderr
    serve(sys.stdin.buffer, answers)
