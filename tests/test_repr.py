"""Tests for lua_kernel/lua/repr.lua: how Lua values look in a notebook."""

import re
from pathlib import Path

import pytest
from lupa.lua54 import LuaRuntime

from lua_kernel.runtime import name_test

REPR_LUA = Path(__file__).resolve().parent.parent / "lua_kernel" / "lua" / "repr.lua"


@pytest.fixture
def lua():
    rt = LuaRuntime(unpack_returned_tuples=True)
    load_module = rt.eval(
        "function(src, ...) return assert(load(src, '=lua_kernel/repr.lua'))(...) end"
    )
    M = load_module(REPR_LUA.read_text(encoding="utf-8"), name_test(rt))
    M.init(rt.globals())
    rt.globals().M = M
    return rt


def _opts(lua, opts):
    return lua.table_from(opts) if opts else None


@pytest.fixture
def text(lua):
    """text(expr, **opts): evaluate a Lua expression and format it, all in Lua."""
    fmt = lua.eval(
        "function(M, src, opts)"
        "  local f = assert(load('return ' .. src, '=In[1]'))"
        "  return M.text(f(), opts)"
        " end"
    )
    return lambda src, **opts: fmt(lua.globals().M, src, _opts(lua, opts))


@pytest.fixture
def run(lua):
    """run(chunk, name='In[2]'): run a chunk (which returns a value) and format it."""
    fmt = lua.eval(
        "function(M, src, name, opts)"
        "  local f = assert(load(src, '=' .. name))"
        "  return M.text(f(), opts)"
        " end"
    )
    return lambda src, name="In[2]", **opts: fmt(lua.globals().M, src, name, _opts(lua, opts))


@pytest.fixture
def html(lua):
    fmt = lua.eval(
        "function(M, src, opts)"
        "  local f = assert(load(src, '=In[1]'))"
        "  return M.html(f(), opts)"
        " end"
    )
    return lambda src, **opts: fmt(lua.globals().M, src, _opts(lua, opts))


# --- scalars -----------------------------------------------------------------

def test_integers_and_floats_are_distinguished(text):
    assert text("1") == "1"
    assert text("1.0") == "1.0"
    assert text("-0.0") == "-0.0"
    assert text("0.1") == "0.1"
    assert text("1/0") == "inf"
    assert text("-1/0") == "-inf"
    assert text("math.mininteger") == "-9223372036854775808"
    assert text("2^53") == "9.007199254741e+15"
    assert text("nil") == "nil"
    assert text("true") == "true"


def test_nan_matches_tostring(lua, text):
    assert text("0/0") == lua.eval("tostring(0/0)")


def test_string_escaping(text):
    assert text(r'"say \"hi\""') == r'"say \"hi\""'
    assert text(r'"a\nb\tc\rd"') == r'"a\nb\tc\rd"'
    assert text(r'"back\\slash"') == r'"back\\slash"'
    assert text(r'"nul\0"') == r'"nul\0"'
    assert text(r'"\0" .. "1"') == r'"\0001"'  # padded when a digit follows
    assert text(r'"bad\255byte"') == r'"bad\255byte"'
    assert text(r'"\27[0m"') == r'"\27[0m"'


def test_valid_multibyte_utf8_is_kept(text):
    assert text('"héllo ✓ 🙂"') == '"héllo ✓ 🙂"'
    # a truncated sequence and a surrogate encoding are not valid UTF-8
    assert text(r'"\195"') == r'"\195"'
    assert text(r'"\237\160\128"') == r'"\237\160\128"'


def test_long_string_is_truncated_with_byte_count(text):
    out = text('string.rep("x", 5000)', width=10)
    assert out == '"' + "x" * 200 + '..." (5000 bytes)'


# --- tables ------------------------------------------------------------------

def test_short_table_on_one_line(text):
    assert text("{1, 2, 3}") == "{ 1, 2, 3 }"
    assert text('{x = 1, y = "a"}') == '{ x = 1, y = "a" }'
    assert text("{}") == "{}"


def test_long_table_is_multiline_with_indentation(text):
    out = text('{name = string.rep("n", 40), list = {1, 2, 3}, nested = {deep = string.rep("d", 70)}}')
    assert out == (
        "{\n"
        "  list = { 1, 2, 3 },\n"
        '  name = "' + "n" * 40 + '",\n'
        "  nested = {\n"
        '    deep = "' + "d" * 70 + '"\n'
        "  }\n"
        "}"
    )


