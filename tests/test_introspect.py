"""Tests for lua_kernel/introspect.py: completion, inspection, is_complete."""

import pytest

from lua_kernel import Session
from lua_kernel.introspect import complete, inspect, is_complete, remember_source

CLASS_CELL = """\
Point = {}
Point.__index = Point
function Point.new(x, y)
  return setmetatable({x = x, y = y}, Point)
end
function Point:norm()
  return (self.x ^ 2 + self.y ^ 2) ^ 0.5
end
p = Point.new(3, 4)
"""


@pytest.fixture(scope="module")
def session():
    s = Session()
    s.execute(CLASS_CELL)
    s.execute("word = 'hello'\nnested = {inner = {deep = {leaf = 1, leaves = 2}}}")
    return s


def matches(session, code, cursor_pos=None):
    return complete(session, code, len(code) if cursor_pos is None else cursor_pos)["matches"]


def text_of(reply):
    assert reply["found"]
    return reply["data"]["text/plain"]


# -- completion -------------------------------------------------------------

def test_complete_reply_shape(session):
    reply = complete(session, "pri", 3)
    assert reply == {"matches": ["print"], "cursor_start": 0, "cursor_end": 3,
                     "metadata": {}, "status": "ok"}


def test_complete_globals(session):
    assert "word" in matches(session, "wo")
    assert {"pairs", "pcall", "print", "p", "python"} <= set(matches(session, "p"))


def test_complete_keywords(session):
    assert matches(session, "x = 1\nfunc") == ["function"]
    assert "repeat" in matches(session, "rep")


def test_complete_cell_locals_declared_before_cursor(session):
    code = ("local alpha, alpine <const> = 1, 2\n"
            "local function alfa() end\n"
            "function g(alto, ...) end\n"
            "for alnum, alv in pairs({}) do end\n"
            "for alpos = 1, 2 do end\n"
            "x = al")
    assert matches(session, code) == ["alfa", "alnum", "alpha", "alpine", "alpos", "alto", "alv"]


def test_complete_ignores_locals_after_cursor(session):
    code = "x = zz\nlocal zzlater = 1"
    assert matches(session, code, 6) == []


def test_complete_fields_of_user_table(session):
    assert matches(session, "p.") == ["new", "norm", "x", "y"]


def test_complete_fields_of_string_library(session):
    assert matches(session, "string.fo") == ["format"]
    assert matches(session, "string.for") == ["format"]   # a keyword as prefix
    assert {"byte", "gsub", "upper"} <= set(matches(session, "string."))


def test_complete_methods_of_class_instance(session):
    # only functions, found through the metatable's __index table
    assert matches(session, "p:") == ["new", "norm"]


def test_complete_string_methods_on_string_global(session):
    assert matches(session, "word:up") == ["upper"]


def test_complete_string_methods_on_string_literal(session):
    assert matches(session, '("abc"):re') == ["rep", "reverse"]


def test_complete_nested_chains(session):
    assert matches(session, "nested.inner.deep.") == ["leaf", "leaves"]
    assert matches(session, 'nested["inner"].deep.lea') == ["leaf", "leaves"]


def test_complete_cursor_positions_count_code_points(session):
    code = 's = "héllo 🌍" .. str'
    reply = complete(session, code, len(code))
    assert reply["matches"] == ["string"]
    assert reply["cursor_start"] == len(code) - 3 == 17
    assert reply["cursor_end"] == len(code)


