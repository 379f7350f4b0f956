-- Suspended coroutines: their call stacks as plain data, and back.
--
-- Loaded once per Lua state by persist/state.py, before any user code, with
-- the modules `bytecode` (bytecode.lua), `finisher` (finisher.lua),
-- `framepeek` (framepeek.lua, whose `original` gives library functions as
-- they were before user code ran) and lua/session.lua's (unused now).
-- Returns `frames` (persist/state.py hands it to state.lua):
--
--   frames.prepare(co)  -> plan | nil, reason
--       what the debug library shows of a suspended coroutine: its levels
--       (plan.table, with every Lua level's registers), the pcs its
--       bytecode alone pins down (plan.pcs[level]) and the levels whose
--       saved pcs must be read from the frame records (plan.wanted, a list;
--       frames.packed(plan) is the record as bytes for framepeek.py)
--   frames.build(plan, probe) -> record | nil, reason
--       the coroutine's RECORD, once plan.pcs has every frame's pc
--       (framepeek.py's FramePC.pc); `probe(co, level, reg, frame, value)`
--       is called for every register of a native frame that a closure may
--       share (an open upvalue), for the serializer's sentinel probing
--   frames.pending(co)  -> record | nil    a restored coroutine not resumed yet
--   frames.revive(rec)  -> body           the function for coroutine.create or
--       coroutine.wrap that continues the record; frames.adopt(co, rec) marks
--       the new thread as restored (so that it is saved as the same record
--       until it is resumed or closed); frames.start(threads) then starts them
--       up to their first resume (once records are complete), so that
--       its frames' pcalls, xpcalls and to-be-closed guards are native
--       levels of the thread: coroutine.close and errors close them natively
--
-- A RECORD is plain data the serializer writes like any table:
--   { n = N, [1] = innermost frame, ..., [N] = outermost frame }
-- and a frame is one of
--   { c = "pcall" }  |  { c = "xpcall", h = message handler }, with
--     u = {e = error, n = k, [1..k] = values, first created first} when the
--     call was closing, after catching e, the variables of the frames e
--     unwound and a __close yielded (finishpcallk): the values still to close
--   { c = "raise", u = ... } a restored frame unwinding: its own pcall in
--     finisher.run was closing a native callee's variables; then e goes on from it
--   { closure, cur, n, R[0], R[1], ..., R[n - 1] } (cur: the pending
--     instruction, a 1-based index into the prototype's code; n: the number
--     of registers; frame[R0 + r] is register r), and where needed:
--     va = varargs {n = k, ...},
--     tbc = {registers of the pending to-be-closed variables, ascending},
--     top = for the finisher's B = 0 users, cat = last register still to
--     concatenate (a pending OP_CONCAT), links = {[r] = {f = closure,
--     n = upvalue index}} (registers that are open upvalues; the serializer
--     adds the ones it finds by probing) }
-- (one table per frame, all in its array part but for the rare fields: a
-- snapshot may hold thousands of frames, and arrays are the cheap part)
-- The innermost frame waits on coroutine.yield: resuming delivers the resume
-- values as the results of its pending instruction. Each frame's results
-- are delivered to the pending instruction of the frame below it, as
-- luaV_finishOp does: a call's results go to R[A]...; a metamethod's first
-- result to R[A] (arithmetic, unary, indexing, concatenation) or as the
-- outcome of a comparison; OP_CLOSE and OP_RETURN run again to close the
-- remaining variables; the outermost frame's results end the coroutine.
--
-- A restored coroutine runs its frames in the finisher, innermost first;
-- `pcall`/`xpcall` frames are re-created around the frames above them, and
-- a frame with pending to-be-closed variables gets one native <close>
-- guard for them (no pcall, so no C stack per frame); frames needing
-- neither run one after another from one level (run_plain). While
-- it runs, its state is `st` = {rec = record, running = k} (frames above k
-- are done, k runs in the finisher, frames below k wait in `rec`), so a
-- coroutine suspended inside finisher frames is captured again from the
-- finisher's own frame tables, the native frames above them, and the frames
-- still waiting in `rec`.

local bytecode, finisher, framepeek = ...
local original = framepeek.original

local getinfo = original("debug.getinfo", debug.getinfo)
local getlocal = original("debug.getlocal", debug.getlocal)
local getupvalue = original("debug.getupvalue", debug.getupvalue)
local getmetatable = original("debug.getmetatable", debug.getmetatable)
local corunning = original("coroutine.running", coroutine.running)
local costatus = original("coroutine.status", coroutine.status)
local next, pcall, rawget, rawequal = original("next", next), original("pcall", pcall),
  original("rawget", rawget), original("rawequal", rawequal)
local type, select, error = original("type", type), original("select", select),
  original("error", error)
local sformat = original("string.format", string.format)
local unpack, pack = original("table.unpack", table.unpack), original("table.pack", table.pack)
local tmove = original("table.move", table.move)
local tsort = original("table.sort", table.sort)
local KXPCALL = original("xpcall", xpcall)   -- the kernel's xpcall (a Lua function)
local PCALL = pcall

local OP, OPNAMES = bytecode.OP, bytecode.OPNAMES
local proto_of, decode_proto = finisher.proto_of, finisher.decode_proto

local frames = {}

-- a Lua frame record's slots (the finisher's where() reads them too)
local FN, CUR = finisher.RECORD_FN, finisher.RECORD_CUR
local NREGS, R0 = finisher.RECORD_NREGS, finisher.RECORD_R0

local MY_SRC = getinfo(1, "S").short_src
local FIN_SRC = getinfo(finisher.run, "S").short_src

local function upvalue_named(f, wanted)
  local i = 1
  while true do
    local name, v = getupvalue(f, i)
    if name == nil then return nil end
    if name == wanted then return v end
    i = i + 1
  end
end

