"""Checks that lua_kernel/data/stdlib.json documents exactly the Lua 5.4
standard library found in a fresh lupa LuaRuntime -- nothing missing, nothing
extra -- and that every entry is well formed."""

import json
from pathlib import Path

import pytest
from lupa.lua54 import LuaRuntime

STDLIB_JSON = Path(__file__).resolve().parent.parent / "lua_kernel" / "data" / "stdlib.json"

LIBRARIES = ("coroutine", "debug", "io", "math", "os", "package", "string", "table", "utf8")

# Globals that lupa injects and which are not part of the Lua standard library.
LUPA_EXTRAS = {"python"}

# Non-function globals that are documented even though they are neither
# functions nor library tables.
EXTRA_GLOBALS = {"_G", "_VERSION"}

# Lua code returning a flat list {name1, type1, name2, type2, ...} describing
# the runtime's standard library.  String keys only; anything else is ignored.
_ENUMERATE = r"""
local libs = ...
local out = {}
local function add(name, value) out[#out + 1] = name; out[#out + 1] = type(value) end
local libset = {}
for _, lib in ipairs(libs) do libset[lib] = true end
for k, v in pairs(_G) do
  if type(k) == "string" and (type(v) == "function" or libset[k]) then add(k, v) end
end
for _, lib in ipairs(libs) do
  for k, v in pairs(_G[lib]) do
    if type(k) == "string" then add(lib .. "." .. k, v) end
  end
end
for k, v in pairs(getmetatable(io.stdout).__index) do
  if type(k) == "string" then add("file:" .. k, v) end
end
return out
"""


@pytest.fixture(scope="module")
def docs():
    with STDLIB_JSON.open(encoding="utf-8") as fh:
        data = json.load(fh)
    assert isinstance(data, dict) and data, "stdlib.json must be a non-empty JSON object"
    return data


@pytest.fixture(scope="module")
def runtime_names():
    """Map of every standard-library name in a fresh runtime to its Lua type."""
    lua = LuaRuntime()
    flat = lua.execute(_ENUMERATE, lua.table_from(LIBRARIES))
    items = [flat[i] for i in range(1, len(flat) + 1)]
    names = dict(zip(items[0::2], items[1::2], strict=True))
    for extra in LUPA_EXTRAS:
        names.pop(extra, None)
    names["_G"] = "table"
    names["_VERSION"] = "string"
    return names


def test_runtime_enumeration_sanity(runtime_names):
    # Guard against the enumeration silently returning too little.
    for name in ("print", "string", "string.format", "math.pi", "io.stdout",
                 "package.path", "utf8.charpattern", "file:read"):
        assert name in runtime_names, name
    assert not any(name.split(".")[0] in LUPA_EXTRAS for name in runtime_names)


def test_every_stdlib_name_is_documented(docs, runtime_names):
    missing = sorted(set(runtime_names) - set(docs))
    assert not missing, f"{len(missing)} undocumented standard library names: {', '.join(missing)}"


def test_no_entries_for_nonexistent_names(docs, runtime_names):
    allowed = set(runtime_names) | EXTRA_GLOBALS
    extra = sorted(set(docs) - allowed)
    assert not extra, f"stdlib.json documents names absent from the runtime: {', '.join(extra)}"


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
    assert not problems, "malformed stdlib.json entries:\n" + "\n".join(problems)
