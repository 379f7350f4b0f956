"""The Python API: Session runs cells like a Lua REPL shaped for notebooks."""
import threading
import time

import pytest

from lua_kernel import LuaError, LuaInterrupt, LuaMemoryError, LuaSyntaxError, Session
from lua_kernel.runtime import to_bytes


def interrupt_after(session, seconds=0.3):
    timer = threading.Timer(seconds, session.interrupt)
    timer.start()
    return timer


# -- results -------------------------------------------------------------------

def test_expression_cell_returns_its_values(session):
    assert session.execute("return 1 + 1, 'two'") == (2, "two")
    assert session.execute("1 + 1, 'two'") == (2, "two")


def test_statement_cell_returns_nothing_and_is_not_shown(session):
    result = session.run_cell("x = 41")
    assert result.values == () and result.show is False
    assert session.execute("x + 1") == (42,)


def test_trailing_semicolon_keeps_values_quiet(session):
    result = session.run_cell("1 + 1;")
    assert result.values == (2,) and result.show is False


def test_last_line_expression_after_statements_is_shown(session):
    result = session.run_cell("local t = {}\nt.n = 5\nt.n * 2")
    assert result.values == (10,) and result.show is True


def test_multi_line_last_expression_is_shown(session):
    result = session.run_cell("local a = 1\n{\n  a,\n  2,\n}")
    assert list(result.values[0].values()) == [1, 2]


def test_a_cell_ending_in_a_block_runs_the_whole_block(session):
    result = session.run_cell("n = 0\nfor i = 1, 3 do\n  n = n + 1\nend")
    assert result.values == () and session.execute("n") == (3,)
    session.execute("m = 0\nwhile m < 5 do\n  m = m + 1\nend")
    assert session.execute("m") == (5,)
    session.execute("function f()\n  return 1\nend")
    assert session.execute("f()") == (1,)


def test_a_cell_ending_in_a_call_shows_its_value(session):
    result = session.run_cell("local x = 2\nmath.max(x, 5)")
    assert result.values == (5,) and result.show is True


def test_nil_results_are_kept(session):
    assert session.execute("nil, 1, nil") == (None, 1, None)


def test_integers_and_floats_stay_distinct(session):
    i, f = session.execute("3, 3.0")
    assert type(i) is int and type(f) is float


def test_strings_with_any_bytes_round_trip(session):
    (s,) = session.execute(r"'\0\255abc\xC3\xA9'")
    assert to_bytes(s) == b"\x00\xffabc\xc3\xa9"
    session.globals.back = s
    assert session.execute("back == '\\0\\255abc\\xC3\\xA9'") == (True,)


def test_globals_persist_between_cells_and_locals_do_not(session):
    session.execute("g = 1; local l = 2")
    assert session.execute("g, l") == (1, None)


# -- output --------------------------------------------------------------------

def test_print_and_io_write_reach_stdout_in_order(session):
    session.execute("print('a', 1, nil, true); io.write('b', 2, '\\n'); "
                    "io.stdout:write('c\\n'); print(1.5)")
    assert "".join(t for s, t in session.output if s == "stdout") == \
        "a\t1\tnil\ttrue\nb2\nc\n1.5\n"


def test_stdout_and_stderr_interleave_in_order(session):
    session.execute("print('1'); io.stderr:write('2\\n'); print('3'); io.stderr:write('4\\n')")
    assert session.output == [("stdout", "1\n"), ("stderr", "2\n"), ("stdout", "3\n"),
                              ("stderr", "4\n")]


def test_print_uses_tostring_metamethods(session):
    session.execute("print(setmetatable({}, {__tostring = function() return 'P!' end}))")
    assert session.output == [("stdout", "P!\n")]


def test_output_arrives_during_a_long_cell():
    seen = []
    s = Session(stdout=lambda t: seen.append((time.monotonic(), t)))
    t0 = time.monotonic()
    s.execute("print('early') local t = os.clock() while os.clock() - t < 1 do end")
    assert seen[0][1] == "early\n"
    assert seen[0][0] - t0 < 0.5


def test_tail_of_an_output_burst_arrives_before_a_long_computation():
    seen = []
    s = Session(stdout=lambda t: seen.append((time.monotonic(), t)))
    t0 = time.monotonic()
    s.execute("for i = 1, 100 do print(i) end local t = os.clock() "
              "while os.clock() - t < 1 do end")
    text = "".join(t for _, t in seen)
    assert text == "".join(f"{i}\n" for i in range(1, 101))
    assert seen[-1][0] - t0 < 0.5