def test_complete_in_the_middle_of_a_cell(session):
    code = "x = wo\nprint(x)"
    reply = complete(session, code, 6)
    assert reply["matches"] == ["word"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (4, 6)


def test_no_completion_inside_comment(session):
    assert matches(session, "x = 1 -- pri") == []
    assert matches(session, "--[[ long\ncomment pri") == []


def test_no_completion_inside_string(session):
    assert matches(session, 'x = "pri') == []
    assert matches(session, "x = [[pri") == []


def test_completion_after_closed_string_works(session):
    assert matches(session, 'x = "--" .. wo') == ["word"]


def test_completion_never_calls_index_functions():
    s = Session()
    s.execute("calls = 0\n"
              "proxy = setmetatable({}, {__index = function(t, k) calls = calls + 1 return {} end})\n"
              "word = 'x'\n"
              "getmetatable(word).__index = setmetatable({}, {__index = function() calls = calls + 1 end})")
    for code in ("proxy.", "proxy:", "proxy.a.", "proxy.a:", "word:zz", "word.zz."):
        complete(s, code, len(code))
        inspect(s, code + "q", len(code) + 1)
    assert s.execute("return calls") == (0,)


def test_complete_python_object_attributes(session):
    assert matches(session, "python.builtins.le") == ["len"]


def test_complete_unknown_chain_gives_nothing(session):
    assert matches(session, "nothing.here.") == []


# -- inspection -------------------------------------------------------------

def test_inspect_stdlib_function_shows_signature(session):
    text = text_of(inspect(session, "string.format", 13))
    assert text.startswith("string.format(formatstring, ...) -> string")
    assert "printf" in text


def test_inspect_cursor_inside_name_uses_whole_name(session):
    text = text_of(inspect(session, "x = string.format", 12))
    assert text.startswith("string.format(")


def test_inspect_callee_after_open_paren(session):
    text = text_of(inspect(session, "print(", 6))
    assert text.startswith("print(...)")


def test_inspect_callee_inside_arguments(session):
    text = text_of(inspect(session, 'io.write("a", ', 14))
    assert text.startswith("io.write(")


def test_inspect_user_function_shows_params_location_and_source():
    s = Session()
    code = "x = 1\nfunction add(a, b, ...)\n  return a + b\nend"
    remember_source(s, "In[5]", code)
    s.execute(code, name="In[5]")
    text = text_of(inspect(s, "add", 3))
    assert "function add(a, b, ...)" in text
    assert "In[5]:2" in text
    assert "  return a + b\nend" in text
    assert "x = 1" not in text


def test_inspect_method_drops_self(session):
    text = text_of(inspect(session, "p:norm", 6))
    assert text.startswith("function p:norm()")


def test_inspect_table_summary(session):
    text = text_of(inspect(session, "p", 1))
    assert "2 entries" in text
    assert "x: number = 3" in text and "y: number = 4" in text
    assert "metatable: Point" in text and "__index = table" in text


def test_inspect_table_summary_lists_array_and_keys():
    s = Session()
    s.execute("t = {10, 20, 'x', name = 'n', [true] = 1}\n"
              "big = {}\nfor i = 1, 200 do big['k' .. i] = i end")
    text = text_of(inspect(s, "t", 1))
    assert "5 entries, #t = 3" in text
    assert "[1..3]: number, string" in text
    assert 'name: string = "n"' in text and "[true]: number" in text
    brief = text_of(inspect(s, "big", 3))
    assert "... (150 more)" in brief
    assert "... (" not in text_of(inspect(s, "big", 3, detail_level=1))


def test_inspect_python_object_shows_docstring():
    s = Session()
    s.execute("pylen = python.builtins.len")
    text = text_of(inspect(s, "pylen", 5))
    assert "Return the number of items in a container." in text
    assert "<built-in function len>" in text


def test_inspect_string_method_on_string(session):
    text = text_of(inspect(session, "word:upper", 10))
    assert text.startswith("string.upper(")


def test_inspect_file_method_on_stdout(session):
    text = text_of(inspect(session, "io.stdout:write", 15))
    assert text.startswith("file:write(")


def test_inspect_plain_value(session):
    text = text_of(inspect(session, "word", 2))
    assert "string" in text and '"hello"' in text


def test_inspect_unknown_name_not_found(session):
    reply = inspect(session, "no_such_thing", 5)
    assert reply == {"status": "ok", "found": False, "data": {}, "metadata": {}}


def test_inspect_inside_comment_not_found(session):
    assert not inspect(session, "-- print", 8)["found"]


def test_inspect_survives_session_reset():
    s = Session()
    s.execute("gone = 1")
    assert inspect(s, "gone", 4)["found"]
    s.reset()
    assert not inspect(s, "gone", 4)["found"]
    assert matches(s, "pri") == ["print"]


def test_inspect_uses_the_luajit_docs():
    s = Session(runtime="luajit")
    assert text_of(inspect(s, "bit.band", 8)).startswith("bit.band(x1 [, x2, ...]) -> number")
    assert text_of(inspect(s, "jit.opt.start", 13)).startswith("jit.opt.start(")
    assert text_of(inspect(s, "unpack", 6)).startswith("unpack(list")
    assert '"Lua 5.1"' in text_of(inspect(s, "_VERSION", 8))
    assert not inspect(s, "utf8.char", 9)["found"]          # LuaJIT has no utf8
    # ffi and table.new are reached with require, documented under those names
    s.execute('ffi = require("ffi")\ntnew = require("table.new")')
    assert text_of(inspect(s, "ffi.new", 7)).startswith("ffi.new(ct")
    assert text_of(inspect(s, "tnew", 4)).startswith("table.new(narray, nhash)")


def test_inspect_uses_the_lua55_docs():
    s = Session(runtime="5.5")
    assert text_of(inspect(s, "table.create", 12)).startswith("table.create(nseq [, nrec])")
    assert '"Lua 5.5"' in text_of(inspect(s, "_VERSION", 8))
    assert '"param"' in text_of(inspect(s, "collectgarbage", 14))
    assert not inspect(s, "debug.setcstacklimit", 20)["found"]


# -- is_complete ------------------------------------------------------------

def test_is_complete_complete(session):
    assert is_complete(session, "x = 1") == {"status": "complete"}
    assert is_complete(session, "1 + 1") == {"status": "complete"}
    assert is_complete(session, "local t = {}\nt") == {"status": "complete"}


def test_is_complete_incomplete_with_indent(session):
    assert is_complete(session, "function f()\n  if x then") == {
        "status": "incomplete", "indent": "    "}
    assert is_complete(session, "for i = 1, 3 do") == {"status": "incomplete", "indent": "  "}


def test_is_complete_invalid(session):
    assert is_complete(session, "x = = 1") == {"status": "invalid"}


def test_is_complete_empty(session):
    assert is_complete(session, "") == {"status": "complete"}
    assert is_complete(session, "  \n") == {"status": "complete"}


def test_is_complete_magic_line(session):
    assert is_complete(session, "%reset") == {"status": "complete"}


def test_is_complete_unfinished_string_is_incomplete(session):
    assert is_complete(session, 's = "abc\\\n')["status"] == "incomplete"
    assert is_complete(session, "s = [[abc") == {"status": "incomplete", "indent": ""}
    assert is_complete(session, "--[[ note")["status"] == "incomplete"
