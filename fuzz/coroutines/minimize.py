"""Shrink a failing program while its outcome (outcome:class) stays the same.

A statement is a line with the lines indented deeper below it and its closing
`end`/`until` lines; the generator's indentation makes that exact. Passes
delete whole steps, then statements, then the header and closer of compound
statements (keeping their body), until a pass changes nothing.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .gen import Program

CLOSERS = ("end", "until")


def depth(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def extent(lines: list[str], i: int) -> int:
    """The end (exclusive) of the statement starting at line i."""
    j = i + 1
    while j < len(lines) and (depth(lines[j]) > depth(lines[i]) or (
            depth(lines[j]) == depth(lines[i]) and lines[j].lstrip().startswith(CLOSERS))):
        j += 1
    return j


def candidates(lines: list[str], i: int):
    """Smaller versions of a chunk at line i: the statement gone, only a
    compound's first and last line gone, or only line i gone."""
    j = extent(lines, i)
    yield lines[:i] + lines[j:]
    if j - i > 1:
        yield lines[:i] + lines[i + 1:]
    if j - i > 2 and lines[j - 1].strip() in CLOSERS:
        yield lines[:i] + lines[i + 1:j - 1] + lines[j:]


def chunks(p: Program) -> list[str]:
    return [p.setup] + p.steps


def with_chunk(p: Program, k: int, text: str) -> Program:
    if k == 0:
        return replace(p, setup=text)
    steps = list(p.steps)
    steps[k - 1] = text
    return replace(p, steps=steps)


def minimize(p: Program, outcome: Callable[[Program], str], say=print) -> Program:
    target = outcome(p)
    say(f"target outcome: {target}")
    tries = 0

    def same(q: Program) -> bool:
        nonlocal tries
        tries += 1
        return outcome(q) == target

    changed = True
    while changed:
        changed = False
        for k in range(len(p.steps) - 1, -1, -1):
            q = replace(p, steps=p.steps[:k] + p.steps[k + 1:])
            if same(q):
                p, changed = q, True
        for k in range(len(chunks(p))):
            i = 0
            while i < len(lines := chunks(p)[k].split("\n")):
                for cand in candidates(lines, i):
                    q = with_chunk(p, k, "\n".join(cand))
                    if same(q):
                        p, changed = q, True
                        break
                else:
                    i += 1
        say(f"  {tries} runs, {len(p.text().splitlines())} lines")
    return p
