"""state.lua's Lua 5.3 integer operators, as LuaJIT arithmetic.

The serializer is one Lua file, written for Lua 5.3+, whose hot paths
decode value codes with `c & 7`, `c >> 3`, `c // 8` (see "Value codes" in
persist/lua/state.lua). LuaJIT (Lua 5.1) has none of these operators, and
its numbers are doubles. Rather than keep a second copy of the serializer,
LuaJIT gets the same source with each of those operators rewritten, at load
time, into arithmetic that is exact for integers below 2^53 (the codes
LuaJIT's codec makes stay below that; see persist/lua/codec_jit.lua):

    a // b  ->  F(a / b)            a >> k  ->  F(a / 2^k)
    a << k  ->  (a * 2^k)           a & m   ->  (a % (m + 1))   m = 2^j - 1
    a | b   ->  (a + b)             (the source only or's disjoint bits)

where F is math.floor, an upvalue the rewritten chunk gets. Lua 5.4 and 5.5
load the file unchanged.

The operands the rewrite understands are the ones state.lua uses: a name
with its fields, indexes and calls (`W.seen[W.PY[i]]`), a number, a
parenthesized expression, `#` of one of these; shift amounts and masks are
number literals. Anything else next to one of these operators (an
arithmetic operator whose precedence would make the operand longer, unary
minus, `~`) is refused with an error naming the line, so the rewrite never
silently changes a meaning.
"""
from __future__ import annotations

import functools
import re

from ..runtime import KEYWORDS     # the package's one list of reserved words

__all__ = ["rewrite", "JitSourceError"]


class JitSourceError(ValueError):
    """A use of a Lua 5.3 operator the rewrite does not understand."""



_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>--(?:\[(?P<ceq>=*)\[[\s\S]*?\](?P=ceq)\]|[^\n]*))
  | (?P<long>\[(?P<leq>=*)\[[\s\S]*?\](?P=leq)\])
  | (?P<string>"(?:\\[\s\S]|[^"\\\n])*"|'(?:\\[\s\S]|[^'\\\n])*')
  | (?P<number>0[xX][0-9a-fA-F]*(?:\.[0-9a-fA-F]*)?(?:[pP][+-]?\d+)?
              |\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_]\w*)
  | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|<<|>>|//|::|[-+*/%^\#&~|<>=(){}\[\];:,.])
