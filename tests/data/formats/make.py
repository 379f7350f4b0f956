"""Make the format fixtures: Lua state bodies written by the serializer as
it was when each was made, kept so that every later version of the reader
is tested against them (tests/test_persist_formats.py).

    PYTHONPATH=. python tests/data/formats/make.py

Made with format version 3 at commit 821756d (state.lua before its split into
writer/reader pairs). v3.bin is the body of SETUP as written; v2.bin and
v1.bin are made from the bodies of the smaller setups the older formats
could hold, with the transformations of tests/test_persist_state.py: v2 is
a version-3 body without coroutines dead by an error, its version field set
to 2; v1 has no suspended call stacks either, and its roots section loses
the trailing open-upvalue count (0) that version 2 added.

The open file is FILE_PATH; the test writes FILE_TEXT there before
restoring. Do not re-run this to "update" the fixtures: they are the old
formats; add new files for a new version instead.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILE_PATH = "/tmp/lua_kernel_format_fixture.txt"
FILE_TEXT = "first\nsecond\nthird\n"

# Every kind of value, in parts, so the smaller formats can leave some out.
BASE = f"""
local shared = {{tag = "shared"}}
cyc = {{name = "cyc"}}; cyc.self = cyc
pair = {{a = shared, b = shared, [shared] = "table key"}}
holes = {{1, nil, 3, nil, nil, 6}}
floats = {{}}; for i = 1, 100 do floats[i] = i + 0.5 end
ints = {{}}; for i = 1, 100 do ints[i] = i * 7 end
mixed = {{1, 2, 3, 0.5, 0.25, "s", math.maxinteger, math.mininteger, -0.0, 0/0, 1/0, shared, true, false}}
hash = {{[math.maxinteger] = math.mininteger, [1 << 61] = "big key", [1.5] = "float key",
        neg0 = -0.0, nan = 0/0, big = -(1 << 62), small = -5, yes = true}}
do local n = 0; inc = function() n = n + 1; return n end; get = function() return n end end
inc(); inc()
V = {{__add = function(a, b) return a.x + b.x end,
      __index = function(t, k) return k .. "!" end}}
