"""The Jupyter protocol checks of jupyter_kernel_test, against the installed kernel."""
import unittest

import jupyter_kernel_test
import pytest

pytestmark = pytest.mark.kernel


class LuaKernelProtocolTests(jupyter_kernel_test.KernelTests):
    kernel_name = "lua"
    language_name = "lua"
    file_extension = ".lua"

    code_hello_world = 'print("hello, world")'
    code_stderr = 'io.stderr:write("something went wrong\\n")'

    completion_samples = [
        {"text": "coroutine.yi", "matches": {"yield"}},
        {"text": "string.up", "matches": {"upper"}},
        {"text": "pai", "matches": {"pairs"}},
        {"text": "whi", "matches": {"while"}},
        {"text": "io.stdout:wr", "matches": {"write"}},
    ]

    complete_code_samples = ["x = 1", "print('hi')", "function f() end", "1 + 1", "", "%lsmagic"]
    incomplete_code_samples = ["function f()", "if x then", "t = {", "s = [[abc",
                               "for i = 1, 3 do\n  print(i)"]
    invalid_code_samples = ["x = = 1", "end", "1 +* 2", "local 1 = 2"]

    code_page_something = "print?"
    code_generate_error = 'error("boom")'

    code_execute_result = [
        {"code": "1 + 2", "result": "3"},
        {"code": "'a' .. 'b'", "result": '"ab"'},
        {"code": "10 // 3, 10 / 4", "result": "3\t2.5"},
        {"code": "{1, 2, 3}", "mime": "text/html"},
    ]
    code_display_data = [
        {"code": 'display.html("<b>bold</b>")', "mime": "text/html"},
        {"code": 'display.markdown("# Title")', "mime": "text/markdown"},
        {"code": 'display.svg("<svg xmlns=\'http://www.w3.org/2000/svg\'/>")',
         "mime": "image/svg+xml"},
        {"code": 'display.png("\\137PNG\\r\\n\\26\\n")', "mime": "image/png"},
        {"code": "display.json({a = 1, b = {1, 2}})", "mime": "application/json"},
        {"code": 'display.latex("$x^2$")', "mime": "text/latex"},
        {"code": "display({x = 1})", "mime": "text/html"},
    ]
    code_history_pattern = "1 + ?"
    supported_history_operations = ("tail", "range", "search")

    code_inspect_sample = "string.format"
    code_clear_output = "display.clear()"



class Lua55KernelProtocolTests(LuaKernelProtocolTests):
    """The same samples against the Lua 5.5 kernel (issue 10)."""

    kernel_name = "lua55"


class LuaJITKernelProtocolTests(LuaKernelProtocolTests):
    """The same samples against the LuaJIT kernel; LuaJIT is Lua 5.1, which
    has no integer division."""

    kernel_name = "luajit"
    code_execute_result = [
        {"code": "math.floor(10 / 3), 10 / 4", "result": "3\t2.5"}
        if "//" in sample["code"] else sample
        for sample in LuaKernelProtocolTests.code_execute_result]


if __name__ == "__main__":
    unittest.main()