def test_a_million_lines_arrive_in_few_batches(session):
    t0 = time.monotonic()
    session.execute("for i = 1, 1000000 do print(i) end")
    elapsed = time.monotonic() - t0
    text = "".join(t for _, t in session.output)
    assert text.count("\n") == 1_000_000 and text.endswith("1000000\n")
    assert len(session.output) < 1000
    assert elapsed < 60


def test_io_write_rejects_tables_like_lua(session):
    with pytest.raises(LuaError, match=r"bad argument #1 to 'write' \(string expected, got table\)"):
        session.execute("io.write({})")


def test_io_type_says_file_for_the_standard_streams(session):
    assert session.execute("io.type(io.stdout), io.type(io.stdin), io.type(42)") == \
        ("file", "file", None)


def test_closing_stdout_is_refused_like_lua(session):
    assert session.execute("io.stdout:close()") == (None, "cannot close standard file")


def test_io_output_can_redirect_to_a_file_and_back(session, tmp_path):
    path = str(tmp_path / "out.txt").replace("\\", "/")
    session.execute(f"io.output('{path}'); io.write('to file'); io.close(); "
                    "io.output(io.stdout); io.write('to screen')")
    assert (tmp_path / "out.txt").read_text() == "to file"
    assert session.output == [("stdout", "to screen")]


# -- input ---------------------------------------------------------------------

def make_input_session(lines):
    feed = list(lines)
    prompts = []

    def stdin(prompt):
        prompts.append(prompt)
        return feed.pop(0) if feed else None
    s = Session(stdin=stdin, stdout=lambda t: None)
    s.prompts = prompts
    return s


def test_io_read_line_formats():
    s = make_input_session(["first", "second", "third"])
    assert s.execute("io.read(), io.read('L'), io.read('l')") == ("first", "second\n", "third")


def test_io_read_numbers_and_counts():
    s = make_input_session(["12 0x1F 3.5e2", "abcdef"])
    assert s.execute("io.read('n', 'n', 'n')") == (12, 31, 350.0)
    assert s.execute("io.read(3), io.read(0)") == ("abc", "")


def test_io_read_number_failure_returns_nil():
    s = make_input_session(["hello"])
    assert s.execute("io.read('n')") == (None,)


def test_io_read_at_end_of_input_returns_nil():
    s = make_input_session([])
    assert s.execute("io.read()") == (None,)


def test_io_lines_iterates_input_until_eof():
    s = make_input_session(["a", "b"])
    assert s.execute("local t = {} for l in io.lines() do t[#t+1] = l end return #t, t[2]") \
        == (2, "b")


def test_io_stdin_read_uses_the_same_input():
    s = make_input_session(["x y"])
    assert s.execute("io.stdin:read('a')") == ("x y\n",)


def test_unavailable_input_fails_like_a_broken_stdin_and_says_why():
    """io.read is Lua's own: it returns fail (an I/O error), as for a stdin
    that cannot be read; why it failed goes to stderr."""
    def no_stdin(prompt):
        raise RuntimeError("this frontend does not support input requests (stdin)")
    err = []
    s = Session(stdin=no_stdin, stderr=err.append)
    if not s.native_streams:      # the emulation raises the reason instead
        with pytest.raises(LuaError, match="input is not available: this frontend does not"):
            s.execute("io.read()")
        return
    assert s.execute("io.read()") == (None, "Input/output error", 5)
    assert "".join(err) == "input is not available: this frontend does not support " \
        "input requests (stdin)\n"
    with pytest.raises(LuaError, match="Input/output error"):
        s.execute("for l in io.lines() do end")


# -- errors --------------------------------------------------------------------

def test_runtime_error_names_the_cell_and_line(session):
    with pytest.raises(LuaError) as info:
        session.execute("local t = nil\nreturn t.x", name="In[3]")
    assert info.value.message == "In[3]:2: attempt to index a nil value (local 't')"
    assert "In[3]:2: in main chunk" in info.value.traceback
    assert "lua_kernel" not in info.value.traceback


def test_global_nil_error_names_the_global(session):
    with pytest.raises(LuaError, match=r"In\[7\]:1: attempt to index a nil value \(global 'cfg'\)"):
        session.execute("cfg.width = 3", name="In[7]")


