"""Sessions never lose acknowledged work and never fail silently (issue 12).

Real kernels, real SIGKILLs, real failing disks: a small tmpfs that fills up
or is remounted read-only (mounting needs root, which CI has; elsewhere these
tests are skipped with that reason, and under CI=true a failed mount fails).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import crash_cycle
from kernel_client import (execute, interrupt_until_the_kernel_ends, running_kernel, stdout_of,
                           value)
from lua_kernel.persist.store import Store, slug

pytestmark = pytest.mark.kernel


@pytest.fixture
def notebook():
    return f"durable/{uuid.uuid4().hex[:8]}/work.ipynb"


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs: a disk that can fill up and be made read-only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must mount a tmpfs: {done.stderr}")
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount(mnt: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def fill(mnt: Path) -> Path:
    """Fill the disk to the last byte."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def kill(km) -> None:
    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    km.provisioner.process.wait(10)


def snapshot_files(store: Store, notebook: str) -> list[tuple[str, float]]:
    return [(e.name, e.modified) for e in store.list(notebook)]


# -- acknowledged cells survive SIGKILL --------------------------------------------

def test_every_acknowledged_cell_survives_sigkill_at_random_moments(notebook):
    cycles = crash_cycle.run(10, notebook, seed=12)
    assert all(c.consistent for c in cycles), cycles
    assert sum(c.lost for c in cycles) == 0, cycles
    assert sum(c.acked for c in cycles) > 0            # the kills did not all come first
    assert {c.mode for c in cycles} == {"queued", "sequential"}


def test_a_cell_is_on_disk_before_its_reply(notebook):
    """No waiting: the moment the reply is in, a SIGKILL cannot lose the cell."""
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "x = 1")
        execute(kc, "x = x + 41")
        kill(km)
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        assert value(kc, "x") == "42"


# -- honest failures ---------------------------------------------------------------

def test_a_full_disk_is_told_once_and_the_last_good_snapshot_stays(notebook, tmpfs):
    root = str(tmpfs / "snaps")
    store = Store(root)
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=root) as (km, kc):
        execute(kc, "x = 1")
        good = store.list(notebook)[-1]
        filler = fill(tmpfs)
        reply, msgs = execute(kc, "x = 2; pad = string.rep('p', 200000)")
        assert reply["content"]["status"] == "ok"
        told = stdout_of(msgs, "stderr")
        assert "Could not save the Lua state" in told and "No space left" in told
        assert root in told
        _, msgs = execute(kc, "x = 3")
        assert "Could not save" not in stdout_of(msgs, "stderr")      # once per run
        _, msgs = execute(kc, "%session")
        assert "Saving is FAILING since" in stdout_of(msgs)
        reply, msgs = execute(kc, "%save named")                        # an answer, no hang
        assert reply["content"]["status"] == "error"
        assert "No space left" in reply["content"]["evalue"]
        assert store.read(good) is not None and store.list(notebook)[-1].name == good.name
        filler.unlink()
        _, msgs = execute(kc, "x = 4")
        assert "Saving works again" in stdout_of(msgs, "stderr")
        kill(km)
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=root) as (km, kc):
        assert value(kc, "x, #pad") == "4\t200000"


def test_a_store_made_read_only_is_told_and_the_state_kept(notebook, tmpfs):
    root = str(tmpfs / "snaps")
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=root) as (km, kc):
        execute(kc, "x = 'before'")
        remount(tmpfs, "ro")
        _, msgs = execute(kc, "x = 'after'")
        told = stdout_of(msgs, "stderr")
        assert "Could not save" in told and "Read-only file system" in told
    # a kernel that starts on a read-only store: it restores, says it cannot
    # save, and runs
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=root) as (km, kc):
        reply, msgs = execute(kc, "x")
        assert "cannot be written" in stdout_of(msgs, "stderr")
        assert "Restored the Lua state" in stdout_of(msgs)
        assert value(kc, "x") == '"before"'
        _, msgs = execute(kc, "%session")
        assert "This kernel saves nothing" in stdout_of(msgs)
    # a restart mark that cannot be removed does not keep the kernel from starting
    remount(tmpfs, "rw")
    Store(root).mark(notebook, "restart", "1")
    remount(tmpfs, "ro")
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=root) as (km, kc):
        _, msgs = execute(kc, "1 + 1")
        assert "cannot be written" in stdout_of(msgs, "stderr")
        assert value(kc, "x") == "nil"                 # restarted on purpose: fresh
    remount(tmpfs, "rw")


