"""The installed kernel, driven through jupyter_client like a frontend would."""
import base64
import json
import threading
import time

import pytest

from kernel_client import execute, running_kernel, stdout_of

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def kernel():
    with running_kernel() as (km, kc):
        yield km, kc


@pytest.fixture
def kc(kernel):
    return kernel[1]


def only(messages, msg_type):
    found = [m for m in messages if m["msg_type"] == msg_type]
    assert len(found) == 1, f"expected one {msg_type}, got {[m['msg_type'] for m in messages]}"
    return found[0]["content"]


def result_text(kc, code):
    reply, msgs = execute(kc, code)
    assert reply["content"]["status"] == "ok", msgs
    return only(msgs, "execute_result")["data"]["text/plain"]


# -- execution -------------------------------------------------------------------

def test_language_info_reports_the_real_lua_release(kc):
    kc.kernel_info()
    info = kc.get_shell_msg(timeout=10)["content"]
    assert info["language_info"]["version"].startswith("5.4.")
    assert info["language_info"]["mimetype"] == "text/x-lua"
    assert info["language_info"]["pygments_lexer"] == "lua"


def test_expression_cell_shows_an_execute_result(kc):
    reply, msgs = execute(kc, "{1, 2, x = 'y'}")
    result = only(msgs, "execute_result")
    assert result["data"]["text/plain"] == '{ 1, 2, x = "y" }'
    assert "<table" in result["data"]["text/html"]
    assert result["execution_count"] == reply["content"]["execution_count"]


def test_trailing_semicolon_suppresses_the_result(kc):
    _, msgs = execute(kc, "1 + 1;")
    assert not [m for m in msgs if m["msg_type"] == "execute_result"]


def test_html_metamethod_renders_a_table(kc):
    _, msgs = execute(kc, "setmetatable({}, {__html = function() return '<i>mine</i>' end})")
    assert only(msgs, "execute_result")["data"]["text/html"] == "<i>mine</i>"


def test_output_with_invalid_utf8_is_delivered(kc):
    _, msgs = execute(kc, r"print('ok\255')")
    assert stdout_of(msgs) == "ok\ufffd\n"


def test_a_million_lines_finish_and_arrive_in_batches(kc):
    t0 = time.monotonic()
    reply, msgs = execute(kc, "for i = 1, 1000000 do print(i) end", timeout=120)
    assert reply["content"]["status"] == "ok"
    text = stdout_of(msgs)
    assert text.count("\n") == 1_000_000 and text.endswith("999999\n1000000\n")
    assert len(msgs) < 2000
    assert time.monotonic() - t0 < 120


# -- errors ------------------------------------------------------------------------

def test_runtime_error_shape(kc):
    reply, msgs = execute(kc, "local cfg\nprint(cfg.width)")
    err = only(msgs, "error")
    n = reply["content"]["execution_count"]
    assert reply["content"]["status"] == "error"
    assert err["ename"] == "LuaError" == reply["content"]["ename"]
    assert err["evalue"] == f"In[{n}]:2: attempt to index a nil value (local 'cfg')"
    assert err["traceback"][-1].endswith(err["evalue"])
    assert err["traceback"][:2] == ["Traceback (most recent call last):",
                                    f"  In[{n}]:2: in main chunk"]


def test_a_chunk_shows_what_it_returns_as_the_repl_does(kc):
    assert result_text(kc, "return 1") == "1"
    assert result_text(kc, "local s = 'abc'\nlocal n = #s\nreturn n, s:upper()") == '3\t"ABC"'
    reply, msgs = execute(kc, "return 1;")
    assert reply["content"]["status"] == "ok" and not any(
        m["msg_type"] == "execute_result" for m in msgs)


