"""Magics: cell lines starting with `%` (never valid Lua at the start of a cell).

A cell whose first non-blank line starts with `%` is a magic cell: each line
starting with `%` runs as a magic, and the lines between them run as Lua.
Magics talk to a Session only, so they work without Jupyter too; the kernel
adds the persistence magics it owns through `Magics.register`.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable

from .session import CellResult, LuaError, Session


class MagicError(LuaError):
    ename = "MagicError"


@dataclass
class Magic:
    name: str
    usage: str
    help: str
    run: Callable[[str], CellResult | None]


def is_magic_cell(code: str) -> bool:
    return code.lstrip().startswith("%")


def split_cell(code: str) -> list[tuple[str, str]]:
    """[("magic", line) | ("lua", block)] in order; Lua blocks keep their
    line numbers (padded with blank lines)."""
    parts: list[tuple[str, str]] = []
    block: list[str] = []
    block_start = 0
    for i, line in enumerate(code.split("\n")):
        if line.startswith("%"):
            if any(b.strip() for b in block):
                parts.append(("lua", "\n" * block_start + "\n".join(block)))
            block, block_start = [], i + 1
            parts.append(("magic", line[1:]))
        else:
            block.append(line)
    if any(b.strip() for b in block):
        parts.append(("lua", "\n" * block_start + "\n".join(block)))
    return parts


def _seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if t >= scale or unit == "ns":
            return f"{t / scale:.3g} {unit}"
    return f"{t} s"  # pragma: no cover


class Magics:
    """The registry of magics for one session."""

    def __init__(self, session: Session, chunkname: Callable[[], str]):
        self.session = session
        self.chunkname = chunkname       # the current cell's chunk name
        self.magics: dict[str, Magic] = {}
        self._before_reset: list[Callable[[str], str]] = []
        for name, usage, help_, fn in (
            ("lsmagic", "%lsmagic", "list the magics", self.lsmagic),
            ("who", "%who", "names of your global variables", self.who),
            ("whos", "%whos", "your global variables with type and value", self.whos),
            ("time", "%time <statement>", "run once and show how long it took", self.time),
            ("timeit", "%timeit [-n N] [-r R] <statement>",
             "time many runs: mean ± std of R repeats of N loops", self.timeit),
            ("reset", "%reset", "start over with a fresh Lua state", self.reset),
        ):
            self.register(name, usage, help_, fn)

    def register(self, name, usage, help_, fn) -> None:
        self.magics[name] = Magic(name, usage, help_, fn)

    def extend_reset(self, before: Callable[[str], str], usage: str, more_help: str) -> None:
        """Let another room take part in %reset: `before(args)` runs first
        (it checks the arguments) and says what it did."""
        self._before_reset.append(before)
        magic = self.magics["reset"]
        magic.usage, magic.help = usage, f"{magic.help} ({more_help})"

    def out(self, text: str) -> None:
        self.session.stdout(text if text.endswith("\n") else text + "\n")

    # -- running a cell -------------------------------------------------------

    def run_cell(self, code: str) -> CellResult | None:
        """Run a magic cell; the last part's result is the cell's result."""
        result = None
        for kind, text in split_cell(code):
            if kind == "lua":
                result = self.session.run_cell(text, self.chunkname())
            else:
                result = self.run_line(text)
        return result

    def run_line(self, line: str) -> CellResult | None:
        name, _, args = line.strip().partition(" ")
        magic = self.magics.get(name)
        if magic is None:
            known = ", ".join("%" + m for m in sorted(self.magics))
            raise MagicError(f"unknown magic %{name}. Known magics: {known}")
        return magic.run(args.strip())

    # -- the magics -----------------------------------------------------------

    def lsmagic(self, args: str) -> None:
        width = max(len(m.usage) for m in self.magics.values())
        lines = ["Available magics (a cell line starting with %):"]
        lines += [f"  {m.usage:<{width}}  {m.help}" for _, m in sorted(self.magics.items())]
        self.out("\n".join(lines))

    def who(self, args: str) -> None:
        names = [k for k, _ in self.session.user_globals()]
        self.out("  ".join(names) if names else "No user globals.")

    def whos(self, args: str) -> None:
        rows = []
        type_of = self.session.lua.eval("type")
        for name, value in self.session.user_globals():
            text = " ".join(self.session.text(value).split())
            if len(text) > 60:
                text = text[:57] + "..."
            rows.append((name, type_of(value), text))
        if not rows:
            self.out("No user globals.")
            return
        w1 = max(4, *(len(r[0]) for r in rows))
        w2 = max(4, *(len(r[1]) for r in rows))
        lines = [f"{'Name':<{w1}}  {'Type':<{w2}}  Value", f"{'-' * w1}  {'-' * w2}  -----"]
        lines += [f"{n:<{w1}}  {t:<{w2}}  {v}" for n, t, v in rows]
        self.out("\n".join(lines))

    def time(self, args: str) -> CellResult | None:
        if not args:
            raise MagicError("usage: %time <statement>")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            return self.session.run_cell(args, self.chunkname())
        finally:
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            self.out(f"CPU time: {_seconds(cpu)}, Wall time: {_seconds(wall)}")

    def timeit(self, args: str) -> None:
        number, repeat, stmt = self._timeit_args(args)
        fn, err = self.session.compile(stmt, self.chunkname())
        if fn is None:
            raise MagicError(f"%timeit: {err}")
        loop = self.session.lua.eval(
            "function(f, n) local clock = os.clock local t0 = clock() "
            "for _ = 1, n do f() end return clock() - t0 end")
        # Timed in Lua with os.clock (CPU seconds) so the call from Python
        # does not count; each batch is interruptible like a cell.
        timed = lambda n: self.session.call(loop, fn, n)[0]   # noqa: E731
        timed(1)                                 # warm-up
        if number is None:                       # autorange: a batch >= 0.2 s
            number = 1
            while timed(number) < 0.2 and number < 10**9:
                number *= 10
        runs = [timed(number) / number for _ in range(repeat)]
        mean = sum(runs) / len(runs)
        std = math.sqrt(sum((r - mean) ** 2 for r in runs) / len(runs))
        loops = "loop" if number == 1 else "loops"
        self.out(f"{_seconds(mean)} ± {_seconds(std)} per loop "
                 f"(mean ± std. dev. of {repeat} runs, {number:,} {loops} each)")

    @staticmethod
    def _timeit_args(args: str) -> tuple[int | None, int, str]:
        number, repeat = None, 7
        rest = args
        while m := re.match(r"\s*(-[nr])\s+(\S+)", rest):
            flag, value = m.groups()
            if not value.isdigit() or int(value) < 1:
                raise MagicError(f"%timeit: {flag} takes a positive whole number")
            if flag == "-n":
                number = int(value)
            else:
                repeat = int(value)
            rest = rest[m.end():]
        stmt = rest.strip()
        if not stmt:
            raise MagicError("usage: %timeit [-n N] [-r R] <statement>")
        return number, repeat, stmt

    def reset(self, args: str) -> None:
        args = args.strip()
        if args and not self._before_reset:
            raise MagicError("usage: %reset")
        notes = [before(args) for before in self._before_reset]
        self.session.reset()
        self.out(" ".join(["Fresh Lua state: all globals, functions and coroutines are gone.",
                           *notes]))