def test_a_folder_replaced_by_a_file_is_told_and_the_kernel_starts(notebook, tmp_path):
    root = tmp_path / "snaps"
    folder = root / slug(notebook)
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=str(root)) as (km, kc):
        execute(kc, "x = 1")
        shutil.rmtree(folder)
        folder.write_text("not a folder")
        _, msgs = execute(kc, "x = 2")
        assert "Could not save the Lua state" in stdout_of(msgs, "stderr")
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=str(root)) as (km, kc):
        _, msgs = execute(kc, "y = 1")
        assert "Snapshots are off for this kernel" in stdout_of(msgs, "stderr")
        assert value(kc, "y") == "1"
    assert folder.read_text() == "not a folder"


def test_leftovers_of_a_killed_write_are_removed_at_start(notebook, tmp_path):
    root = tmp_path / "snaps"
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=str(root)) as (km, kc):
        execute(kc, "x = 1")
    leftover = root / slug(notebook) / ".partial-abc123"
    leftover.write_bytes(b"half a snapshot")
    with running_kernel(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=str(root)) as (km, kc):
        assert value(kc, "x") == "1"
        assert not leftover.exists()


def test_shutting_down_a_busy_kernel_is_quiet(notebook, tmp_path):
    log = tmp_path / "kernel.log"
    with open(log, "w") as err:
        with running_kernel(stderr=err, JPY_SESSION_NAME=notebook) as (km, kc):
            execute(kc, "big = {} for i = 1, 300000 do big[i] = {i} end")   # a big state
            for i in range(5):
                kc.execute(f"step = {i}")
            time.sleep(0.3)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "autosave failed" not in text and "cannot schedule" not in text, text


# -- one writer per notebook -------------------------------------------------------

def test_a_second_kernel_writes_nothing_until_it_takes_over(notebook):
    store = Store()
    with running_kernel(JPY_SESSION_NAME=notebook) as (km1, kc1):
        execute(kc1, "who = 'first'")
        with running_kernel(JPY_SESSION_NAME=notebook) as (km2, kc2):
            _, msgs = execute(kc2, "who2 = who")
            assert "Another kernel is saving this notebook" in stdout_of(msgs, "stderr")
            assert value(kc2, "who2") == '"first"'          # it restored the holder's state
            before = snapshot_files(store, notebook)
            execute(kc2, "who = 'second'")
            assert snapshot_files(store, notebook) == before   # nothing written
            execute(kc1, "first_again = true")                 # the holder still saves
            assert snapshot_files(store, notebook) != before
            _, msgs = execute(kc2, "%session takeover")
            assert "This kernel now saves" in stdout_of(msgs)
            execute(kc2, "after_takeover = true")
            _, msgs = execute(kc1, "ignored = true")
            assert "Another kernel took over" in stdout_of(msgs, "stderr")
            _, msgs = execute(kc1, "%session")
            assert "This kernel saves nothing" in stdout_of(msgs)
            kill(km1)
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        assert value(kc, "who, after_takeover, ignored") == '"second"\ttrue\tnil'


def test_a_crashed_kernel_never_leaves_its_notebook_held(notebook):
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "x = 1")
        kill(km)
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        _, msgs = execute(kc, "x = x + 1")
        assert "Another kernel" not in stdout_of(msgs, "stderr")
        kill(km)
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        assert value(kc, "x") == "2"


# -- snapshots belong to their notebook --------------------------------------------

def test_a_snapshot_of_another_notebook_is_not_restored_by_itself(notebook):
    store = Store()
    other = notebook + ".other"
    with running_kernel(JPY_SESSION_NAME=other) as (km, kc):
        execute(kc, "whose = 'other'")
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "whose = 'mine'")
    store.save(notebook, store.load(other)[1], "from-elsewhere")   # newest, and signed
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        _, msgs = execute(kc, "1")
        assert "'from-elsewhere' belongs to another notebook" in stdout_of(msgs)
        assert value(kc, "whose") == '"mine"'
        _, msgs = execute(kc, "%restore from-elsewhere")
        assert "saved by another notebook" in stdout_of(msgs)
        assert value(kc, "whose") == '"other"'


# -- interrupts always land ----------------------------------------------------------

def interrupt_after(km, seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, km.interrupt_kernel)
    t.start()
    return t


def test_an_interrupt_lands_while_a_user_debug_hook_is_set():
    with running_kernel() as (km, kc):
        execute(kc, "lines = 0; debug.sethook(function(e, l) lines = lines + 1 end, 'l')")
        interrupt_after(km, 0.5)
        reply, _ = execute(kc, "local i = 0\nwhile true do\n  i = i + 1\nend", timeout=20)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert value(kc, "lines > 1000") == "true"                  # the hook ran meanwhile
        assert value(kc, "(select(2, debug.gethook()))") == '"l"'   # and is still set
        seen = int(value(kc, "lines"))
        execute(kc, "for i = 1, 10 do end")
        assert int(value(kc, "lines")) > seen                        # and still runs


