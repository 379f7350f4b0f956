"""persist/lua/bytecode.lua: Lua 5.4 and 5.5 binary chunks as tables and back.

Most tests run once per version (the `lua` fixture is a state of each);
where the formats differ, the expectations are given per version."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lua_kernel.runtime import load_lua, module_of, new_runtime
from lua_sources import lua54_dir, lua55_dir

VERSIONS = ["5.4", "5.5"]
# Lua's sources and testes, fetched once through pip when not cached
SOURCES = {"5.4": lua54_dir(), "5.5": lua55_dir()}

# Lua helpers shared by the tests: `same(a, b)` compares two protos (or any
# values) recursively, floats by their bits, integers and floats as different;
# it returns nil or the path of the first difference.
HELPERS = r"""
local B = ...
local H = {}
local function key(v)
  if math.type(v) == "float" then return "f" .. string.pack("n", v) end
  if math.type(v) == "integer" then return "i" .. v end
  return v
end
function H.same(a, b, path)
  path = path or "proto"
  if type(a) ~= type(b) then return path .. ": " .. type(a) .. " vs " .. type(b) end
  if type(a) == "table" then
    for k, v in pairs(a) do
      local d = H.same(v, b[k], path .. "." .. tostring(k))
      if d then return d end
    end
    for k in pairs(b) do
      if a[k] == nil then return path .. "." .. tostring(k) .. ": missing" end
    end
    return nil
  end
  if key(a) ~= key(b) then return path .. ": " .. tostring(a) .. " vs " .. tostring(b) end
  return nil
end
-- every proto of a tree, depth first, with its path
function H.walk(p, fn, path)
  path = path or "main"
  fn(p, path)
  for i, c in ipairs(p.p) do H.walk(c, fn, path .. "/" .. i) end
