"""The Lua state serializer: what a snapshot body brings back, in a new process.

Each round trip runs `setup` in a session here, captures it, and restores the
body into a fresh session in a *new Python process*, where `check` runs and
its results come back as JSON. Checks compare behaviour (calling functions,
mutating shared state through one closure and reading it through another,
metamethods firing), not printed text.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lua_kernel import Session
from lua_kernel.persist import new_session
from lua_kernel.persist import state
from lua_kernel.persist.state import Issue

# Restores a body in a fresh process. argv: body file, steps file (JSON list
# of [session index, Lua code]); sessions are restored from the same body.
RESTORER = textwrap.dedent(r"""
    import json, sys
    from lua_kernel import Session
    from lua_kernel.persist import new_session
    from lua_kernel.persist import state
    from lua_kernel.runtime import to_bytes

    def plain(v):
        if v is None or isinstance(v, (bool, int, float)):
            return v
        if isinstance(v, (str, bytes)):
            return to_bytes(v).decode("latin-1")
        return repr(v)

    body = open(sys.argv[1], "rb").read()
    steps = json.load(open(sys.argv[2]))
    runtime = sys.argv[3]
    sessions, issues = {}, []
    results = []
    for index, code in steps:
        if index not in sessions:
            sessions[index] = new_session(runtime=runtime)
            try:
                issues = [[i.path, i.reason] for i in state.apply(sessions[index], body)]
            except ValueError as e:
                print(json.dumps({"error": str(e)}))
                sys.exit(0)
        s = sessions[index]
        fn = s.lua.eval("function(c) return assert(load(c, '=check')) end")(code)
        results.append([plain(v) for v in s.call(fn)])
    print(json.dumps({"results": results, "issues": issues}))
""")


# Every test here runs in Lua 5.4 and in Lua 5.5 (issue 10): the runtime of
# the sessions the helpers below make. LuaJIT, whose Lua is 5.1, has its own
# round trips (test_persist_luajit.py, test_runtimes.py).
RUNTIMES = ["5.4", "5.5"]
RUNTIME = RUNTIMES[0]


@pytest.fixture(autouse=True, params=RUNTIMES)
def runtime(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "RUNTIME", request.param)
    return request.param


def run(session: Session, code: str, name: str = "setup"):
    """Run Lua code in a session the way a cell runs (as a chunk named `name`)."""
    fn = session.lua.eval("function(c, n) return assert(load(c, '=' .. n)) end")(code, name)
    return session.call(fn)


def capture(setup: str):
    s = new_session(runtime=RUNTIME)
    run(s, setup)
    return state.capture(s)


def restore_elsewhere(body: bytes, steps, tmp_path: Path) -> dict:
    body_file, steps_file = tmp_path / "body.bin", tmp_path / "steps.json"
    body_file.write_bytes(body)
    steps_file.write_text(json.dumps(steps))
    proc = subprocess.run([sys.executable, "-c", RESTORER, str(body_file), str(steps_file),
                           RUNTIME],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class RoundTrip:
    def __init__(self, values, save_issues, restore_issues, counts, body):
        self.values = values
        self.save_issues = save_issues
        self.restore_issues = restore_issues
        self.counts = counts
        self.body = body


def roundtrip(setup: str, check: str, tmp_path: Path) -> RoundTrip:
    """Save `setup`'s state here; restore it in a new process and run `check`."""
    body, issues, counts = capture(setup)
    out = restore_elsewhere(body, [[0, check]], tmp_path)
    assert "error" not in out, out
    return RoundTrip(out["results"][0], issues, [tuple(i) for i in out["issues"]], counts, body)


def value(setup: str, check: str, tmp_path: Path):
    rt = roundtrip(setup, check, tmp_path)
    assert rt.save_issues == [] and rt.restore_issues == [], (rt.save_issues, rt.restore_issues)
    return rt.values[0] if len(rt.values) == 1 else rt.values


# -- scalars -----------------------------------------------------------------------

def test_nil_and_booleans_come_back(tmp_path):
    assert value("t = {a = true, b = false, c = nil} yes, no = true, false",
                 "return t.a, t.b, t.c, yes, no, rawget(_G, 'missing')", tmp_path) \
        == [True, False, None, True, False, None]


