"""The standard library inside a kernel Session looks like the standard library.

The Session replaces some library functions (print, the io streams, ...) so
that output goes to the notebook. Lua code must not be able to tell where it
can be helped: (1) Lua 5.4.8's own test files (testes/) that pass natively
pass inside a Session, run as tests/test_conformance.py runs them natively;
(2) observables of the replaced functions (types, names, error messages)
match a plain lupa runtime, call by call.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lupa import lua54

import test_conformance as conformance
from lua_kernel import persist
from lua_kernel.session import LuaError, Session
from lua_sources import lua54_dir

# Where Lua's streams cannot be the notebook's (no fopencookie, or the
# emulation asked for), lua/session.lua emulates them in Lua: a fallback
# that is not expected to pass these.
pytestmark = pytest.mark.skipif(not Session(stdout=lambda t: None).native_streams,
                                reason="the standard streams are emulated here")

# Files that still fail inside a Session, and why; each must fail (strict),
# so that a fix shows up here. Empty is the goal.
KNOWN: dict[str, str] = {
}

# Exact substitutions on a file's source for what is inherently not native
# in a Session (none so far): (old, new, why), as SKIPS in test_conformance.py.
SUBSTITUTIONS: dict[str, list[tuple[str, str, str]]] = {}


def run_in_session(name: str, src: bytes):
    """(ok, error message, reached) as test_conformance.run, in a Session."""
    for old, new, _why in SUBSTITUTIONS.get(name, []):
        assert new.count("\n") == old.count("\n") and old.encode() in src
        src = src.replace(old.encode(), new.encode())
    if name in conformance.ENDS:
        old, new = conformance.ENDS[name]
        src = src.replace(old, new)
    src, n = conformance.FINAL.subn(b"__reached_end()", src)
    assert n > 0
    out: list[str] = []
    session = Session(stdout=out.append, stderr=out.append, stdin=lambda prompt: None)
    chunk = session.lua.execute("return load(..., '=harness')", conformance.RUN)
    try:
        ok, err, reached = session.call(
            chunk, None, str(lua54_dir() / "testes"), src, name, name in conformance.PORTABLE,
            name not in conformance.NOT_SOFT, name in conformance.WRAPPED)
    except LuaError as e:
        return False, str(e), None
    if reached is not None:
        assert "OK\n" in "".join(out), "print'OK' did not reach the Session's stdout"
    return ok, err, reached


def run_isolated(name: str):
    """run_in_session in a process of its own: freeing a Session whose Lua
    heap holds Python callbacks can crash inside lupa's garbage collection
    (seen after a few testes files in one process), and a testes file leaves
    much garbage behind. The child leaves with os._exit, collecting nothing."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), env.get("PYTHONPATH", "")])
    code = ("import json, os, sys, test_stdlib_native as t\n"
            "from lua_sources import lua54_dir\n"
            "src = (lua54_dir() / 'testes' / (sys.argv[1] + '.lua')).read_bytes()\n"
            "print(json.dumps(list(t.run_in_session(sys.argv[1], src))), flush=True)\n"
            "os._exit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code, name], env=env, cwd=here,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name}: the child failed\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN[n], strict=True)) if n in KNOWN else n
    for n in conformance.FILES])
def test_testes_file_passes_inside_a_session(name):
    ok, err, reached = run_isolated(name)
    assert ok, f"{name}.lua fails inside a Session: {err}"
    assert reached == "harness", f"{name}.lua: final OK not reached"


# -- observables, each compared with a plain runtime ---------------------------

SAME = [
    "type(io.stdout)", "type(io.stderr)", "type(io.stdin)",
    "io.type(io.stdout)", "io.type(io.stdin)",
    "tostring(io.stdout):match('^file %(0x%x+%)$') ~= nil",
    "pcall(rawlen, io.stdin)", "pcall(rawlen, io.stdout)",
    "getmetatable(io.stdout).__name",
    "pcall(io.write, {})", "pcall(io.stdout.write, io.stdout, {})",
    "pcall(io.lines, 'missing')", "pcall(io.open)", "pcall(io.read, 'x')",
    "io.stdout:close()", "pcall(io.stdin.read, io.stdin, {})", "pcall(io.stdin.read, io.stdin, 'x')",
    "pcall(debug.sethook, 1, 2)", "pcall(debug.sethook, coroutine.create(print), 1)",
    "pcall(coroutine.wrap)", "pcall(coroutine.create, {})", "pcall(xpcall, print)",
    "debug.gethook()",
    "debug.getinfo(io.write).what", "debug.getinfo(io.read).what",
    "debug.getinfo(io.stdout.write).what", "debug.getinfo(io.lines).what",
    "rawequal(getmetatable(io.stdout), getmetatable(io.tmpfile()))",
    "pcall(getmetatable(io.stdin).__gc)", "pcall(io.stdin.close)",
    "io.stdin:write('x')", "io.stdout:read()",
    "debug.getinfo(print).what", "pcall(string.dump, print)",
    "pcall(print, setmetatable({}, {__tostring = function() return {} end}))",
    "pcall(function() print(setmetatable({}, {__tostring = function() return {} end})) end)",
    "pcall(function() print(setmetatable({}, {__tostring = function() error('x') end})) end)",
    "pcall(function() local t = setmetatable({}, {__tostring = function() print('in') "
    "return 'out' end}) print(t) end)",
]