def test_an_error_from_the_last_line_keeps_the_cell_line_in_the_traceback(kc):
    execute(kc, "function lookup(k) return cfg[k] end\n"
                "function find(k) local v = lookup(k) return v end")
    reply, msgs = execute(kc, "local key = 'w'\nfind(key)")
    n = reply["content"]["execution_count"]
    tb = only(msgs, "error")["traceback"]
    assert tb[0] == "Traceback (most recent call last):"
    assert tb[1] == f"  In[{n}]:2: in main chunk"            # the cell's line, first
    assert "in function 'find'" in tb[2] and "in function 'lookup'" in tb[3]
    assert "tail calls" not in "\n".join(tb)
    assert tb[-1].endswith("attempt to index a nil value (global 'cfg')")


def test_syntax_error_shape(kc):
    reply, msgs = execute(kc, "x = = 1")
    err = only(msgs, "error")
    assert err["ename"] == "LuaSyntaxError"
    assert "unexpected symbol near '='" in err["evalue"]


def test_error_object_with_tostring_shows_through_it(kc):
    _, msgs = execute(kc, "error(setmetatable({}, {__tostring = function() return 'my error' end}))")
    assert only(msgs, "error")["evalue"] == "my error"


def test_kernel_keeps_its_state_after_errors(kc):
    execute(kc, "survivor = 7")
    execute(kc, "error('x')")
    _, msgs = execute(kc, "survivor")
    assert only(msgs, "execute_result")["data"]["text/plain"] == "7"


# -- interrupt ---------------------------------------------------------------------

INTERRUPT_CASES = {
    "busy_loop": "while true do end",
    "pcall_loop": "while true do pcall(function() end) end",
    "coroutine": "coroutine.wrap(function() while true do end end)()",
    "string_rep": "while true do local s = string.rep('ab', 5000) end",
    "table_sort": "local t = {} for i = 1, 3000 do t[i] = -i end "
                  "while true do table.sort(t, function(a, b) return a < b end) end",
}


def interrupt_cell(km, kc, code, delay=0.5):
    timer = threading.Timer(delay, km.interrupt_kernel)
    t0 = time.monotonic()
    timer.start()
    reply, msgs = execute(kc, code, timeout=20)
    return reply, msgs, time.monotonic() - t0 - delay


@pytest.mark.parametrize("code", INTERRUPT_CASES.values(), ids=INTERRUPT_CASES.keys())
def test_interrupt_stops_the_cell_within_a_second(kernel, code):
    km, kc = kernel
    execute(kc, "kept = 'still here'")
    reply, msgs, took = interrupt_cell(km, kc, code)
    assert reply["content"]["status"] == "error"
    assert only(msgs, "error")["ename"] == "KeyboardInterrupt"
    assert took < 1.0
    _, msgs = execute(kc, "kept .. '!'")
    assert only(msgs, "execute_result")["data"]["text/plain"] == '"still here!"'


def test_interrupt_request_message_also_interrupts():
    with running_kernel() as (km, kc):
        km.kernel_spec.interrupt_mode = "message"   # interrupt_request on control
        reply, msgs, took = interrupt_cell(km, kc, "while true do end")
        assert only(msgs, "error")["ename"] == "KeyboardInterrupt" and took < 1.0


def test_output_before_an_interrupt_is_kept(kernel):
    km, kc = kernel
    _, msgs, _ = interrupt_cell(km, kc, "print('before') while true do end")
    assert stdout_of(msgs) == "before\n"


# -- stdin -------------------------------------------------------------------------

def test_io_read_round_trips_through_the_frontend(kc):
    reply, msgs = execute(kc, "io.write('name? ') local n = io.read() print('hello ' .. n)",
                          stdin=["Ada"])
    assert reply["content"]["status"] == "ok"
    assert stdout_of(msgs) == "name? hello Ada\n"


def test_io_read_number_and_prompt(kc):
    reply, msgs = execute(kc, "io.read('n') * 2", stdin=["21"])
    assert only(msgs, "execute_result")["data"]["text/plain"] == "42"
    assert len(reply["input_requests"]) == 1


