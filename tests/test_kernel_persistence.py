"""Sessions survive: real kernel processes for the same notebook, one after another."""
import os
import signal
import time
import uuid

import pytest

from kernel_client import execute, running_kernel, stdout_of, value
from lua_kernel.persist.store import Store

pytestmark = pytest.mark.kernel


@pytest.fixture
def notebook():
    """A fresh notebook key (what jupyter_server puts in JPY_SESSION_NAME)."""
    return f"work/{uuid.uuid4().hex[:8]}/analysis.ipynb"


def wait_for_autosave(notebook, count, timeout=20):
    """Autosaves are written off the request path; wait until `count` exist."""
    store = Store()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([e for e in store.list(notebook) if e.auto]) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no autosave #{count} for {notebook}")


STATE = """
counter = 0
function bump(n) counter = counter + (n or 1) return counter end
shapes = {circle = {r = 2}, list = {1, 2, 3}}
shapes.self = shapes
"""


def test_state_comes_back_after_shutdown_with_a_report(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, STATE)
        assert value(kc, "bump(5)") == "5"
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        reply, msgs = execute(kc, "bump(1), shapes.self == shapes, shapes.circle.r")
        assert "Restored the Lua state saved" in stdout_of(msgs)
        result = [m for m in msgs if m["msg_type"] == "execute_result"][0]
        assert result["content"]["data"]["text/plain"] == "6\ttrue\t2"


def test_sigkill_after_a_cell_keeps_that_cell(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "x = 1")
        execute(kc, "x = x + 41")
        wait_for_autosave(notebook, 2)
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        km.provisioner.process.wait(10)
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        assert value(kc, "x") == "42"


def test_sigterm_saves_before_exiting(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_AUTOSAVE="0") as (km, kc):
        execute(kc, "kept_by_sigterm = 'yes'")
        os.kill(km.provisioner.process.pid, signal.SIGTERM)
        km.provisioner.process.wait(30)
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        assert value(kc, "kept_by_sigterm") == '"yes"'


def test_restart_starts_fresh_and_restore_brings_it_back(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "before = {1, 2, 3}")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        reply, msgs = execute(kc, "before == nil")
        assert "Restarted with a fresh Lua state" in stdout_of(msgs)
        assert "%restore" in stdout_of(msgs)
        assert [m for m in msgs if m["msg_type"] == "execute_result"][0][
            "content"]["data"]["text/plain"] == "true"
        _, msgs = execute(kc, "%restore")
        assert "Restored the Lua state" in stdout_of(msgs)
        assert value(kc, "#before") == "3"


def test_another_notebook_gets_nothing(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "secret_of_one = 1")
    with running_kernel(JPY_SESSION_NAME=notebook + ".other") as (km, kc):
        reply, msgs = execute(kc, "secret_of_one == nil")
        assert "Restored" not in stdout_of(msgs)
        assert value(kc, "secret_of_one") == "nil"


def test_no_key_means_nothing_is_saved_or_restored():
    with running_kernel() as (km, kc):
        execute(kc, "anonymous = 1")
        _, msgs = execute(kc, "%session")
        assert "No session name yet" in stdout_of(msgs)