def test_key_ordering(text):
    out = text('{"s1", "s2", b = 1, a = 2, [10] = 3, [-1] = 4, [2.5] = 5, [true] = 6, [false] = 7}', width=200)
    assert out == (
        '{ "s1", "s2", [-1] = 4, [2.5] = 5, [10] = 3, a = 2, b = 1, [false] = 7, [true] = 6 }'
    )


def test_non_identifier_keys_are_bracketed(text):
    assert text('{["a b"] = 1}') == '{ ["a b"] = 1 }'
    assert text("{[1.5] = 2}") == "{ [1.5] = 2 }"
    assert text("{[true] = 3}") == "{ [true] = 3 }"
    assert text("{[{}] = 4}") == "{ [{}] = 4 }"
    assert text("{[{1}] = 5}") == "{ [{...}] = 5 }"
    assert text('{["1x"] = 6}') == '{ ["1x"] = 6 }'


def test_keyword_keys_are_bracketed(text):
    assert text('{["end"] = 1, ["nil"] = 2, ending = 3}') == '{ ["end"] = 1, ending = 3, ["nil"] = 2 }'


def test_nested_depth_limit(text):
    assert text("{{{{{1}}}}}") == "{ { { { {...} } } } }"
    assert text("{{{1}}}", depth=2) == "{ { {...} } }"
    assert text("{{{}}}", depth=1) == "{ {...} }"
    assert text("{{}, {{}}}", depth=1) == "{ {}, {...} }"


def test_item_limit(text):
    out = text("{1, 2, 3, 4, 5, x = 6}", items=3)
    assert out == "{ 1, 2, 3, ... (3 more) }"
    big = text("(function() local t = {} for i = 1, 500 do t[i] = i end return t end)()")
    assert big.endswith("  100,\n  ... (400 more)\n}")


def test_self_cycle(run):
    assert run("local t = {1, 2}; t.self = t; return t") == "{ 1, 2, self = <cycle> }"


def test_indirect_cycle(run):
    assert run("local a, b = {}, {}; a.b = b; b.a = a; return a") == "{ b = { a = <cycle> } }"


def test_shared_table_not_cyclic_is_printed_twice(run):
    assert run("local s = {1}; return {s, s, k = s}") == "{ { 1 }, { 1 }, k = { 1 } }"


# --- metatables --------------------------------------------------------------

def test_tostring_metamethod_is_honoured(run):
    src = """
    local P = {__tostring = function(p) return "P(" .. p.x .. ")" end}
    return {setmetatable({x = 1}, P), top = setmetatable({x = 2}, P)}
    """
    assert run(src) == "{ P(1), top = P(2) }"
    assert run("return setmetatable({}, {__tostring = function() return 'hello' end})") == "hello"


def test_erroring_tostring_falls_back(run):
    out = run('return setmetatable({x = 1}, {__tostring = function() error("boom") end})')
    assert out.startswith("{\n  x = 1,\n  <metatable> = {\n    __tostring = function() -- In[2]:1\n  }\n}")
    assert out.endswith(" --[[__tostring error: In[2]:1: boom]]")


def test_name_prefix(run):
    assert run('return setmetatable({x = 1, y = 2}, {__name = "Point"})') == "Point { x = 1, y = 2 }"
    assert run('return setmetatable({}, {__name = "Empty"})') == "Empty {}"


def test_metatable_is_shown(run):
    out = run("local mt = {kind = 'v'}; mt.__index = mt; return setmetatable({x = 1}, mt)")
    assert out == '{ x = 1, <metatable> = { __index = <cycle>, kind = "v" } }'


def test_metamethods_do_not_fool_the_walker(run):
    src = """
    return setmetatable({1, a = 2}, {
      __index = function() return "ghost" end,
      __pairs = function() error("no pairs") end,
      __len = function() return 99 end,
      __name = "Odd",
    })
    """
    assert run(src) == "Odd { 1, a = 2 }"


# --- functions ---------------------------------------------------------------

def test_lua_function_with_params_and_location(run):
    assert run("function add(a, b) return a + b end\nreturn add") == "function add(a, b) -- In[2]:1"
    assert run("local function f(x) end\nreturn f") == "function(x) -- In[2]:1"
    assert run("return {add = function(a, b) end, n = 1}") == (
        "{\n  add = function(a, b), -- In[2]:1\n  n = 1\n}"
    )


def test_vararg_function(run):
    assert run("return function(a, ...) end") == "function(a, ...) -- In[2]:1"
    assert run("return function(...) end") == "function(...) -- In[2]:1"


def test_main_chunk(run):
    assert run("return load('return 1', '=In[7]')") == "function: main chunk (In[7])"


