"""Run a generated program natively and through snapshots; compare the logs.

* native: prelude, setup and every step in one Session, never saved (twice,
  in two sessions: the logs must agree, or the generator is at fault);
* restored: prelude and setup in a Session, then, for every step and once
  more at the end, `state.capture` the state and `state.apply` it into a fresh
  Session that runs the step. Per step (seeded) the body is applied once,
  applied-captured-applied ("twice"), or sent to a helper process
  ("process", worker.py) that does the step and sends back the new body.

Outcomes: ok, mismatch (with a class: the shape of the first differing
line), refused (capture or apply issues; a refused coroutine comes back nil),
crash (a Python exception, or a process dying), hang (a chunk running longer
than STEP_SECONDS, or a process not answering), nondeterministic (the two
native runs differ: a generator bug).
"""
from __future__ import annotations

import random
import re
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lua_kernel import LuaError, LuaInterrupt, Session
from lua_kernel.persist import new_session as persist_session
from lua_kernel.persist import state

from .gen import Program, generate

PRELUDE = (Path(__file__).parent / "prelude.lua").read_text(encoding="utf-8")
RUNTIME = "5.4"             # the Lua the programs run on (use_runtime)
STEP_SECONDS = 5.0          # a chunk running longer hangs
MODES = ["once", "once", "twice", "process"]


class Hang(Exception):
    pass


def use_runtime(key: str) -> None:
    """Run programs on runtime `key` ("5.4", "5.5"), with its frame readers
    attached even if persist.state does not list it yet (the fuzzer is one
    of the checks a runtime passes before it is listed)."""
    global RUNTIME
    RUNTIME = key
    state.FRAME_RUNTIMES = state.FRAME_RUNTIMES | {key}


def new_session():
    return persist_session(runtime=RUNTIME)


@dataclass
class Result:
    seed: int
    outcome: str                    # ok mismatch refused crash hang nondeterministic
    klass: str = ""                 # mismatch signature / refusal reason / detail
    native: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.outcome}:{self.klass}" if self.klass else self.outcome


# -- running chunks ---------------------------------------------------------------

def run_chunk(s: Session, code: str, name: str) -> None:
    """Run one chunk; an error it raises is logged as a line, as is a chunk
    that does not compile. Raise Hang if it runs too long."""
    fn, err = s.lua.eval("function(c, n) local f, e = load(c, '=' .. n); return f, e or '' end")(code, name)
    if fn is None:
        s.lua.globals().L("load error", err)
        return
    timer = threading.Timer(STEP_SECONDS, s.interrupt)
    timer.start()
    try:
        s.call(fn)
    except LuaInterrupt:
        raise Hang(f"{name} ran longer than {STEP_SECONDS}s") from None
    except LuaError as e:
        s.lua.globals().L("chunk error", name, e.message)
    finally:
        timer.cancel()


def read_log(s: Session) -> list[str]:
    text = s.lua.eval("function() return table.concat(log, '\\n') end")()
    return text.split("\n") if text else []


def issue_texts(issues) -> list[str]:
    return [f"{i.path}: {i.reason}" for i in issues]


def native(program: Program) -> list[str]:
    s = new_session()
    run_chunk(s, PRELUDE, "prelude")
    run_chunk(s, program.setup, "setup")
    for i, step in enumerate(program.steps):
        run_chunk(s, step, f"step{i + 1}")
    return read_log(s)


def restored_step(body: bytes, code: str | None, name: str, twice: bool):
    """Apply `body` into a fresh session (twice: apply, capture, apply again),
    run `code` there, capture: (new body, issue texts, log)."""
    s = new_session()
    issues = issue_texts(state.apply(s, body))
    if twice:
        body, more, _ = state.capture(s)
        s = new_session()
        issues += issue_texts(more) + issue_texts(state.apply(s, body))
    if code is not None:
        run_chunk(s, code, name)
    body, more, _ = state.capture(s)
    return body, issues + issue_texts(more), read_log(s)