def test_a_damaged_newest_snapshot_is_passed_over_for_the_one_before(notebook):
    """A machine crash can cut the newest autosave short (its fsync follows
    the reply): the one before it comes back, and the user is told."""
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "good = true")
    store = Store()
    entry, data = store.load(notebook)
    store.save(notebook, data[: len(data) // 2], "damaged")
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        _, msgs = execute(kc, "1 + 1")
        text = stdout_of(msgs)
        assert "Passed over: 'damaged' cannot be restored" in text
        assert "signature does not match" in text and "Restored the Lua state" in text
        assert value(kc, "good") == "true"
    assert store.load(notebook, "damaged") is not None


def test_corrupt_snapshot_is_reported_and_kept_and_the_kernel_lives(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "good = true")
    store = Store()
    entry, data = store.load(notebook)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    store.save(notebook, bytes(damaged), "damaged")
    for e in store.list(notebook):
        if e.auto:
            store.delete(notebook, e.name)          # the damaged one is all there is
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        _, msgs = execute(kc, "1 + 1")
        text = stdout_of(msgs)
        assert "Could not restore" in text and "signature does not match" in text
        assert value(kc, "good") == "nil"
        execute(kc, "fresh_cell = 1")
        assert [e.name for e in store.list(notebook)] == ["damaged"]   # nothing written
        _, msgs = execute(kc, "%restore damaged")
        assert "signature does not match" in "".join(
            m["content"].get("evalue", "") for m in msgs)
    assert store.load(notebook, "damaged") is not None


def test_save_snapshots_and_named_restore(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "version = 1")
        _, msgs = execute(kc, "%save v1")
        assert "Saved the Lua state as 'v1'" in stdout_of(msgs)
        execute(kc, "version = 2")
        _, msgs = execute(kc, "%snapshots")
        assert "v1" in stdout_of(msgs)
        execute(kc, "%restore v1")
        assert value(kc, "version") == "1"


def _kernel_rss(km) -> int:
    """The kernel process's resident memory, in bytes."""
    pid = km.provisioner.process.pid
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_restore_frees_the_state_it_replaces(notebook):
    """%restore replaces the session, %reset its Lua state; the old Lua heap
    is freed, not kept for the life of the kernel (the standard streams'
    callbacks held the session, and a widget's Ref its state)."""
    big = 200 * 2**20          # one allocation: freed memory goes back to the system
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "small = true")
        execute(kc, "%save small")
        for _ in range(2):
            # a widget too: ipywidgets keeps it (and what it refers to) after
            execute(kc, f"big = string.rep('x', {big}) w = widgets.IntSlider{{}} w:observe(print)")
            with_big = _kernel_rss(km)
            execute(kc, "%restore small")
            assert value(kc, "big == nil and small") == "true"
            assert _kernel_rss(km) < with_big - big // 2
        execute(kc, f"big = string.rep('x', {big}) w = widgets.IntSlider{{}} w:observe(print)")
        with_big = _kernel_rss(km)
        execute(kc, "%reset --delete")
        assert _kernel_rss(km) < with_big - big // 2


def test_reset_keeps_the_old_state_or_deletes_it(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "old = 'here'")
        _, msgs = execute(kc, "%reset")
        assert "kept as 'before-reset'" in stdout_of(msgs)
        assert value(kc, "old == nil") == "true"
        execute(kc, "%restore before-reset")
        assert value(kc, "old") == '"here"'
        _, msgs = execute(kc, "%reset --delete")
        assert "deleted" in stdout_of(msgs)
    assert Store().list(notebook) == [] or all(e.auto for e in Store().list(notebook))


def test_session_magic_names_an_unnamed_notebook():
    name = f"named-{uuid.uuid4().hex[:8]}"
    with running_kernel() as (km, kc):
        execute(kc, f"%session {name}")
        execute(kc, "named_value = 99")
        _, msgs = execute(kc, "%save")
        assert "Saved" in stdout_of(msgs)
    with running_kernel() as (km, kc):            # a fresh kernel attaches at once
        _, msgs = execute(kc, f"%session {name}")
        assert "Restored the Lua state" in stdout_of(msgs)
        assert value(kc, "named_value") == "99"
    with running_kernel() as (km, kc):            # one with state of its own asks first
        execute(kc, "mine = true")
        _, msgs = execute(kc, f"%session {name}")
        assert "%restore brings it back, %save replaces it" in stdout_of(msgs)
        execute(kc, "%restore")
        assert value(kc, "named_value") == "99"


def test_vs_code_cell_ids_key_the_notebook():
    path = f"/home/me/{uuid.uuid4().hex[:8]}/nb.ipynb"
    cell = {"cellId": f"vscode-notebook-cell:{path}#W0sZmlsZQ%3D%3D"}
    with running_kernel() as (km, kc):
        execute(kc, "vs = 'code'", metadata=cell)
        wait_for_autosave(path, 1)
    with running_kernel() as (km, kc):
        _, msgs = execute(kc, "vs", metadata=cell)
        assert "Restored the Lua state" in stdout_of(msgs)
        assert [m for m in msgs if m["msg_type"] == "execute_result"][0][
            "content"]["data"]["text/plain"] == '"code"'


def test_a_generator_goes_on_in_the_next_kernel(notebook):
    """Issue 4: a notebook resumes a generator twice, the kernel shuts down,
    a new kernel for the same notebook resumes it and gets the third value."""
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, """
        squares = coroutine.wrap(function()
          local i = 0
          while true do
            i = i + 1
            local scale = coroutine.yield(i * i)
            if scale then i = i * scale end
          end
        end)
        gen = coroutine.create(function(a, b)
          for i = a, b do coroutine.yield(i, i * 10) end
          return "done"
        end)
        """)
        assert value(kc, "coroutine.resume(gen, 1, 3)") == "true\t1\t10"
        assert value(kc, "coroutine.resume(gen)") == "true\t2\t20"
        assert value(kc, "squares(), squares()") == "1\t4"
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        reply, msgs = execute(kc, "coroutine.resume(gen)")
        assert "Restored the Lua state saved" in stdout_of(msgs)
        result = [m for m in msgs if m["msg_type"] == "execute_result"][0]
        assert result["content"]["data"]["text/plain"] == "true\t3\t30"
        assert value(kc, "coroutine.resume(gen)") == 'true\t"done"'
        assert value(kc, "coroutine.status(gen)") == '"dead"'
        assert value(kc, "squares(), squares(10)") == "9\t961"


def test_reset_without_persistence_is_plain_and_checks_its_arguments():
    from lua_kernel import Session
    from lua_kernel.magics import MagicError, Magics

    s = Session()
    out = []
    s.stdout = out.append
    m = Magics(s, lambda: "In[1]")
    s.execute("x = 1")
    m.run_line("reset")
    assert s.execute("x") == (None,) and "Fresh Lua state" in out[-1]
    with pytest.raises(MagicError, match="usage: %reset"):
        m.run_line("reset --delete")