""", re.VERBOSE)

# binary operators that bind tighter than each rewritten one: an operand
# next to one of them is longer than an atom, which the rewrite refuses
_TIGHTER = {
    "//": {"^"},
    ">>": {"+", "-", "*", "/", "//", "%", "^", ".."},
    "&": {"+", "-", "*", "/", "//", "%", "^", "..", ">>", "<<"},
    "|": {"+", "-", "*", "/", "//", "%", "^", "..", ">>", "<<", "&", "~"},
}
_TIGHTER["<<"] = _TIGHTER[">>"]
_SAME = {"//": {"*", "/", "%"}}         # left-associative peers: a * b // c
PASSES = (("//",), (">>", "<<"), ("&",), ("|",))
FLOOR = "__lk_floor"
OPEN, CLOSE = {"(": ")", "[": "]", "{": "}"}, {")": "(", "]": "[", "}": "{"}


def _tokens(src: str) -> list[list[str]]:
    out, pos = [], 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise JitSourceError(f"line {src.count(chr(10), 0, pos) + 1}: cannot read {src[pos]!r}")
        kind = next(k for k in ("space", "comment", "long", "string", "number", "name", "op")
                    if m.group(k) is not None)
        if kind == "long":
            kind = "string"
        out.append([kind, m.group()])
        pos = m.end()
    return out


class _Rewriter:
    def __init__(self, src: str):
        self.toks = _tokens(src)

    # significant tokens: not space, not comment
    def sig(self, i: int, step: int) -> int:
        i += step
        while 0 <= i < len(self.toks) and self.toks[i][0] in ("space", "comment"):
            i += step
        return i

    def text(self, i: int) -> str:
        return self.toks[i][1] if 0 <= i < len(self.toks) else ""

    def kind(self, i: int) -> str:
        return self.toks[i][0] if 0 <= i < len(self.toks) else ""

    def line(self, i: int) -> int:
        return sum(t[1].count("\n") for t in self.toks[:i]) + 1

    def fail(self, i: int, why: str):
        raise JitSourceError(f"line {self.line(i)}: {why}")

    def match(self, i: int, step: int) -> int:
        """The bracket matching the one at i."""
        depth, pairs = 0, OPEN if step > 0 else CLOSE
        opener = self.text(i)
        closer = pairs[opener]
        while 0 <= i < len(self.toks):
            if self.kind(i) == "op":
                if self.text(i) == opener:
                    depth += 1
                elif self.text(i) == closer:
                    depth -= 1
                    if depth == 0:
                        return i
            i += step
        self.fail(i, f"unbalanced {opener}")

    def is_value_end(self, i: int) -> bool:
        k, t = self.kind(i), self.text(i)
        return (k in ("number", "string", "atom") or (k == "name" and t not in KEYWORDS)
                or t in (")", "]", "}"))

    def left(self, op_at: int, op: str) -> int:
        """Where the left operand of the operator at op_at starts."""
        i = self.sig(op_at, -1)
        start = self.primary_back(i, op_at)
        before = self.sig(start, -1)
        if self.text(before) == "#":
            start, before = before, self.sig(before, -1)
        t = self.text(before)
        if t == "not":
            self.fail(op_at, f"the left operand of {op} is longer than the rewrite reads")
        if self.kind(before) == "op" and (t in _TIGHTER[op] or t in _SAME.get(op, ())
                                          or t == "~" or t == "-" and not self.is_value_end(
                                              self.sig(before, -1))):
            self.fail(op_at, f"the left operand of {op} is longer than the rewrite reads")
        return start

    def primary_back(self, i: int, op_at: int) -> int:
        while True:
            k, t = self.kind(i), self.text(i)
            if t in (")", "]"):
                i = self.match(i, -1)
                prev = self.sig(i, -1)
                if self.is_value_end(prev) and self.kind(prev) != "number":
                    i = prev
                    continue
                return i
            if k in ("number", "atom") or k == "name" and t not in KEYWORDS:
                prev = self.sig(i, -1)
                if self.text(prev) in (".", ":"):
                    i = self.sig(prev, -1)
                    continue
                return i
            self.fail(op_at, f"unexpected {t!r} before an operator")

    def right(self, op_at: int, op: str) -> int:
        """Where the right operand of the operator at op_at ends."""
        i = self.sig(op_at, 1)
        if self.text(i) == "#":
            i = self.sig(i, 1)
        k, t = self.kind(i), self.text(i)
        if t == "(":
            end = self.match(i, 1)
        elif k in ("number", "atom") or k == "name" and t not in KEYWORDS:
            end = i
        else:
            self.fail(op_at, f"the right operand of {op} is not one the rewrite reads")
        while True:
            nxt = self.sig(end, 1)
            t = self.text(nxt)
            if t in (".", ":"):
                end = self.sig(nxt, 1)
            elif t in ("(", "["):
                end = self.match(nxt, 1)
            elif self.kind(nxt) == "string" or t == "{":
                self.fail(op_at, "a call without parentheses next to an operator")
            else:
                break
        if self.kind(nxt) == "op" and (t in _TIGHTER[op] or t == "~"):
            self.fail(op_at, f"the right operand of {op} is longer than the rewrite reads")
        return end

    def literal(self, start: int, end: int, op: str) -> int:
        if start != end or self.kind(start) != "number":
            self.fail(start, f"the right operand of {op} must be a number literal")
        return int(self.text(start), 0)

    def source(self, a: int, b: int) -> str:
        return "".join(t[1] for t in self.toks[a:b + 1])

    def one(self, op_at: int, op: str) -> int:
        """Rewrites the operator at op_at with its operands; returns where
        the result is (no operator of this pass is before it)."""
        a, b = self.left(op_at, op), self.right(op_at, op)
        lhs = self.source(a, self.sig(op_at, -1))
        rstart = self.sig(op_at, 1)
        rhs = self.source(rstart, b)
        if op == "//":
            out = f"{FLOOR}({lhs} / {rhs})"
        elif op in (">>", "<<"):
            k = self.literal(rstart, b, op)
            out = f"{FLOOR}({lhs} / {2 ** k})" if op == ">>" else f"({lhs} * {2 ** k})"
        elif op == "&":
            m = self.literal(rstart, b, op)
            if m & (m + 1):
                self.fail(op_at, f"& with {m}: only masks 2^k - 1 are rewritten")
            out = f"({lhs} % {m + 1})"
        else:
            out = f"({lhs} + {rhs})"
        self.toks[a:b + 1] = [["atom", out]]
        return a

    def run(self) -> str:
        for ops in PASSES:
            i = 0
            while i < len(self.toks):
                if self.kind(i) == "op" and self.text(i) in ops:
                    i = self.one(i, self.text(i))
                i += 1
        for i, (k, t) in enumerate(self.toks):
            if k == "op" and t == "~":
                self.fail(i, "~ (xor, bitwise not) is not rewritten")
        return "".join(t[1] for t in self.toks)


@functools.lru_cache(maxsize=8)
def rewrite(src: str) -> str:
    """The chunk `src` (Lua 5.3+) for LuaJIT: the same lines, its integer
    operators as arithmetic, math.floor as the upvalue FLOOR."""
    body = _Rewriter(src).run()
    # on the first line, so that line numbers stay those of the file
    return f"local {FLOOR} = math.floor return (function(...) {body}\nend)(...)"