end
-- the set of lines line_of gives over all instructions (skipping
-- VARARGPREP, as debug.getinfo's activelines does) against activelines
function H.lines_differ(p, f)
  local mine, theirs = {}, {}
  for pc = (p.is_vararg and 2 or 1), #p.code do mine[B.line_of(p, pc)] = true end
  for line in pairs(debug.getinfo(f, "L").activelines) do theirs[line] = true end
  for l in pairs(mine) do if not theirs[l] then return "line_of has " .. l end end
  for l in pairs(theirs) do if not mine[l] then return "activelines has " .. l end end
  return nil
end
return H
"""


@pytest.fixture(scope="module", params=VERSIONS)
def lua(request):
    """A state of each Lua version with bytecode.lua loaded (as B, its
    default: the state's own version) and the helpers (as H)."""
    rt = new_runtime(0, request.param)
    B = load_lua(rt, "persist/lua/bytecode.lua")
    g = rt.globals()
    g.B = B
    g.H = rt.execute(HELPERS, B)
    return rt


def only(version):
    """For a test of one version's format only."""
    return pytest.mark.parametrize("lua", [version], indirect=True)


def version(lua) -> str:
    return {0x54: "5.4", 0x55: "5.5"}[lua.eval("B.VERSION")]


@pytest.fixture(scope="module")
def sources(lua) -> Path:
    return SOURCES[version(lua)]


def run(lua, code: str, *args):
    return lua.execute(code, *args)


def lua_error(lua, code: str, *args) -> str:
    with pytest.raises(module_of(lua).LuaError) as e:
        lua.execute(code, *args)
    return str(e.value)


def official_files(v: str) -> list[str]:
    return sorted(p.name for p in (SOURCES[v] / "testes").glob("*.lua"))


# Functions covering every constant type, nesting, varargs, upvalue kinds,
# <close> and <const> locals. Each is the source of a chunk returning the
# function, and a call whose result the loaded copy must reproduce.
SAMPLES = {
    "constants": """return function()
        local t = {}
        t.yes = true; t.no = false; t.none = nil   -- boolean and nil constants
        return t.yes, t.no, t.none, nil, false, true, 0, -1, 42, 0x7fffffffffffffff,
          0x8000000000000000, 1.5, -2.25, 1e308, 1e999, -1e999, 2^53,
          "short", "a string that is clearly longer than forty bytes, long",
          "with\\0nul\\0bytes", "", ("x"):rep(3)
      end""",
    "nested3": """return function(n)
        local a = n
        local function f1(x)
          local b = x + a
          local function f2(y)
            local c = y * b
            return function(z) a = a + 1; return a + b + c + z end
          end
          return f2
        end
        return f1(1)(2)(3), a
      end""",
    "varargs": """return function(...)
        local n = select("#", ...)
        local t = {...}
        local function g(...) return n, ... end
        return g(table.unpack(t, 1, n))
      end""",
    "upvalue_kinds": """return function()
        local reg = 1
        local konst <const> = {10}
        local ctc <const> = 7
        local log = {}
        do
          local tbc <close> = setmetatable({}, {__close = function() log[#log+1] = "closed" end})
          local function uses() return reg + konst[1] + ctc, tbc ~= nil end
          reg = 2
          local r, has = uses()
          log[#log+1] = r
          log[#log+1] = has
        end
        return table.unpack(log)
      end""",
    "loops_and_jumps": """return function(t)
        local s = 0
        for i = 1, 10 do if i % 2 == 0 then s = s + i else goto continue end ::continue:: end
        for k, v in pairs(t) do s = s + #k * v end
        local i = 0
        while i < 5 do i = i + 1; if i == 4 then break end end
        repeat i = i - 1 until i <= 0
        return s, i, #t, t.a and t.a // 1 or -1, 2^0.5, "x" .. s
      end""",
    "many_lines": "return function(a)\n" + "".join(
        f"  a = a + {i}\n" + ("\n" * (i % 7)) for i in range(400)) + "  return a\nend",
}

SAMPLE_ARGS = {
    "constants": [],
    "nested3": [5],
    "varargs": [1, None, 3, None],
    "upvalue_kinds": [],
    "loops_and_jumps": [lambda lua: lua.table_from({"a": 3.7, "bb": 2})],
    "many_lines": [0],
}


def sample(lua, name):
    return lua.execute(SAMPLES[name])


def sample_args(lua, name):
    return [a(lua) if callable(a) else a for a in SAMPLE_ARGS[name]]


def as_list(r):
    return list(r) if isinstance(r, tuple) else [r]


# -------------------------------------------------------------- opcodes ---

# The number of opcodes; the names of decode's results, in order.
NUM_OPCODES = {"5.4": 83, "5.5": 85}
FIELDS = {"5.4": ["op", "a", "b", "c", "k", "bx", "sbx", "ax", "sj"],
          "5.5": ["op", "a", "b", "c", "k", "bx", "sbx", "ax", "sj", "vb", "vc"]}


def test_opcode_names_follow_lopnames_h(lua, sources):
    text = (sources / "lopnames.h").read_text()
    body = text[text.index("opnames[] = {"):text.index("NULL")]
    names = [line.strip().strip('",') for line in body.splitlines()[1:] if line.strip()]
    count = NUM_OPCODES[version(lua)]
    assert len(names) == count
    for n, name in enumerate(names):
        assert lua.eval(f"B.OP[{name!r}]") == n
        assert lua.eval(f"B.OPNAMES[{n}]") == name
    assert lua.eval("B.OP.MOVE") == 0 and lua.eval("B.OP.EXTRAARG") == count - 1
    assert lua.eval(f"B.OPNAMES[{count}]") is None


def test_opcode_modes_follow_lopcodes_c(lua, sources):
    # lines like ` ,opmode(0, 0, 0, 0, 1, iABx)\t\t/* OP_LOADK */`
    text = (sources / "lopcodes.c").read_text()
    modes = {name: mode for mode, name in
             re.findall(r"opmode\([^)]*,\s*(\w+)\)\s*/\* OP_(\w+)", text)}
    assert len(modes) == NUM_OPCODES[version(lua)]
    for name, mode in modes.items():
        assert lua.eval(f"B.OPMODES[B.OP[{name!r}]]") == mode, name


def test_decode_add_gives_op_and_registers(lua):
    op, a, b, c, k = run(lua, """
        local p = B.read(string.dump(function(a, b) return a + b end))
        local op, a, b, c, k = B.decode(p.code[1])
        return B.OPNAMES[op], a, b, c, k""")
    assert (op, a, b, c, k) == ("ADD", 2, 0, 1, 0)


def test_decode_signed_fields(lua):
    # LOADI -5 into R0: sBx = -5; a backward JMP has a negative sJ.
    r = run(lua, """
        local p = B.read(string.dump(function() local x = -5; while true do x = x + 1 end end))
        local op, a, _, _, _, bx, sbx = B.decode(p.code[1])
        local found
        for pc = 1, #p.code do
          local o, _, _, _, _, _, _, _, sj = B.decode(p.code[pc])
          if o == B.OP.JMP then found = sj end
        end
        return B.OPNAMES[op], a, sbx, bx, found""")
    assert r[0] == "LOADI" and r[1] == 0 and r[2] == -5 and r[3] == 65530
    assert r[4] is not None and r[4] < 0


def test_decode_fields_cover_whole_instruction(lua):
    r = run(lua, "return B.decode(0xFFFFFFFF)")
    vabc = {"5.4": (), "5.5": (0x3F, 0x3FF)}[version(lua)]   # vB 6 bits, vC 10
    assert r == (0x7F, 0xFF, 0xFF, 0xFF, 1, 0x1FFFF, 0x1FFFF - 65535,
                 0x1FFFFFF, 0x1FFFFFF - (2**24 - 1)) + vabc


def test_fields_are_decode_by_name(lua):
    r = run(lua, """
        local names = ...
        for _, i in ipairs({0, 0xFFFFFFFF, 0x12345678, 0x80008001}) do
          local by_position, by_name, n = {B.decode(i)}, B.fields(i), 0
          for j, name in ipairs(names) do
            if by_name[name] ~= by_position[j] then return name end
          end
          for _ in pairs(by_name) do n = n + 1 end
          if n ~= #names then return "extra fields" end
          if select("#", B.decode(i)) ~= #names then return "more results" end
        end
        return 'same'""", lua.table_from(FIELDS[version(lua)]))
    assert r == "same"


def test_table_constructor_sizes_are_named_by_the_instruction_layout(lua):
    # NEWTABLE: log2(hash size) + 1 and the array size; SETLIST: the number
    # of items. In 5.4 they are B and C (8 bits each); in 5.5 NEWTABLE and
    # SETLIST are ivABC, vB (6 bits) and vC (10 bits).
    b, c = {"5.4": ("b", "c"), "5.5": ("vb", "vc")}[version(lua)]
    r = run(lua, f"""
        local p = B.read(string.dump(function() return {{1, 2, 3, x = 1, y = 2}} end))
        local out = {{}}
        for pc = 1, #p.code do
          local f = B.fields(p.code[pc])
          local name = B.OPNAMES[f.op]
          if name == "NEWTABLE" or name == "SETLIST" then
            out[#out + 1] = name .. " " .. B.OPMODES[f.op] .. " " .. f.{b} .. " " .. f.{c}
          end
        end
        return table.concat(out, ", ")""")
    mode = {"5.4": "iABC", "5.5": "ivABC"}[version(lua)]
    assert r == f"NEWTABLE {mode} 2 3, SETLIST {mode} 3 0"


# ------------------------------------------------------- header errors ---

def test_truncated_chunks_give_bytecode_errors(lua):
    dump = lua.eval('string.dump(load("local a = ... return function() return a, 1.5, \'s\' end"))')
    n = len(dump.encode("utf-8", "surrogateescape"))
    checked = 0
    for cut in list(range(0, 40)) + list(range(40, n, 7)) + [n - 1]:
        msg = lua_error(lua, "return B.read(select(1, ...):sub(1, select(2, ...)))", dump, cut)
        assert msg.startswith("bytecode:"), (cut, msg)
        checked += 1
    assert checked > 45
    assert "truncated" in lua_error(lua, "return B.read(select(1, ...):sub(1, 20))", dump)


def test_wrong_version_byte_is_rejected(lua):
    msg = lua_error(lua, r"""
        local d = string.dump(function() end)
        return B.read(d:sub(1, 4) .. "\x53" .. d:sub(6))""")
    assert msg.startswith("bytecode: version mismatch")


# offset (0-based), a byte put there, the error's start: every field of each
# version's header (lundump.h's LUAC_*; 5.5 has a size and a value for each
# of int, Instruction, lua_Integer and lua_Number)
HEADER_CASES = {
    "5.4": [
        (0, 0x1A, "not a binary chunk"),      # signature
        (5, 1, "format mismatch"),            # format
        (7, 0x00, "corrupted chunk"),         # LUAC_DATA
        (12, 8, "Instruction size mismatch"),
        (13, 4, "lua_Integer size mismatch"),
        (14, 4, "lua_Number size mismatch"),
        (15, 0x79, "integer format mismatch"),
        (30, 0x41, "float format mismatch"),
        (31, 9, "header says 9 upvalues"),
    ],
    "5.5": [
        (0, 0x1A, "not a binary chunk"),
        (4, 0x54, "version mismatch"),
        (5, 1, "format mismatch"),
        (7, 0x00, "corrupted chunk"),
        (12, 8, "int size mismatch"),
        (13, 0x79, "int format mismatch"),          # -0x5678
        (17, 8, "Instruction size mismatch"),
        (18, 0x79, "instruction format mismatch"),  # 0x12345678
        (22, 4, "lua_Integer size mismatch"),
        (23, 0x79, "integer format mismatch"),      # -0x5678
        (31, 4, "lua_Number size mismatch"),
        (39, 0x41, "float format mismatch"),        # -370.5
        (40, 9, "header says 9 upvalues"),
    ],
}


@pytest.mark.parametrize("lua,offset,byte,expect", [
    (v, *case) for v, cases in HEADER_CASES.items() for case in cases], indirect=["lua"])
def test_corrupted_header_fields_are_rejected(lua, offset, byte, expect):
    msg = lua_error(lua, """
        local d = string.dump(function() return 1 end)
        local o, b = ...
        return B.read(d:sub(1, o) .. string.char(b) .. d:sub(o + 2))""", offset, byte)
    assert msg.startswith("bytecode: " + expect), msg


def test_garbage_is_rejected(lua):
    for junk in ["", "hello world", "\x1bLu", "\x1bLuaXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                 "return 1", "\x00" * 100]:
        msg = lua_error(lua, "return B.read(...)", junk)
        assert msg.startswith("bytecode:"), (junk, msg)
    assert lua_error(lua, "return B.read(42)").startswith("bytecode: expected a string")


# The string constant "abc" in a dump: tag 4 (short string), size + 1 and
# the bytes (5.5: and a NUL).
ABC = {"5.4": r"\4\x84abc", "5.5": r"\4\4abc\0"}


def test_bad_constant_tag_is_rejected(lua):
    # function() return "abc" end: find the constant's tag byte and replace it.
    msg = lua_error(lua, rf"""
        local d = string.dump(function() return "abc" end, true)
        local at = d:find("{ABC[version(lua)]}", 1, true)
        return B.read(d:sub(1, at - 1) .. "\9" .. d:sub(at + 1))""")
    assert msg.startswith("bytecode: bad constant tag 9"), msg


# In a stripped dump of `function() end`, the main function's code count
# follows the header and 5 one-byte fields (5.4: header 32 bytes and
# nupvalues, source NULL, linedefined, lastlinedefined, numparams,
# is_vararg, maxstacksize; 5.5: header 40 bytes and nupvalues, linedefined,
# lastlinedefined, numparams, flag, maxstacksize); then a count of 2^28 - 1
# and a varint of 6 bytes in each version's varint encoding.
CODE_COUNT = {
    "5.4": (38, r"\x7f\x7f\x7f\xff", r"\x7f\x7f\x7f\x7f\x7f\xff"),
    "5.5": (46, r"\xff\xff\xff\x7f", r"\xff\xff\xff\xff\xff\x7f"),
}


def test_huge_counts_and_overflowing_varints_are_rejected(lua):
    at, huge, overflowing = CODE_COUNT[version(lua)]
    msgs = run(lua, rf"""
        local d = string.dump(function() end, true)
        local head, rest = d:sub(1, {at}), d:sub({at + 2})  -- drop the code count
        local _, m1 = pcall(B.read, head .. "{huge}" .. rest)
        local _, m2 = pcall(B.read, head .. "{overflowing}" .. rest)
        local _, m3 = pcall(B.read, d .. "\0")
        return m1, m2, m3""")
    assert msgs[0].startswith("bytecode: truncated chunk"), msgs[0]
    assert msgs[1].startswith("bytecode: integer overflow"), msgs[1]
    assert msgs[2].startswith("bytecode: 1 trailing byte"), msgs[2]


def test_random_corruption_never_crashes(lua):
    # Flip bytes all over real dumps: every read either succeeds or raises a
    # "bytecode:" error (never another error, never a crash).
    bad = run(lua, r"""
        local src = string.dump(load(...), false)
        local seed, odd = 12345, {}
        local function rnd(n) seed = (seed * 1103515245 + 12345) % 2^31 // 1; return seed % n + 1 end
        for trial = 1, 3000 do
          local d = src
          for _ = 1, rnd(3) do
            local at = rnd(#d)
            d = d:sub(1, at - 1) .. string.char(rnd(256) - 1) .. d:sub(at + 1)
          end
          if trial % 5 == 0 then d = d:sub(1, rnd(#d)) end
          local ok, err = pcall(B.read, d)
          if not ok and not tostring(err):find("^bytecode: ") then odd[#odd + 1] = err end
        end
        return #odd, odd[1]""", SAMPLES["nested3"])
    assert bad[0] == 0, bad[1]


# ------------------------------------------------------------ round trip ---

@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_read_write_read_is_identical(lua, name):
    r = run(lua, """
        local f = ...
        local d = string.dump(f)
        local p = B.read(d)
        local w = B.write(p)
        return H.same(p, B.read(w)), w == d""", sample(lua, name))
    assert r == (None, True)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_loaded_main_proto_behaves_like_original(lua, name):
    f = sample(lua, name)
    g = run(lua, 'return load(B.write(B.read(string.dump(...))), "=copy", "b")', f)
    args = sample_args(lua, name)
    assert as_list(g(*args)) == as_list(f(*args))
    assert as_list(g(*args)) == as_list(f(*args))   # upvalue state evolves alike


def test_constants_are_read_with_their_types(lua):
    r = run(lua, """
        local p = B.read(string.dump(...))
        local out = {p.k.n}
        for i = 1, p.k.n do local v = p.k[i]; out[#out+1] = math.type(v) or type(v) end
        return table.concat(out, " "), p.k.n""", sample(lua, "constants"))
    kinds = r[0].split()[1:]
    assert {"integer", "float", "string", "boolean", "nil"} <= set(kinds)
    assert len(kinds) == r[1]
    r2 = run(lua, """
        local p = B.read(string.dump(...))
        local has = {}
        for i = 1, p.k.n do if p.k[i] ~= nil then has[p.k[i]] = true end end
        return has[math.mininteger], has[math.maxinteger], has[1/0], has[-1/0],
               has["with\\0nul\\0bytes"],
               has["a string that is clearly longer than forty bytes, long"]""",
             sample(lua, "constants"))
    assert r2 == (True,) * 6


def test_nil_constants_are_counted_in_k_n(lua):
    # Lua never emits nil constants from plain code except as table keys'
    # placeholders; build one: the proto round-trips nil, false and true.
    r = run(lua, """
        local p = B.read(string.dump(function() return 1.5, "x", 2.5 end))
        p.k = {n = 5, nil, false, 1.5, true, nil}
        local q = B.read(B.write(p))
        return q.k.n, q.k[1], q.k[2], q.k[3], q.k[4], q.k[5], H.same(p, q)""")
    assert r == (5, None, False, 1.5, True, None, None)


def test_special_float_constants_keep_their_bits(lua):
    # -0.0 and NaN never come out of the compiler as constants (constant
    # folding refuses them), so put them into a proto and write it.
    r = run(lua, r"""
        local p = B.read(string.dump(function() return 1.5, 2.5, 3.5 end))
        local nan = string.unpack("<d", "\1\0\0\0\0\0\248\127")  -- quiet NaN, payload 1
        local negnan = string.unpack("<d", "\0\0\0\0\0\0\248\255")
        assert(p.k.n == 3)
        p.k = {n = 3, -0.0, nan, negnan}
        local w = B.write(p)
        local q = B.read(w)
        local a, b, c = load(w, "=specials", "b")()
        return H.same(p, q), B.write(q) == w,
               1 / q.k[1], string.pack("<d", q.k[2]) == "\1\0\0\0\0\0\248\127",
               string.pack("<d", q.k[3]) == "\0\0\0\0\0\0\248\255",
               1 / a, b ~= b, string.pack("<d", b) == "\1\0\0\0\0\0\248\127", c ~= c""")
    assert r == (None, True, float("-inf"), True, True, float("-inf"), True, True, True)


def test_long_strings_and_nul_bytes_survive(lua):
    r = run(lua, r"""
        local long = ("0123456789"):rep(5) .. "\0end"
        local f = load("return '" .. long:gsub("%z", "\\0") .. "', 'a\\0b'")
        local p = B.read(string.dump(f))
        local g = load(B.write(p), "=s", "b")
        local x, y = g()
        return x == long, y == "a\0b", #p.k[1], H.same(p, B.read(B.write(p)))""")
    assert r == (True, True, 54, None)


# The kind of an upvalue (lparser.h) of a regular local, a <const> and a
# <close>: 5.4 numbers them VDKREG 0, RDKCONST 1, RDKTOCLOSE 2; 5.5 has
# RDKVAVAR 2 (a vararg parameter) before RDKTOCLOSE 3.
KINDS = {"5.4": {"reg": 0, "konst": 1, "tbc": 2}, "5.5": {"reg": 0, "konst": 1, "tbc": 3}}


def test_upvalue_descriptions_cover_every_kind(lua):
    r = run(lua, """
        local p = B.read(string.dump(...))
        local kinds, instack, notinstack = {}, false, false
        H.walk(p, function(q)
          for _, u in ipairs(q.upvalues) do
            kinds[u.name] = u.kind
            if u.instack then instack = true else notinstack = true end
          end
        end)
        return instack, notinstack, kinds""",
        sample(lua, "upvalue_kinds"))
    assert r[:2] == (True, True)
    kinds = dict(r[2].items())
    assert {name: kinds.get(name) for name in KINDS[version(lua)]} == KINDS[version(lua)]
    assert "ctc" not in kinds  # a compile-time constant is folded, not captured


# A child's source and the main function's flag: 5.4 writes a child's
# source as NULL (the parent's) and has no flag; 5.5 gives every function
# its own source and a main function has hidden varargs (PF_VAHID).
SHAPE = {"5.4": (True, None), "5.5": (None, 1)}


def test_proto_fields_have_the_documented_shape(lua):
    r = run(lua, """
        local p = B.read(string.dump(...))
        local c = p.p[1]
        return p.source, p.linedefined, p.lastlinedefined, p.numparams, p.is_vararg,
               p.maxstacksize > 0, #p.code, p.nupvalues_main, #p.upvalues,
               c.source, c.source_was_null, c.nupvalues_main, #c.lineinfo == #c.code,
               p.locvars[1].name, p.locvars[1].startpc, p.locvars[1].endpc > 0,
               p.source_was_null, p.flag""",
        lua.eval('load("local x = 1\\nreturn function(a, b, ...) return x end", "=src")'))
    assert r[0] == "=src" and r[1] == 0 and r[2] == 0 and r[3] == 0 and r[4] is True
    assert r[5] and r[6] > 0 and r[7] == 1 and r[8] == 1
    assert r[9] == "=src" and r[11] is None and r[12]
    assert r[13] == "x" and r[14] >= 0 and r[15] and r[16] is None
    assert (r[10], r[17]) == SHAPE[version(lua)]


# ---------------------------------------------------- children as chunks ---

def test_child_proto_loads_as_working_function(lua):
    r = run(lua, """
        local function outer() local a = 1; return function(x) return x + a end end
        local p = B.read(string.dump(outer))
        local child = load(B.write(p.p[1]), "=child", "b")
        debug.setupvalue(child, 1, 41)
        return child(1), debug.getupvalue(child, 1)""")
    assert r == (42, "a", 41)


def test_child_written_as_main_keeps_source_and_lines(lua):
    r = run(lua, """
        local outer = load("local a = 1\\nreturn function(x)\\n  return x + a\\nend", "@file.lua")
        local p = B.read(string.dump(outer))
        local child = load(B.write(p.p[1]), "=ignored", "b")
        local real = outer()
        local i1, i2 = debug.getinfo(child, "S"), debug.getinfo(real, "S")
        return i1.source, i1.linedefined, i1.lastlinedefined, i2.linedefined,
               string.dump(child) == B.write(p.p[1])""")
    assert r == ("@file.lua", 2, 4, 2, True)


def test_third_level_child_joins_upvalues_of_a_live_closure(lua):
    r = run(lua, """
        local f = ...
        local p = B.read(string.dump(f))
        -- f(n) -> f1 -> f2 -> innermost
        local depth3 = p.p[1].p[1].p[1]
        local g = load(B.write(depth3), "=g", "b")
        -- its upvalues: a, b, c (names from the dump)
        local names = {}
        for i = 1, #depth3.upvalues do names[i] = depth3.upvalues[i].name end
        -- give it values: a = 10, b = 20, c = 30
        debug.setupvalue(g, 1, 10); debug.setupvalue(g, 2, 20); debug.setupvalue(g, 3, 30)
        local r1 = g(4)          -- a becomes 11: 11 + 20 + 30 + 4
        local r2 = g(0)          -- a becomes 12
        -- join its first upvalue with another loaded copy's
        local h = load(B.write(depth3), "=h", "b")
        debug.upvaluejoin(h, 1, g, 1)
        debug.setupvalue(h, 2, 0); debug.setupvalue(h, 3, 0)
        local r3 = h(0)          -- shared a becomes 13
        return table.concat(names, ","), r1, r2, r3, select(2, debug.getupvalue(g, 1))""",
        sample(lua, "nested3"))
    assert r == ("a,b,c", 65, 62, 13, 13)


# -------------------------------------------------------------- stripped ---

@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_stripped_dumps_parse_and_write(lua, name):
    f = sample(lua, name)
    r = run(lua, """
        local f = ...
        local d = string.dump(f, true)
        local p = B.read(d)
        local g = load(B.write(p), "=s", "b")
        local nodebug = true
        H.walk(p, function(q)
          if #q.lineinfo > 0 or #q.locvars > 0 or q.source ~= nil then nodebug = false end
          for _, u in ipairs(q.upvalues) do if u.name then nodebug = false end end
        end)
        return B.write(p, true) == d, H.same(p, B.read(B.write(p))), nodebug,
               B.line_of(p, 1), g""", f)
    assert r[:4] == (True, None, True, None)
    args = sample_args(lua, name)
    assert as_list(r[4](*args)) == as_list(f(*args))


def test_strip_flag_of_write_drops_debug_info(lua):
    r = run(lua, """
        local f = ...
        return B.write(B.read(string.dump(f)), true) == string.dump(f, true)""",
        sample(lua, "nested3"))
    assert r is True


# ------------------------------------------------------------- line info ---

def test_line_of_call_instructions_gives_call_site_lines(lua):
    src = "\n".join([
        "return function(t)",        # 1
        "  local x = 0",              # 2
        "  print_a(x)",               # 3  first call
        "",                           # 4
        "  for i = 1, 3 do",          # 5
        "    x = x + i",              # 6
        "  end",                      # 7
        "",                           # 8
        "",                           # 9
        "  print_b(",                 # 10 second call (the line of '(' ... ')')
        "    x)",                     # 11
        "  return x",                 # 12
        "end",                        # 13
    ])
    r = run(lua, """
        local p = B.read(string.dump(load(...)()))
        local calls = {}
        for pc = 1, #p.code do
          if B.decode(p.code[pc]) == B.OP.CALL then calls[#calls + 1] = B.line_of(p, pc) end
        end
        return table.concat(calls, ",")""", src)
    # Lua 5.4 and 5.5 give a call the line where its function expression starts
    assert r == "3,10"
    seen = run(lua, """
        local f = load(...)()
        local lines = {}
        print_a = function() lines[#lines + 1] = debug.getinfo(2, "l").currentline end
        print_b = print_a
        f({})
        print_a, print_b = nil, nil
        return table.concat(lines, ",")""", src)
    assert r == seen


def test_line_of_matches_activelines(lua):
    for name in sorted(SAMPLES):
        r = run(lua, """
            local f = ...
            local p = B.read(string.dump(f))
            return H.lines_differ(p, f), #p.abslineinfo""", sample(lua, name))
        assert r[0] is None, (name, r)
    # the long sample must exercise the abslineinfo checkpoints
    assert run(lua, "return #B.read(string.dump(...)).abslineinfo",
               sample(lua, "many_lines")) > 2


def test_line_of_matches_line_hook_for_every_instruction(lua):
    # A count hook firing on every instruction reports the line of the
    # instruction about to run; line_of must give a line for each of those.
    r = run(lua, """
        local f = ...
        local p = B.read(string.dump(f))
        local valid = {}
        for pc = 1, #p.code do valid[B.line_of(p, pc)] = true end
        local seen, missing = 0, nil
        debug.sethook(function()
          local info = debug.getinfo(2, "lf")
          if info.func == f then
            seen = seen + 1
            if not valid[info.currentline] then missing = info.currentline end
          end
        end, "", 1)
        f(0)
        debug.sethook()
        return seen, missing, B.line_of(p, 0), B.line_of(p, #p.code + 1)""",
        sample(lua, "many_lines"))
    assert r[0] > 400 and r[1] is None and r[2] is None and r[3] is None


# ------------------------------------------------- versions and formats ---

def test_for_version_gives_each_format_and_defaults_to_the_states_lua(lua):
    r = run(lua, """
        local ok, err = pcall(B.for_version, 53)
        return B.VERSION, _VERSION, B.for_version("5.4").VERSION, B.for_version(55).VERSION,
               B.for_version("Lua 5.5") == B.for_version(0x55), B == B.for_version(_VERSION),
               B.for_version(54).for_version == B.for_version, ok, err""")
    assert r[:2] in [(0x54, "Lua 5.4"), (0x55, "Lua 5.5")]
    assert r[2:8] == (0x54, 0x55, True, True, True, False)
    assert r[8].startswith("bytecode: no format for Lua version 53")


def test_either_lua_reads_and_writes_both_formats():
    # The module does not need the chunk's Lua: a 5.4 state rewrites 5.5
    # chunks byte for byte, and the other way round.
    states = {v: new_runtime(0, v) for v in VERSIONS}
    mods = {v: load_lua(rt, "persist/lua/bytecode.lua") for v, rt in states.items()}
    dumps = {v: [rt.execute(f"return string.dump(load(...), {strip})", SAMPLES[name])
                 for name in sorted(SAMPLES) for strip in ("false", "true")]
             for v, rt in states.items()}
    for host, rt in states.items():
        for v, chunks in dumps.items():
            for n, d in enumerate(chunks):
                same = rt.execute("""
                    local B, d, strip = ...
                    return B.write(B.read(d), strip) == d""",
                    mods[host].for_version(v), d, n % 2 == 1)
                assert same, (host, v, n)


# How often a string used by two functions is written: 5.5 writes each
# distinct string once per chunk and refers to it by index after that.
TIMES_WRITTEN = {"5.4": 2, "5.5": 1}


def test_strings_are_saved_once_per_chunk_in_5_5(lua):
    r = run(lua, """
        local s = "a string both functions use as a constant"
        local d = string.dump(load(("local x = %q return function() return %q end"):format(s, s),
                                   "=chunk"))
        local _, times = d:gsub(s, "")
        local p = B.read(d)
        return times, p.k[1] == s and p.p[1].k[1] == s, B.write(p) == d""")
    assert r == (TIMES_WRITTEN[version(lua)], True, True)


@only("5.5")
@pytest.mark.parametrize("corrupt,expect", [
    # the child's "abcd" refers to the main function's (saved string 1)
    (r'(d:gsub("\4\0\1", "\4\0\9"))', "invalid string index 9"),
    # the NUL after a string
    (r'(d:gsub("abcd\0", "abcdX", 1))', "string constant without its NUL"),
    # the padding before the main function's code (at byte 47, 0-based)
    (r'd:sub(1, 47) .. "\1" .. d:sub(49)', "non-zero padding before instructions"),
])
def test_malformed_5_5_strings_and_padding_are_rejected(lua, corrupt, expect):
    msg = lua_error(lua, f"""
        local d = string.dump(function() return "abcd", function() return "abcd" end end, true)
        assert(d:byte(48) == 0)
        return B.read({corrupt})""")
    assert msg.startswith("bytecode: " + expect), msg


@only("5.5")
def test_vararg_flags_say_hidden_arguments_or_a_table(lua):
    # PF_VAHID (1): varargs kept below the frame; PF_VATAB (2): a named
    # vararg parameter used as a table (#t, or captured: upvalue kind
    # RDKVAVAR 2); t[i] alone stays hidden (GETVARG).
    r = run(lua, """
        local p = B.read(string.dump(load([[
          local function none(a) return a end
          local function hidden(...) return select("#", ...) end
          local function tab(...t) return #t end
          local function captured(...t) return function() return t.n end end
          local function indexed(...t) return t[2] end
          return none, hidden, tab, captured, indexed]])))
        local out = {}
        for i, c in ipairs(p.p) do out[i] = c.flag .. (c.is_vararg and "v" or "-") end
        local up = p.p[4].p[1].upvalues[1]
        local ops = {}
        for pc = 1, #p.p[5].code do ops[pc] = B.OPNAMES[B.decode(p.p[5].code[pc])] end
        -- without `flag`, write takes is_vararg as PF_VAHID
        local q = p.p[5]
        q.flag = nil
        local g = load(B.write(q), "=g", "b")
        return table.concat(out, " "), up.name .. " " .. up.kind, table.concat(ops, " "),
               B.read(B.write(q)).flag, g(10, 20, 30)""")
    assert r == ("0- 1v 2v 2v 1v", "t 2", "VARARGPREP LOADI GETVARG RETURN RETURN", 1, 20)


@only("5.5")
def test_global_declarations_compile_to_errnnil(lua):
    # `global x = v` checks that x is still nil: ERRNNIL A Bx, Bx - 1 the
    # constant of the name.
    r = run(lua, """
        local p = B.read(string.dump(load("global x = 1")))
        for pc = 1, #p.code do
          local f = B.fields(p.code[pc])
          if f.op == B.OP.ERRNNIL then return B.OPMODES[f.op], p.k[f.bx] end
        end""")
    assert r == ("iABx", "x")


# ----------------------------------------------------- official testes ---

@pytest.mark.parametrize("lua,filename", [
    (v, name) for v in VERSIONS for name in official_files(v)], indirect=["lua"])
def test_official_test_files_round_trip(lua, sources, filename):
    paths = sorted((sources / "testes").glob(filename))
    assert paths, filename
    for path in paths:
        r = run(lua, """
            local path = ...
            local fn, err = loadfile(path)   -- compiles only; skips a '#' line
            if not fn then return "cannot compile: " .. err end
            for _, strip in ipairs{false, true} do
              local d = string.dump(fn, strip)
              local p = B.read(d)
              local w = B.write(p, strip)
              if w ~= d then return "not byte-identical (strip=" .. tostring(strip) .. ")" end
              local diff = H.same(p, B.read(w))
              if diff then return diff end
            end
            -- every function: written as a chunk on its own, it loads, its
            -- dump is what we wrote, and line_of agrees with activelines
            local p, bad, n = B.read(string.dump(fn)), nil, 0
            H.walk(p, function(q, where)
              if bad then return end
              n = n + 1
              local w = B.write(q)
              local g, e = load(w, "=x", "b")
              if not g then bad = where .. ": " .. e return end
              if string.dump(g) ~= w then bad = where .. ": dump differs" return end
              local d = H.lines_differ(q, g)
              if d then bad = where .. ": " .. d end
            end)
            return bad or ("ok " .. n)""", str(path))
        assert r.startswith("ok "), (path.name, r)


@pytest.mark.parametrize("runtime", VERSIONS)
def test_module_writes_no_globals(runtime):
    rt = new_runtime(0, runtime)
    before = rt.execute("local n = {} for k in pairs(_G) do n[#n + 1] = k end table.sort(n) return table.concat(n, ' ')")
    B = load_lua(rt, "persist/lua/bytecode.lua")
    rt.execute("local B = ... B.write(B.read(string.dump(function(...) return ... end)))", B)
    after = rt.execute("local n = {} for k in pairs(_G) do n[#n + 1] = k end table.sort(n) return table.concat(n, ' ')")
    assert before == after
