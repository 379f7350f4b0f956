"""The saved-pc reader: exact pcs of suspended frames, checked or refused."""
from __future__ import annotations

import pytest

from lua_kernel.persist import framepeek, new_session
from lua_kernel.persist.framepeek import FramePC, FramePeekError, saved_pcs


@pytest.fixture(params=["5.4", "5.5"])
def session(request):
    """The reader is persistence's: it reads a state persistence follows
    from its first line (with the original debug functions)."""
    return new_session(runtime=request.param)


@pytest.fixture
def reader_off(monkeypatch):
    """The self-check fails (wrong savedpc offset): every pc is inferred."""
    monkeypatch.setattr(framepeek, "savedpc_offset", framepeek.CI_SAVEDPC + 8)
    monkeypatch.setattr(framepeek, "_self_check_result", None)
    yield
    framepeek.reset_self_check()


def lines_of(session, name, levels):
    """debug.getinfo's currentline of the given levels of coroutine `name`."""
    return [session.execute(f"return debug.getinfo({name}, {lv}, 'l').currentline")[0]
            for lv in levels]


def pcs(session, name):
    return saved_pcs(session, session.globals[name])


def test_self_check_passes_on_this_machine(session):
    framepeek.reset_self_check()
    assert framepeek.self_check(session) is True


def test_a_generator_in_a_loop_stays_at_its_call_site(session):
    session.execute("""
function gen()
  local i = 0
  while true do
    i = i + 1
    coroutine.yield(i)
  end
end
co = coroutine.create(gen)
""")
    seen = []
    for _ in range(4):
        session.execute("coroutine.resume(co)")
        seen.append(pcs(session, "co"))
    assert all(s == seen[0] for s in seen)
    [frame] = seen[0]
    assert frame.level == 1 and frame.line == 6 and frame.method == "read"
    assert frame.line == lines_of(session, "co", [1])[0]


def test_ten_frames_deep_every_level_is_read(session):
    session.execute("""
function deep(n)
  if n == 1 then
    return coroutine.yield("bottom") + 0
  end
  local r = deep(n - 1)
  return r
end
co = coroutine.create(deep)
coroutine.resume(co, 10)
""")
    frames = pcs(session, "co")
    assert [f.level for f in frames] == list(range(1, 11))
    assert all(f.method == "read" for f in frames)
    assert [f.line for f in frames] == lines_of(session, "co", range(1, 11))
    assert [f.line for f in frames] == [4] + [6] * 9
    assert len({f.pc for f in frames[1:]}) == 1


def test_a_pcall_between_lua_frames_is_a_level_without_a_pc(session):
    session.execute("""
local function inner(x)
  local y = coroutine.yield(x)
  return y
end
function outer()
  local ok, v = pcall(inner, 1)
  return v
end
co = coroutine.create(outer)
coroutine.resume(co)
""")
    frames = pcs(session, "co")
    assert [f.level for f in frames] == [1, 3]
    assert session.execute("return debug.getinfo(co, 2, 'S').what")[0] == "C"
    assert [f.line for f in frames] == [3, 7]
    assert all(f.method == "read" for f in frames)


def test_a_yield_inside_a_for_in_iterator_leaves_the_loop_at_tforcall(session):
    session.execute("""
local function iter(s, i)
  coroutine.yield(i)
  if i < 3 then return i + 1 end
end
function loop()
  local n = 0
  for i in iter, nil, 0 do
    n = n + i
  end
  return n
end
co = coroutine.create(loop)
coroutine.resume(co)
coroutine.resume(co)
""")
    frames = pcs(session, "co")
    assert [f.line for f in frames] == [3, 8]
    assert all(f.method == "read" for f in frames)
    code = framepeek.dumped_code(framepeek._helper(session), session.globals.loop)
    assert framepeek.opcode(code[frames[1].pc - 1]) == framepeek.OP_TFORCALL


def test_coroutine_yield_as_the_iterator_itself(session):
    session.execute("""
function loop()
  for k in coroutine.yield do
  end
end
co = coroutine.create(loop)
coroutine.resume(co)
""")
    [frame] = pcs(session, "co")
    assert frame.method == "read"
    assert frame.line == lines_of(session, "co", [1])[0]


def test_a_tail_called_yield_and_a_wrap_function(session):
    session.execute("""
w = coroutine.wrap(function(...)
  local a = 1
  return coroutine.yield(a, ...)
end)
w(7, 8)
""")
    [frame] = pcs(session, "w")
    assert frame.line == 4 and frame.method == "read"


