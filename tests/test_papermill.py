"""papermill runs Lua notebooks with parameters of every JSON type (issue 13)."""
from __future__ import annotations

import math

import nbformat
import pytest

from lua_kernel import Session
from lua_kernel.papermill_translator import LuaTranslator

STRING = 'quote " back\\slash\nnew line\ttab \x01\x7f ünïcødé ✓ [[ ]] -- not a comment'
PARAMS = {
    "n": 5, "big": 2**63 - 1, "smallest": -2**63, "huge": 2**70,
    "x": 2.5, "whole": 3.0, "neg_zero": -0.0, "inf": math.inf, "ninf": -math.inf,
    "nan": math.nan, "s": STRING, "empty": "", "yes": True, "no": False, "nothing": None,
    "items": [1, "two", [3.5, False]],
    "config": {"name": "Ada", "end": 1, "with space": {"deep": [1, 2]}, "1": "digit"},
}

DESCRIBE = r"""
local function show(v)
  if type(v) == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. show(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif type(v) == "number" then
    return math.type(v) .. ":" .. (math.type(v) == "integer" and tostring(v)
                                   or string.format("%.17g", v))
  elseif type(v) == "string" then
    return "bytes:" .. table.concat({v:byte(1, -1)}, ",")
  end
  return type(v) .. ":" .. tostring(v)
end
for _, name in ipairs({"n", "big", "smallest", "huge", "x", "whole", "neg_zero", "inf",
                       "ninf", "nan", "s", "empty", "yes", "no", "nothing", "items",
                       "config", "untouched"}) do
  print(name .. " " .. show(_G[name]))
end
"""


def expected() -> dict:
    def show(v):
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}={show(v[k])}" for k in sorted(v, key=str)) + "}"
        if isinstance(v, list):
            return show({str(i + 1): x for i, x in enumerate(v)})
        if isinstance(v, bool):
            return f"boolean:{str(v).lower()}"
        if v is None:
            return "nil:nil"
        if isinstance(v, int) and -2**63 <= v < 2**63:
            return f"integer:{v}"
        if isinstance(v, (int, float)):
            text = "%.17g" % v
            return "float:" + {"nan": "-nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
        return "bytes:" + ",".join(str(b) for b in v.encode())
    return {**{k: show(v) for k, v in PARAMS.items()}, "untouched": show("kept")}


def test_papermill_passes_every_parameter_type_to_lua(tmp_path):
    papermill = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "lua", "language": "lua", "display_name": "Lua 5.4"}
    defaults = nbformat.v4.new_code_cell("n = 1 -- how many\nuntouched = 'kept'")
    defaults.metadata["tags"] = ["parameters"]
    nb.cells = [defaults, nbformat.v4.new_code_cell(DESCRIBE)]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(str(src), str(out), parameters=PARAMS, kernel_name="lua")
    done = nbformat.read(out, as_version=4)
    injected = [c for c in done.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and injected[0].source.startswith("-- Parameters")
    printed = "".join(o.get("text", "") for o in done.cells[-1].outputs)
    got = dict(line.split(" ", 1) for line in printed.splitlines())
    want = expected()
    # NaN prints as nan or -nan depending on its sign bit; either is NaN
    assert got.pop("nan") in ("float:nan", "float:-nan")
    want.pop("nan")
    assert got == want


def test_bytes_that_are_not_utf8_survive_translation():
    raw = b"\xff\x00ok\xc3"
    literal = LuaTranslator.translate(raw.decode("utf-8", "surrogateescape"))
    assert literal == '"\\255\\000ok\\195"'
    s = Session()
    assert s.execute(f"return {{({literal}):byte(1, -1)}}")[0].values() is not None
    assert list(s.execute(f"return ({literal}):byte(1, -1)")) == list(raw)


def test_parameters_cell_is_inspected():
    cell = {"source": "n = 1 -- how many\nname = 'x'\nflag = true\nratio = 0.5\n"
                      "local hidden = 2\nitems = {1, 2}"}
    params = {p.name: p for p in LuaTranslator.inspect(cell)}
    assert set(params) == {"n", "name", "flag", "ratio", "items"}
    assert params["n"].help == "how many" and params["n"].inferred_type_name == "integer"
    assert params["name"].inferred_type_name == "string"
    assert params["ratio"].inferred_type_name == "float"
    assert params["items"].inferred_type_name == "table"


def test_the_papermill_command_line(tmp_path):
    pytest.importorskip("papermill")
    import subprocess
    import sys

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "lua", "language": "lua", "display_name": "Lua 5.4"}
    defaults = nbformat.v4.new_code_cell("n = 1\nname = 'nobody'")
    defaults.metadata["tags"] = ["parameters"]
    nb.cells = [defaults, nbformat.v4.new_code_cell("math.type(n), n * 2, name")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    subprocess.run([sys.executable, "-m", "papermill", str(tmp_path / "in.ipynb"),
                    str(tmp_path / "out.ipynb"), "-k", "lua", "-p", "n", "5", "-p", "name", "Ada"],
                   check=True, capture_output=True)
    done = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    result = done.cells[-1].outputs[0]["data"]["text/plain"]
    assert result == '"integer"\t10\t"Ada"'
