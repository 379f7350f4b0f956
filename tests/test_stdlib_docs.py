"""Checks that our stdlib docs document exactly the standard library found in a
fresh state of each runtime -- nothing missing, nothing extra -- and that every
entry is well formed. Lua 5.4's docs are lua_kernel/data/stdlib.json; Lua 5.5
and LuaJIT lay their overlays over it (introspect.OVERLAYS)."""

import json
from pathlib import Path

import pytest

from lua_kernel.introspect import OVERLAYS, stdlib_docs
from lua_kernel.runtime import RUNTIMES, new_runtime

DATA = Path(__file__).resolve().parent.parent / "lua_kernel" / "data"

LIBRARIES = ("coroutine", "debug", "io", "math", "os", "package", "string", "table", "utf8",
             "bit", "jit")

# Globals that lupa injects and which are not part of the Lua standard library.
LUPA_EXTRAS = {"python"}

# Non-function globals that are documented even though they are neither
# functions nor library tables.
EXTRA_GLOBALS = {"_G", "_VERSION"}

# Lua code returning a flat list {name1, type1, name2, type2, ...} describing
# the runtime's standard library: global functions, the library tables (those
# of LIBRARIES it has), every other module it has loaded or can load without a
# file (package.preload: LuaJIT's ffi, table.new, ...), and the methods of
# files. String keys only; anything else is ignored. Runs on Lua 5.1 too.
_ENUMERATE = r"""
local libs, extras = ...
local out = {}
local function add(name, value) out[#out + 1] = name; out[#out + 1] = type(value) end
local function add_module(name, m)
  add(name, m)
  if type(m) == "table" then
    for k, v in pairs(m) do
      if type(k) == "string" then add(name .. "." .. k, v) end
    end
  end
end
local libset = {}
for _, lib in ipairs(libs) do libset[lib] = true end
for k, v in pairs(_G) do
  if type(k) == "string" and not extras[k] and type(v) == "function" then add(k, v) end
end
for _, lib in ipairs(libs) do
  if _G[lib] ~= nil then add_module(lib, _G[lib]) end
end
for name, m in pairs(package.loaded) do
  if type(name) == "string" and not libset[name] and not extras[name] and name ~= "_G" then
    add_module(name, m)
  end
end
local preload = {}
for name in pairs(package.preload) do preload[#preload + 1] = name end
for _, name in ipairs(preload) do add_module(name, require(name)) end
for k, v in pairs(getmetatable(io.stdout).__index) do
  if type(k) == "string" and k:sub(1, 2) ~= "__" then add("file:" .. k, v) end
end
return out
"""


def enumerate_stdlib(key: str) -> dict:
    """Map of every standard-library name in a fresh state of runtime `key`
    to its Lua type."""
    lua = new_runtime(0, key)
    extras = lua.table_from({name: True for name in LUPA_EXTRAS})
    flat = lua.execute(_ENUMERATE, lua.table_from(LIBRARIES), extras)
    items = [flat[i] for i in range(1, len(flat) + 1)]
    names = dict(zip(items[0::2], items[1::2], strict=True))
    names["_G"] = "table"
    names["_VERSION"] = "string"
    return names


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def runtime(request):
    return request.param


@pytest.fixture(scope="module")
def docs(runtime):
    data = stdlib_docs(runtime)
    assert isinstance(data, dict) and data, "the docs must be a non-empty JSON object"
    return data


@pytest.fixture(scope="module")
def runtime_names(runtime):
    return enumerate_stdlib(runtime)


SANITY = {
    "5.4": ("print", "string", "string.format", "math.pi", "io.stdout", "package.path",
            "utf8.charpattern", "file:read", "warn"),
    "5.5": ("print", "table.create", "math.frexp", "utf8.charpattern", "file:read"),
    "luajit": ("print", "unpack", "setfenv", "bit.band", "jit.version", "jit.opt.start",
               "ffi.new", "ffi.C", "table.new", "table.clear", "string.buffer.new",
               "file:read", "package.loaders"),
}
ABSENT = {"5.4": ("unpack", "bit"), "5.5": ("debug.setcstacklimit",),
          "luajit": ("utf8", "string.pack", "math.type", "rawlen", "warn", "file:__gc")}


def test_runtime_enumeration_sanity(runtime, runtime_names):
    # Guard against the enumeration silently returning too little (or too much).
    for name in SANITY[runtime]:
        assert name in runtime_names, name
    for name in ABSENT[runtime]:
        assert name not in runtime_names, name
    assert not any(name.split(".")[0] in LUPA_EXTRAS for name in runtime_names)


def test_every_stdlib_name_is_documented(runtime, docs, runtime_names):
    missing = sorted(set(runtime_names) - set(docs))
    assert not missing, (f"{runtime}: {len(missing)} undocumented standard library names: "
                         + ", ".join(missing))


def test_no_entries_for_nonexistent_names(runtime, docs, runtime_names):
    allowed = set(runtime_names) | EXTRA_GLOBALS
    extra = sorted(set(docs) - allowed)
    assert not extra, f"{runtime}: docs for names absent from the runtime: {', '.join(extra)}"


def test_entries_are_well_formed(docs, runtime_names):
    problems = []
    for name, entry in docs.items():
        if not isinstance(entry, dict):
            problems.append(f"{name}: entry is not an object")
            continue
        sig = entry.get("signature")
        doc = entry.get("doc")
        if not isinstance(sig, str) or not sig.strip():
            problems.append(f"{name}: empty or missing signature")
            continue
        if not isinstance(doc, str) or len(doc.strip()) < 20:
            problems.append(f"{name}: doc missing or shorter than 20 characters")
        if runtime_names.get(name) == "function" and not sig.startswith(name + "("):
            problems.append(f"{name}: function signature should start with {name + '('!r}, got {sig!r}")
        if runtime_names.get(name) not in (None, "function") and sig.startswith(name + "("):
            problems.append(f"{name}: non-function value has a call signature {sig!r}")
    assert not problems, "malformed stdlib docs entries:\n" + "\n".join(problems)


def test_version_doc_names_the_runtime(runtime, docs):
    version = new_runtime(0, runtime).globals()._VERSION
    assert f'"{version}"' in docs["_VERSION"]["doc"]


def _order(names):
    """The order stdlib.json keeps: global values and functions, then library
    tables, then the libraries' fields by name, file methods after io's."""
    libraries = {n.split(".")[0] for n in names if "." in n}

    def key(name):
        if "." not in name and ":" not in name:
            return (1 if name in libraries else 0, name)
        return (2, name.replace("file:", "io~"))
    return sorted(names, key=key)


@pytest.mark.parametrize("name", ["stdlib.json"] + [o for o in OVERLAYS.values() if o])
def test_json_files_are_sorted(name):
    names = list(json.loads((DATA / name).read_text(encoding="utf-8")))
    assert names == _order(names)


@pytest.mark.parametrize("runtime", [k for k, o in OVERLAYS.items() if o])
def test_overlays_remove_only_documented_names(runtime):
    base = json.loads((DATA / "stdlib.json").read_text(encoding="utf-8"))
    overlay = json.loads((DATA / OVERLAYS[runtime]).read_text(encoding="utf-8"))
    removed = sorted(name for name, entry in overlay.items() if entry is None)
    assert removed and all(name in base for name in removed)
    changed = [name for name, entry in overlay.items() if entry is not None and name in base]
    assert all(overlay[name] != base[name] for name in changed)