def restored(program: Program, helper):
    """(log, issues, modes) of the run through snapshots."""
    modes_rng = random.Random(f"modes {program.seed}")
    s = new_session()
    run_chunk(s, PRELUDE, "prelude")
    run_chunk(s, program.setup, "setup")
    body, issues, _ = state.capture(s)
    issues = issue_texts(issues)
    modes, log = [], []
    for i, step in enumerate(program.steps + [None]):
        mode = modes_rng.choice(MODES) if helper else modes_rng.choice(MODES[:3])
        modes.append(mode)
        args = (body, step, f"step{i + 1}", mode == "twice")
        if mode == "process":
            body, more, log = helper.ask(("step", args))
        else:
            body, more, log = restored_step(*args)
        issues += more
    return log, issues, modes


# -- outcomes -----------------------------------------------------------------------

def shape(line: str | None, n: int = 3) -> str:
    """A log line's first n words, reduced to their kind: positions,
    numbered names and numbers go (-0.0, nan and inf stay)."""
    if line is None:
        return "<none>"
    words = []
    for w in line.split(" ")[:n]:
        w = re.sub(r"^(setup|step\d+|prelude):\d+:$", "@:", w)
        w = re.sub(r"^.*?([\w.]+\.lua):\d+:$", r"\1:N:", w)
        w = re.sub(r"^([a-z]+)\d+$", r"\1", w)
        if not re.fullmatch(r"-?(0\.0|nan|inf)", w):
            w = re.sub(r"-?\d+(\.\d+)?(e[+-]?\d+)?", "N", w)
        words.append(w)
    return " ".join(words)


def reason_class(issue: str) -> str:
    """A refusal reason without its path, positions, names and numbers."""
    reason = issue.split(": ", 1)[-1].replace("suspended coroutine cannot be saved: ", "")
    reason = re.sub(r"\([^()]*:\d+\)", "", reason)
    reason = re.sub(r"\b(setup|step\d+|prelude):\d+", "@", reason)
    reason = re.sub(r"'[^']*'", "'_'", reason)
    return re.sub(r"\d+", "N", reason).strip()[:100]


def compare(native_log: list[str], restored_log: list[str]) -> tuple[str, str]:
    """('ok', '') or ('mismatch', class of the first differing line)."""
    n = first_difference(native_log, restored_log)
    if n is None:
        return "ok", ""
    a = native_log[n] if n < len(native_log) else None
    b = restored_log[n] if n < len(restored_log) else None
    return "mismatch", signature(a, b)


def signature(a: str | None, b: str | None) -> str:
    """The class of a first difference: both lines' words up to the first
    that differs, reduced by shape; a restored line of another kind is
    'other' (unless it is a resume, close, status or chunk error)."""
    wa, wb = (a or "").split(" "), (b or "").split(" ")
    if a is None or b is None or wa[0] != wb[0]:
        kind = shape(b, 1) if wb[0] in ("R", "close", "status", "chunk") else "other"
        return f"{shape(a)} => {kind if b is not None else shape(b)}"
    n = next((i for i, (x, y) in enumerate(zip(wa, wb, strict=False)) if x != y), min(len(wa), len(wb)))
    sa, sb = shape(a, n + 1), shape(b, n + 1)
    if sa == sb:
        sb += " [another line]" if sa.endswith("@:") else " [another value]"
    return f"{sa} => {sb}"


def first_difference(a: list[str], b: list[str]) -> int | None:
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b) or a[i] != b[i]:
            return i
    return None


def check(program: Program, helper=None) -> Result:
    r = Result(program.seed, "ok")
    try:
        r.native = native(program)
        if native(program) != r.native:
            r.outcome = "nondeterministic"
            return r
    except Hang as e:
        r.outcome, r.klass = "hang", "native"
        r.detail = str(e)
        return r
    try:
        r.restored, r.issues, r.modes = restored(program, helper)
    except Hang as e:
        r.outcome, r.detail = "hang", str(e)
        return r
    except WorkerFailed as e:
        r.outcome, r.detail = e.outcome, e.detail
        return r
    except Exception:  # noqa: BLE001 - any Python exception is an outcome
        r.outcome, r.detail = "crash", traceback.format_exc()
        r.klass = r.detail.strip().splitlines()[-1][:80]
        return r
    if r.issues:
        r.outcome, r.klass = "refused", reason_class(r.issues[0])
    else:
        r.outcome, r.klass = compare(r.native, r.restored)
    return r


class WorkerFailed(Exception):
    """A worker process hung or crashed (raised by worker.Worker.ask)."""

    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def check_seed(seed: int, helper=None) -> Result:
    return check(generate(seed), helper)
