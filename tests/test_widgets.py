"""Widgets from Lua (issue 11): the module and persistence on a plain
Session. test_kernel_widgets.py drives them through a real kernel."""
from __future__ import annotations

import pytest

from lua_kernel import LuaError, Session, persist


# -- the module on a Session ---------------------------------------------------

def test_every_ipywidgets_class_has_a_constructor():
    import ipywidgets
    s = Session()
    ours = set(s.execute("local r = {} for k in pairs(widgets) do r[#r+1] = k end "
                         "return table.concat(r, ' ')")[0].split())
    theirs = {n for n in dir(ipywidgets.widgets) if isinstance(getattr(ipywidgets, n, None), type)
              and issubclass(getattr(ipywidgets, n), ipywidgets.DOMWidget)
              and n not in ("DOMWidget", "CoreWidget", "ValueWidget", "GridspecLayout",
                            "interactive")}
    assert theirs <= ours, theirs - ours
    assert {"Layout", "interact", "interactive", "fixed"} <= ours


def test_fields_observe_and_errors():
    s = Session()
    assert s.execute("""
        w = widgets.IntSlider{min = 0, max = 10, value = 3, description = "n"}
        seen = {}
        w:observe(function(c) seen[#seen + 1] = c.name .. ":" .. c.old .. "->" .. c.new end, "value")
        w.value = 5
        w.description = "m"          -- not observed
        return w.value, w.description, table.concat(seen, ","), rawequal(w, w.layout) """) \
        == (5, "m", "value:3->5", False)
    with pytest.raises(LuaError, match=r"In\[\d+\]:1: TraitError: The 'value' trait of an IntSlider"):
        s.execute("w.value = 'x'")
    with pytest.raises(LuaError, match="IntSlider has no field 'valu'"):
        s.execute("return w.valu")
    with pytest.raises(LuaError, match="widgets.IntSlider takes a table of named options"):
        s.execute("widgets.IntSlider{1, 2}")
    # an observer's error reaches the cell that made the change, as in IPython
    s.execute("w:observe(function() error('bad observer') end, 'value')")
    with pytest.raises(LuaError, match="bad observer"):
        s.execute("w.value = 1")


def test_lists_for_children_and_options():
    s = Session()
    assert s.execute("""
        dd = widgets.Dropdown{"red", "green", value = "green"}
        pairs_dd = widgets.Dropdown{options = {{"one", 1}, {"two", 2}}, value = 2}
        box = widgets.HBox{dd, pairs_dd}
        return dd.value, dd.index, pairs_dd.label, #box.children, box.children[2] == pairs_dd,
               dd.options[1] """) == ("green", 1, "two", 2, True, "red")


def test_button_on_click_and_interactive():
    s = Session()
    assert s.execute("""
        b = widgets.Button{description = "go"}
        n = 0
        b:on_click(function(btn) n = n + (btn == b and 1 or 100) end)
        b:click(); b:click()
        ui = widgets.interactive(function(k, name, flag) last = name .. k .. tostring(flag) end,
                                 {k = {0, 10}, name = "Ada", flag = widgets.fixed(true)})
        local first = last
        ui.children[1].value = 7
        return n, first, last, #ui.children """) == (2, "Ada5true", "Ada7true", 3)


def test_widgets_come_back_after_a_snapshot():
    """Recreate, not report: the class and state come back as a new model,
    the Lua callbacks with it, and shared widgets stay shared."""
    s = persist.new_session()
    s.execute("""
        w = widgets.IntSlider{min = 0, max = 10, value = 3, description = "n"}
        log = {}
        w:observe(function(c) log[#log + 1] = c.new end, "value")
        dd = widgets.Dropdown{"a", "b", value = "b"}
        b = widgets.Button{description = "go", button_style = "success"}
        clicks = 0
        b:on_click(function() clicks = clicks + 1 end)
        box = widgets.VBox{w, dd, b, layout = widgets.Layout{width = "50%"}}
        w.value = 4 """)
    data, issues = persist.snapshot_of(s)
    assert issues == []
    r, issues, _ = persist.restore(data)
    assert issues == []
    old_id = s.execute("return w.model_id")[0]
    assert r.execute("""
        w.value = 7
        b:click()
        return w.value, w.max, w.description, dd.value, box.layout.width, #box.children,
               box.children[1] == w, box.children[3] == b, log[1], log[2], clicks, w.model_id
        """)[:-1] == (7, 10, "n", "b", "50%", 3, True, True, 4, 7, 1)
    assert r.execute("return w.model_id")[0] != old_id     # a new model
    # a frontend change to a widget reached only through the box
    s2 = persist.restore(data).session
    child = s2.widgets._live(s2.execute("return box")[0]).children[0]
    child.value = 9
    s2.widgets.run_events()
    assert s2.execute("return log[#log]") == (9,)
