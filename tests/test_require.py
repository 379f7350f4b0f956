"""`require` finds what Lua users install, C modules included (issue 13)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kernel_client import execute, running_kernel, stdout_of, value
from lua_sources import lua54_dir

pytestmark = pytest.mark.kernel
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory):
    """A notebook's folder with a project-local LuaRocks tree: a pure-Lua
    module and a C module compiled against Lua 5.4's headers."""
    root = tmp_path_factory.mktemp("project")
    share = root / "lua_modules" / "share" / "lua" / "5.4"
    lib = root / "lua_modules" / "lib" / "lua" / "5.4"
    share.mkdir(parents=True)
    lib.mkdir(parents=True)
    (share / "greet.lua").write_text(
        "local M = {}\nfunction M.hello(name) return 'hello, ' .. name end\nreturn M\n")
    (share / "shapes").mkdir()
    (share / "shapes" / "init.lua").write_text("return {sides = {square = 4}}\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-I", str(lua54_dir()),
                    str(HERE / "data" / "tiny_module.c"), "-o", str(lib / "tiny.so")],
                   check=True)
    return root


def test_modules_in_the_notebooks_lua_modules_tree(notebook_dir):
    with running_kernel(cwd=notebook_dir) as (km, kc):
        assert value(kc, "require('greet').hello('Ada')") == '"hello, Ada"'
        assert value(kc, "require('shapes').sides.square") == "4"
        assert value(kc, "tiny = require('tiny'); return tiny.twice(21)") == "42"
        assert value(kc, "box = tiny.box(5); return type(box)") == '"userdata"'


def test_c_modules_come_back_by_require_and_their_userdata_is_reported(notebook_dir):
    """At save, a C module's table and functions are named by the module
    (restore requires it again: the same functions, and the fields the user
    set on it); the userdata it made is reported by path."""
    with running_kernel(cwd=notebook_dir) as (km, kc):
        execute(kc, "%session tiny-values")
        execute(kc, "tiny = require('tiny'); box = tiny.box(); twice = tiny.twice; "
                    "tiny.note = 'mine'; fns = {tiny.twice}")
        _, msgs = execute(kc, "%save")
        text = stdout_of(msgs)
        assert "Saved the Lua state" in text and "Not saved:" in text
        assert "_G.box: userdata tiny.box" in text
        assert "C function" not in text
    with running_kernel(cwd=notebook_dir) as (km, kc):
        _, msgs = execute(kc, "%session tiny-values")
        assert "Restored the Lua state" in stdout_of(msgs)
        assert value(kc, "twice(21), tiny.twice == twice, fns[1] == twice, tiny.note, box, "
                         "package.loaded.tiny == tiny") == '42\ttrue\ttrue\t"mine"\tnil\ttrue'
        assert value(kc, "type(tiny.box(3))") == '"userdata"'


def test_a_c_module_that_cannot_be_required_at_restore_is_reported(notebook_dir, tmp_path):
    import shutil
    project = tmp_path / "project"
    shutil.copytree(notebook_dir, project)
    with running_kernel(cwd=project) as (km, kc):
        execute(kc, "%session tiny-gone")
        execute(kc, "tiny = require('tiny'); kept = 1")
        execute(kc, "%save")
    (project / "lua_modules" / "lib" / "lua" / "5.4" / "tiny.so").unlink()
    with running_kernel(cwd=project) as (km, kc):
        _, msgs = execute(kc, "%session tiny-gone")
        text = stdout_of(msgs)
        assert "require:tiny: require 'tiny' failed" in text and "restored as nil" in text
        assert value(kc, "kept, tiny") == "1\tnil"


def test_search_paths_cover_the_user_tree_and_the_system():
    from lua_kernel import Session

    path, cpath = Session().execute("return package.path, package.cpath")
    assert path.startswith("lua_modules/share/lua/5.4/?.lua;")
    assert str(Path.home() / ".luarocks/share/lua/5.4/?.lua") in path
    assert path.endswith("/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua")
    assert cpath.startswith("lua_modules/lib/lua/5.4/?.so;")
    assert "/usr/lib/lua/5.4/?.so" in cpath