def test_input_without_frontend_support_says_why_on_stderr(kc):
    """io.read returns fail, as Lua's does for a stdin it cannot read."""
    reply, msgs = execute(kc, "io.read()")
    stream = only(msgs, "stream")
    assert stream["name"] == "stderr" and "does not support input requests" in stream["text"]
    assert "Input/output error" in only(msgs, "execute_result")["data"]["text/plain"]


def test_interrupt_while_waiting_for_input(kernel):
    km, kc = kernel
    timer = threading.Timer(0.5, km.interrupt_kernel)
    timer.start()
    reply, msgs = execute(kc, "io.read()", stdin=[], timeout=20)
    assert only(msgs, "error")["ename"] == "KeyboardInterrupt"


# -- magics ------------------------------------------------------------------------

def test_lsmagic_lists_the_magics(kc):
    _, msgs = execute(kc, "%lsmagic")
    text = stdout_of(msgs)
    for name in ("%who", "%whos", "%time", "%timeit", "%reset", "%lsmagic"):
        assert name in text


def test_who_and_whos_list_user_globals_only(kc):
    execute(kc, "%reset")
    execute(kc, "alpha = 1; beta = {1, 2}; function gamma() end; print = print")
    _, msgs = execute(kc, "%who")
    assert stdout_of(msgs).split() == ["alpha", "beta", "gamma"]
    _, msgs = execute(kc, "%whos")
    lines = stdout_of(msgs).splitlines()
    assert lines[0].split() == ["Name", "Type", "Value"]
    assert lines[2].split()[:3] == ["alpha", "number", "1"]
    assert lines[3].split()[:2] == ["beta", "table"]
    assert lines[4].split()[:2] == ["gamma", "function"]


def test_time_runs_the_statement_and_reports_times(kc):
    _, msgs = execute(kc, "%time 6 * 7")
    assert only(msgs, "execute_result")["data"]["text/plain"] == "42"
    assert "Wall time:" in stdout_of(msgs)


def test_timeit_reports_mean_and_std(kc):
    _, msgs = execute(kc, "%timeit -n 100 -r 3 local x = math.sqrt(2)")
    assert "per loop (mean ± std. dev. of 3 runs, 100 loops each)" in stdout_of(msgs)


def test_timeit_picks_the_loop_count_itself(kc):
    _, msgs = execute(kc, "%timeit local t = {}", timeout=60)
    assert "loops each)" in stdout_of(msgs)


def test_reset_gives_a_fresh_state(kc):
    execute(kc, "temp = 1")
    _, msgs = execute(kc, "%reset")
    assert "Fresh Lua state" in stdout_of(msgs)
    _, msgs = execute(kc, "temp == nil")
    assert only(msgs, "execute_result")["data"]["text/plain"] == "true"


def test_magic_cell_can_mix_magics_and_lua(kc):
    _, msgs = execute(kc, "%time x = 5\nprint(x + 1)")
    assert stdout_of(msgs).startswith("CPU time:") and stdout_of(msgs).endswith("6\n")


def test_unknown_magic_lists_the_known_ones(kc):
    reply, msgs = execute(kc, "%frobnicate")
    err = only(msgs, "error")
    assert err["ename"] == "MagicError" and "%lsmagic" in err["evalue"]


def test_question_mark_pages_help(kc):
    reply, _ = execute(kc, "string.format?")
    page = reply["content"]["payload"][0]
    assert page["source"] == "page" and "string.format(" in page["data"]["text/plain"]


# -- display -----------------------------------------------------------------------

DISPLAYS = [
    ('display.html("<b>hi</b>")', "text/html", "<b>hi</b>"),
    ('display.markdown("# Title")', "text/markdown", "# Title"),
    ('display.svg("<svg/>")', "image/svg+xml", "<svg/>"),
    ('display.latex("$x^2$")', "text/latex", "$x^2$"),
    ('display.javascript("1")', "application/javascript", "1"),
]


