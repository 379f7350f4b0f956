"""The snapshot envelope (signing, compression) and the store (where snapshots live)."""
import os
import random
import stat
import subprocess
import sys

import pytest

from lua_kernel.persist import snapshot
from lua_kernel.persist.snapshot import SnapshotError
from lua_kernel.persist.store import Store, slug

KEY = b"k" * 32
OTHER = b"o" * 32
BODY = bytes(range(256)) * 64


def sealed(body=BODY, key=KEY, **kw):
    return snapshot.seal(body, notebook="nb.ipynb", lua_version="5.4.8", key=key,
                         counts={"tables": 3}, **kw)


# -- envelope ----------------------------------------------------------------------

def test_sealed_body_opens_to_the_same_bytes_and_info():
    info, body = snapshot.open_snapshot(sealed(), lua_version="5.4.8", key=KEY)
    assert body == BODY
    assert info.notebook == "nb.ipynb" and info.counts == {"tables": 3}
    assert info.lua_version == "5.4.8"


def test_body_is_compressed():
    assert len(sealed(b"a" * 1_000_000)) < 10_000


def test_every_flipped_byte_is_refused():
    data = sealed()
    rng = random.Random(1234)
    for _ in range(300):
        damaged = bytearray(data)
        i = rng.randrange(len(damaged))
        damaged[i] ^= 1 << rng.randrange(8)
        with pytest.raises(SnapshotError):
            snapshot.open_snapshot(bytes(damaged), lua_version="5.4.8", key=KEY)