# Still distinguishable (see docs/design.md, "Globals the kernel replaces"):
# the replacements but print are Lua functions; print is a C closure with
# an upvalue (the thread it runs in), and an error inside it gets the
# position of print's caller, even one that natively has none.
DIFFERENT = [
    "pcall(debug.upvaluejoin, print, 1, function() return print end, 1)",
    "pcall(coroutine.wrap(function() print(setmetatable({}, {__tostring = function() "
    "coroutine.yield(1) end})) end))",
    "debug.getinfo(xpcall).what", "debug.getinfo(debug.sethook).what",
    "debug.getinfo(coroutine.wrap).what", "debug.getinfo(io.open).what",
    "debug.getinfo(io.output).what", "debug.getinfo(io.input).what",
]

_POS = ('[string "<python>"]:1:', "In[1]:1:")


def _both(expr: str):
    code = f"return {expr}"
    native = lua54.LuaRuntime().execute(code)
    native = native if isinstance(native, tuple) else (native,)
    ours = Session(stdout=lambda t: None).execute(code)
    ours = tuple(v.replace(_POS[1], _POS[0]) if isinstance(v, str) else v for v in ours)
    return native, ours


@pytest.mark.parametrize("expr", SAME)
def test_observable_matches_native(expr):
    native, ours = _both(expr)
    assert ours == native


@pytest.mark.parametrize("expr", DIFFERENT)
def test_known_difference_is_still_there(expr):
    """Documented differences: a fix makes this fail; then move it to SAME."""
    native, ours = _both(expr)
    assert ours != native


# Generated: the functions the kernel replaces or reroutes, and the io
# library around them, each called with bad arguments, directly and under
# pcall; the messages must be the native ones, with the position of the call.
FUNCTIONS = ["io.open", "io.lines", "io.read", "io.write", "io.input", "io.output", "io.close",
             "io.type", "io.stdout.write", "io.stdout.seek", "io.stdout.setvbuf",
             "io.stdout.flush", "io.stdin.read", "io.stdin.lines", "io.stdin.close",
             "coroutine.wrap", "coroutine.create", "xpcall", "debug.sethook", "debug.gethook",
             "print", "getmetatable(io.stdout).__tostring", "getmetatable(io.stdout).__index.close"]
NO_ARGS_READ_OR_WRITE = {"io.lines", "io.read", "io.write", "io.close", "print", "io.type",
                         "debug.sethook", "debug.gethook", "io.stdin.lines"}
BAD_ARGS = ["", "{}", "true", "{}, 1", "io.stdout, {}", "nil, {}", "1, 2, 3"]
GENERATED = [f"{form}" for f in FUNCTIONS for a in BAD_ARGS
             if not (a == "" and f in NO_ARGS_READ_OR_WRITE)
             and not (f in ("io.write", "print", "io.output", "io.type", "io.stdout.flush",
                            "io.stdout.setvbuf", "debug.gethook") and a not in ("{}", "true"))
             for form in (f"pcall({f}{', ' + a if a else ''})",
                          f"pcall(function() {f}({a}) end)")]


@pytest.mark.parametrize("expr", GENERATED)
def test_bad_calls_say_what_lua_says(expr):
    native, ours = _both(expr)
    if ours[0] is False and native[0] is False:
        assert ours[1] == native[1]
    else:
        assert ours[0] == native[0]


def test_a_users_hook_sees_replacements_as_single_calls():
    """locals.lua's trace: the user's return hook sees debug.sethook return
    once, and nothing of the kernel's own functions."""
    code = r"""
      local trace = {}
      local function hook(event) trace[#trace + 1] = event .. " " .. debug.getinfo(2).name end
      local function f() debug.sethook(hook, "r") print("x") io.write("y") end
      f()
      debug.sethook()
      return table.concat(trace, ",")
    """
    native = lua54.LuaRuntime().execute(code)
    out: list[str] = []
    ours = Session(stdout=out.append).execute(code)[0]
    assert native.startswith("return sethook,")
    assert ours == native
    assert "".join(out) == "x\ny"


def test_no_kernel_file_names_in_error_messages():
    calls = [c for c in SAME if c.startswith("pcall(")]
    session = Session(stdout=lambda t: None)
    for call in calls:
        for value in session.execute(f"return {call}"):
            assert "lua_kernel" not in str(value), call


def test_a_file_opened_by_io_output_is_restored_open(tmp_path):
    """io.output(name) opens through the tracked io.open (persistence)."""
    path = str(tmp_path / "o.txt").replace("\\", "/")
    s = persist.new_session(stdout=lambda t: None)
    s.execute(f"g = io.output('{path}') io.output(io.stdout)")
    restored, issues, _ = persist.restore(persist.snapshot_of(s).data, stdout=lambda t: None)
    assert issues == []
    restored.execute("g:write('x') g:close()")
    assert (tmp_path / "o.txt").read_text() == "x"


# -- print, a C function running in its own threads ------------------------------

def test_print_from_inside_print_and_from_a_finalizer():
    out: list[str] = []
    s = Session(stdout=out.append)
    s.execute("local t = setmetatable({}, {__tostring = function() print('inner') "
              "return 'outer' end}) print(t, 1)")
    s.execute("setmetatable({}, {__gc = function() print('gc') end}) collectgarbage() "
              "print('after')")
    assert "".join(out) == "inner\nouter\t1\ngc\nafter\n"


def test_print_survives_errors_and_interrupts_inside_it():
    import threading

    from lua_kernel.session import LuaInterrupt

    out: list[str] = []
    s = Session(stdout=out.append)
    with pytest.raises(LuaError, match=r"^In\[1\]:1: boom"):
        s.execute("print(setmetatable({}, {__tostring = function() error('boom', 0) end}))")
    threading.Timer(0.2, s.interrupt).start()
    with pytest.raises(LuaInterrupt):
        s.execute("print(setmetatable({}, {__tostring = function() while true do end end}))")
    s.execute("print('alive')")
    assert "".join(out) == "alive\n"