def test_integers_keep_all_64_bits(tmp_path):
    setup = """
    ints = {math.mininteger, math.maxinteger, -1, 0, (1 << 60) - 1, 1 << 60,
            -(1 << 60), -(1 << 60) - 1, 0x7fffffff, -0x80000001}
    big = math.maxinteger; small = math.mininteger
    keyed = {[math.maxinteger] = 'max', [math.mininteger] = 'min'}
    """
    check = """
    local r = {}
    for i = 1, #ints do r[i] = string.format('%d:%s', ints[i], math.type(ints[i])) end
    return table.concat(r, ' '), big == math.maxinteger, small == math.mininteger,
           keyed[math.maxinteger], keyed[math.mininteger]
    """
    expected = " ".join(f"{v}:integer" for v in [
        -2**63, 2**63 - 1, -1, 0, 2**60 - 1, 2**60, -2**60, -2**60 - 1, 0x7fffffff, -0x80000001])
    assert value(setup, check, tmp_path) == [expected, True, True, "max", "min"]


def test_floats_are_bit_exact(tmp_path):
    setup = r"""
    local nan = string.unpack('<d', '\1\0\0\0\0\0\248\255')   -- negative NaN with a payload
    floats = {-0.0, 0.0, 1/0, -1/0, nan, 0.1, 5e-324, 1.7976931348623157e308, 3.0}
    neg_zero = -0.0
    """
    check = r"""
    local r = {}
    for i = 1, 9 do r[i] = string.pack('<d', floats[i]):gsub('.', function(c)
      return string.format('%02x', c:byte()) end) end
    return table.concat(r, ' '), math.type(floats[9]), 1 / neg_zero
    """
    import struct
    nan = struct.pack("<Q", 0xFFF8000000000001)
    expected = " ".join(b.hex() for b in [
        struct.pack("<d", x) for x in [-0.0, 0.0, float("inf"), float("-inf")]] + [nan] + [
        struct.pack("<d", x) for x in [0.1, 5e-324, 1.7976931348623157e308, 3.0]])
    assert value(setup, check, tmp_path) == [expected, "float", float("-inf")]


def test_strings_with_any_bytes_come_back(tmp_path):
    setup = r"""
    local b = {} for i = 0, 255 do b[#b + 1] = string.char(i) end
    all_bytes = table.concat(b)
    empty, nul, long = '', '\0', string.rep('\255\0x', 1000)
    """
    check = r"""
    local b = {} for i = 0, 255 do b[#b + 1] = string.char(i) end
    return all_bytes == table.concat(b), empty == '', nul == '\0', #long,
           long == string.rep('\255\0x', 1000)
    """
    assert value(setup, check, tmp_path) == [True, True, True, 3000, True]


def test_each_distinct_string_is_stored_once():
    body, _, counts = capture("""
    big = string.rep('x', 1 << 20)
    copies = {} for i = 1, 100 do copies[i] = big .. '' end
    """)
    assert len(body) < 2 * (1 << 20)
    assert counts["strings"] < 10


# -- tables ------------------------------------------------------------------------

def test_shared_tables_stay_shared(tmp_path):
    setup = "shared = {n = 1} a = {ref = shared} b = {ref = shared, again = shared}"
    check = "a.ref.n = 42 return b.ref.n, b.again.n, a.ref == b.ref"
    assert value(setup, check, tmp_path) == [42, 42, True]


def test_cyclic_tables_stay_cyclic(tmp_path):
    setup = "ring = {name = 'a'} ring.next = {name = 'b', next = ring} ring.self = ring"
    check = "return ring.next.next == ring, ring.self == ring, ring.next.next.next.name"
    assert value(setup, check, tmp_path) == [True, True, "b"]


def test_tables_as_keys_keep_identity(tmp_path):
    setup = "k = {} index = {[k] = 'found', [{}] = 'other'}"
    check = "local n = 0 for _ in pairs(index) do n = n + 1 end return index[k], n"
    assert value(setup, check, tmp_path) == ["found", 2]