-- The kernel's xpcall is a Lua function (lua/session.lua) around the real one.
local REAL_XPCALL, KERNEL_SRC = KXPCALL, nil
if getinfo(KXPCALL, "S").what == "Lua" then
  KERNEL_SRC = getinfo(KXPCALL, "S").short_src
  REAL_XPCALL = assert(upvalue_named(KXPCALL, "real_xpcall"), "frames.lua: no real xpcall")
end

-- The finisher's `execute(fr)`: its levels stand for finisher frames.
local EXECUTE = assert(upvalue_named(finisher.run, "execute"), "frames.lua: no finisher execute")
-- finisher.run's own to-be-closed guard (closes a finisher frame's variables).
local FIN_GUARD = assert(upvalue_named(finisher.run, "GUARD"), "frames.lua: no finisher GUARD")

---------------------------------------------------------------------------
-- What a prototype says about its registers (cached per prototype).
---------------------------------------------------------------------------
local ARITH = {}     -- instructions followed by an OP_MMBIN* (result in R[A])
for _, name in ipairs({ "ADDI", "ADDK", "SUBK", "MULK", "MODK", "POWK", "DIVK", "IDIVK",
  "BANDK", "BORK", "BXORK", "SHRI", "SHLI", "ADD", "SUB", "MUL", "MOD", "POW", "DIV",
  "IDIV", "BAND", "BOR", "BXOR", "SHL", "SHR" }) do
  ARITH[OP[name]] = true
end
local TORA = {}      -- metamethod results that go to R[A]
for _, name in ipairs({ "UNM", "BNOT", "LEN", "GETTABUP", "GETTABLE", "GETI", "GETFIELD",
  "SELF" }) do
  TORA[OP[name]] = true
end
local COMPARE = {}   -- comparisons whose metamethod may yield; a JMP follows
for _, name in ipairs({ "LT", "LE", "LTI", "LEI", "GTI", "GEI", "EQ" }) do
  COMPARE[OP[name]] = true
end
local SETS = {}      -- __newindex may yield; nothing to finish
for _, name in ipairs({ "SETTABUP", "SETTABLE", "SETI", "SETFIELD" }) do
  SETS[OP[name]] = true
end
local MMBINS = { [OP.MMBIN] = true, [OP.MMBINI] = true, [OP.MMBINK] = true }

local analyses = setmetatable({}, { __mode = "k" })

