"""Rules of the house that a test can hold: doctests run, every test module
that starts a kernel process says so with the `kernel` marker, and no Lua
function in the package is longer than 150 lines."""
from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import lua_kernel

TESTS = Path(__file__).resolve().parent
STARTS_A_KERNEL = ("running_kernel", "start_new_kernel", "crash_cycle", "execute_notebook",
                   "NotebookClient", "KernelTests", "papermill")


def test_every_doctest_in_the_package_passes():
    ran = 0
    for info in pkgutil.walk_packages(lua_kernel.__path__, "lua_kernel."):
        if info.name.endswith(("__main__", "papermill_engine")):
            continue            # runs a program / needs papermill loaded by papermill
        module = importlib.import_module(info.name)
        failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failed == 0, info.name
        ran += attempted
    assert ran > 0


def test_modules_that_start_kernels_carry_the_kernel_marker():
    missing = []
    for path in sorted(TESTS.glob("test_*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import,
                                                                         ast.ImportFrom))
            for a in n.names}
        if names & set(STARTS_A_KERNEL) and "pytestmark = pytest.mark.kernel" not in source:
            missing.append(path.name)
    assert missing == [], missing


PACKAGE = Path(lua_kernel.__file__).resolve().parent
# Names every module may use: Python's own (os._exit, sys._getframe,
# namedtuple's _replace/_asdict); names ending in "_" are protocols
# (_repr_mimebundle_, ctypes' _fields_).
ALLOWED_PRIVATE = {"_exit", "_getframe", "_replace", "_asdict", "_fields"}


def test_no_module_reaches_into_another_objects_private_attributes():
    """The rooms keep to their borders (issue 9): `x._name` only on self/cls."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and not node.attr.endswith("_")
                    and node.attr not in ALLOWED_PRIVATE
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .{node.attr}")
    assert found == [], found


def test_session_imports_nothing_from_persistence():
    tree = ast.parse((PACKAGE / "session.py").read_text(encoding="utf-8"))
    imported = [(n.module or "") + ":" + ",".join(a.name for a in n.names)
                for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [i for i in imported if "persist" in i] == []


MAX_LUA_FUNCTION_LINES = 150


def test_no_lua_function_is_longer_than_150_lines():
    """Measured on the compiled prototypes (linedefined to lastlinedefined),
    nested functions each on their own, with bytecode.lua's own reader."""
    from lua_kernel.runtime import load_lua, new_runtime

    lua = new_runtime()
    bytecode = load_lua(lua, "persist/lua/bytecode.lua")
    lengths = lua.eval("""function(bytecode, src, name)
      local out = {}
      local function walk(p)
        for _, c in ipairs(p.p) do
          out[#out + 1] = c.linedefined
          out[#out + 1] = c.lastlinedefined - c.linedefined + 1
          walk(c)
        end
      end
      walk(bytecode.read(string.dump(assert(load(src, "@" .. name)))))
      return out
    end""")
    package = Path(lua_kernel.__file__).resolve().parent
    files = sorted(package.rglob("*.lua"))
    assert files
    too_long = []
    for path in files:
        rel = path.relative_to(package).as_posix()
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        out = lengths(bytecode, source, rel)
        for i in range(1, len(out) + 1, 2):
            first, n = out[i], out[i + 1]
            opening = lines[first - 1].strip()
            if n > MAX_LUA_FUNCTION_LINES:
                too_long.append(f"{rel}:{first} {n} lines: {opening}")
    assert too_long == []