def test_arrays_with_holes_runs_and_mixed_values(tmp_path):
    setup = """
    mixed = {1, 2, 3, 1.5, 2.5, 'a', true, 4, 1 << 62, nil, 7, [1.5] = 'f', x = 'y'}
    reversed = {} for i = 10, 1, -1 do reversed[i] = i * 10 end
    sparse = {[1] = 'a', [1000] = 'b'}
    """
    check = """
    local r = {}
    for i = 1, 11 do r[i] = tostring(mixed[i]) .. ':' .. (math.type(mixed[i]) or type(mixed[i])) end
    local s = 0 for i = 1, 10 do s = s + reversed[i] end
    return table.concat(r, ','), mixed[1.5], mixed.x, s, sparse[1], sparse[1000]
    """
    assert value(setup, check, tmp_path) == [
        "1:integer,2:integer,3:integer,1.5:float,2.5:float,a:string,true:boolean,"
        "4:integer,4611686018427387904:integer,nil:nil,7:integer", "f", "y", 550, "a", "b"]


# -- metatables ----------------------------------------------------------------------

def test_index_chains_keep_working(tmp_path):
    setup = """
    Animal = {} Animal.__index = Animal
    function Animal.new(name) return setmetatable({name = name}, Animal) end
    function Animal:speak() return self.name .. ' makes a sound' end
    Dog = setmetatable({}, {__index = Animal}) Dog.__index = Dog
    function Dog.new(name) return setmetatable(Animal.new(name), Dog) end
    function Dog:fetch() return self.name .. ' fetches' end
    rex = Dog.new('Rex')
    """
    check = "return rex:speak(), rex:fetch(), getmetatable(rex) == Dog, Dog.new('Fido'):speak()"
    assert value(setup, check, tmp_path) == ["Rex makes a sound", "Rex fetches", True,
                                             "Fido makes a sound"]


def test_call_tostring_and_operator_metamethods_fire(tmp_path):
    setup = """
    local V = {}
    V.__index = V
    V.__add = function(a, b) return setmetatable({x = a.x + b.x}, V) end
    V.__tostring = function(v) return 'V(' .. v.x .. ')' end
    V.__call = function(v, k) return v.x * k end
    V.__len = function() return 99 end
    v1, v2 = setmetatable({x = 1}, V), setmetatable({x = 2}, V)
    """
    check = "return tostring(v1 + v2), v2(10), #v1"
    assert value(setup, check, tmp_path) == ["V(3)", 20, 99]


def test_protected_metatable_stays_protected(tmp_path):
    setup = "locked = setmetatable({}, {__metatable = 'locked', __index = {secret = 7}})"
    check = """
    local ok, err = pcall(setmetatable, locked, {})
    return getmetatable(locked), locked.secret, ok, err
    """
    assert value(setup, check, tmp_path) == ["locked", 7, False, "cannot change a protected metatable"]


def test_newindex_does_not_fire_while_restoring(tmp_path):
    setup = """
    writes = 0
    proxy = setmetatable({a = 1, b = 2}, {__newindex = function(t, k, v)
      writes = writes + 1 rawset(t, k, v) end})
    """
    check = "local before = writes proxy.c = 3 return before, writes, proxy.a, proxy.c"
    assert value(setup, check, tmp_path) == [0, 1, 1, 3]


def test_gc_metamethod_still_fires_after_restore(tmp_path):
    setup = """
    collected = {}
    holder = {obj = setmetatable({name = 'obj'}, {__gc = function(o) collected[#collected + 1] = o.name end})}
    """
    check = """
    local before = #collected
    holder.obj = nil
    collectgarbage() collectgarbage()
    return before, collected[1]
    """
    assert value(setup, check, tmp_path) == [0, "obj"]


def test_close_metamethod_works_after_restore(tmp_path):
    setup = """
    log = {}
    Res = {__close = function(r, err) log[#log + 1] = 'closed ' .. r.name end}
    function open_res(name) return setmetatable({name = name}, Res) end
    """
    check = """
    do local r <close> = open_res('db') log[#log + 1] = 'using ' .. r.name end
    return table.concat(log, ', ')
    """
    assert value(setup, check, tmp_path) == "using db, closed db"


def test_weak_tables_stay_weak(tmp_path):
    setup = """
    cache = setmetatable({}, {__mode = 'k'})
    key = {} cache[key] = 'value'
    values = setmetatable({}, {__mode = 'v'}) values[1] = {}
    """
    check = """
    local had = cache[key]
    key = nil
    collectgarbage() collectgarbage()
    return had, next(cache), values[1], getmetatable(cache).__mode
    """
    assert value(setup, check, tmp_path) == ["value", None, None, "k"]