-- Per prototype: the register of every local variable (luaF_getlocalname's
-- numbering), the registers some child closure captures, and the sites that
-- create to-be-closed variables (OP_TBC; OP_TFORPREP's closing value).
-- A generic for's slots from R[A]: iterator, state, then 5.4: control,
-- closing value; 5.5: closing value, control (lvm.c OP_TFORPREP); its call
-- is made at R[A + TFORCALL_FN].
local V55 = bytecode.VERSION == 0x55
local TFOR_CLOSING, TFOR_CONTROL = V55 and 2 or 3, V55 and 3 or 2
local TFORCALL_FN = V55 and 3 or 4
local function analyse(p)
  local an = analyses[p]
  if an then return an end
  local vars = p.locvars or {}
  local reg = {}
  for j, v in ipairs(vars) do
    local n = 0
    for i = 1, j - 1 do
      local w = vars[i]
      if w.startpc <= v.startpc and v.startpc < w.endpc then n = n + 1 end
    end
    reg[j] = n
  end
  local captured = {}
  for _, child in ipairs(p.p or {}) do
    for _, uv in ipairs(child.upvalues) do
      if uv.instack then captured[uv.idx] = true end
    end
  end
  local sites, loops, calls = {}, {}, {}
  for pc, ins in ipairs(decode_proto(p)) do
    local op, a = ins.op, ins.a
    if op == OP.CALL or op == OP.TAILCALL or op == OP.TFORCALL then
      local line = bytecode.line_of(p, pc)
      if line then
        local list = calls[line] or {}
        calls[line] = list
        list[#list + 1] = { pc = pc, op = op, a = a }
      end
    end
    if op == OP.TBC then
      sites[#sites + 1] = { t = pc - 1, reg = a }
    elseif op == OP.TFORPREP then
      sites[#sites + 1] = { t = pc - 1, reg = a + TFOR_CLOSING }
      loops[#loops + 1] = { t = pc - 1, a = a, last = pc - 1 + ins.bx }  -- body: t+1 .. last
    end
  end
  an = { reg = reg, captured = captured, sites = sites, loops = loops, calls = calls }
  analyses[p] = an
  return an
end

-- The local variable entry created at `t` in register `r`.
local function var_of(p, an, r, t)
  for j, v in ipairs(p.locvars or {}) do
    if v.startpc == t and an.reg[j] == r then return j, v end
  end
  return nil
end

-- Is register r taken by another variable started after `start`, up to pc0?
local function reused(p, an, r, start, pc0)
  for j, v in ipairs(p.locvars or {}) do
    if v.startpc > start and v.startpc <= pc0 and an.reg[j] == r then return true end
  end
  return false
end

local function closable(v)
  return v ~= nil and v ~= false
end

-- The pending to-be-closed variables of a native frame at pc0 (0-based
-- index of its pending instruction). `closing`: the object whose __close is
-- running when the pending instruction is OP_CLOSE/OP_RETURN (luaF_close
-- pops each variable before calling its __close; the ones above it are
-- closed already).
local function pending_tbc(p, an, fr, pc0, op, a, closing)
  if an.sites[1] == nil then
    if closing ~= nil then
      return nil, "cannot tell which to-be-closed variable is being closed"
    end
    return nil
  end
  local found = {}
  for _, s in ipairs(an.sites) do
    if s.t < pc0 then
      local _, v = var_of(p, an, s.reg, s.t)
      if v == nil then
        return nil, "it has to-be-closed variables but no debug information"
      end
      local live = v.endpc > pc0 and not reused(p, an, s.reg, s.t, pc0)
      if not live and op == OP.CLOSE and s.reg >= a then
        -- the block this OP_CLOSE ends: its variables are still in the list
        live = not reused(p, an, s.reg, s.t, pc0)
      end
      if live and closable(fr[R0 + s.reg]) then found[s.reg] = true end
    end
  end
  local list = {}
  for r in next, found do list[#list + 1] = r end
  tsort(list)
  if closing ~= nil then
    local top
    for i = #list, 1, -1 do
      if rawequal(fr[R0 + list[i]], closing) then top = i; break end
    end
    if top == nil then
      return nil, "cannot tell which to-be-closed variable is being closed"
    end
    for i = #list, top, -1 do list[i] = nil end
  end
  if #list > 0 then return list end
  return nil
end

---------------------------------------------------------------------------
-- Generic for loops over next: the remaining keys, in the original order.
---------------------------------------------------------------------------

-- An iterator over the keys a `next` traversal had still to visit; keys
-- removed in the meantime are skipped, as `next` skips them.
local function remaining(keys, n)
  local i = 0
  return function(t)
    while i < n do
      i = i + 1
      local k = keys[i]
      local v = rawget(t, k)
      if v ~= nil then return k, v end
    end
    return nil
  end
end

local function freeze_next_loops(an, fr, pc0)
  for _, l in ipairs(an.loops) do
    if l.t < pc0 and pc0 <= l.last and rawequal(fr[R0 + l.a], next) then
      local t, k = fr[R0 + l.a + 1], fr[R0 + l.a + TFOR_CONTROL]
      local keys, n = {}, 0
      local ok = pcall(function()
        local kk = k
        while true do
          kk = next(t, kk)
          if kk == nil then return end
          n = n + 1
          keys[n] = kk
        end
      end)
      if ok then fr[R0 + l.a] = remaining(keys, n) end
    end
  end
end

---------------------------------------------------------------------------
-- Capture.
---------------------------------------------------------------------------
local function internal(lv)
  return lv.src == MY_SRC or lv.src == FIN_SRC
end

local function local_named(co, level, name)
  local i = 1
  while true do
    local n, v = getlocal(co, level, i)
    if n == nil then return nil end
    if n == name then return v end
    i = i + 1
  end
end

local resume_restored     -- the function a restored coroutine runs (below)
local finish_upto, guarded, run_plain  -- its levels (below)
local guard_close, guard_closing, registers, value_of, closers_of  -- (below)
local FRAME_GUARD         -- the metatable of a waiting frame's <close> guard (below)
-- the finisher's stand-ins for a frame's variables while its GUARD closes them
local CLOSE_CHAIN = assert(upvalue_named(FIN_GUARD.__close, "close_chain"),
  "frames.lua: no finisher close_chain")
local PROXY = assert(upvalue_named(CLOSE_CHAIN, "PROXY"), "frames.lua: no finisher PROXY")

-- Readers of a thread (framepeek.py, given by persist/state.py):
-- tbc_slots(address) -> i4 pairs (level, n) of its pending to-be-closed
-- variables, outermost first; ci_states(address) -> per level, innermost
-- first, H callstatus and i4 u2; errored(address) -> whether the thread is
-- dead by an error; copy_error(address, into) -> true when it is, a copy of
-- the error pushed on thread `into`. Any may give nil; the last two are
-- nil where no coroutine can die at its base level (5.4).
local tbc_slots, ci_states, errored, copy_error
function frames.use_readers(tbc, states, err, copy)
  tbc_slots, ci_states, errored, copy_error = tbc, states, err, copy
end
local sunpack = original("string.unpack", string.unpack)

local function address(co) return tonumber(sformat("%p", co)) end

-- CallInfo facts of a thread, read once per capture of it: states[level] =
-- {status = callstatus, u2 = nres}, or nil when unreadable.
local function read_states(co)
  local bytes = ci_states and ci_states(address(co))
  if type(bytes) ~= "string" or #bytes % 6 ~= 0 then return nil end
  local states = {}
  for pos = 1, #bytes, 6 do
    local status, u2 = sunpack("<Hi4", bytes, pos)
    states[(pos - 1) // 6] = { status = status, u2 = u2 }
  end
  return states
end

-- The values of the pending to-be-closed variables at `level` (all levels
-- when nil), first created first, checked with the debug library; nil
-- when they cannot be read.
local function tbc_values(co, level)
  local slots = tbc_slots and tbc_slots(address(co))
  if type(slots) ~= "string" or #slots % 8 ~= 0 then return nil end
  local list = {}
  for pos = 1, #slots, 8 do
    local lv, n = sunpack("<i4i4", slots, pos)
    if level == nil or lv == level then
      local name, v = getlocal(co, lv, n)
      local mt = getmetatable(v)
      if name == nil or v == nil or v == false then return nil end
      -- (a value may have lost its __close since it became pending)
      -- a luaL_Buffer's box (lauxlib.c newbox, line 508) only frees memory
      if not (mt and rawget(mt, "__name") == "_UBOX*") then list[#list + 1] = v end
    end
  end
  return list
end

-- The last slot of a level (luaD_seterrorobj put the error there).
local function last_slot(co, level)
  local e, i = nil, 1
  while true do
    local name, v = getlocal(co, level, i)
    if name == nil then return e end
    e, i = v, i + 1
  end
end

-- The registers of the pending to-be-closed variables of Lua level
-- `level`, ascending (read once per plan); nil when unreadable.
local function tbc_registers(plan, level)
  if plan.slots == nil then
    local bytes = tbc_slots and tbc_slots(address(plan.co))
    plan.slots = type(bytes) == "string" and #bytes % 8 == 0 and bytes or false
  end
  if not plan.slots then return nil end
  local list = {}
  for pos = 1, #plan.slots, 8 do
    local lv, n = sunpack("<i4i4", plan.slots, pos)
    if lv == level then list[#list + 1] = n - 1 end
  end
  return list
end

local RECST_SHIFT = bytecode.VERSION == 0x55 and 12 or 10   -- lstate.h: CIST_RECST

-- A pcall/xpcall at `level` whose callee is not the function it was given
-- may be recovering from an error (finishpcallk: closing the variables of
-- the frames the error unwound, with a __close that yielded): then the
-- error and the variables still to close, {e = error, n = k, ...}.
local function recovering(co, plan, level)
  local t = plan.table
  if rawequal(t[level - 1].func, select(2, getlocal(co, level, 1))) then return nil end
  plan.states = plan.states or read_states(co) or false
  if not plan.states then
    return nil, "cannot tell whether a pcall is closing variables after an error " ..
      "(its call record cannot be read)"
  end
  local state = plan.states[level]
  if state == nil or (state.status >> RECST_SHIFT) & 7 == 0 then return nil end
  local list = tbc_values(co, level)
  if list == nil then return nil, "cannot read the variables a pcall is closing after an error" end
  -- the error sits just below the __close's function slot; restored
  -- frames' stand-ins give the variables they close
  local u = { e = last_slot(co, level) }
  for _, v in ipairs(list) do closers_of(v, u) end
  u.n = #u
  return u
end

-- The pc of a frame waiting on a call, when its bytecode pins it down: the
-- one call-like instruction on its current line that the callee's name
-- allows and whose register A fits the visible slots (framepeek.py's
-- inference). The saved-pc reader could only confirm it (its checks are
-- the same); frames with no such instruction or several, and frames
-- waiting on a metamethod, are read from their frame records.
local KINDS = {
  ["for iterator"] = { [OP.TFORCALL] = true },
  metamethod = {}, hook = {},
  [""] = { [OP.CALL] = true, [OP.TAILCALL] = true, [OP.TFORCALL] = true },
}
local CALL_KINDS = { [OP.CALL] = true, [OP.TAILCALL] = true }

local function pinned_pc(t, level)
  local lv = t[level]
  local kinds = KINDS[t[level - 1].namewhat] or CALL_KINDS
  local list = analyse(proto_of(lv.func)).calls[lv.line]
  if not list then return nil end
  local nslots = lv.nslots - t[level - 1].shift
  local found
  for _, c in ipairs(list) do
    if kinds[c.op] and nslots == (c.op == OP.TFORCALL and c.a + TFORCALL_FN or c.a) then
      if found then return nil end
      found = c.pc
    end
  end
  return found
end

-- A recovering pcall/xpcall at `level` that is the finisher's own, around a
-- running restored frame (finisher.run's pcall/xpcall of execute): when it has
-- closed its level, the frame's error goes on and finisher.run's guard closes the
-- frame's variables. Returns the item standing for both: {c = "raise",
-- u = the frame's variables, then u's}, or nil when the call is not finisher.run's.
local function finisher_unwinding(co, t, caller, u)
  if caller >= t.n or not rawequal(t[caller].func, finisher.run) then return nil end
  local fr = local_named(co, caller, "fr")
  local list = { e = u.e }
  for _, r in ipairs(fr.tbc) do list[#list + 1] = fr.R[r] end
  for i = 1, u.n do list[#list + 1] = u[i] end
  list.n = #list
  return { c = "raise", u = list }
end

-- A __close yielding while a restored frame's variables close after an
-- error: inside finisher.run's guard (the finisher's closetbc has the error and
-- the frame's variables still to close) or a waiting frame's guard (its
-- `e`). Returns {e = error, list = values still to close, first created
-- first}, or nil and why not.
function guard_close(f)
  return rawequal(f, PROXY.__close) or rawequal(f, FRAME_GUARD.__close)
end

-- A stand-in's __close (finisher PROXY, frames.lua FRAME_GUARD) closes one
-- variable, with the error it passes on (`err`, `e`). The other stand-ins
-- still to close are in the catching call's tbclist, or, while the
-- finisher's close_chain returns, in its levels: then finisher.run's GUARD level,
-- further out, gives the frame's variables not closed yet (fr.tbc).
function guard_closing(co, t, level)
  local lv = t[level]
  if rawequal(lv.func, PROXY.__close) then
    return { e = local_named(co, level, "err"), list = {} }
  end
  return { e = local_named(co, level, "e"), list = {} }
end

-- The logical frames of a suspended coroutine, innermost first.
function frames.prepare(co)
  local t, why = framepeek.frames(co, true)
  if t == nil then return nil, why end
  local items, wanted, pcs = {}, {}, {}
  local plan = { co = co, table = t, pcs = pcs, wanted = wanted, items = items }
  local kx_u        -- a recovering real xpcall inside the kernel's xpcall
  local closing     -- a guard of a restored frame closing after an error (below)
  local rest_from   -- the first record frame still waiting, when not st.running + 1
  for level = 1, t.n - 1 do
    local lv = t[level]
    local f = lv.func
    if closing and closing.caught then
      -- between the catching pcall and the finish_upto level that made it
      if rawequal(f, finish_upto) then
        rest_from, closing = lv.regs[2] + 1, nil
      elseif not rawequal(f, KXPCALL) then
        return nil, "it is suspended in a __close while a restored frame closes " ..
          "its variables after an error, inside another such closing"
      end
    elseif lv.what == "C" and closing and (rawequal(f, pcall) or rawequal(f, REAL_XPCALL))
        and (guard_close(t[level - 1].func) or rawequal(t[level - 1].func, FIN_GUARD.__close)) then
      -- the pcall that caught the error: it closes, with the error, what the
      -- guard has still to close, then the variables of the other frames
      -- the error unwound (its own level's tbclist), then returns false, e
      local list = {}
      for _, v in ipairs(tbc_values(co, level) or {}) do closers_of(v, list) end
      for _, v in ipairs(closing.list) do list[#list + 1] = v end
      list.e, list.n = closing.e, #list
      items[#items + 1] = { c = "pcall", u = list }
      closing.caught = true
    elseif lv.what == "C" then
      if level + 1 < t.n and rawequal(t[level + 1].func, KXPCALL) then
        -- inside the kernel's xpcall, which is recorded as the xpcall
        if not internal(t[level - 1]) then
          local why
          kx_u, why = recovering(co, plan, level)
          if why then return nil, why end
        end
      elseif rawequal(f, pcall) then
        if not internal(t[level - 1]) then
          local u, why = recovering(co, plan, level)
          if why then return nil, why end
          items[#items + 1] = u and finisher_unwinding(co, t, level + 1, u) or { c = "pcall", u = u }
          if u and rawequal(t[level + 1].func, finish_upto) then
            closing = { caught = true }   -- a restored pcall: the record goes on after it
          end
        end
      elseif rawequal(f, REAL_XPCALL) then
        if not internal(t[level - 1]) then
          local u, why = recovering(co, plan, level)
          if why then return nil, why end
          items[#items + 1] = u and finisher_unwinding(co, t, level + 1, u)
            or { c = "xpcall", h = select(2, getlocal(co, level, 2)), u = u }
        end
      else
        return nil, sformat("it is suspended inside a C function (%s) that cannot " ..
          "be continued after a restore", lv.namewhat ~= "" and lv.namewhat or "?")
      end
    elseif rawequal(f, KXPCALL) then
      if not (level >= 2 and internal(t[level - 2])) then
        items[#items + 1] = kx_u and finisher_unwinding(co, t, level + 1, kx_u)
          or { c = "xpcall", h = lv.regs[2], u = kx_u }
        if kx_u and rawequal(t[level + 1].func, finish_upto) then
          closing = { caught = true }     -- a restored xpcall: the record goes on after it
        end
      end
      kx_u = nil
    elseif rawequal(f, EXECUTE) then
      local item = { fin = lv.regs[1] }
      if item.fin.dec[item.fin.cur].op == OP.CONCAT then
        item.r = local_named(co, level - 1, "r")
      end
      items[#items + 1] = item
    elseif rawequal(f, resume_restored) then
      items[#items + 1] = { rest = lv.regs[1], from = rest_from }
    elseif guard_close(f) then
      if closing then return nil, "it is suspended in a __close inside another one" end
      closing = guard_closing(co, t, level)
    elseif rawequal(f, FIN_GUARD.__close) then
      if not closing then
        return nil, "it is suspended while a restored frame closes its variables"
      end
      local fr = lv.regs[1].fr
      for j, r in ipairs(fr.tbc) do closing.list[j] = fr.R[r] end
    elseif internal(lv) then
      -- the finisher's own machinery between finisher frames
    elseif KERNEL_SRC and lv.src == KERNEL_SRC then
      return nil, sformat("it is suspended inside the kernel's %s", lv.src)
    else
      items[#items + 1] = { lua = level }
      local ok, pc = pcall(pinned_pc, t, level)
      if ok and pc then pcs[level] = pc else wanted[#wanted + 1] = level end
    end
  end
  return plan
end

function frames.packed(plan) return framepeek.pack(plan.table) end

local function copy_va(va)
  local out = { n = va and va.n or 0 }
  for i = 1, out.n do out[i] = va[i] end
  return out
end

-- Registers of a frame waiting on a metamethod that are dead: debug.getlocal
-- shows all maxstacksize of them, and those above the live ones may hold
-- whatever C code left there (table.concat's buffer placeholder, a light
-- userdata, which cannot be saved). The code generator allocates registers
-- as a stack (lcode.c, freereg): at an instruction, every live register is
-- an active local or a temporary below the instruction's own operands, and
-- a register above both is written before it is read. So registers from
-- max(operands + 1, active locals) up are saved as nil. Not for frames
-- without debug information (their active locals are unknown), nor for
-- OP_CONCAT/OP_CLOSE/OP_RETURN and calls (their visible slots are exact or
-- in use up to the top).
local REGFIELDS = {}   -- op -> its register operands: "a", "b", "c", "ck" (C unless k), "a1"
for names, fields in next, {
  ["ADD SUB MUL MOD POW DIV IDIV BAND BOR BXOR SHL SHR GETTABLE LT LE EQ"] = "a b c",
  ["ADDK SUBK MULK MODK POWK DIVK IDIVK BANDK BORK BXORK ADDI SHRI SHLI UNM BNOT LEN " ..
   "GETI GETFIELD MMBIN"] = "a b",
  ["MMBINI MMBINK GETTABUP LTI LEI GTI GEI"] = "a",
  ["SELF"] = V55 and "a a1 b" or "a a1 b ck",      -- 5.5: SELF's key is always K[C]
  ["SETTABUP"] = "ck", ["SETTABLE"] = "a b ck",
  ["SETI SETFIELD"] = "a ck",
} do
  for name in names:gmatch("%S+") do
    local set = {}
    for f in fields:gmatch("%S+") do set[f] = true end
    REGFIELDS[OP[name]] = set
  end
end

local function live_bound(p, an, pc)
  if #p.lineinfo == 0 then return nil end
  local hi = 0
  local dec = decode_proto(p)
  local function operands(ins)
    local a, b, c = ins.a, ins.b, ins.c
    local f = REGFIELDS[ins.op]
    if f == nil then hi = 1 << 30; return end   -- unknown: keep every register
    if f.a and a + 1 > hi then hi = a + 1 end
    if f.a1 and a + 2 > hi then hi = a + 2 end
    if f.b and b + 1 > hi then hi = b + 1 end
    if (f.c or (f.ck and ins.k == 0)) and c + 1 > hi then hi = c + 1 end
  end
  operands(dec[pc])
  if MMBINS[dec[pc].op] and pc > 1 then operands(dec[pc - 1]) end
  for j, v in ipairs(p.locvars or {}) do
    if v.startpc < pc and pc <= v.endpc and an.reg[j] + 1 > hi then hi = an.reg[j] + 1 end
  end
  return hi
end

local function native_frame(plan, level, pc, probes)
  local t = plan.table
  local lv = t[level]
  local f = lv.func
  local p = proto_of(f)
  local ins = decode_proto(p)[pc]
  if ins == nil then return nil, "bad saved pc" end
  local op, a, b = ins.op, ins.a, ins.b
  local nregs = lv.nslots - t[level - 1].shift
  local fr = { f, pc, nregs, va = lv.va }      -- FN, CUR, NREGS: the array part
  tmove(lv.regs, 1, nregs, R0, fr)
  local closing
  if op == OP.CONCAT then
    fr.cat = nregs - 3
  elseif op == OP.CLOSE or op == OP.RETURN then
    if op == OP.RETURN and b == 0 then
      -- returning R[A] .. top - 1: OP_RETURN kept the count in ci->u2.nres
      -- while it closes the variables (lvm.c; luaV_finishOp sets top from it)
      plan.states = plan.states or read_states(plan.co) or false
      local state = plan.states and plan.states[level]
      if state == nil or state.u2 < 0 or a + state.u2 > nregs then
        return nil, "it is suspended in a __close while returning a variable number " ..
          "of values, and their count cannot be read (" .. sformat("%s:%d", lv.src, lv.line) .. ")"
      end
      fr.top = a + state.u2
    end
    local callee = t[level - 1]
    closing = callee.regs and callee.regs[1]
  elseif not (op == OP.CALL or op == OP.TAILCALL or op == OP.TFORCALL or MMBINS[op]
      or TORA[op] or COMPARE[op] or SETS[op]) then
    return nil, sformat("it is suspended in an instruction (%s at %s) that cannot be continued",
      OPNAMES[op] or "?", sformat("%s:%d", lv.src, lv.line))
  end
  local an = analyse(p)
  local tbc, why
  if op == OP.CLOSE or op == OP.RETURN then
    -- a __close is running: the thread's tbclist says exactly which of the
    -- frame's variables are still pending (luaF_close popped that one)
    tbc = tbc_registers(plan, level)
  end
  if tbc == nil then
    tbc, why = pending_tbc(p, an, fr, pc - 1, op, a, closing)
    if why then return nil, sformat("%s (%s:%d)", why, lv.src, lv.line) end
  elseif #tbc == 0 then
    tbc = nil
  end
  fr.tbc = tbc
  if MMBINS[op] or TORA[op] or COMPARE[op] or SETS[op] then
    local hi = live_bound(p, an, pc)
    if hi then
      for r = hi, nregs - 1 do fr[R0 + r] = nil end
    end
  end
  freeze_next_loops(an, fr, pc - 1)
  for r in next, an.captured do
    if r < nregs then
      probes[#probes + 1] = { level = level, reg = r, frame = fr, value = fr[R0 + r] }
    end
  end
  return fr
end

local function finisher_frame(item)
  local x = item.fin
  local n = x.p.maxstacksize
  if x.top and x.top > n then n = x.top end   -- results of a call above maxstacksize
  local fr = { x.cl, x.cur, n, top = x.top }   -- FN, CUR, NREGS
  for r = 0, n - 1 do fr[R0 + r] = rawget(x.R, r) end
  if x.varargs.n > 0 then fr.va = copy_va(x.varargs) end
  if next(x.boxes) then
    fr.links = {}
    for r, box in next, x.boxes do fr.links[r] = { f = box.f, n = box.n } end
  end
  if #x.tbc > 0 then
    fr.tbc = {}
    for i, r in ipairs(x.tbc) do fr.tbc[i] = r end
  end
  freeze_next_loops(analyse(x.p), fr, x.cur - 1)
  if item.r then fr.cat = item.r - 1 end
  return fr
end

function frames.build(plan, probe)
  local pcs = plan.pcs
  local rec, n, probes = {}, 0, {}
  for _, item in ipairs(plan.items) do
    if item.lua then
      local pc = pcs[item.lua]
      if pc == nil then return nil, "no saved pc for a frame" end
      local fr, why = native_frame(plan, item.lua, pc, probes)
      if fr == nil then return nil, why end
      n = n + 1
      rec[n] = fr
    elseif item.fin then
      n = n + 1
      rec[n] = finisher_frame(item)
    elseif item.rest then
      local st = item.rest
      for k = item.from or st.running + 1, st.rec.n do
        n = n + 1
        rec[n] = st.rec[k]
      end
    else
      n = n + 1
      rec[n] = { c = item.c, h = item.h, u = item.u }
    end
  end
  rec.n = n
  -- only a record that will be written has its registers probed
  for _, x in ipairs(probes) do probe(plan.co, x.level, x.reg, x.frame, x.value) end
  return rec
end

---------------------------------------------------------------------------
-- Resume.
---------------------------------------------------------------------------
local restored = setmetatable({}, { __mode = "k" })   -- thread -> record, until resumed

function value_of(fr, r, R)
  local link = fr.links and fr.links[r]
  if link then return select(2, getupvalue(link.f, link.n)) end
  return R[r]
end

-- A restored thread is saved as its record until the user resumes it, and
-- as dead once closed.
function frames.pending(co)
  local rec = restored[co]
  if rec and costatus(co) == "dead" then
    restored[co] = nil
    return nil
  end
  return rec
end

function frames.adopt(co, rec)
  restored[co] = rec
end

-- Put the results of frame fr's pending instruction in place (luaV_finishOp);
-- returns the pc to continue from and the new top, or nil and the frame's
-- own results (a pending tail call).
local function deliver(fr, p, R, ...)
  local cur = fr[CUR]
  local dec = decode_proto(p)
  local op, a, c, k = dec[cur].op, dec[cur].a, dec[cur].c, dec[cur].k
  if op == OP.CALL then
    local n = select("#", ...)
    if c == 0 then
      for j = 1, n do R[a + j - 1] = (select(j, ...)) end
      return cur + 1, a + n
    end
    for j = 1, c - 1 do R[a + j - 1] = (select(j, ...)) end
    return cur + 1
  elseif op == OP.TAILCALL then
    return nil, pack(...)
  elseif op == OP.TFORCALL then
    for j = 1, c do R[a + TFORCALL_FN - 1 + j] = (select(j, ...)) end
    return cur + 1
  elseif MMBINS[op] then
    R[dec[cur - 1].a] = (...)
    return cur + 1
  elseif ARITH[op] then          -- a finisher frame: its OP_MMBIN* follows
    R[a] = (...)
    return cur + 2
  elseif TORA[op] then
    R[a] = (...)
    return cur + 1
  elseif COMPARE[op] then
    if (not not (...)) ~= (k == 1) then return cur + 2 end
    return cur + 1                 -- the OP_JMP
  elseif op == OP.CONCAT then     -- the finisher concatenates the rest (opts.cat)
    R[fr.cat + 1] = (...)
    return cur
  elseif op == OP.CLOSE or op == OP.RETURN then
    return cur, fr.top             -- again, to close the remaining variables
  elseif SETS[op] then
    return cur + 1
  end
  error(sformat("restored frame pending on %s", OPNAMES[op] or "?"), 0)
end

function registers(fr)
  local R = {}
  for r = 0, fr[NREGS] - 1 do R[r] = fr[R0 + r] end
  return R
end

-- Message handlers. Natively an xpcall's handler runs where the error is
-- raised, before any variable closes. A restored frame runs in finisher.run
-- inside the re-created xpcall of the nearest protected frame below it, so
-- finisher.run calls that handler itself where the error is raised (opts.msgh),
-- marks it done in `st.handled`, and re-raises the handler's result, which
-- the re-created xpcall's handler (handler_of) passes on unchanged.
local function msgh_for(st, k)
  local rec = st.rec
  for j = k + 1, rec.n do
    local c = rec[j].c
    if c == "pcall" or (c == "xpcall" and rec[j].u) then return nil end
    if c == "xpcall" then
      local h = rec[j].h
      return function(e)
        local v = h(e)
        st.handled = { value = v }
        return v
      end
    end
  end
  return nil
end

local function handler_of(st, h)
  return function(e)
    local done = st.handled
    if done then
      st.handled = nil
      return done.value
    end
    return h(e)
  end
end

local function run_frame(st, k, ...)
  local fr = st.rec[k]
  local f = fr[FN]
  local p = proto_of(f)
  local R = registers(fr)
  local pc, top = deliver(fr, p, R, ...)
  st.running = k
  st.handled = nil
  if pc == nil then return unpack(top, 1, top.n) end
  return finisher.run(f, p, pc, R, copy_va(fr.va), top,
    { links = fr.links, tbc = fr.tbc, cat = fr.cat, rec = st.rec, at = k,
      msgh = msgh_for(st, k) })
end

-- Each pending to-be-closed variable of a waiting frame is stood for by a
-- native to-be-closed variable (FRAME_GUARD {st = st, k = k, i = i}: frame
-- k's i-th), so Lua closes them when and where it would close the frame's
-- own: when a pcall catches an error passing through (with the error; an
-- error of a __close goes through the active message handler and on to the
-- next, as in luaF_close), or in coroutine.close (with the error that killed the
-- coroutine, or nil), inside the closed coroutine, where a yield is an
-- error. Once frame k runs, finisher.run's own guard has them.
-- (a capture while one of these __close yields reads its `e`)
FRAME_GUARD = { __close = function(g, e)
  local st, k, i = g.st, g.k, g.i
  if st.running >= k then return end
  local fr = st.rec[k]
  local r = fr.tbc[i]
  local v = value_of(fr, r, { [r] = fr[R0 + r] })
  local mt = getmetatable(v)
  local tm = mt and rawget(mt, "__close")
  tm(v, e)
end }

local yield = original("coroutine.yield", coroutine.yield)
local START = {}            -- what a restored coroutine yields when started

-- Frame 0: frames.start started the coroutine, which built the levels below
-- (pcall/xpcall calls and guards) and waits here for the user's first resume.
local function first_resume()
  local r = pack(yield(START))
  restored[corunning()] = nil
  return unpack(r, 1, r.n)
end

-- A pcall/xpcall frame saved while it closed, after an error, the variables
-- of the frames the error unwound (finishpcallk), one __close having
-- yielded: the variables still to close are made Lua's own to-be-closed
-- variables again (closing_error), then that __close (frames 1 .. k-1) runs
-- to its end (an error it raises replaces the one being passed on), and the
-- error is raised through them, so Lua closes them with it (in a real
-- pcall, which gives the call's results, false and the error). An xpcall's
-- handler has run already. They are pending while the __close runs, as
-- natively (they are in the tbclist), so a coroutine.close meanwhile closes
-- them (luaE_resetthread: with nil, the yield's status being LUA_OK).
-- A value that lost its __close meanwhile gets one just long enough to
-- become a to-be-closed variable (lfunc.c checkclosemth would refuse it), so
-- closing it fails as natively (calling a nil __close).
local setmetatable_raw = original("debug.setmetatable", debug.setmetatable)
local CLOSABLE = { __close = function() end }
local recovered_error
local function closing_error(u, e, i, st, k)
  if i > u.n then
    if st then e = recovered_error(st, k) end
    error(e, 0)
  end
  local v = u[i]
  local mt = getmetatable(v)
  local bare = mt == nil or rawget(mt, "__close") == nil
  if bare then setmetatable_raw(v, CLOSABLE) end
  local c <close> = v
  if bare then setmetatable_raw(v, mt) end
  closing_error(u, e, i + 1, st, k)
end

-- The body of a coroutine restored dead by an error (frames.failed's record):
-- it dies with the error over the same pending variables.
function frames.die(rec) closing_error(rec, rec.e, 1) end

-- The error recovering frame k passes on once its __close (frames 1 .. k-1)
-- has ended. A "raise" frame: a restored frame that was unwinding (its own
-- pcall in finisher.run had caught the error and was closing its callees'
-- variables): the error goes on from the frame, through Lua's own closing
-- of the variables left (an active message handler has seen it).
function recovered_error(st, k)
  local fr = st.rec[k]
  local ok, e = PCALL(finish_upto, st, k - 1)
  st.running = k
  if ok then e = fr.u.e end
  if fr.c == "raise" and msgh_for(st, k) then st.handled = { value = e } end
  return e
end

local function recover(st, k)
  local fr = st.rec[k]
  if fr.c ~= "raise" then return PCALL(closing_error, fr.u, nil, 1, st, k) end
  closing_error(fr.u, nil, 1, st, k)
end

-- The results of frames 1 .. k, given the resume values for frame 1.
-- (a capture reads `st` and `k` of its levels)
function finish_upto(st, k)
  if k == 0 then return first_resume() end
  local fr = st.rec[k]
  if fr.u then
    return recover(st, k)
  elseif fr.c == "pcall" then
    return PCALL(finish_upto, st, k - 1)
  elseif fr.c == "xpcall" then
    -- not a tail call (KXPCALL is a Lua function): a capture finds this
    -- level, and its k, below the xpcall
    local r = pack(KXPCALL(finish_upto, handler_of(st, fr.h), st, k - 1))
    return unpack(r, 1, r.n)
  elseif fr.tbc then
    return guarded(st, k, 1)
  end
  -- frames b .. k need no level of their own below them (no pcall, xpcall
  -- or guard): they run one after another from this level, so a start
  -- makes one level for them, not one each
  local rec, b = st.rec, k
  while b > 1 do
    local below = rec[b - 1]
    if below.c or below.tbc then break end
    b = b - 1
  end
  return run_plain(st, b, k, finish_upto(st, b - 1))
end

-- Frames b .. k, in turn, given the resume values for frame b.
function run_plain(st, b, k, ...)
  if b == k then return run_frame(st, k, ...) end
  local r = pack(run_frame(st, b, ...))
  for m = b + 1, k - 1 do r = pack(run_frame(st, m, unpack(r, 1, r.n))) end
  return run_frame(st, k, unpack(r, 1, r.n))
end

-- Frame k's guards, one per pending variable, first created first; then
-- the frame waits for the frames above it.
function guarded(st, k, i)
  if i > #st.rec[k].tbc then return run_frame(st, k, finish_upto(st, k - 1)) end
  local guard <close> = setmetatable({ st = st, k = k, i = i }, FRAME_GUARD)
  return guarded(st, k, i + 1)
end

-- Not a tail call: this level stays on the stack, and a capture finds `st`
-- in it.
function resume_restored(st)
  local r = pack(finish_upto(st, st.rec.n))
  return unpack(r, 1, r.n)
end

function frames.revive(rec)
  local st = { rec = rec, running = 0 }
  return function() return resume_restored(st) end
end

-- Start adopted threads (once a restore has set every record's contents
-- and metatables): each runs to its first_resume, so that its frames'
-- guards, pcalls and xpcalls are native levels before any user code can
-- resume or close it. Returns a list of failures {index in list, reason}.
local coresume = original("coroutine.resume", coroutine.resume)
local tostring = original("tostring", tostring)
function frames.start(list)
  local failed = {}
  for i, co in ipairs(list) do
    local ok, v = coresume(co)
    if not (ok and rawequal(v, START)) then failed[#failed + 1] = { i, tostring(v) } end
  end
  return failed
end

---------------------------------------------------------------------------
-- Coroutines dead by an error.
---------------------------------------------------------------------------
-- Such a coroutine keeps its error and its pending to-be-closed variables
-- (lua_resume leaves the stack as it is; luaB_close -> lua_closethread ->
-- luaE_resetthread closes them with the error and returns false, error).
-- frames.failed(co) -> {e = error, n = k, [1..k] = the values to close, first
-- created first} for such a coroutine, nil for one that ended normally (or
-- was closed from outside: luaE_resetthread leaves only the base level, in
-- a state that is not an error; base_failure below for one that closed
-- itself). The error is
-- the last slot of level 0 (luaD_seterrorobj pushed it); the variables come
-- from the thread's tbclist (framepeek.py's tbc_slots, checked here with
-- the debug library); the guards of restored frames stand for the
-- variables they close. Without the memory reader, only the error is kept.

function closers_of(v, out)
  local mt = getmetatable(v)
  if rawequal(mt, FRAME_GUARD) then
    local st, k, i = v.st, v.k, v.i
    if st.running < k then
      local fr = st.rec[k]
      local r = fr.tbc[i]
      out[#out + 1] = value_of(fr, r, { [r] = fr[R0 + r] })
    end
  elseif rawequal(mt, FIN_GUARD) then
    local fr = v.fr
    for _, r in ipairs(fr.tbc) do out[#out + 1] = fr.R[r] end
  elseif rawequal(mt, PROXY) then
    out[#out + 1] = v.c.fr.R[v.reg]
  else
    out[#out + 1] = v
  end
end

-- Lua 5.5 lets a coroutine close itself (coroutine.close while it runs):
-- luaE_resetthread unwinds it to its base level, and if a __close fails
-- there, lua_resume marks it dead by that error and leaves the error on
-- its stack (lstate.c, ldo.c), where no level shows it: a later close
-- returns false and the error. copy_error moves a copy of it to a helper
-- suspended in coroutine.yield, whose level 0 shows it as a C temporary.
-- Asking costs a call into C for every dead coroutine a capture meets, so
-- the answer "not by an error" is kept: a dead coroutine never runs again.
local cocreate = original("coroutine.create", coroutine.create)
local ended_clean = setmetatable({}, { __mode = "k" })
local function base_failure(co)
  if copy_error == nil or ended_clean[co] then return nil end
  if not errored(address(co)) then
    ended_clean[co] = true
    return nil
  end
  local helper = cocreate(function() yield() end)
  coresume(helper)
  if not copy_error(address(co), address(helper)) then return nil end
  return { e = last_slot(helper, 0), n = 0 }
end

function frames.failed(co)
  if costatus(co) ~= "dead" then return nil end
  if getinfo(co, 0, "f") == nil then return base_failure(co) end
  local rec = { e = last_slot(co, 0) }
  local list = {}
  for _, v in ipairs(tbc_values(co, nil) or {}) do closers_of(v, list) end
  for j, v in ipairs(list) do rec[j] = v end
  rec.n = #list
  return rec
end

return frames
