"""Every Lua people use (issue 10): the same features in each runtime's
Session and kernel. Lua 5.4 is covered by the rest of the suite; these run
the checks that differ by runtime for each one, parametrized, not copied."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from kernel_client import (execute, interrupt_until_the_kernel_ends, running_kernel,
                           stdout_of, value)
from lua_kernel import LuaError, LuaInterrupt, LuaMemoryError, Session, persist
from lua_kernel.persist.snapshot import SnapshotError
from lua_kernel.runtime import RUNTIMES

pytestmark = pytest.mark.kernel     # the kernel tests below; the Session ones are quick

# runtime key -> kernelspec name
KERNELS = {r.key: r.kernel_name for r in RUNTIMES.values()}
SESSION_RUNTIMES = ["5.4", "5.5", "luajit"]
# how snapshots and kernels name each runtime
RELEASE = {"5.4": "Lua 5.4.", "5.5": "Lua 5.5.", "luajit": "LuaJIT 2.1."}
NAMED = {"5.4": "Lua 5.4", "5.5": "Lua 5.5", "luajit": "LuaJIT 2.1"}
# what each kernel says it is: (language_info version prefix, banner prefix)
ABOUT = {"lua55": ("5.5", "Lua 5.5"), "luajit": ("2.1", "LuaJIT 2.1")}
# LuaJIT compiles hot loops into traces, where no hook runs: its interpreted
# loops are made with jit.off() (the compiled case has its own test)
INTERPRETED = {"lua55": "", "luajit": "jit.off() "}


@pytest.fixture(params=SESSION_RUNTIMES)
def runtime(request):
    return request.param


# -- Session ------------------------------------------------------------------------

def test_each_runtime_is_the_lua_it_says(runtime):
    s = Session(runtime=runtime)
    assert s.runtime.key == runtime
    assert s.execute("_VERSION") == (
        {"5.4": "Lua 5.4", "5.5": "Lua 5.5", "luajit": "Lua 5.1"}[runtime],)


def test_output_and_errors_name_the_cell(runtime):
    out = []
    s = Session(runtime=runtime, stdout=out.append)
    s.execute("print('a', 1, nil) io.write('b\\n')")
    assert "".join(out) == "a\t1\tnil\nb\n"
    with pytest.raises(LuaError) as e:
        s.execute("local t = nil\nreturn t.x")
    assert e.value.message.startswith("In[2]:2: attempt to index ")  # LuaJIT: local 't'
    assert e.value.message.endswith("nil value") or "a nil value" in e.value.message


@pytest.mark.parametrize("code", [
    "while true do end",
    "co = coroutine.wrap(function() while true do end end) co()",
    "co = coroutine.create(function() while true do end end) coroutine.resume(co)",
])
def test_interrupts_land_within_a_second(runtime, code):
    if runtime == "luajit":
        code = "jit.off() " + code        # a compiled loop runs no hooks (see below)
    s = Session(runtime=runtime)
    timer = threading.Timer(0.2, s.interrupt)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(LuaInterrupt):
        s.execute(code)
    assert time.monotonic() - t0 < 1.2
    assert s.execute("1 + 1") == (2,)


def test_the_memory_limit_holds(runtime):
    """Small tables fill the state to the brim; the next cells still run
    (the kernel lends a reserve until memory is freed; LuaJIT panicked)."""
    s = Session(runtime=runtime, max_memory="64M")
    for _ in range(2):
        with pytest.raises(LuaMemoryError):
            s.execute("t = {} for i = 1, 1e8 do t[i] = {} end")
        assert s.execute("return 1") == (1,)
        assert s.execute("t = nil collectgarbage() return 2") == (2,)


STATE = """
t = {1, 2.5, "three", {x = "y"}}
t.self = t
local n = 0
function counter() n = n + 1 return n end
same_counter = counter
setmetatable(t, {__index = function(_, k) return k .. "!" end})
py = python.builtins.list({1, 2})
"""


def test_state_round_trips_with_identity_upvalues_and_metatables(runtime, tmp_path):
    s = persist.new_session(runtime=runtime)
    path = tmp_path / "notes.txt"
    s.execute(STATE + f"fh = io.open({str(path)!r}, 'w') fh:write('abc')")
    data, issues = persist.snapshot_of(s)
    assert issues == []
    back, issues, info = persist.restore(data, runtime=runtime)
    assert issues == [] and f"Lua {info.lua_version}".replace("Lua LuaJIT", "LuaJIT").startswith(
        RELEASE[runtime])
    assert back.execute("return t[4].x, t.self == t, counter(), same_counter(), t.zzz, "
                        "io.type(fh), fh:seek(), python.builtins.len(py)") == (
        "y", True, 1, 2, "zzz!", "file", 3, 2)
    assert back.runtime.key == runtime


def test_a_snapshot_of_another_runtime_is_refused_naming_both(runtime):
    s = persist.new_session(runtime=runtime)
    s.execute("x = 1")
    data = persist.snapshot_of(s).data
    for other in SESSION_RUNTIMES:
        if other == runtime:
            continue
        with pytest.raises(SnapshotError) as e:
            persist.restore(data, runtime=other)
        message = str(e.value)
        assert message.startswith(f"the snapshot was saved by {RELEASE[runtime]}")
        assert f"this kernel runs {RELEASE[other]}" in message
        assert message.endswith(f"(open it in a {NAMED[runtime]} kernel)")


# A session that is dropped frees its Lua state: the standard streams'
# callbacks, kept for the life of the process, held the session, so every
# replaced session (%restore, the Python API) kept its whole heap. Freed, a
# session must also close its state safely: Lua calls Python objects through
# borrowed pointers, and a __gc that printed while the cyclic collector freed
# a session and its state called a freed method (a segfault). In a child
# process: a crash fails the test, not the suite.
FREED = """
import gc, sys, time, weakref
from lua_kernel import Session, persist