def test_basic_type_metatables_come_back(tmp_path):
    setup = "debug.setmetatable(0, {__index = math}) debug.setmetatable(nil, {__index = function() return 'nothing' end})"
    check = "local n = nil return (2.7):floor(), n.anything"
    assert value(setup, check, tmp_path) == [2, "nothing"]


# -- closures ------------------------------------------------------------------------

def test_closures_sharing_an_upvalue_stay_shared(tmp_path):
    setup = """
    function counter()
      local n = 0
      return function() n = n + 1 return n end, function() return n end
    end
    inc, get = counter()
    inc() inc()
    """
    check = "inc() return get(), inc(), get()"
    assert value(setup, check, tmp_path) == [3, 4, 4]


def test_loop_closures_each_keep_their_own_variable(tmp_path):
    setup = "fs = {} for i = 1, 10 do fs[i] = function() return i end end"
    check = "local r = {} for i = 1, 10 do r[i] = fs[i]() end return table.concat(r, ',')"
    assert value(setup, check, tmp_path) == "1,2,3,4,5,6,7,8,9,10"


def test_recursive_local_function(tmp_path):
    setup = "local function fact(n) if n <= 1 then return 1 end return n * fact(n - 1) end f = fact"
    check = "return f(10)"
    assert value(setup, check, tmp_path) == 3628800


def test_function_keeps_its_custom_environment(tmp_path):
    setup = """
    sandbox = {x = 5}
    f = load('return x', 'chunk', 't', sandbox)
    local function make() local _ENV = {y = 7} return function() return y end end
    g = make()
    """
    check = "sandbox.x = 6 return f(), g(), rawget(_G, 'x')"
    assert value(setup, check, tmp_path) == [6, 7, None]


def test_restored_function_still_names_its_chunk_and_line(tmp_path):
    setup = "function fail()\n  local x = 1\n  error('boom')\nend"
    check = "local ok, err = pcall(fail) return err, debug.getinfo(fail, 'S').short_src"
    assert value(setup, check, tmp_path) == ["setup:3: boom", "setup"]


def test_each_prototype_is_stored_once():
    _, _, counts = capture("fs = {} for i = 1, 100 do fs[i] = function() return i end end")
    assert counts["functions"] == 100 and counts["prototypes"] == 1


def test_upvalue_holding_the_closure_list_itself(tmp_path):
    setup = """
    local fs = {}
    for i = 1, 3 do fs[i] = function() return #fs + i end end
    all = fs
    """
    check = "return all[1](), all[3]()"
    assert value(setup, check, tmp_path) == [4, 6]


# -- permanents ----------------------------------------------------------------------

def test_standard_functions_come_back_as_themselves(tmp_path):
    setup = "t = {print, string.format, io.write, coroutine.yield, math, io.stdout, display}"
    check = """
    return t[1] == print, t[2] == string.format, t[3] == io.write, t[4] == coroutine.yield,
           t[5] == math, t[6] == io.stdout, t[7] == display
    """
    assert value(setup, check, tmp_path) == [True] * 7


def test_return_only_c_functions_are_permanents(tmp_path):
    setup = "it = ipairs({}) nx = pairs({}) cit = utf8.codes('')"
    check = "return it == ipairs({}), nx == next, cit == utf8.codes('')"
    assert value(setup, check, tmp_path) == [True, True, True]


def test_user_additions_to_standard_tables_survive(tmp_path):
    setup = """
    function string.trim(s) return (s:gsub('^%s+', ''):gsub('%s+$', '')) end
    function table.sum(t) local s = 0 for _, v in ipairs(t) do s = s + v end return s end
    math.tau = 2 * math.pi
    """
    check = "return ('  hi  '):trim(), table.sum({1, 2, 3}), math.tau == 2 * math.pi"
    assert value(setup, check, tmp_path) == ["hi", 6, True]


def test_string_metatable_addition_survives(tmp_path):
    setup = "getmetatable('').__index.shout = function(s) return s:upper() .. '!' end"
    check = "return ('hey'):shout()"
    assert value(setup, check, tmp_path) == "HEY!"