def test_syntax_error_is_a_lua_syntax_error(session):
    with pytest.raises(LuaSyntaxError, match=r"In\[2\]:1: unexpected symbol near '='"):
        session.execute("x = = 1", name="In[2]")


def test_syntax_error_reports_the_cell_as_written(session):
    with pytest.raises(LuaSyntaxError, match="'end' expected"):
        session.execute("for i = 1, 2 do\n  print(i)")


def test_error_with_table_value_shows_through_tostring(session):
    with pytest.raises(LuaError) as info:
        session.execute("error(setmetatable({code = 7}, "
                        "{__tostring = function(e) return 'E' .. e.code end}))")
    assert info.value.message == "E7"
    assert info.value.value["code"] == 7


def test_error_with_plain_table_value_says_so(session):
    with pytest.raises(LuaError, match=r"\(error object is a table value\)"):
        session.execute("error({})")


def test_traceback_lists_function_frames(session):
    session.execute("function inner() error('deep') end\nfunction outer() inner() end",
                    name="In[1]")
    with pytest.raises(LuaError) as info:
        session.execute("outer()", name="In[2]")
    tb = info.value.traceback
    # `outer()` runs as `return outer()`, a tail call, exactly as in the lua REPL
    assert "In[1]:1: in function 'inner'" in tb and "In[1]:2: in function 'outer'" in tb


def test_state_is_intact_after_an_error(session):
    session.execute("n = 1")
    with pytest.raises(LuaError):
        session.execute("n = 2; error('x')")
    assert session.execute("n") == (2,)


# -- memory limit --------------------------------------------------------------

def test_runaway_allocation_is_a_memory_error_not_a_dead_process():
    s = Session(max_memory="64M")
    with pytest.raises(LuaMemoryError, match="not enough memory"):
        s.execute("local t = {} for i = 1, 1e9 do t[i] = i end")
    assert s.execute("collectgarbage(); return 1 + 1") == (2,)


def test_memory_error_can_be_caught_in_lua():
    s = Session(max_memory="64M")
    ok, msg = s.execute("pcall(string.rep, 'x', 200 * 1024 * 1024)")
    assert ok is False and msg == "not enough memory"


def test_memory_limit_parsing():
    from lua_kernel.session import parse_memory
    assert parse_memory("512M") == 512 * 1024**2
    assert parse_memory("2GiB") == 2 * 1024**3
    assert parse_memory("none") == 0
    assert parse_memory(None) == 2 * 1024**3


def test_memory_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("LUA_KERNEL_MAX_MEMORY", "100M")
    assert Session().max_memory == 100 * 1024**2


# -- interrupts ----------------------------------------------------------------

INTERRUPTIBLE = {
    "busy_loop": "while true do end",
    "pcall_loop": "while true do pcall(function() end) end",
    "xpcall_handler_loop": "while true do xpcall(error, function() while true do end end) end",
    "coroutine": "local co = coroutine.create(function() while true do end end)\n"
                 "coroutine.resume(co)",
    "wrapped_coroutine": "coroutine.wrap(function() while true do end end)()",
    "nested_coroutines": "coroutine.wrap(function() coroutine.wrap(function() "
                         "while true do end end)() end)()",
    "pcall_in_coroutine": "coroutine.wrap(function() while true do pcall(function() end) "
                          "end end)()",
    "string_rep": "while true do local s = string.rep('x', 10000) end",
    "table_sort": "local t = {} for i = 1, 2000 do t[i] = -i end\n"
                  "while true do table.sort(t) table.sort(t, function(a, b) return a > b end) end",
}


@pytest.mark.parametrize("code", INTERRUPTIBLE.values(), ids=INTERRUPTIBLE.keys())
def test_interrupt_stops_within_a_second(session, code):
    session.execute("before = 'kept'")
    interrupt_after(session, 0.2)
    t0 = time.monotonic()
    with pytest.raises(LuaInterrupt):
        session.execute(code)
    assert time.monotonic() - t0 < 1.2
    assert session.execute("before, 1 + 1") == ("kept", 2)


def test_interrupt_traceback_shows_where_it_stopped(session):
    session.execute("function spin() while true do end end", name="In[1]")
    interrupt_after(session)
    with pytest.raises(LuaInterrupt) as info:
        session.execute("spin()", name="In[2]")
    assert "In[1]:1: in function 'spin'" in info.value.traceback


