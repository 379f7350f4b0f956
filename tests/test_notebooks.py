"""The tour notebook runs end to end on the installed kernels `lua` and
`lua55`, with the outputs a Lua user expects, and LuaJIT's short tour on
`luajit` (conftest.py installs the kernelspecs for the tests)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TOUR = NOTEBOOKS / "tour.ipynb"


def run_clean(path: Path, kernel_name: str):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:            # run a clean copy: no saved outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, kernel_name=kernel_name, timeout=120).execute()
    return nb


@pytest.fixture(scope="module", params=["lua", "lua55"])
def tour(request):
    return run_clean(TOUR, request.param)


def cell_with(nb, marker: str):
    """The one code cell whose source contains marker."""
    found = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(found) == 1, f"{len(found)} code cells contain {marker!r}"
    return found[0]


def stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def results(cell, output_type="execute_result") -> list[dict]:
    return [o.data for o in cell.outputs if o.output_type == output_type]


def test_no_errors_and_every_cell_ran(tour):
    code = [c for c in tour.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{cell.source!r} raised {errors[0].ename}: {errors[0].evalue}"
        assert cell.execution_count is not None, cell.source
        assert not [o for o in cell.outputs
                    if o.output_type == "stream" and o.name == "stderr"], cell.source


def test_integer_and_float_arithmetic(tour):
    cell = cell_with(tour, "7 // 2, 7 / 2")
    assert stdout(cell) == "integer\tfloat\ttrue\ttrue\n"
    [data] = results(cell)
    assert data["text/plain"] == "3\t3.5\t1\t-4\t1024.0"


def test_table_value_is_pretty_printed(tour):
    [data] = results(cell_with(tour, "fruits = {"))
    assert data["text/plain"] == '{ "apple", "banana", "cherry", "date" }'
    assert data["text/html"].startswith("<table")
    assert "&quot;cherry&quot;" in data["text/html"]


def test_counter_closures_are_independent(tour):
    [data] = results(cell_with(tour, "function make_counter()"))
    assert data["text/plain"] == "3\t1"


def test_class_with_metamethods(tour):
    cell = cell_with(tour, "function Vector.__tostring")
    assert stdout(cell) == "Vector(3, 4)\t5.0\ttrue\n"
    [data] = results(cell)
    assert data["text/plain"] == "Vector(11, 22)"


def test_error_tables_and_pcall(tour):
    out = stdout(cell_with(tour, 'code = "EFUNDS"')).splitlines()
    assert out[:2] == ["true\t70", "false\tEFUNDS\t30"]
    assert out[2].startswith("false\tIn[") and out[2].endswith(
        ":11: attempt to index a nil value (local 't')")


def test_coroutines(tour):
    assert stdout(cell_with(tour, "function range(n, step)")) == "1 4 7 10 \n"
    cell = cell_with(tour, "co = coroutine.create")
    assert stdout(cell).splitlines() == [
        "suspended", "  started with\t1\t2", "true\t3",
        "suspended", "  resumed with\tx", "true\tdone"]
    [data] = results(cell)
    assert data["text/plain"] == '"dead"\tfalse\t"cannot resume dead coroutine"'


def test_to_be_closed_locals_close_in_reverse(tour):
    assert stdout(cell_with(tour, "<close>")).splitlines() == [
        "open\tA", "open\tB", "working, limit\t3", "close\tB", "close\tA"]


def test_rich_displays(tour):
    svg = [d["image/svg+xml"] for d in results(cell_with(tour, "display.svg("), "display_data")]
    assert len(svg) == 1 and svg[0].startswith("<svg") and svg[0].count("<rect") == 5

    cell = cell_with(tour, "display.markdown(")
    kinds = [next(k for k in d if k != "text/plain") for d in results(cell, "display_data")]
    assert kinds == ["text/markdown", "text/html", "application/json"]
    json = results(cell, "display_data")[2]["application/json"]
    assert [lang["name"] for lang in json] == ["Lua", "Python", "Ruby"]

    cell = cell_with(tour, "Palette.__html")
    shown = results(cell, "display_data") + results(cell)
    assert [d["text/plain"] for d in shown] == [
        "Palette(#ffbe0b, #fb5607, #ff006e, #8338ec)",
        "Palette(#03045e, #0077b6, #00b4d8, #90e0ef, #caf0f8)"]
    assert all("<span" in d["text/html"] and "lua-table" not in d["text/html"]
               for d in shown)


def test_widgets(tour):
    view = "application/vnd.jupyter.widget-view+json"
    [box] = results(cell_with(tour, "widgets.VBox{n, out}"))
    assert view in box and box["text/plain"].startswith("VBox(children=(IntSlider(value=5")
    [data] = results(cell_with(tour, "n.value = 10"))
    assert data["text/plain"] == "10\t20"
    [shown] = results(cell_with(tour, "widgets.interact("), "display_data")
    assert view in shown
    # nbclient, like a widget manager, keeps what the Output widgets captured
    # in the widget state: the observer's line and interact's first run
    state = tour.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    captured = ["".join(o["text"] for o in m["state"]["outputs"]) for m in state.values()
                if m["model_name"] == "OutputModel"]
    assert sorted(captured) == ["10! = 3628800\n", "Lua Lua Lua \n"]


def test_magics(tour):
    out = stdout(cell_with(tour, "%whos"))
    assert {"Vector", "fruits", "make_counter", "ocean"} <= set(out.splitlines()[0].split())
    assert "make_counter  function  function make_counter()" in out
    assert out.count("per loop (mean ± std. dev. of 3 runs, 1,000 loops each)") == 2


# -- persistence.ipynb: Part 1 in one kernel process, Part 2 in the next ----------------

PERSISTENCE = TOUR.parent / "persistence.ipynb"


def test_persistence_notebook_carries_on_in_a_second_kernel(monkeypatch):
    import uuid

    monkeypatch.setenv("JPY_SESSION_NAME", f"demo/{uuid.uuid4().hex[:8]}/persistence.ipynb")
    nb = nbformat.read(PERSISTENCE, as_version=4)
    split = next(i for i, c in enumerate(nb.cells) if "<!-- part 2 -->" in c.source)
    part1, part2 = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    part1.metadata = part2.metadata = nb.metadata
    part1.cells, part2.cells = nb.cells[:split], nb.cells[split:]

    NotebookClient(part1, kernel_name="lua", timeout=60).execute()   # shuts down at the end
    assert not [o for c in part1.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error"]
    NotebookClient(part2, kernel_name="lua", timeout=60).execute()   # a new kernel process

    first = cell_with(part2, "deposit(5), balance()")
    assert "Restored the Lua state saved" in stdout(first)
    assert results(first)[0]["text/plain"] == "125\t125"
    assert results(cell_with(part2, "fib(), fib(), fib()"))[0]["text/plain"] == "5\t8\t13"
    assert results(cell_with(part2, "inventory.self == inventory"))[0]["text/plain"] == \
        'true\t"Point(3, 4)"'
    assert "apples = 2" in results(cell_with(part2, "inventory.apples - 1"))[0]["text/plain"]


def test_the_luajit_tour_runs_on_luajit():
    nb = run_clean(NOTEBOOKS / "tour-luajit.ipynb", "luajit")
    test_no_errors_and_every_cell_ran(nb)
    assert results(cell_with(nb, "_VERSION, jit.version"))[0]["text/plain"].startswith(
        '"Lua 5.1"\t"LuaJIT 2.1.')
    assert results(cell_with(nb, "bit.band(0xF0"))[0]["text/plain"] == '48\t7\t1024\t"000000ff"'
    assert stdout(cell_with(nb, "ffi.cdef")) == "5\t7.5\n"
    assert stdout(cell_with(nb, "print(unpack(")) == "1\t2\t3\nnil\tnil\tnil\n"