@pytest.mark.parametrize("code,mime,payload", DISPLAYS, ids=[d[1] for d in DISPLAYS])
def test_display_functions_send_their_mime_type(kc, code, mime, payload):
    _, msgs = execute(kc, code)
    data = only(msgs, "display_data")["data"]
    assert data[mime] == payload and "text/plain" in data


def test_display_png_sends_the_exact_bytes_base64(kc):
    _, msgs = execute(kc, r'display.png("\137PNG\r\n\26\n\0\255")')
    data = only(msgs, "display_data")["data"]
    assert base64.b64decode(data["image/png"]) == b"\x89PNG\r\n\x1a\n\x00\xff"


def test_display_jpeg_sends_the_exact_bytes_base64(kc):
    _, msgs = execute(kc, r'display.jpeg("\255\216\255\224JFIF")')
    data = only(msgs, "display_data")["data"]
    assert base64.b64decode(data["image/jpeg"]) == b"\xff\xd8\xff\xe0JFIF"


def test_display_json_sends_a_table_as_json(kc):
    _, msgs = execute(kc, "display.json({name = 'lua', list = {1, 2, 3}, nested = {ok = true}})")
    data = only(msgs, "display_data")["data"]["application/json"]
    assert data == {"name": "lua", "list": [1, 2, 3], "nested": {"ok": True}}
    json.dumps(data)


def test_display_value_shows_text_and_html(kc):
    _, msgs = execute(kc, "display({a = 1}, 'two')")
    shown = [m["content"]["data"] for m in msgs if m["msg_type"] == "display_data"]
    assert shown[0]["text/plain"] == "{ a = 1 }" and "text/html" in shown[0]
    assert shown[1] == {"text/plain": '"two"'}


def test_display_clear_sends_clear_output(kc):
    _, msgs = execute(kc, "print('x') display.clear(true) print('y')")
    kinds = [m["msg_type"] for m in msgs]
    assert kinds == ["stream", "clear_output", "stream"]
    assert msgs[1]["content"]["wait"] is True


def test_python_objects_display_through_their_reprs(kc):
    _, msgs = execute(kc, "python.eval('[1, 2, 3]')")
    assert only(msgs, "execute_result")["data"]["text/plain"] == "[1, 2, 3]"


def test_display_arguments_are_checked(kc):
    _, msgs = execute(kc, "display.html(42)")
    assert "bad argument #1 to 'display.html' (string expected, got number)" in \
        only(msgs, "error")["evalue"]


# -- memory limit ----------------------------------------------------------------

def test_memory_limit_turns_runaway_allocation_into_an_error():
    with running_kernel(LUA_KERNEL_MAX_MEMORY="100M") as (km, kc):
        reply, msgs = execute(kc, "local t = {} for i = 1, 1e9 do t[i] = {} end", timeout=60)
        err = only(msgs, "error")
        assert err["ename"] == "LuaMemoryError" and "not enough memory" in err["evalue"]
        assert "100.0 MiB" in err["evalue"]
        _, msgs = execute(kc, "1 + 1")
        assert only(msgs, "execute_result")["data"]["text/plain"] == "2"
        assert km.is_alive()


def test_no_debugger_is_advertised_and_debugpy_stays_out(kc):
    kc.kernel_info()
    info = kc.get_shell_msg(timeout=10)["content"]
    assert "debugger" not in info.get("supported_features", [])
    assert info.get("debugger", False) is False


def test_pythons_own_output_arrives_before_the_reply_in_order(kc):
    """Python's print called from Lua goes through the kernel process's
    sys.stdout (QuietOutStream): it is flushed before the reply although the
    kernel no longer sleeps before every reply, and stays between Lua's lines."""
    for i in range(5):
        reply, msgs = execute(kc, f"print('lua {i}') python.builtins.print('python {i}') "
                                  f"io.stdout:flush() print('lua again')")
        assert reply["content"]["status"] == "ok"
        assert stdout_of(msgs) == f"lua {i}\npython {i}\nlua again\n"