def test_interrupt_when_idle_does_nothing(session):
    assert session.interrupt() is False
    assert session.execute("1") == (1,)


def test_interrupt_while_waiting_for_input():
    s = Session(stdin=lambda prompt: (time.sleep(0.5), "late")[1])
    interrupt_after(s, 0.1)
    with pytest.raises(LuaInterrupt):
        s.execute("io.read()")
    assert s.execute("2") == (2,)


def test_running_coroutines_are_found_by_the_self_checked_walk(session):
    assert session.interrupts_in_coroutines


def test_no_hook_is_active_while_code_runs(session):
    assert session.execute("debug.gethook()") == (None,)


def test_watchers_are_told_of_the_threads_and_files_user_code_makes(session, tmp_path):
    """What persistence tracks from the first line (lua_kernel.persist): the
    kernel tells every watcher, and keeps no record itself."""
    seen = session.lua.eval("""function(M)
      local seen = {}
      M.watch("thread", function(co, f, w) seen[#seen + 1] = {co, f, w or false} end)
      M.watch("file", function(fh, name, mode) seen[#seen + 1] = {fh, name, mode} end)
      return seen end""")(session.lua_side)
    path = str(tmp_path / "f.txt")
    session.execute(f"f = function() end; co = coroutine.create(f); "
                    f"g = function() end; w = coroutine.wrap(g); fh = io.open({path!r}, 'w')")
    check = session.lua.eval("""function(seen) return #seen,
      seen[1][1] == co and seen[1][2] == f and seen[1][3] == false,
      seen[2][1] == select(2, debug.getupvalue(w, 1)) and seen[2][2] == g and seen[2][3] == w,
      seen[3][1] == fh, seen[3][2], seen[3][3] end""")
    assert check(seen) == (3, True, True, True, path, "w")
    session.execute("fh:close()")


# Calls of the library functions the kernel replaces, with bad arguments:
# the messages must be the originals' (names as called, positions at the
# caller's line or none under pcall, type names from __name).
BAD_CALLS = [
    'io.lines("missing")', 'io.open()', 'io.open("x", "z")', 'io.open("x", {})',
    'io.read("x")', 'io.read({})', 'io.stdin:read({})', 'io.stdin:read("q")',
    'io.output({})', 'io.input("missing")', 'coroutine.wrap(1)', 'coroutine.create()',
    'xpcall(print)', 'xpcall(print, 3)', 'io.write({})', 'local w = io.write; w(1, nil)',
    'io.stdout:write(1, {})', 'io.stdout.write(io.stdout, true)', 'debug.sethook(1, 2)',
    'local x = {} x.y = io.write; x.y({})', 'io.write(setmetatable({}, {__name = "My"}))',
]
DIRECT = ['io.lines, "missing"', "io.open", "coroutine.wrap, 1", "io.write, {}",
          'io.read, "x"', "xpcall, print", "coroutine.create"]


@pytest.mark.parametrize("call", BAD_CALLS + [f"pcall({d})" for d in DIRECT])
def test_replaced_library_functions_raise_the_originals_messages(session, call):
    from lupa import lua54

    code = f"return pcall(function() {call} end)" if not call.startswith("pcall(") \
        else f"return {call}"
    native = lua54.LuaRuntime().execute(code)
    ours = session.execute(code)
    where = '[string "<python>"]:1:'
    assert ours[0] is native[0] is False
    assert ours[1].replace("In[1]:1:", where) == native[1]


def test_xpcall_handlers_still_run_for_ordinary_errors(session):
    assert session.execute("xpcall(error, function(m) return 'handled ' .. m end, 'x')") == \
        (False, "handled x")


def test_the_kernel_does_not_depend_on_globals_user_code_may_remove(session):
    """testes/all.lua removes the global `debug`; user code may remove others."""
    session.execute("debug, math = nil, nil")
    assert session.execute("local w = coroutine.wrap(function() coroutine.yield(1) end) "
                           "return w()") == (1,)
    assert session.execute("io.write(1.5, 2) return 'ok'") == ("ok",)
    data, _ = session.format(session.execute("return {1, 2}")[0])
    assert "text/html" in data
    assert session.execute("return pcall(io.output, '/nonexistent/dir/x')") == (
        False, "cannot open file '/nonexistent/dir/x' (No such file or directory)")