def test_globals_metatable_strict_mode_survives(tmp_path):
    setup = """
    declared = 1
    setmetatable(_G, {
      __index = function(_, k) error('undeclared global ' .. tostring(k), 2) end,
      __newindex = function(_, k) error('assignment to undeclared global ' .. tostring(k), 2) end,
    })
    """
    check = """
    local ok1, e1 = pcall(function() return nope end)
    local ok2, e2 = pcall(function() fresh_global = 1 end)
    declared = 2
    return ok1, e1, ok2, e2, declared
    """
    assert value(setup, check, tmp_path) == [
        False, "check:2: undeclared global nope", False,
        "check:3: assignment to undeclared global fresh_global", 2]


def test_deleted_standard_entry_stays_deleted(tmp_path):
    setup = "os.exit = nil table.insert = nil dofile = nil"
    check = "return os.exit, table.insert, dofile, os.time ~= nil"
    assert value(setup, check, tmp_path) == [None, None, None, True]


def test_replaced_standard_function_stays_replaced(tmp_path):
    setup = "local orig = tostring function tostring(v) return '<' .. orig(v) .. '>' end"
    check = "return tostring(5)"
    assert value(setup, check, tmp_path) == "<5>"


def test_module_in_package_loaded_survives(tmp_path):
    setup = "package.loaded.geometry = {area = function(w, h) return w * h end}"
    check = "return require('geometry').area(3, 4)"
    assert value(setup, check, tmp_path) == 12


def test_unknown_c_function_is_reported_by_path_and_restored_nil(tmp_path):
    setup = "words = string.gmatch('a b', '%a+') cfg = {items = {1, 2, {iter = words}}} kept = 'yes'"
    rt = roundtrip(setup, "return words, cfg.items[3].iter, kept", tmp_path)
    assert rt.values == [None, None, "yes"]
    assert [(i.path, i.reason) for i in rt.save_issues] == [
        ("_G.words", "C function that is not part of the standard environment")]
    assert rt.restore_issues == [
        ("_G.words", "not saved: C function that is not part of the standard environment; restored as nil")]


# -- issue paths ---------------------------------------------------------------------

def test_issue_paths_name_where_the_value_was_found():
    _, issues, _ = capture("""
    cfg = {items = {1, 2, {string.gmatch('', '')}}}
    _G['a b'] = {it2 = string.gmatch('', '')}
    getmetatable('').__index = setmetatable({}, {__index = string, extra = string.gmatch('', '')})
    """)
    assert sorted(i.path for i in issues) == sorted([
        "_G.cfg.items[3][1]", '_G["a b"].it2', "<string metatable>.__index<metatable>.extra"])


def test_upvalue_path_format():
    _, issues, _ = capture("local conn = string.gmatch('', '') function f() return conn end")
    assert [i.path for i in issues] == ["_G.f<upvalue 'conn'>"]


# -- Python objects ------------------------------------------------------------------

def test_python_object_round_trip(tmp_path):
    setup = "d = python.eval('{\"a\": [1, 2, 3], \"b\": \"text\"}')"
    check = """
    python.eval('lambda l: l.append(4)')(d['a'])
    return python.builtins.len(d['a']), d['b'], python.eval('lambda o: type(o).__name__')(d)
    """
    assert value(setup, check, tmp_path) == [4, "text", "dict"]


def test_python_callable_round_trip(tmp_path):
    setup = "triple = python.eval('lambda x: x * 3')"
    check = "return triple(14)"
    assert value(setup, check, tmp_path) == 42


def test_python_objects_sharing_parts_keep_sharing(tmp_path):
    setup = "local d = python.eval('{\"k\": []}') x = d['k'] y = d['k']"
    check = "python.eval('lambda l: l.append(1)')(x) return python.builtins.len(y)"
    assert value(setup, check, tmp_path) == 1


def test_unpicklable_python_object_is_reported_and_restored_nil(tmp_path):
    setup = """
    conn = python.eval('__import__("socket").socket()')
    ok_obj = python.eval('[1, 2]')
    kept = {n = 5}
    """
    rt = roundtrip(setup, "return conn, python.builtins.len(ok_obj), kept.n", tmp_path)
    assert rt.values == [None, 2, 5]
    assert [(i.path, i.reason) for i in rt.save_issues] == [
        ("_G.conn", "socket object cannot be pickled: TypeError: cannot pickle 'socket' object")]
    assert rt.restore_issues == [
        ("_G.conn", "not saved: socket object cannot be pickled: TypeError: cannot pickle "
                    "'socket' object; restored as nil")]