def test_builtins_are_named(text):
    assert text("print") == "builtin: print"
    assert text("string.format") == "builtin: string.format"
    assert text("io.write") == "builtin: io.write"
    assert text("{f = print}") == "{ f = builtin: print }"


def test_file_method_is_named(text):
    assert text("io.stdout.read") == "builtin: file:read"
    assert text("getmetatable(io.stdout).__index.write") == "builtin: file:write"


def test_other_c_function(run):
    # a C function that is not a standard builtin (a fresh wrap closure)
    out = run("return coroutine.wrap(function() end)")
    assert re.fullmatch(r"function: builtin \(0x[0-9a-f]+\)", out), out


def test_builtin_aliases_added_later_are_not_builtins(run):
    assert run("string.myformat = function() end; return string.myformat") == "function() -- In[2]:1"


# --- threads and userdata ----------------------------------------------------

def test_thread_with_status(lua, run):
    assert re.fullmatch(r"thread: 0x[0-9a-f]+ \(suspended\)", run("return coroutine.create(print)"))
    out = run("local co = coroutine.create(function() end); coroutine.resume(co); return co")
    assert out.endswith(" (dead)")
    out = lua.eval("coroutine.wrap(function() return M.text(coroutine.running()) end)()")
    assert out.endswith(" (running)")


def test_userdata_uses_tostring(text):
    assert re.fullmatch(r"file \(0x[0-9a-f]+\)", text("io.stdout"))


# --- robustness --------------------------------------------------------------

def test_user_overwritten_globals_do_not_break_it(run):
    src = """
    pairs = function() error("pairs is gone") end
    ipairs = pairs
    next = pairs
    tostring = function() return "HIJACKED" end
    type = function() return "string" end
    rawget = pairs
    string.format = pairs
    string.find = pairs
    table.concat = pairs
    table.sort = pairs
    return {1, 2.5, "s", {x = true}, f = print}
    """
    assert run(src) == '{ 1, 2.5, "s", { x = true }, f = builtin: print }'


def test_number_metatable_does_not_change_numbers(run):
    assert run("debug.setmetatable(0, {__tostring = function() return 'x' end}); return {1, 2.0}") == "{ 1, 2.0 }"


def test_bad_opts_and_broken_metamethods_never_error(lua, run):
    assert lua.eval("M.text({1}, 'junk')") == "{ 1 }"
    assert lua.eval("M.text({1}, {depth = 'x', items = -5, width = 0/0})") == "{ ... (1 more) }"
    bad_key = "setmetatable({}, {__tostring = function() error('no') end})"
    assert run(f"return {{[{bad_key}] = 1}}") == "{ [{}] = 1 }"
    # a __tostring that is not even a function
    out = run("return setmetatable({}, {__tostring = 42})")
    assert "__tostring error" in out
    # absurd depth on a long chain is clamped, not a stack overflow
    out = run("local t = {} local c = t for i = 1, 1000 do c.n = {} c = c.n end return t",
              depth=10**9, width=10**6)
    assert out.count("n = {") == 100 and out.endswith("} } }")


# --- html --------------------------------------------------------------------

def test_html_escapes_script_in_keys_and_values(html):
    out = html('return {["<script>"] = "<script>alert(\'x\')</script>", amp = "a & b"}')
    assert "<script>" not in out
    assert "&quot;&lt;script&gt;&quot;" in out  # the key
    assert "&quot;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;" in out  # the value
    assert "&quot;a &amp; b&quot;" in out
    assert out.startswith('<table class="lua-table"')


def test_html_nested_and_cycle_marker(html):
    out = html("local t = {1, inner = {x = 1}}; t.me = t; return t")
    assert out.count('<table class="lua-table"') == 2
    assert "table (3 entries)" in out
    assert "table (1 entry)" in out
    assert "&lt;cycle&gt;" in out
    assert '<td class="lua-key"' in out
    assert out.count("<tr>") == out.count("</tr>")


def test_html_depth_and_item_limits(html):
    out = html("return {{{{1}}}}")
    assert out.count('<table class="lua-table"') == 3
    assert "{...}" in out
    out = html("return {1, 2, 3, 4}", items=2)
    assert "... (2 more)" in out


def test_html_name_in_header(html):
    out = html('return setmetatable({x = 1}, {__name = "Point"})')
    assert "Point (1 entry)" in out


def test_html_for_non_table_is_pre(html):
    assert html('return "<b>"') == "<pre>&quot;&lt;b&gt;&quot;</pre>"
    assert html("return 42") == "<pre>42</pre>"
    assert html("return setmetatable({}, {__tostring = function() return '<P>' end})") == "<pre>&lt;P&gt;</pre>"