def test_a_yield_out_of_a_metamethod_is_read_but_not_inferred(session, monkeypatch):
    session.execute("""
local mt = { __index = function(t, k) return coroutine.yield(k) end }
function get()
  local t = setmetatable({}, mt)
  local v = t.key
  return v
end
co = coroutine.create(get)
coroutine.resume(co)
""")
    framepeek.reset_self_check()
    read = pcs(session, "co")
    assert [f.method for f in read] == ["read", "read"]
    assert read[1].line == 5
    monkeypatch.setattr(framepeek, "savedpc_offset", framepeek.CI_SAVEDPC + 8)
    framepeek.reset_self_check()
    with pytest.raises(FramePeekError, match=r"get|In\[1\]:3.*line 5.*metamethod"):
        pcs(session, "co")
    framepeek.reset_self_check()


SCENARIOS = """
local function leaf(x)
  local y = coroutine.yield(x)
  return y
end
local function mid(x)
  local s = 0
  for i = 1, 2 do
    s = s + leaf(x + i)
  end
  return s
end
function top(...)
  local ok, r = pcall(mid, ...)
  return r
end
function twice()
  local a = coroutine.yield(1) + coroutine.yield(2)
  return a
end
co1 = coroutine.create(top); coroutine.resume(co1, 5)
co2 = coroutine.create(twice); coroutine.resume(co2); coroutine.resume(co2, 10)
co3 = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end); co3()
local function each(t, i)
  if t[i + 1] then coroutine.yield(t[i + 1]) return i + 1, t[i + 1] end
end
function sum(t)
  local s = 0
  for _, v in each, t, 0 do s = s + v end
  for _, v in coroutine.yield, t, 0 do s = s + v end
  return s
end
co4 = coroutine.create(sum); coroutine.resume(co4, {1, 2})
co5 = coroutine.create(sum); coroutine.resume(co5, {})
"""


def test_inferred_pcs_equal_the_read_ones_when_the_line_is_unambiguous(session, monkeypatch):
    session.execute(SCENARIOS)
    framepeek.reset_self_check()
    read = {name: pcs(session, name) for name in ("co1", "co2", "co3", "co4", "co5")}
    assert [f.line for f in read["co4"]] == [25, 29]     # in each; the first for
    assert [f.line for f in read["co5"]] == [30]         # the second for
    assert all(f.method == "read" for frames in read.values() for f in frames)
    monkeypatch.setattr(framepeek, "savedpc_offset", framepeek.CI_SAVEDPC + 8)
    framepeek.reset_self_check()
    assert framepeek.self_check(session) is False
    for name, frames in read.items():
        inferred = pcs(session, name)
        assert inferred == [FramePC(f.level, f.pc, f.line, "inferred") for f in frames]
    framepeek.reset_self_check()


def test_two_calls_on_one_line_are_told_apart_by_their_registers(session, reader_off):
    session.execute(SCENARIOS)
    [first] = pcs(session, "co2")    # suspended at the second yield of line 18
    session.execute("co2b = coroutine.create(twice); coroutine.resume(co2b)")
    [second] = pcs(session, "co2b")
    assert first.line == second.line == 18
    assert first.method == second.method == "inferred"
    assert first.pc > second.pc


def test_an_ambiguous_line_is_refused_naming_the_function_and_line(session, reader_off):
    session.execute("""
function amb()
  coroutine.yield(1) coroutine.yield(2)
end
co = coroutine.create(amb)
coroutine.resume(co)
coroutine.resume(co)
""")
    with pytest.raises(FramePeekError) as e:
        pcs(session, "co")
    assert "In[1]:2" in str(e.value) and "line 3" in str(e.value)
    assert "2 calls" in str(e.value)


def test_the_same_ambiguous_line_is_read_exactly(session):
    session.execute("""
function amb()
  coroutine.yield(1) coroutine.yield(2)
end
co = coroutine.create(amb)
coroutine.resume(co)
""")
    [first] = pcs(session, "co")
    session.execute("coroutine.resume(co)")
    [second] = pcs(session, "co")
    assert first.method == second.method == "read"
    assert second.pc > first.pc and first.line == second.line == 3


def test_not_started_and_dead_coroutines_have_no_frames(session):
    session.execute("""
fresh = coroutine.create(function() coroutine.yield() end)
wfresh = coroutine.wrap(function() coroutine.yield() end)
done = coroutine.create(function() end); coroutine.resume(done)
""")
    # lupa hands a not-started thread to Python as its function
    with pytest.raises(FramePeekError, match="has not started"):
        pcs(session, "fresh")
    with pytest.raises(FramePeekError, match="has not started: it has no frames"):
        pcs(session, "wfresh")
    with pytest.raises(FramePeekError, match="dead: it has no frames"):
        pcs(session, "done")
    with pytest.raises(FramePeekError, match="not a coroutine"):
        saved_pcs(session, session.execute("return {}")[0])