v1 = setmetatable({{x = 1}}, V); v2 = setmetatable({{x = 2}}, V)
setmetatable(math, {{__index = function(t, k) return "no " .. k end}})
getmetatable("").__unm = function(s) return s:upper() end
function string.shout(s) return s:upper() .. "!" end
os.difftime = nil
not_started = coroutine.create(function(a) return a * 2 end)
dead = coroutine.create(function() end); coroutine.resume(dead)
gen2 = coroutine.wrap(function(x) return x + 1 end)
fh = io.open({FILE_PATH!r}); first_line = fh:read("l")
pyobj = python.eval('{{"a": [1, 2, 3], "b": "text"}}')
"""
LIVE = """
live = coroutine.create(function(a)
  local total = a
  local add = function(x) total = total + x end
  add_outside = add
  local b = coroutine.yield(total)
  add(b)
  return total
end)
coroutine.resume(live, 10)
gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
gen()
"""
FAILED = """
failed = coroutine.create(function()
  local c <close> = setmetatable({}, {__close = function() closed_flag = "closed" end})
  error({code = 7})
end)
coroutine.resume(failed)
"""
SETUPS = {"v1": BASE, "v2": BASE + LIVE, "v3": BASE + LIVE + FAILED}

# (Lua code, expected values) for each body; every check runs in one fresh
# session, in this order.
CHECKS_BASE = [
    ("return cyc.self == cyc, cyc.self.name", (True, "cyc")),
    ("return pair.a == pair.b, pair[pair.a], pair.b.tag", (True, "table key", "shared")),
    ("return #holes == 6 or #holes == 1 or #holes == 3, holes[1], holes[2], holes[3], holes[6]",
     (True, 1, None, 3, 6)),
    ("local s = 0 for i = 1, 100 do s = s + floats[i] end return #floats, s, math.type(floats[7])",
     (100, 5100.0, "float")),
    ("local s = 0 for i = 1, 100 do s = s + ints[i] end return #ints, s, math.type(ints[7])",
     (100, 35350, "integer")),
    ("return mixed[1], mixed[3], mixed[4], mixed[6], mixed[7] == math.maxinteger,"
     " mixed[8] == math.mininteger, 1 / mixed[9], mixed[10] ~= mixed[10], mixed[11],"
     " mixed[12] == pair.a, mixed[13], mixed[14], #mixed",
     (1, 3, 0.5, "s", True, True, float("-inf"), True, float("inf"), True, True, False, 14)),
    ("return hash[math.maxinteger] == math.mininteger, hash[1 << 61], hash[1.5],"
     " 1 / hash.neg0, hash.nan ~= hash.nan, hash.big == -(1 << 62), hash.small, hash.yes",
     (True, "big key", "float key", float("-inf"), True, True, -5, True)),
    ("return inc(), get(), inc(), get()", (3, 3, 4, 4)),
    ("return v1 + v2, v1.zz, getmetatable(v1) == getmetatable(v2)", (3, "zz!", True)),
    ("return math.nothing, math.floor(2.5), -('abc'), ('x'):shout(), os.difftime",
     ("no nothing", 2, "ABC", "X!", None)),
    ("return coroutine.status(not_started), coroutine.resume(not_started, 21)",
     ("suspended", True, 42)),
    ("return coroutine.status(dead), coroutine.resume(dead)",
     ("dead", False, "cannot resume dead coroutine")),
    ("return gen2(41)", (42,)),
    ("return first_line, fh:read('l'), fh:seek(), io.type(fh)", ("first", "second", 13, "file")),
    ("return python.builtins.len(pyobj['a']), pyobj['b']", (3, "text")),
]
CHECKS_LIVE = [
    ("add_outside(5) return coroutine.resume(live, 1)", (True, 16)),
    ("return coroutine.status(live)", ("dead",)),
    ("return gen(), gen(), coroutine.status(coroutine.running())", (2, 3, "running")),
]
CHECKS_FAILED = [
    ("local ok, e = coroutine.close(failed) return coroutine.status(failed), ok, e.code,"
     " closed_flag", ("dead", False, 7, "closed")),
]
CHECKS = {"v1": CHECKS_BASE, "v2": CHECKS_BASE + CHECKS_LIVE,
          "v3": CHECKS_BASE + CHECKS_LIVE + CHECKS_FAILED}


def sections(body: bytes) -> tuple[bytes, list[bytes]]:
    pos, out = 12, []
    for _ in range(8):
        (n,) = struct.unpack_from("<q", body, pos)
        out.append(body[pos + 8:pos + 8 + n])
        pos += 8 + n
    assert pos == len(body)
    return body[:12], out


def as_version_1(body: bytes) -> bytes:
    """tests/test_persist_state.py's _as_version_1: drop the open-upvalue count."""
    _, secs = sections(body)
    x = secs[-1]
    (count,) = struct.unpack_from("<q", x, 0)
    assert count < 4096 and x[8] in (4, 8)
    width = x[8]
    assert int.from_bytes(x[-width:], "little") == 0
    secs[-1] = struct.pack("<q", count - 1) + x[8:-width]
    return body[:8] + struct.pack("<I", 1) + b"".join(struct.pack("<q", len(s)) + s for s in secs)


def make(name: str) -> bytes:
    from lua_kernel.persist import new_session, state

    Path(FILE_PATH).write_text(FILE_TEXT)
    s = new_session()
    fn = s.lua.eval("function(c) return assert(load(c, '=fixture')) end")(SETUPS[name])
    s.call(fn)
    body, issues, _ = state.capture(s)
    assert issues == [], issues
    assert body[8:12] == b"\x03\x00\x00\x00"
    if name == "v2":
        return body[:8] + struct.pack("<I", 2) + body[12:]
    if name == "v1":
        return as_version_1(body)
    return body


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[2]))
    for name in SETUPS:
        body = make(name)
        (HERE / f"{name}.bin").write_bytes(body)
        print(name, len(body), "bytes")
