"""The serializer in LuaJIT (issue 10): state.lua through persist/jitsource.py
with persist/lua/codec_jit.lua.

These run in real LuaJIT Sessions (persist.new_session(runtime="luajit"));
tests/test_runtimes.py's round trips cover LuaJIT beside 5.4 and 5.5.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from lua_kernel.persist import jitsource, new_session, state
from lua_kernel.runtime import lua_source

FFI_REASON = ("FFI cdata (ffi.new, 64-bit integers such as 1LL) has no counterpart outside "
              "LuaJIT's FFI and is not saved")


def bare_session():
    """A LuaJIT Session that persistence follows."""
    return new_session(runtime="luajit")


def roundtrip(setup: str, check: str):
    """(values of `check` after save + restore, issues of capture, of apply)."""
    s = bare_session()
    s.lua.execute(setup)
    body, issues, _ = state.capture(s)
    back = bare_session()
    notes = state.apply(back, body)
    return back.lua.execute(check), issues, notes


def test_identity_cycles_shared_upvalues_metatables_and_python_objects():
    values, issues, notes = roundtrip("""
        t = {1, 2, 3, {x = "y"}}
        t.self = t
        t[t[4]] = "keyed by a table"
        alias = t[4]
        local n = 0
        function counter() n = n + 1 return n end
        function peek() return n end
        local other = 0
        joined = function() return other end
        debug.upvaluejoin(joined, 1, counter, 1)
        setmetatable(t, {__index = function(_, k) return k .. "!" end})
        py = python.builtins.list({1, 2})
        function string.trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end
        print = nil
    """, """
        return t[4].x, t.self == t, alias == t[4], t[alias], counter(), counter(), peek(),
          t.zzz, python.builtins.len(py), ("  a  "):trim(), print, joined()
    """)
    assert (issues, notes) == ([], [])
    assert values == ("y", True, True, "keyed by a table", 1, 2, 2, "zzz!", 2, "a", None, 2)


def test_numbers_come_back_exactly():
    values, issues, _ = roundtrip("""
        local nan = 0/0
        nums = {3, -7, 0, 2^31, -2^31 - 1, 2^49, 2^50, -2^50, 2^53, 2^53 + 2, -2^53,
                2^63, 1e300, 5e-324, 0.1, -0.0, 1/0, -1/0, nan}
        keyed = {[2^53] = "a", [0.5] = "b", [-3] = "c", [2^60] = "d"}
        neg_zero, inf = -0.0, 1/0
        local up = 2^52 + 1
        function get_up() return up end
        long = {}
        for i = 1, 10000 do long[i] = i % 3 == 0 and i * 0.25 or i * 2^20 end
    """, """
        local r = {}
        for i = 1, 18 do r[i] = nums[i] end
        return r, nums[19] ~= nums[19], 1 / nums[16], 1 / neg_zero, inf,
          keyed[2^53], keyed[0.5], keyed[-3], keyed[2^60], get_up() == 2^52 + 1,
          long[9999] == 9999 * 0.25, long[10000] == 10000 * 2^20, #long
    """)
    assert issues == []
    r, *rest = values
    expected = [3, -7, 0, 2**31, -2**31 - 1, 2**49, 2**50, -2**50, 2**53, 2**53 + 2, -2**53,
                2.0**63, 1e300, 5e-324, 0.1, -0.0, math.inf, -math.inf]
    assert [r[i + 1] for i in range(18)] == expected
    assert rest == [True, -math.inf, -math.inf, math.inf, "a", "b", "c", "d", True, True, True,
                    10000]


def test_cdata_is_reported_by_path_and_comes_back_as_nil():
    values, issues, notes = roundtrip("""
        local ffi = require("ffi")
        arr = ffi.new("int[3]", 1, 2, 3)
        t = {big = 1LL, [2ULL] = "keyed by cdata", kept = 1}
        local p = ffi.new("double[1]")
        function holds() return p end
    """, "return arr, t.big, t.kept, holds(), next(t, 'kept')")
    assert sorted((i.path, i.reason) for i in issues) == sorted([
        ("_G.arr", FFI_REASON), ("_G.t.big", FFI_REASON), ("_G.t<key>", FFI_REASON),
        ("_G.holds<upvalue 'p'>", FFI_REASON)])
    assert len(notes) == 4
    assert values[0] is None and values[1] is None and values[2] == 1 and values[3] is None


def test_coroutines_and_files():
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lk-jit-{os.getpid()}.txt"
    try:
        values, issues, notes = roundtrip(f"""
            fresh = coroutine.create(function(a) coroutine.yield(a + 1) return "done" end)
            dead = coroutine.create(function() end) coroutine.resume(dead)
            gen = coroutine.wrap(function() coroutine.yield(1) coroutine.yield(2) end)
            spent = coroutine.wrap(function() end) spent()
            live = coroutine.create(function() coroutine.yield() end) coroutine.resume(live)
            fh = io.open({str(path)!r}, "w") fh:write("abc")
        """, """
            return select(2, coroutine.resume(fresh, 1)), coroutine.status(dead), gen(), gen(),
              pcall(spent), live, io.type(fh), fh:seek()
        """)
        assert [(i.path, i.reason) for i in issues] == [
            ("_G.live", "suspended coroutine: its call stack cannot be saved in LuaJIT: its "
                        "frames are out of reach from outside the VM")]
        assert len(notes) == 1
        assert values == (2, "dead", 1, 2, False, None, "file", 3)
    finally:
        path.unlink(missing_ok=True)


def test_a_body_of_the_other_codec_is_refused():
    jit = bare_session()
    jit.lua.execute("x = 1")
    jit_body = state.capture(jit)[0]
    s54 = new_session()
    s54.execute("x = 1")
    body54 = state.capture(s54)[0]
    with pytest.raises(ValueError, match="another runtime's codec"):
        state.apply(bare_session(), body54)
    with pytest.raises(ValueError, match="another runtime's codec"):
        state.apply(new_session(), jit_body)
    with pytest.raises(ValueError, match="truncated"):
        state.apply(bare_session(), jit_body[:40])


def test_the_rewrite_keeps_lines_and_refuses_what_it_cannot_read():
    src = lua_source(state.LUA_FILE)
    out = jitsource.rewrite(src)
    assert out.count("\n") == src.count("\n") + 1
    for line in out.splitlines():
        assert not any(op in line for op in (">>", "<<", "//")) or "--" in line
    assert jitsource.rewrite("return c & 7, c >> 3, W.O[p.q] // 8, (a >> 1) % 4, #s // 8") \
        .endswith("return (c % 8), __lk_floor(c / 8), __lk_floor(W.O[p.q] / 8), "
                  "(__lk_floor(a / 2)) % 4, __lk_floor(#s / 8)\nend)(...)")
    for bad in ("return a + b >> 3", "return a >> b", "return c & 6", "return -a // 8",
                "return a * b // 8", "return a ~ b", "return a >> 3 + 1",
                "return not a & 1", "return f'x' >> 1", "return a >> (3)"):
        with pytest.raises(jitsource.JitSourceError):
            jitsource.rewrite(bad)