def test_every_truncation_is_refused():
    data = sealed()
    for cut in list(range(0, 64)) + list(range(64, len(data), max(1, len(data) // 200))):
        with pytest.raises(SnapshotError):
            snapshot.open_snapshot(data[:cut], lua_version="5.4.8", key=KEY)


def test_random_bytes_are_not_a_snapshot():
    with pytest.raises(SnapshotError, match="not a lua_kernel snapshot"):
        snapshot.open_snapshot(os.urandom(500), lua_version="5.4.8", key=KEY)


def test_snapshot_signed_with_another_key_is_refused_until_trusted():
    foreign = sealed(key=OTHER)
    with pytest.raises(SnapshotError, match="snapshots trust"):
        snapshot.open_snapshot(foreign, lua_version="5.4.8", key=KEY)
    trusted = snapshot.resign(foreign, key=KEY)
    _, body = snapshot.open_snapshot(trusted, lua_version="5.4.8", key=KEY)
    assert body == BODY


def test_other_lua_version_is_refused():
    data = snapshot.seal(b"x", notebook="n", lua_version="5.3.6", key=KEY)
    with pytest.raises(SnapshotError, match="Lua 5.3.6"):
        snapshot.open_snapshot(data, lua_version="5.4.8", key=KEY)


def test_secret_is_created_once_with_mode_0600(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LUA_KERNEL_SECRET", raising=False)
    first = snapshot.load_secret()
    assert snapshot.load_secret() == first and len(first) == 64
    mode = stat.S_IMODE(os.stat(tmp_path / "lua_kernel" / "secret").st_mode)
    assert mode == 0o600


def test_secret_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LUA_KERNEL_SECRET", "from-env")
    data = snapshot.seal(b"x", notebook="n", lua_version="5.4.8")
    snapshot.verify(data, key=b"from-env")


# -- store -------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "snaps"), keep=2)


def test_autosaves_keep_only_the_newest(store):
    for i in range(5):
        store.save("a/nb.ipynb", sealed(bytes([i]) * 10))
    autos = [e for e in store.list("a/nb.ipynb") if e.auto]
    assert len(autos) == 2
    entry, data = store.load("a/nb.ipynb")
    assert snapshot.open_snapshot(data, lua_version="5.4.8", key=KEY)[1] == bytes([4]) * 10


def test_named_saves_are_never_pruned(store):
    store.save("nb", sealed(b"named"), "keep-me")
    for i in range(4):
        store.save("nb", sealed(bytes([i])))
    assert store.load("nb", "keep-me") is not None


def test_notebooks_do_not_see_each_other(store):
    store.save("one.ipynb", sealed())
    assert store.load("two.ipynb") is None
    assert store.keys() == ["one.ipynb"]


def test_keys_with_odd_characters_get_distinct_folders():
    assert slug("a/b c.ipynb") != slug("a_b c.ipynb")
    assert "/" not in slug("../../etc/passwd")


def test_bad_snapshot_names_are_refused(store):
    for name in ("../x", "auto-1", "", "a b"):
        with pytest.raises(ValueError):
            store.save("nb", sealed(), name)


def test_delete_one_or_all(store):
    store.save("nb", sealed(), "x")
    store.save("nb", sealed())
    assert store.delete("nb", "x") == 1
    assert store.delete("nb") == 1
    assert store.list("nb") == []


def test_restart_mark_is_taken_once(store):
    store.mark("nb", "restart", "why")
    assert store.take_mark("nb", "restart") == "why"
    assert store.take_mark("nb", "restart") is None


def test_a_write_killed_midway_leaves_the_previous_snapshot(tmp_path):
    root = tmp_path / "snaps"
    good = Store(str(root))
    good.save("nb", sealed(b"good"))
    # a process dies while writing the next snapshot
    code = ("import os, sys; from lua_kernel.persist.store import Store\n"
            "s = Store(sys.argv[1])\n"
            "real = os.replace\n"
            "os.replace = lambda *a: os._exit(9)\n"
            "s.save('nb', b'x' * 1000)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(root)])
    assert proc.returncode == 9
    entry, data = good.load("nb")
    assert snapshot.open_snapshot(data, lua_version="5.4.8", key=KEY)[1] == b"good"
    assert not [p for p in (root / slug("nb")).iterdir() if p.name.endswith(".luasnap")
                and p.read_bytes() == b"x" * 1000]


def test_cli_lists_shows_and_deletes(tmp_path, monkeypatch):
    root = str(tmp_path / "snaps")
    Store(root).save("demo.ipynb", snapshot.seal(b"abc", notebook="demo.ipynb",
                                                 lua_version="5.4.8"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "lua_kernel", "snapshots", *a,  # noqa: E731
                                     "--store", root], capture_output=True, text=True)
    out = run("list").stdout
    assert "demo.ipynb" in out and "auto-" in out
    assert "notebook:  demo.ipynb" in run("show", "demo.ipynb").stdout
    assert "Deleted 1 snapshot" in run("delete", "demo.ipynb").stdout
    assert "demo.ipynb" not in run("list").stdout.replace("No saved", "")


def test_cli_trust_resigns_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LUA_KERNEL_SECRET", "mine")
    path = tmp_path / "received.luasnap"
    path.write_bytes(snapshot.seal(b"abc", notebook="x", lua_version="5.4.8", key=b"theirs"))
    env = {**os.environ, "LUA_KERNEL_SECRET": "mine"}
    shown = subprocess.run([sys.executable, "-m", "lua_kernel", "snapshots", "show", str(path)],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 1 and "signature does not match" in shown.stderr
    subprocess.run([sys.executable, "-m", "lua_kernel", "snapshots", "trust", str(path)],
                   check=True, capture_output=True, env=env)
    snapshot.verify(path.read_bytes(), key=b"mine")


# -- an S3 store, against a moto server on this machine ------------------------------

def test_s3_store_saves_lists_loads_and_prunes(s3_url):
    store = Store(s3_url, keep=2)
    for i in range(3):
        store.save("work/nb.ipynb", sealed(bytes([i]) * 5))
    store.save("work/nb.ipynb", sealed(b"named"), "milestone")
    entries = store.list("work/nb.ipynb")
    assert len([e for e in entries if e.auto]) == 2
    assert store.keys() == ["work/nb.ipynb"]
    _, data = store.load("work/nb.ipynb", "milestone")
    assert snapshot.open_snapshot(data, lua_version="5.4.8", key=KEY)[1] == b"named"
    assert store.describe() == s3_url


# -- a real session's snapshot -----------------------------------------------------

def test_mutations_of_a_real_snapshot_are_refused_and_never_crash():
    from lua_kernel import persist

    s = persist.new_session()
    s.execute("t = {} for i = 1, 200 do t[i] = {i, tostring(i), i / 3} end "
              "function f(x) return t[x][2] end")
    data = persist.snapshot_of(s, notebook="fuzz").data
    assert persist.restore(data).session.execute("f(7), #t") == ("7", 200)
    rng = random.Random(99)
    for _ in range(200):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if damaged == data:
            continue
        with pytest.raises(SnapshotError):
            persist.restore(bytes(damaged))
    for cut in range(0, len(data), max(1, len(data) // 100)):
        with pytest.raises(SnapshotError):
            persist.restore(data[:cut])
    assert s.execute("f(3)") == ("3",)


# -- the lease: one writer per notebook --------------------------------------------

def test_local_lease_has_one_holder_and_can_be_taken_over(store):
    first, second = store.lease("nb"), store.lease("nb")
    assert first.acquire() is None and first.mine()
    holder = second.acquire()
    assert holder["pid"] == os.getpid() and holder["id"] == first.id
    assert not second.mine()
    second.take_over()
    assert second.mine() and not first.mine()        # the old holder lets go
    third = store.lease("nb")
    assert third.acquire()["id"] == second.id


def test_local_lease_dies_with_its_process(store):
    code = ("import sys, time; from lua_kernel.persist.store import Store\n"
            "lease = Store(sys.argv[1]).lease('nb')\n"
            "assert lease.acquire() is None\n"
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, store.root], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert store.lease("nb").acquire() is not None
    finally:
        proc.kill()
        proc.wait()
    assert store.lease("nb").acquire() is None


def test_remote_lease_expires_unless_renewed(s3_url):
    store = Store(s3_url)
    holder, other = store.lease("leased.ipynb"), store.lease("leased.ipynb")
    holder.TTL = 0.6
    assert holder.acquire() is None
    assert other.acquire()["id"] == holder.id
    import time

    time.sleep(1.0)                                  # renewed meanwhile (every TTL / 3)
    assert other.acquire()["id"] == holder.id
    holder.release()                                 # as if it died: no more renewals
    time.sleep(0.8)
    try:
        assert other.acquire() is None and other.mine()
    finally:
        other.end()


def test_remote_lease_of_a_dead_process_here_is_free(s3_url):
    store = Store(s3_url)
    code = ("import sys, time; from lua_kernel.persist.store import Store\n"
            "lease = Store(sys.argv[1]).lease('gone.ipynb')\n"
            "assert lease.acquire() is None\n"
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, s3_url], stdout=subprocess.PIPE,
                            text=True)
    other = store.lease("gone.ipynb")
    try:
        assert proc.stdout.readline().strip() == "held"
        assert other.acquire()["pid"] == proc.pid          # alive: held
    finally:
        proc.kill()
        proc.wait()
    try:
        assert other.acquire() is None                     # gone: free at once
    finally:
        other.end()