def test_an_interrupt_that_cannot_land_ends_the_kernel_and_the_state_comes_back(notebook):
    """Lua runs __gc finalizers with hooks off: the second interrupt after the
    grace period ends the kernel; the next one has the last completed cell."""
    env = dict(JPY_SESSION_NAME=notebook, LUA_KERNEL_INTERRUPT_GRACE="1")
    with running_kernel(**env) as (km, kc):
        execute(kc, "kept = 'last completed cell'")
        said = interrupt_until_the_kernel_ends(
            km, kc, "setmetatable({}, {__gc = function() while true do end end})\n"
                    "collectgarbage()")
        assert "ending this kernel" in said
    with running_kernel(**env) as (km, kc):
        _, msgs = execute(kc, "kept")
        assert "ended on purpose" in stdout_of(msgs)
        assert value(kc, "kept") == '"last completed cell"'


# -- the command line --------------------------------------------------------------

def test_snapshots_show_takes_a_notebook_path_as_its_key(notebook, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path(notebook)
    path.parent.mkdir(parents=True)
    path.write_text('{"cells": []}')                 # the notebook file exists here
    with running_kernel(JPY_SESSION_NAME=notebook) as (km, kc):
        execute(kc, "x = 1")
    out = subprocess.run([sys.executable, "-m", "lua_kernel", "snapshots", "show", notebook],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"notebook:  {notebook}" in out.stdout


# -- the commit policy, without a kernel (the test thread plays the Lua thread) -----

def make_persistence(tmp_path, notebook):
    from lua_kernel.persist import new_session
    from lua_kernel.persistence import Persistence

    return new_session(), Persistence(notebook, Store(str(tmp_path / "snaps")))


def newest_count(p, notebook) -> int:
    from lua_kernel.persist.snapshot import info_of

    entries = p.store.list(notebook)
    return info_of(p.store.read(entries[-1])).kernel["n"] if entries else -1


def test_a_small_state_is_on_disk_when_after_cell_returns(tmp_path, notebook):
    session, p = make_persistence(tmp_path, notebook)
    p.open()
    for n in range(1, 4):
        session.execute(f"n = {n}")
        p.after_cell(session, {"n": n})
        assert newest_count(p, notebook) == n          # no waiting
    p.close()


def test_a_big_state_is_saved_after_the_reply_newest_last(tmp_path, notebook):
    session, p = make_persistence(tmp_path, notebook)
    asked = []
    p.request_capture = lambda: asked.append(True)
    p.open()
    p._save_times.append(1.0)                          # as if saving took a second
    for n in range(1, 6):
        session.execute(f"n = {n}")
        p.after_cell(session, {"n": n})
        assert newest_count(p, notebook) < n           # not before the reply
    assert len(asked) == 5
    while asked:                                       # the Lua thread, between cells
        asked.pop()
        p.capture_due(session, {"n": 5})
        p.wait()
    assert newest_count(p, notebook) == 5 and p.saved == p.cells == 5
    p.close()


# -- an object store (fsspec: S3 on a moto server here) ------------------------------

def test_an_object_store_keeps_acknowledged_cells_and_one_writer(notebook, s3_url):
    """A remote lease has no OS lock: it expires (60 s) unless renewed, and
    a holder that was a process of this machine is free once it is gone."""
    env = dict(JPY_SESSION_NAME=notebook, LUA_KERNEL_SNAPSHOTS=s3_url)
    with running_kernel(**env) as (km, kc):
        execute(kc, "x = 1")
        execute(kc, "x = x + 1")
        with running_kernel(**env) as (km2, kc2):      # the lease is held: read-only
            _, msgs = execute(kc2, "y = 1")
            assert "Another kernel is saving" in stdout_of(msgs, "stderr")
        kill(km)                                        # right after the reply
    with running_kernel(**env) as (km, kc):
        _, msgs = execute(kc, "x")
        # the killed holder's lease has not expired, but its process is gone
        # from this machine: the lease is free
        assert "Restored the Lua state" in stdout_of(msgs)
        assert "Another kernel" not in stdout_of(msgs, "stderr")
        assert value(kc, "x") == "2"
        execute(kc, "x = 3")
        kill(km)
    with running_kernel(**env) as (km, kc):
        assert value(kc, "x") == "3"