class Token:
    pass

runtime = sys.argv[1]
CODE = ("big = {} for i = 1, 1000 do big[i] = {i} end print('hi') io.write('w')"
        " co = coroutine.wrap(function() coroutine.yield() end) co()"
        " f = python.eval('lambda *a: len(a)') w = widgets.IntSlider{value = 3} w:observe(print)"
        " bye = setmetatable({}, {__gc = function() print('bye', f(1, 2)) io.write('w') end})")

def restored(runtime, stdout):
    s = persist.new_session(runtime=runtime, stdout=lambda text: None)
    s.execute(CODE)
    return persist.restore(persist.snapshot_of(s).data, runtime=runtime, stdout=stdout).session

made = []
for make in (Session, persist.new_session, restored):
    out = []
    s = make(runtime, stdout=out.append) if make is restored else make(runtime=runtime, stdout=out.append)
    if make is not restored:
        s.execute(CODE)
    token = Token()
    s.globals.token = token
    alive, held = weakref.ref(s), weakref.ref(token)
    del token, s
    for _ in range(50):          # a flush timer holds a session for 50 ms
        if alive() is None:
            break
        time.sleep(0.02)
    # gone with its last reference: no cycle needs the collector
    made.append((alive() is None, held() is None, "".join(out)))
sink = []
for i in range(60):              # made, restored and dropped, collected as it comes
    s = (restored(runtime, sink.append) if i % 2
         else persist.new_session(runtime=runtime, stdout=sink.append))
    s.execute(CODE)
    del s
    if i % 5 == 0:
        gc.collect()
