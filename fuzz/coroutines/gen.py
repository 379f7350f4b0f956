"""A seeded generator of small Lua 5.4 programs that suspend coroutines.

A program is a `setup` chunk, which makes 1-3 coroutines (`co1`..., some
made by coroutine.wrap) and resumes them part way, and `steps`, chunks that
go on resuming them and calling what they share. Every event goes to the
global `log` through the prelude's helpers (prelude.lua): L logs values, R
resumes and logs, C makes a to-be-closed value, Q a quiet one, O an object
whose metamethods yield.

The body of a coroutine is a block of statements drawn, by weight, from
SIMPLE and COMPOUND (the tables at the end: tune the mix there), each a small
`f_` method returning lines; a compound one holds a nested block. A size
budget keeps programs to some 20-80 lines (helpers and steps add some). Every loop is bounded, and nothing
logged depends on `pairs` order (tables are walked with order-free sums) or
on addresses.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

# what steps resume with; ints weigh most, so arithmetic mostly goes through
VALUES = ["1", "2", "3", "-4", "7", "0.5", "-0.0", "(0/0)", "'s'", "nil", "true",
          "false", "math.maxinteger", "math.mininteger", "{}"]
VALUE_WEIGHTS = [6, 4, 4, 3, 2, 2, 2, 1, 2, 2, 1, 1, 1, 1, 1]
ERROR_VALUES = ["'boom'", "{}", "42", "nil", "true", "3.5", "'lvl0', 0"]
NUMBERS = ["math.maxinteger", "math.mininteger", "7", "-7", "3", "-2", "2.5", "-2.5",
           "-0.0", "0.0", "1e308", "0.1"]
INT_FORS = ["1, 3", "3, 1, -1", "0, -6, -3", "math.maxinteger - 2, math.maxinteger",
            "math.mininteger + 1, math.mininteger, -1", "1, 0", "5, 1, -2",
            "math.maxinteger - 1, math.maxinteger, 7"]
FLOAT_FORS = ["-0.0, 1, 0.5", "1.0, 0, -0.5", "-0.0, -1, -0.5", "0.1, 0.35, 0.1",
              "1, 2, 0.5", "-0.0, 0, 1", "-0.0, 0.5, 0.25"]


@dataclass
class Program:
    seed: int
    setup: str
    steps: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts = ["-- setup", self.setup]
        for i, s in enumerate(self.steps):
            parts += [f"-- step{i + 1}", s]
        return "\n".join(parts)


def indent(lines, n=1):
    return ["  " * n + ln for ln in lines]


class Gen:
    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.count = 0
        self.budget = 0
        self.helpers: list[str] = []      # local functions at the top of setup
        self.actions: list[str] = []      # extra things steps may do (globals)
        self.ncos = self.rng.randint(1, 3)

    # -- small choices ---------------------------------------------------------
    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def value(self) -> str:
        return self.rng.choices(VALUES, VALUE_WEIGHTS)[0]

    def pick(self, options):
        return self.rng.choice(options)

    def yield_(self, tag, *args) -> str:
        return "coroutine.yield(" + ", ".join([repr(tag)] + list(args)) + ")"

    # -- blocks -------------------------------------------------------------------
    def block(self, depth: int, most: int = 4) -> list[str]:
        lines = []
        for _ in range(self.rng.randint(1, most)):
            if self.budget <= 0:
                break
            self.budget -= 1
            simple = depth >= 3 or self.rng.random() < 0.55
            pool = SIMPLE if simple else COMPOUND
            feature = self.rng.choices([f for f, _ in pool], [w for _, w in pool])[0]
            lines += feature(self, depth)
        return lines or [f"L('v', {self.yield_(self.name('y'))})"]

    def inner(self, depth):
        return indent(self.block(depth + 1, most=2))

    # -- simple statements ---------------------------------------------------------
    def f_yield(self, depth):
        v = self.name("v")
        return [f"local {v} = {self.yield_(v)}", f"L('{v}', {v})"]

    def f_arith(self, depth):
        a, b = self.name("a"), self.name("b")
        ops = ["+", "-", "*", "/", "//", "%", "^"]
        exprs = [f"{a} {self.pick(ops)} {b}" for _ in range(3)] + [f"-{a}", f"{b} // {a}"]
        raw = self.rng.random() < 0.2        # sometimes the resumed value as is
        got = self.yield_(a, a) if raw else f"tonumber({self.yield_(a, a)}) or {a}"
        return [f"local {a}, {b} = {self.pick(NUMBERS)}, {self.pick(NUMBERS)}",
                f"{a} = {got}",
                f"L('{a}', math.type({a}), {', '.join(exprs)})"]

    def f_nan_zero(self, depth):
        z, n = self.name("z"), self.name("n")
        return [f"local {z}, {n} = -0.0, 0.0",
                f"{n} = {n} / {n}",
                f"local {z}2 = {self.yield_(z, z, n)}",
                f"L('{z}', {z}, {n} ~= {n}, 1 / {z}, -{z}, {z} == 0, math.type({z}), {z}2)"]

    def f_status(self, depth):
        other = f"co{self.rng.randint(1, self.ncos)}"
        return [f"L('status', coroutine.isyieldable(), coroutine.status({other}),"
                f" select(2, coroutine.running()))"]

    def f_metamethod(self, depth):
        o, o2, r = self.name("o"), self.name("p"), self.name("r")
        nl = self.name("nl")
        expr = self.pick([
            f"{o}.field", f"{o} + 1", f"2 * {o}", f"{o} // 3", f"-{o}", f"#{o}",
            f"'a' .. {o} .. 'b'", f"{o} .. {o2} .. 'z'", f"'a' .. {o} .. {nl}",
            f"{o} < {o2}", f"{o} <= 3", f"{o} == {o2}", f"{o}(1, 2)", f"1 .. 2 .. {o}",
        ])
        if self.rng.random() < 0.2:
            return [f"local {o} = O()", f"{o}.k = {self.value()}", f"L('{r}', rawget({o}, 'k'))"]
        return [f"local {o}, {o2}, {nl} = O(), O()", f"local {r} = {expr}", f"L('{r}', {r})"]

    def f_sort_gsub(self, depth):
        t = self.name("t")
        if self.rng.random() < 0.5:
            return [f"L('{t}', pcall(table.sort, {{3, 1, 2}}, function(a, b)"
                    f" {self.yield_(t)} return a < b end))"]
        return [f"L('{t}', pcall(string.gsub, 'ab', '%w', function(c) return {self.yield_(t, 'c')} end))"]

    def f_closure(self, depth):
        s = self.name("s")
        self.actions += [f"L('get{s}', pcall(get{s}))", f"L('set{s}', pcall(set{s}, VALUE))"]
        return [f"local {s} = 0",
                f"get{s} = function() return {s} end",
                f"set{s} = function(v) {s} = v end",
                f"{s} = (tonumber({s}) or 0) + (tonumber({self.yield_(s, s)}) or 1)",
                f"L('{s}', {s})"]

    def f_vararg(self, depth):
        f = self.name("va")
        got = self.yield_(f, "select('#', ...)", "...")
        self.helpers += [f"local function {f}(...)", f"  local y = {got}",
                         "  return y, ...", "end"]
        return [f"L('{f}', {f}(1, nil, {self.value()}))"]

    def f_tailcall(self, depth):
        f = self.name("tc")
        self.helpers += [f"local function {f}(n, acc)",
                         f"  if n == 0 then return {self.yield_(f, 'acc')} end",
                         f"  return {f}(n - 1, acc + n)", "end"]
        return [f"L('{f}', {f}({self.rng.randint(1, 4)}, 0))"]

    def f_deep(self, depth):
        """~100 frames, some with a <close> variable; or ~190, each with one."""
        f = self.name("deep")
        self.helpers += [f"local function {f}(d)",
                         f"  if d == 0 then return {self.yield_(f)} end"]
        closes, frames = self.rng.random(), self.rng.randint(90, 110)
        if closes < 0.25:
            self.helpers += [f"  local c <close> = d % 20 == 0 and C('{f} ' .. d) or nil"]
        elif closes < 0.4:
            self.helpers += ["  local c <close> = Q()"]
            self.actions += ["L('quiet', quiet)"]
            frames = self.rng.randint(180, 200)
        self.helpers += [f"  local r = {f}(d - 1)", "  return r", "end"]
        return [f"L('{f}', {f}({frames}))"]

    def f_level2(self, depth):
        """error(msg, 2): from a fresh call, or from a frame that yielded first."""
        f, v = self.name("th"), self.name("v")
        check = f"if type({v}) ~= 'number' then error('{f} ' .. S({v}), 2) end"
        if self.rng.random() < 0.5:
            self.helpers += [f"local function {f}({v}) {check} end"]
            return [f"local {v} = {self.yield_(v)}", f"{f}({v})"]
        self.helpers += [f"local function {f}()", f"  local {v} = {self.yield_(f)}",
                         f"  {check}", f"  return {v}", "end"]
        return [f"L('{f}', {f}())"]

    def f_error(self, depth):
        return [f"error({self.pick(ERROR_VALUES)})"]

    def f_cross(self, depth):
        other = f"co{self.rng.randint(1, self.ncos)}"
        if self.rng.random() < 0.3:
            return [f"L('close {other}', coroutine.close({other}))"]
        return [f"L('resume {other}', coroutine.resume({other}, {self.value()}))"]

    # -- compound statements ----------------------------------------------------------
    def f_numfor(self, depth):
        i = self.name("i")
        head = self.pick(INT_FORS if self.rng.random() < 0.5 else FLOAT_FORS)
        return [f"for {i} = {head} do", f"  L('{i}', {i}, math.type({i}))",
                *self.inner(depth), "end"]

    def f_ipairs(self, depth):
        i = self.name("i")
        return [f"for {i}, x in ipairs({{10, 20, {self.value()}, 40}}) do",
                f"  L('{i}', {i}, x)", *self.inner(depth), "end"]

    def f_pairs(self, depth):
        t, n = self.name("t"), self.name("n")
        iterate = self.pick([f"pairs({t})", f"next, {t}"])
        return [f"local {t}, {n} = {{a = 1, b = 2, c = 3, 10, 20, [7] = 7}}, 0",
                f"for k, v in {iterate} do",
                f"  {t}[k] = nil",
                f"  {n} = {n} + v",
                *self.inner(depth), "end",
                f"L('{t}', {n}, next({t}))"]

    def f_next_loop(self, depth):
        t, k = self.name("t"), self.name("k")
        return [f"local {t} = {{x = 1, y = 2, 5}}",
                f"local {k} = next({t})",
                f"while {k} ~= nil do",
                f"  {t}[{k}] = nil",
                *self.inner(depth),
                f"  {k} = next({t})", "end",
                f"L('{t} empty', next({t}) == nil)"]

    def f_while(self, depth):
        w = self.name("w")
        if self.rng.random() < 0.5:
            return [f"local {w} = 0", f"while {w} < 2 do", f"  {w} = {w} + 1",
                    *self.inner(depth), "end"]
        return [f"local {w} = 0", "repeat", f"  {w} = {w} + 1",
                *self.inner(depth), f"until {w} >= 2"]

    def f_goto(self, depth):
        i, lab = self.name("i"), self.name("continue")
        return [f"for {i} = 1, 3 do", f"  if {i} == 2 then goto {lab} end",
                *self.inner(depth), f"  ::{lab}::", "end"]

    def f_close(self, depth):
        """A <close> variable (maybe yielding in __close, maybe a second one,
        maybe a local after it), its block maybe ending in an error; mostly
        in a do-block, else in the enclosing block (closed by its return)."""
        c = self.name("c")
        lines = [f"local {c} <close> = C('{c}', {self.rng.random() < 0.4 and 'true' or 'false'})"]
        if self.rng.random() < 0.25:
            lines += [f"local {c}b <close> = C('{c}b', {self.rng.random() < 0.4 and 'true' or 'false'})"]
        if self.rng.random() < 0.5:
            lines += [f"local {c}x = {self.value()}"]
        lines += self.block(depth + 1, most=2)
        if self.rng.random() < 0.25:
            lines += [f"error({self.pick(ERROR_VALUES)})"]
        return lines if self.rng.random() < 0.3 else ["do", *indent(lines), "end"]

    def f_pcall(self, depth):
        p = self.name("p")
        throw = [f"  error({self.pick(ERROR_VALUES)})"] if self.rng.random() < 0.7 else []
        if self.rng.random() < 0.5:
            return [f"L('{p}', pcall(function()", *self.inner(depth), *throw,
                    "  return 'no error'", "end))"]
        return [f"L('{p}', xpcall(function()", *self.inner(depth), *throw,
                "  return 'no error'", "end, function(e)",
                f"  L('handler {p}', e, coroutine.isyieldable())",
                "  return type(e) == 'string' and 'handled ' .. e or e", "end))"]

    def f_iterator(self, depth):
        f = self.name("it")
        self.helpers += [f"local function {f}(s, i)",
                         "  i = i + 1", "  if i > s then return nil end",
                         f"  return i, {self.yield_(f, 'i')}", "end"]
        return [f"for i, v in {f}, {self.rng.randint(1, 3)}, 0 do",
                f"  L('{f}', i, v)", *self.inner(depth), "end"]

    def f_wrap(self, depth):
        w = self.name("w")
        return [f"local {w} = coroutine.wrap(function(a)",
                "  for k = 1, 2 do", *indent(self.inner(depth)),
                f"    a = {self.yield_(w, 'a', 'k')}", "  end",
                f"  return '{w} end'", "end)",
                f"for k = 1, 3 do L('{w}', pcall({w}, k)) L('{w} out', {self.yield_(w + ' out')}) end"]

    def f_nested(self, depth):
        n = self.name("in")
        return [f"local {n} = coroutine.create(function(a)", *self.inner(depth),
                f"  return '{n} end'", "end)",
                "for k = 1, 3 do",
                f"  L('{n}', coroutine.resume({n}, k))",
                f"  if coroutine.status({n}) == 'dead' then break end",
                f"  L('{n} out', {self.yield_(n + ' out')})", "end"]


SIMPLE = [(Gen.f_yield, 6), (Gen.f_arith, 3), (Gen.f_nan_zero, 1), (Gen.f_status, 1),
          (Gen.f_metamethod, 5), (Gen.f_sort_gsub, 1), (Gen.f_closure, 2),
          (Gen.f_vararg, 2), (Gen.f_tailcall, 2), (Gen.f_deep, 1), (Gen.f_level2, 2),
          (Gen.f_error, 1), (Gen.f_cross, 1)]
COMPOUND = [(Gen.f_numfor, 3), (Gen.f_ipairs, 1), (Gen.f_pairs, 2), (Gen.f_next_loop, 1),
            (Gen.f_while, 2), (Gen.f_goto, 1), (Gen.f_close, 4), (Gen.f_pcall, 4),
            (Gen.f_iterator, 2), (Gen.f_wrap, 1), (Gen.f_nested, 1)]


def generate(seed: int) -> Program:
    g = Gen(seed)
    rng = g.rng
    bodies = []
    for c in range(1, g.ncos + 1):
        g.budget = rng.randint(4, 10) // g.ncos + 2
        body = g.block(0, most=5)
        tail = rng.choice(["return 'end co%d'" % c, "return table.unpack({1, nil, 3})",
                           "return coroutine.yield('last') , 'after'"])
        make = "coroutine.wrap" if rng.random() < 0.15 else "coroutine.create"
        bodies += [f"co{c} = {make}(function(arg)", *indent(body),
                   f"  {tail}", "end)"]
        g.actions += [f"R(co{c}, VALUE)"] * 12 + [f"L('status', coroutine.status(co{c}))"] * 2 \
            + [f"L('close', coroutine.close(co{c}))"]
    starts = [f"R(co{c}, {g.value()})" for c in range(1, g.ncos + 1)
              for _ in range(rng.randint(0, 3))]
    rng.shuffle(starts)
    setup = "\n".join(g.helpers + bodies + starts)
    steps = []
    for _ in range(rng.randint(1, 5)):
        acts = [rng.choice(g.actions).replace("VALUE", g.value())
                for _ in range(rng.randint(1, 6))]
        steps.append("\n".join(acts))
    return Program(seed, setup, steps)