def test_python_object_that_cannot_be_unpickled_is_reported(tmp_path):
    """A class defined at restore time differently: unpickling fails, the rest survives."""
    body, issues, _ = capture("obj = python.eval('__import__(\"fractions\").Fraction(1, 3)') n = 1")
    assert issues == []
    broken = body.replace(b"fractions", b"fractionz")
    out = restore_elsewhere(broken, [[0, "return obj, n"]], tmp_path)
    assert out["results"] == [[None, 1]]
    assert out["issues"][0][0] == "_G.obj"
    assert "cannot be unpickled" in out["issues"][0][1]


# -- files ---------------------------------------------------------------------------

def test_open_file_is_reopened_at_its_position(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("first\nsecond\nthird\n")
    setup = f"fh = io.open({str(path)!r}) first = fh:read('l')"
    check = "return first, fh:read('l'), fh:seek(), io.type(fh)"
    assert value(setup, check, tmp_path) == ["first", "second", 13, "file"]


def test_file_open_for_writing_is_not_truncated(tmp_path):
    path = tmp_path / "out.txt"
    setup = f"out = io.open({str(path)!r}, 'w') out:write('hello ')"
    check = "out:write('world') out:close() return true"
    assert value(setup, check, tmp_path) is True
    assert path.read_text() == "hello world"


def test_deleted_file_restores_closed_with_an_issue(tmp_path):
    path = tmp_path / "gone.txt"
    path.write_text("x")
    body, issues, _ = capture(f"fh = io.open({str(path)!r}) other = 1")
    assert issues == []
    path.unlink()
    out = restore_elsewhere(body, [[0, "return io.type(fh), other"]], tmp_path)
    assert out["results"] == [["closed file", 1]]
    [(where, reason)] = out["issues"]
    assert where == "_G.fh"
    assert "cannot be reopened" in reason and str(path) in reason and "No such file" in reason


def test_closed_file_restores_closed(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("x")
    setup = f"fh = io.open({str(path)!r}) fh:close()"
    assert value(setup, "return io.type(fh)", tmp_path) == "closed file"


def test_file_not_opened_with_io_open_restores_closed_with_an_issue(tmp_path):
    rt = roundtrip("tmp = io.tmpfile() tmp:write('x') n = 1", "return io.type(tmp), n", tmp_path)
    assert rt.values == ["closed file", 1]
    assert [i.path for i in rt.save_issues] == ["_G.tmp"]
    assert rt.restore_issues[0][0] == "_G.tmp"


def test_kernel_io_open_keeps_the_original_errors():
    s = new_session(runtime=RUNTIME)
    # under pcall the C library names a function by its global name
    assert run(s, "return select(2, pcall(io.open))") == (
        "bad argument #1 to 'io.open' (string expected, got no value)",)
    assert run(s, "return select(2, pcall(io.open, 'x', 'rw'))") == (
        "bad argument #2 to 'io.open' (invalid mode)",)
    assert run(s, "return io.open('/nonexistent/dir/x')")[0] is None


# -- coroutines ----------------------------------------------------------------------

def test_not_started_coroutine_behaves_the_same(tmp_path):
    setup = "co = coroutine.create(function(a, b) local c = coroutine.yield(a + b) return c * 2 end)"
    check = """
    local s0 = coroutine.status(co)
    local _, x = coroutine.resume(co, 2, 3)
    local _, y = coroutine.resume(co, 10)
    return s0, x, y, coroutine.status(co)
    """
    assert value(setup, check, tmp_path) == ["suspended", 5, 20, "dead"]


def test_dead_coroutine_stays_dead(tmp_path):
    setup = "co = coroutine.create(function() return 1 end) coroutine.resume(co)"
    check = "return coroutine.status(co), coroutine.resume(co)"
    assert value(setup, check, tmp_path) == ["dead", False, "cannot resume dead coroutine"]


def test_coroutine_identity_is_kept(tmp_path):
    setup = "co = coroutine.create(function() end) list = {co, co}"
    check = "return list[1] == list[2], list[1] == co"
    assert value(setup, check, tmp_path) == [True, True]


def test_wrap_over_a_not_started_coroutine(tmp_path):
    setup = "gen = coroutine.wrap(function(n) for i = 1, n do coroutine.yield(i) end return 'end' end)"
    check = "return gen(3), gen(), gen(), gen()"
    assert value(setup, check, tmp_path) == [1, 2, 3, "end"]


def test_wrap_over_a_dead_coroutine(tmp_path):
    setup = "w = coroutine.wrap(function() return 1 end) w()"
    check = "return pcall(w)"
    assert value(setup, check, tmp_path) == [False, "cannot resume dead coroutine"]


def test_wrap_function_and_its_thread_stay_one_coroutine(tmp_path):
    setup = """
    gen = coroutine.wrap(function() coroutine.yield(1) return 2 end)
    thread = select(2, debug.getupvalue(gen, 1))
    """
    check = """
    local same = select(2, debug.getupvalue(gen, 1)) == thread
    local first = gen()
    return same, first, coroutine.status(thread), gen(), coroutine.status(thread)
    """
    assert value(setup, check, tmp_path) == [True, 1, "suspended", 2, "dead"]


def test_coroutine_running_a_wrap_function(tmp_path):
    setup = """
    inner = coroutine.wrap(function(x) return x * 2 end)
    outer = coroutine.create(inner)
    """
    check = "return coroutine.resume(outer, 21)"
    assert value(setup, check, tmp_path) == [True, 42]


def test_suspended_coroutines_come_back_suspended(tmp_path):
    """Issue 4 (the scenarios are in test_coroutines.py): a coroutine and a
    wrap function suspended with live stacks are saved without issues."""
    setup = """
    co = coroutine.create(function() local v = coroutine.yield(1); return v * 2 end)
    coroutine.resume(co)
    gen = coroutine.wrap(function() coroutine.yield(1); return "two" end) gen()
    kept = 'yes'
    """
    check = "local s = coroutine.status(co); return s, gen(), kept, coroutine.resume(co, 21)"
    rt = roundtrip(setup, check, tmp_path)
    assert rt.values == ["suspended", "two", "yes", True, 42]
    assert rt.save_issues == [] and rt.restore_issues == []


def test_restored_coroutines_can_be_saved_again(tmp_path):
    s = new_session(runtime=RUNTIME)
    run(s, "co = coroutine.create(function(x) return x + 1 end) w = coroutine.wrap(function(x) return -x end)")
    body, _, _ = state.capture(s)
    s2 = new_session(runtime=RUNTIME)
    assert state.apply(s2, body) == []
    body2, issues, _ = state.capture(s2)
    assert issues == []
    out = restore_elsewhere(body2, [[0, "local ok, v = coroutine.resume(co, 41) return ok, v, w(5)"]], tmp_path)
    assert out["results"] == [[True, 42, -5]]


# -- scale and robustness --------------------------------------------------------------

def test_million_node_linked_list(tmp_path):
    setup = "local l = nil for i = 1, 1e6 do l = {next = l, v = i} end list = l"
    check = "local n, s, l = 0, 0, list while l do n = n + 1 s = s + l.v l = l.next end return n, s"
    assert value(setup, check, tmp_path) == [1000000, 500000500000]


def test_malformed_body_raises_value_error():
    body, _, _ = capture("t = {1, 2, 3, s = 'x'} function f() return t end")
    for bad in [b"", b"garbage", body[:len(body) // 2], body[:-1], body + b"\0",
                b"NOTSTATE" + body[8:], body[:8] + b"\x63\x00\x00\x00" + body[12:]]:
        s = new_session(runtime=RUNTIME)
        with pytest.raises(ValueError):
            state.apply(s, bad)
    with pytest.raises(ValueError):
        state.apply(new_session(runtime=RUNTIME), "not bytes")


def test_restoring_twice_gives_independent_sessions(tmp_path):
    body, _, _ = capture("t = {n = 1} function bump() t.n = t.n + 1 return t.n end")
    out = restore_elsewhere(body, [[0, "bump() bump() return t.n"], [1, "return t.n, bump()"]], tmp_path)
    assert out["results"] == [[3], [1, 2]]


def test_capture_leaves_the_session_working():
    s = new_session(runtime=RUNTIME)
    run(s, "t = {1, 2} co = coroutine.create(print)")
    state.capture(s)
    state.capture(s)
    assert run(s, "t[3] = 3 return #t, collectgarbage('isrunning')") == (3, True)


def test_counts_describe_the_state():
    _, _, counts = capture("""
    t = {{}, {}, 'a', 'b'} f = function() return t end co = coroutine.create(f)
    p = python.eval('[]')
    """)
    assert counts["tables"] == 3 and counts["functions"] == 1 and counts["threads"] == 1
    assert counts["python_objects"] == 1 and counts["prototypes"] == 1
    assert counts["bytes"] > 0 and counts["seconds"] >= 0


def test_issue_is_readable():
    assert str(Issue("_G.conn", "socket object cannot be pickled")) == \
        "_G.conn: socket object cannot be pickled"


def _as_version_1(body: bytes) -> bytes:
    """The same body as the issue-3 kernel wrote it: format version 1, whose
    roots section ends after the Python record (no open-upvalue list)."""
    import struct
    pos, sections = 12, []
    for _ in range(8):
        (n,) = struct.unpack_from("<q", body, pos)
        sections.append(body[pos + 8:pos + 8 + n])
        pos += 8 + n
    x = sections[-1]
    (count,) = struct.unpack_from("<q", x, 0)
    assert count < 4096 and x[8] in (4, 8)      # one chunk
    width = x[8]
    assert int.from_bytes(x[-width:], "little") == 0   # no open upvalues
    sections[-1] = struct.pack("<q", count - 1) + x[8:-width]
    out = body[:8] + struct.pack("<I", 1)
    return out + b"".join(struct.pack("<q", len(s)) + s for s in sections)


def test_bodies_of_format_version_1_are_still_read(tmp_path):
    body, issues, _ = capture("kept = {1, 2, {three = 3}} function f(x) return x * 2 end")
    assert issues == [] and body[8:12] == b"\x03\x00\x00\x00"
    out = restore_elsewhere(_as_version_1(body), [[0, "return kept[3].three, f(21)"]], tmp_path)
    assert out == {"results": [[3, 42]], "issues": []}


def test_bodies_of_format_version_2_are_still_read(tmp_path):
    """Version 3 only adds a thread state (2: dead by an error), so a version-2
    body is a version-3 body without such threads."""
    body, issues, _ = capture("""
    kept = {1, 2, {three = 3}}
    co = coroutine.create(function(a) local b = coroutine.yield(a); return a + b end)
    coroutine.resume(co, 20)
    dead = coroutine.create(function() end); coroutine.resume(dead)
    """)
    assert issues == [] and body[8:12] == b"\x03\x00\x00\x00"
    old = body[:8] + b"\x02\x00\x00\x00" + body[12:]
    out = restore_elsewhere(old, [[0, "return kept[3].three, coroutine.status(dead), "
                                      "coroutine.resume(co, 22)"]], tmp_path)
    assert out == {"results": [[3, "dead", True, 42]], "issues": []}


def test_python_errors_in_the_serializers_callbacks_never_cross_into_lua(monkeypatch):
    """The callbacks Lua makes into Python answer a failure instead of
    raising: every Python object is reported, the rest of the Lua state is
    saved and restored, both ways."""
    from lua_kernel.persist import pyobjects

    s = new_session(runtime=RUNTIME)
    s.execute("objs = {python.builtins.len, python.builtins.abs}; kept = 42")

    def broken(*args):
        raise RuntimeError("boom")

    with monkeypatch.context() as mp:
        mp.setattr(pyobjects, "pickle_many", broken)
        body, issues, _ = state.capture(s)
    assert sorted(i.path for i in issues) == ["_G.objs[1]", "_G.objs[2]"]
    assert all("cannot be pickled: RuntimeError: boom" in i.reason for i in issues)
    fresh = new_session(runtime=RUNTIME)
    state.apply(fresh, body)
    assert fresh.execute("return kept, objs[1]") == (42, None)

    body, issues, _ = state.capture(s)
    assert issues == []
    monkeypatch.setattr(pyobjects, "unpickle_many", broken)
    fresh = new_session(runtime=RUNTIME)
    issues = state.apply(fresh, body)
    assert [str(i) for i in issues] == [
        f"_G.objs[{n}]: cannot be unpickled: RuntimeError: boom; restored as nil" for n in (1, 2)]
    assert fresh.execute("return kept, objs[1]") == (42, None)