print(made)
"""


def test_a_dropped_session_frees_its_lua_state(runtime):
    proc = subprocess.run([sys.executable, "-c", FREED, runtime],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each session and its Lua state are gone (Lua held the token); the
    # __gc that prints while the state closes writes nowhere, and no harm
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str([(True, True, "hi\nw"), (True, True, "hi\nw"), (True, True, "")])


# -- kernels ------------------------------------------------------------------------

@pytest.fixture(params=["5.5", "luajit"])
def kernel_name(request):
    return KERNELS[request.param]


def test_kernel_runs_cells_reads_input_and_shows_errors(kernel_name):
    with running_kernel(kernel_name=kernel_name) as (km, kc):
        info = kc.kernel_info(reply=True)["content"]
        version, banner = ABOUT[kernel_name]
        assert info["language_info"]["version"].startswith(version)
        assert info["banner"].startswith(banner)
        reply, msgs = execute(kc, "local s = io.read() return #s, s:upper()", stdin=["hey"])
        assert [m["content"]["data"]["text/plain"] for m in msgs
                if m["msg_type"] == "execute_result"] == ['3\t"HEY"']
        reply, msgs = execute(kc, "error('boom')")
        assert reply["content"]["status"] == "error"
        assert "In[2]:1: boom" in reply["content"]["evalue"]
        _, msgs = execute(kc, 'display.html("<b>x</b>")')
        assert [m["content"]["data"]["text/html"] for m in msgs
                if m["msg_type"] == "display_data"] == ["<b>x</b>"]
        execute(kc, "answer = 42")
        _, msgs = execute(kc, "%who")
        assert "answer" in stdout_of(msgs)
        reply = kc.history(hist_access_type="tail", n=2, reply=True)["content"]
        assert [h[2] for h in reply["history"]] == ["answer = 42", "%who"]
        matches = kc.complete("string.up", reply=True)["content"]["matches"]
        assert "string.upper" in matches or "upper" in matches


def test_kernel_interrupt_stops_a_loop_within_a_second(kernel_name):
    with running_kernel(kernel_name=kernel_name) as (km, kc):
        for code in ("while true do end", "coroutine.wrap(function() while true do end end)()"):
            code = INTERPRETED[kernel_name] + code
            timer = threading.Timer(0.3, km.interrupt_kernel)
            t0 = time.monotonic()
            timer.start()
            reply, msgs = execute(kc, code, timeout=20)
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            assert time.monotonic() - t0 - 0.3 < 1.0
            assert value(kc, "1 + 1") == "2"


def test_kernel_state_comes_back_after_shutdown_and_after_sigkill(kernel_name):
    notebook = f"runtimes/{uuid.uuid4().hex[:8]}/{kernel_name}.ipynb"
    with running_kernel(kernel_name=kernel_name, JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, STATE)
        assert value(kc, "counter()") == "1"
    with running_kernel(kernel_name=kernel_name, JPY_SESSION_NAME=notebook) as (km, kc):
        reply, msgs = execute(kc, "counter(), same_counter(), t.self == t")
        assert "Restored the Lua state saved" in stdout_of(msgs)
        assert [m["content"]["data"]["text/plain"] for m in msgs
                if m["msg_type"] == "execute_result"] == ["2\t3\ttrue"]
        execute(kc, "after_restore = 42")
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        km.provisioner.process.wait(10)
    with running_kernel(kernel_name=kernel_name, JPY_SESSION_NAME=notebook) as (km, kc):
        assert value(kc, "after_restore, counter()") == "42\t4"
    # the Lua 5.4 kernel refuses this notebook's snapshots, naming both runtimes
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        _, msgs = execute(kc, "x = 1")
        text = stdout_of(msgs)
        runtime = next(key for key, name in KERNELS.items() if name == kernel_name)
        assert "Could not restore" in text and f"open it in a {NAMED[runtime]} kernel" in text


def test_suspended_coroutines_round_trip_in_lua_55():
    """Lua 5.5's call stacks are saved and continued as 5.4's (the scenarios
    of test_coroutines run on both): here a numeric and a generic for (5.5
    changed both loops' slots), a vararg table and a <close> variable."""
    s = persist.new_session(runtime="5.5")
    s.execute("""
kept = 1
co = coroutine.create(function(...t)
  local out = {}
  do
    local c <close> = setmetatable({}, {__close = function() out[#out + 1] = "closed" end})
    for i = 1, 3 do
      for k, v in ipairs({10, 20}) do out[#out + 1] = coroutine.yield(i * v + k + t.n) end
    end
  end
  return table.concat(out, " ")
end)
print(coroutine.resume(co, "a", "b"))
""")
    data, issues = persist.snapshot_of(s)
    assert issues == []
    back, issues, _ = persist.restore(data, runtime="5.5")
    assert issues == []
    got = back.execute("local r = {} for j = 1, 6 do r[j] = select(2, coroutine.resume(co, j)) end "
                       "return kept, table.concat(r, ',')")
    want = s.execute("local r = {} for j = 1, 6 do r[j] = select(2, coroutine.resume(co, j)) end "
                     "return kept, table.concat(r, ',')")
    assert got == want == (1, "24,23,44,33,64,1 2 3 4 5 6 closed")


def test_a_compiled_luajit_loop_ends_the_kernel_at_the_second_interrupt():
    """LuaJIT runs a hot loop as a compiled trace, where hooks never run: the
    first interrupt cannot land; after the grace period the next one ends
    the kernel (exit 70), saying so in the cell's output."""
    with running_kernel(kernel_name="luajit", LUA_KERNEL_INTERRUPT_GRACE="1") as (km, kc):
        said = interrupt_until_the_kernel_ends(km, kc, "local i = 0 while true do i = i + 1 end")
        assert "ending this kernel" in said


def test_the_body_is_copied_straight_out_of_the_lua_string(runtime, monkeypatch):
    """The fast path of persist/state.py (reading the serialized body from the
    Lua string's memory) knows each runtime's string layout."""
    from lua_kernel import native
    from lua_kernel.persist import state

    got = []
    read = native.long_string_bytes
    monkeypatch.setattr(native, "long_string_bytes",
                        lambda *a, **k: got.append(read(*a, **k)) or got[-1])
    s = persist.new_session(runtime=runtime)
    s.execute("big = string.rep('ab', 100000)")
    body, issues, _ = state.capture(s)
    assert issues == [] and got and got[-1] == body


def test_is_complete_asks_the_runtimes_own_parser():
    from lua_kernel import introspect

    cells = ("x = 7 // 2", "global x = 1", "local t <close> = nil", "function f()")
    expected = {"5.4": ["complete", "invalid", "complete", "incomplete"],
                "5.5": ["complete", "complete", "complete", "incomplete"],
                "luajit": ["invalid", "invalid", "invalid", "incomplete"]}
    for runtime, want in expected.items():
        s = Session(runtime=runtime)
        assert [introspect.is_complete(s, c)["status"] for c in cells] == want, runtime


def test_widgets_work_and_come_back_in_each_runtime(runtime):
    s = persist.new_session(runtime=runtime, display=lambda data, meta: None)
    assert s.execute("w = widgets.IntSlider{min = 0, max = 10, value = 3} w.value = 5 "
                     "log = {} w:observe(function(c) log[#log + 1] = c.new end, 'value') "
                     "return w.value, w.max") == (5, 10)
    data, issues = persist.snapshot_of(s)
    back, issues2, _ = persist.restore(data, runtime=runtime)
    assert issues == issues2 == []
    assert back.execute("w.value = 7 return w.value, log[1]") == (7, 7)


def test_kernel_memory_limit_holds(kernel_name):
    with running_kernel(kernel_name=kernel_name, LUA_KERNEL_MAX_MEMORY="64M") as (km, kc):
        reply, _ = execute(kc, "t = {} for i = 1, 1e8 do t[i] = {} end", timeout=60)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "LuaMemoryError"
        assert "memory limit: 64.0 MiB" in reply["content"]["evalue"]
        assert value(kc, "t = nil collectgarbage() return 1 + 1") == "2"