def test_running_and_normal_coroutines_are_refused(session):
    # from Lua: lupa 2.8 mixes up Lua values read by a Python callback that
    # runs inside a coroutine, so this checks the Lua half directly
    session.globals.FP = framepeek._helper(session)
    session.execute("""
outer = coroutine.create(function()
  local inner = coroutine.create(function()
    local _, running = FP.frames((coroutine.running()))
    local _, normal = FP.frames(outer)
    return running, normal
  end)
  return select(2, coroutine.resume(inner))
end)
""")
    ok, running, normal = session.execute("return coroutine.resume(outer)")
    assert ok is True
    assert running == "the coroutine is running, not suspended"
    assert normal == "the coroutine is normal, not suspended"


def test_user_replacements_of_the_debug_library_do_not_mislead_it(session):
    session.execute("""
local real = coroutine.yield
function coroutine.yield(...) return real(...) end
function debug.getinfo() return { what = "C", currentline = 1 } end
function debug.getlocal() return nil end
function string.dump() error("no") end
co = coroutine.create(function(...)
  local x = coroutine.yield(1)
  return x
end)
coroutine.resume(co)
""")
    frames = pcs(session, "co")
    assert [(f.level, f.line, f.method) for f in frames] == [(1, 3, "read"), (2, 8, "read")]


def test_calls_into_vararg_functions_are_read_and_inferred(session, monkeypatch):
    session.execute("""
local function va(a, ...)
  local r = coroutine.yield(a, ...)
  return r
end
function caller()
  local x, y = 1, 2
  local r = va(x, y, 3, 4)
  return r
end
co = coroutine.create(caller)
coroutine.resume(co)
""")
    framepeek.reset_self_check()
    read = pcs(session, "co")
    assert [(f.line, f.method) for f in read] == [(3, "read"), (8, "read")]
    monkeypatch.setattr(framepeek, "savedpc_offset", framepeek.CI_SAVEDPC + 8)
    framepeek.reset_self_check()
    assert pcs(session, "co") == [FramePC(f.level, f.pc, f.line, "inferred") for f in read]
    framepeek.reset_self_check()


def test_long_functions_use_the_absolute_line_info(session):
    body = "\n".join(f"  local v{i} = {i} + x" for i in range(150))
    session.execute(f"""
function long(x)
{body}
  local y = coroutine.yield(v149)
  return y
end
co = coroutine.create(long)
coroutine.resume(co, 1)
""")
    [frame] = pcs(session, "co")
    assert frame.method == "read" and frame.line == 153
    framepeek.reset_self_check()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(framepeek, "savedpc_offset", framepeek.CI_SAVEDPC + 8)
        assert pcs(session, "co") == [FramePC(1, frame.pc, 153, "inferred")]
    framepeek.reset_self_check()


@pytest.mark.parametrize("bogus", [0, 8, 0xDEADBEEF0000, -1, "python object"])
def test_garbage_addresses_never_crash(session, monkeypatch, bogus):
    session.execute(SCENARIOS)
    blob = bytes(range(256)) * 64
    address = id(blob) if bogus == "python object" else bogus
    monkeypatch.setattr(framepeek, "_thread_address", lambda text: address)
    frames = pcs(session, "co1")
    assert [f.method for f in frames] == ["inferred"] * 3
    assert [f.line for f in frames] == lines_of(session, "co1", [1, 2, 4])


def test_the_self_check_fails_when_the_walk_reads_garbage(session, monkeypatch):
    monkeypatch.setattr(framepeek, "_thread_address", lambda text: 0x1000)
    framepeek.reset_self_check()
    assert framepeek.self_check(session) is False
    framepeek.reset_self_check()


def test_a_metamethod_that_tail_calls_the_yielding_function(session, monkeypatch):
    session.execute("""
local function slow(k)
  local v = coroutine.yield(k)
  return v
end
local mt = { __index = function(t, k) return slow(k) end }
function get()
  local t = setmetatable({}, mt)
  local v = t.key
  return v
end
co = coroutine.create(get)
coroutine.resume(co)
""")
    framepeek.reset_self_check()
    read = pcs(session, "co")
    assert [(f.level, f.line, f.method) for f in read] == [(1, 3, "read"), (2, 9, "read")]
    monkeypatch.setattr(framepeek, "savedpc_offset", framepeek.CI_SAVEDPC + 8)
    framepeek.reset_self_check()
    with pytest.raises(FramePeekError, match=r"In\[1\]:7, line 9: no call on that line"):
        pcs(session, "co")
    framepeek.reset_self_check()
