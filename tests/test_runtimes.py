"""Every Lua people use (issue 10): the same features in each runtime's
Session and kernel. Lua 5.4 is covered by the rest of the suite; these run
the checks that differ by runtime for each one, parametrized, not copied."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from kernel_client import execute, running_kernel, stdout_of, value
from lua_kernel import LuaError, LuaInterrupt, LuaMemoryError, Session, persist
from lua_kernel.persist.snapshot import SnapshotError
from lua_kernel.runtime import RUNTIMES

pytestmark = pytest.mark.kernel     # the kernel tests below; the Session ones are quick

# runtime key -> kernelspec name
KERNELS = {r.key: r.kernel_name for r in RUNTIMES.values()}
SESSION_RUNTIMES = ["5.4", "5.5"]
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
    assert s.execute("_VERSION") == ({"5.4": "Lua 5.4", "5.5": "Lua 5.5"}[runtime],)


def test_output_and_errors_name_the_cell(runtime):
    out = []
    s = Session(runtime=runtime, stdout=out.append)
    s.execute("print('a', 1, nil) io.write('b\\n')")
    assert "".join(out) == "a\t1\tnil\nb\n"
    with pytest.raises(LuaError) as e:
        s.execute("local t = nil\nreturn t.x")
    assert e.value.message.startswith("In[2]:2: attempt to index a nil value")


@pytest.mark.parametrize("code", [
    "while true do end",
    "co = coroutine.wrap(function() while true do end end) co()",
    "co = coroutine.create(function() while true do end end) coroutine.resume(co)",
])
def test_interrupts_land_within_a_second(runtime, code):
    s = Session(runtime=runtime)
    timer = threading.Timer(0.2, s.interrupt)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(LuaInterrupt):
        s.execute(code)
    assert time.monotonic() - t0 < 1.2
    assert s.execute("1 + 1") == (2,)


def test_the_memory_limit_holds(runtime):
    s = Session(runtime=runtime, max_memory="64M")
    with pytest.raises(LuaMemoryError):
        s.execute("t = {} for i = 1, 1e8 do t[i] = i end")
    assert s.execute("t = nil collectgarbage() return 1") == (1,)


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
    assert issues == [] and info.lua_version.startswith(runtime)
    assert back.execute("return t[4].x, t.self == t, counter(), same_counter(), t.zzz, "
                        "io.type(fh), fh:seek(), python.builtins.len(py)") == ("y", True, 1, 2, "zzz!", "file", 3, 2)
    assert back.runtime.key == runtime


def test_a_snapshot_of_another_runtime_is_refused_naming_both(runtime):
    other = next(r for r in SESSION_RUNTIMES if r != runtime)
    s = persist.new_session(runtime=runtime)
    s.execute("x = 1")
    data = persist.snapshot_of(s).data
    with pytest.raises(SnapshotError, match=f"saved by Lua {runtime}.*this kernel runs Lua "
                                            f"{other}.*open it in a Lua {runtime} kernel"):
        persist.restore(data, runtime=other)


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


def test_kernel_state_comes_back_after_shutdown_and_after_sigkill():
    kernel_name = "lua55"
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
        assert "Could not restore" in text and "open it in a Lua 5.5 kernel" in text


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


def test_a_luajit_kernel_says_it_does_not_save_yet():
    notebook = f"runtimes/{uuid.uuid4().hex[:8]}/luajit.ipynb"
    with running_kernel(kernel_name="luajit", JPY_SESSION_NAME=notebook) as (km, kc):
        _, msgs = execute(kc, "x = 1")
        assert "This kernel does not save the notebook's Lua state: snapshots are not " \
               "available in LuaJIT yet" in stdout_of(msgs)
        _, msgs = execute(kc, "%save")
        assert "not available in LuaJIT yet" in str(msgs)


def test_a_compiled_luajit_loop_ends_the_kernel_at_the_second_interrupt():
    """LuaJIT runs a hot loop as a compiled trace, where hooks never run: the
    first interrupt cannot land; after the grace period the next one ends
    the kernel (exit 70), saying so in the cell's output."""
    with running_kernel(kernel_name="luajit", LUA_KERNEL_INTERRUPT_GRACE="1") as (km, kc):
        msg_id = kc.execute("local i = 0 while true do i = i + 1 end")
        time.sleep(0.5)
        km.interrupt_kernel()
        time.sleep(1.5)
        assert km.is_alive()                                 # the first one did not land
        km.interrupt_kernel()
        km.provisioner.process.wait(15)
        assert km.provisioner.process.returncode == 70
        said = ""
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Exception:  # noqa: BLE001 - queue.Empty: nothing more
                break
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                said += msg["content"]["text"]
        assert "ending this kernel" in said
