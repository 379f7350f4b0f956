-- The finisher: a Lua 5.4 and 5.5 bytecode interpreter written in Lua.
--
-- It continues a Lua frame from any instruction, given the frame's closure,
-- its prototype (bytecode.read(string.dump(closure))), a pc, the registers and the
-- varargs. Values, operators and calls stay native: `a + b`, `t[k]`, `a < b`,
-- `f(...)` are Lua's own, so metamethods, coercions, integer/float rules and
-- most errors are exactly native. Every call it makes is a native call (the
-- callee runs at full speed and may yield), unless the optional `interpret`
-- hook asks for the callee to be interpreted too (conformance mode).
--
-- Receives `bytecode` (bytecode.lua's module); returns `finisher`:
--   finisher.run(closure, proto, pc, regs, varargs [, top [, opts]]) -> results...
--       pc      1-based index into proto.code of the next instruction
--       regs    registers, 0-BASED: regs[0] is R[0] (as in lvm.c); the table
--               is used in place (it becomes the frame's register file)
--       varargs {n = count, ...} the frame's extra arguments (what
--               OP_VARARGPREP moved aside); OP_VARARGPREP itself is a no-op
--       top     one past the last register valid for a following B=0/C=0
--               user (OP_CALL/OP_RETURN/OP_SETLIST after a multi-result call);
--               default proto.maxstacksize
--       opts    { links = {[reg] = {f = closure, n = upvalue index}},
--                 tbc = {reg, ...},       -- active to-be-closed registers
--                 msgh = the message handler of the xpcall the frame
--                        runs in (called where the error is raised, before
--                        any variable closes, as natively),
--                 interpret = function(callee, fr) -> true | function | nil,
--                 caller = the finisher frame that calls this one (or
--                 a C level {c = true, caller = frame, msgh = its handler}),
--                 rec, at = a restored coroutine's record and the index
--                 of this frame in it (its callers follow it),
--                 cat = last register still to concatenate: pc is an
--                 OP_CONCAT whose __concat metamethod returned, its result
--                 in R[cat + 1] (luaV_finishOp) }
--               `links` says a register is an open upvalue shared with
--               `f`'s upvalue `n` (see "Open upvalues" below). `interpret`
--               sees each function the frame calls (a callable object's
--               `__call` chain resolved, as luaD_tryfuncTM; its __close
--               metamethods too): true runs it in a finisher frame of its
--               own (a tail call reuses the calling frame, so tail recursion
--               does not grow the C stack), a function is called in its
--               place, falsy calls it natively.
--   finisher.call(f, ...) -> results...   run a whole Lua function from its first
--       instruction
--   finisher.call_hooked(interpret, f, ...) -> results...   the same with a hook
--   finisher.conformance(f, ...) -> results...   conformance mode (below)
--   finisher.proto_of(f) -> proto;  finisher.is_lua(f) -> boolean
--   finisher.decode_proto(proto) -> {[pc] = bytecode.fields(proto.code[pc])}
--   finisher.localname(proto, reg, pc) -> name | nil   (luaF_getlocalname)
--
-- Conformance mode runs f with every Lua function it reaches interpreted:
-- Lua functions it calls (directly, by `__call`, or as __close), the
-- functions pcall/xpcall call (f and the message handler, inside the real
-- pcall/xpcall, so error catching stays native), coroutine bodies
-- (coroutine.create/wrap), table.sort comparators, string.gsub
-- replacement functions and load readers; `error(msg, level)` counts levels
-- over finisher frames. What stays native: metamethods other than __call
-- and __close (the native operator calls them), __gc, __tostring, __pairs,
-- hooks, `require` loaders, and anything a native function calls.
-- Tests: tests/test_conformance.py runs the official test suite this way.
--
-- Open upvalues. Registers are slots of a plain table, but a closure made by
-- OP_CLOSURE that captures register r must share the variable with the frame.
-- So the first capture of r turns the register into a *box*: a cell that is
-- the upvalue of a tiny closure (`newbox`); the child's upvalue is joined to
-- it with debug.upvaluejoin, and so is every later capture of r. While boxed,
-- the raw slot R[r] is nil and R's metatable routes reads and writes of r to
-- the box; R has that metatable only while some register is boxed. OP_CLOSE
-- / OP_RETURN close the box: its value goes back into the raw slot and the
-- box is dropped (the closures keep the cell, as after luaF_closeupval).
--
-- Speed. Each prototype is compiled once into one closure per instruction
-- (see "opcodes"): operands, constants and successors are upvalues, and an
-- instruction continues with the next by a tail call, so there is no decoding
-- and no dispatch table at run time.
--
-- Errors. The whole dispatch runs under one pcall. A native error raised by
-- an operator in this file carries this file's position ("finisher.lua:NN:")
-- and a variable name from this file; both are rewritten: the position
-- becomes the interpreted frame's `short_src:line:`, and the variable info
-- is recomputed from the bytecode as ldebug.c does (" (global 'x')",
-- " (field 'y')", " (method 'm')", ...). A C function's argument error
-- names it after the interpreted call ("bad argument #1 to 'rep'", "calling
-- 'rep' on bad self"), not after this file's `fn(...)`. Errors from callees
-- and metamethods pass through untouched; `error(msg, 2)` in a native callee
-- points at the interpreted line, as natively. Stack levels (`error(msg,
-- level)`, luaL_where) are counted over interpreted frames (see "levels").
-- On error, pending
-- to-be-closed variables are closed with the error object, in reverse
-- order, by finisher.run's own <close> variable: when a pcall catches the error,
-- or at coroutine.close for an error that killed the coroutine, as
-- natively (coroutine.close also closes those of a suspended coroutine).
--
-- Tables. OP_NEWTABLE and OP_SETLIST run natively (tiny functions made of
-- the instruction), so array sizes, `#` of constructors with holes and
-- `next` order are native.
--
-- Message handlers: an xpcall's handler runs where the error is raised,
-- before to-be-closed variables close, and once (see "Message handlers"
-- below): finisher.run given opts.msgh (restored frames; conformance mode's
-- frames under an interpreted xpcall) calls it there, and the frame's
-- variables close natively when the error is caught, under the handler.
--
-- Known differences: a native function's luaL_where at a level that lands
-- on this file's machinery other than an op or execute (see "levels"); the
-- debug library (stack levels, getinfo, hooks, tracebacks) sees the
-- finisher's own functions.

local bytecode = ...

-- Everything global is taken once, here: interpreted code may replace or
-- remove globals.
local debug_getupvalue, debug_setupvalue = debug.getupvalue, debug.setupvalue
local debug_upvaluejoin, debug_getinfo = debug.upvaluejoin, debug.getinfo
local debug_getmetatable, debug_getregistry = debug.getmetatable, debug.getregistry
local debug_getlocal = debug.getlocal
local select, type, error, pcall, xpcall, load = select, type, error, pcall, xpcall, load
local rawset, rawget, rawequal, setmetatable = rawset, rawget, rawequal, setmetatable
local next, ipairs, assert = next, ipairs, assert
local tonumber = tonumber
local math_type, math_tointeger, math_floor, math_ceil, math_ult =
  math.type, math.tointeger, math.floor, math.ceil, math.ult
local maxinteger, mininteger = math.maxinteger, math.mininteger
local table_unpack, table_pack, table_sort = table.unpack, table.pack, table.sort
local string_dump, string_format, string_find, string_gsub, string_match, string_sub =
  string.dump, string.format, string.find, string.gsub, string.match, string.sub
local coroutine_create, coroutine_wrap = coroutine.create, coroutine.wrap
local fields, OP, line_of = bytecode.fields, bytecode.OP, bytecode.line_of

local finisher = {}

local MY_SRC = debug_getinfo(1, "S").short_src

-- A Lua frame of a restored coroutine's record (opts.rec; frames.lua) is a
-- table whose array part holds its closure, its pending pc (1-based), its
-- number of registers and then the registers, in these slots.
local RECORD_FN, RECORD_CUR = 1, 2
-- Lua 5.5's instruction set where it differs (see "Lua 5.5's instructions")
local V55 = bytecode.VERSION == 0x55
local TFORCALL_FN = V55 and 3 or 4     -- OP_TFORCALL calls R[A + this]
finisher.RECORD_FN, finisher.RECORD_CUR = RECORD_FN, RECORD_CUR
finisher.RECORD_NREGS, finisher.RECORD_R0 = 3, 4
local OFFSET_sC = 127                 -- MAXARG_C >> 1

-- ------------------------------------------------------------ caches ---

-- Decoded instructions per prototype: dec[pc] = bytecode.fields of
-- proto.code[pc] (ins.op, ins.a, ins.bx, ...). Read where a prototype is
-- compiled or an error named, never by the compiled instructions.
local decodings = setmetatable({}, {__mode = "k"})
local function decode_proto(proto)
  local dec = decodings[proto]
  if dec then return dec end
  dec = {}
  for pc, i in ipairs(proto.code) do dec[pc] = fields(i) end
  decodings[proto] = dec
  return dec
end
finisher.decode_proto = decode_proto

-- Compiled prototypes: ops[pc] is the instruction at pc as a closure (see
-- "opcodes"). The compilers compile[op] run from the last instruction back, so
-- that an op can hold a later successor as an upvalue; `succ(t)` gives the
-- closure that continues at t (for an earlier t, one that looks it up).
local compile = {}
local compiled = setmetatable({}, {__mode = "k"})
local function ops_of(proto)
  local ops = compiled[proto]
  if ops then return ops end
  local dec = decode_proto(proto)
  ops = {}
  for pc = 1, #dec do ops[pc] = false end  -- (an array part)
  local back = {}
  local function succ(t)
    local op = ops[t]
    if op then return op end
    op = back[t]
    if not op then
      op = function(fr, R) return ops[t](fr, R) end
      back[t] = op
    end
    return op
  end
  for pc = #dec, 1, -1 do
    local ins = dec[pc]
    ops[pc] = compile[ins.op](proto, pc, ins.a, ins.b, ins.c, ins.k, ins, succ, ops)
  end
  compiled[proto] = ops
  return ops
end

-- Loadable chunk per child prototype (bytecode.write once).
local chunks = setmetatable({}, {__mode = "k"})

-- Prototypes per closure function (string.dump is per prototype, but a
-- closure is the key we have), and each prototype's short_src.
local protos = setmetatable({}, {__mode = "k"})
local short_srcs = setmetatable({}, {__mode = "k"})
-- A chunk's equal string constants are one string (the parser anchors
-- them in one table, llex.c's luaX_newstring): long strings, which Lua
-- does not intern, too, which string.format("%p") shows. So are they in a
-- prototype read here, across its children.
local function share_strings(p, seen)
  local k = p.k
  for j = 1, k.n or #k do
    local v = k[j]
    if type(v) == "string" then
      local same = seen[v]
      if same == nil then seen[v] = v else k[j] = same end
    end
  end
  for _, child in ipairs(p.p) do share_strings(child, seen) end
end

local function proto_of(f)
  local p = protos[f]
  if not p then
    p = bytecode.read(string_dump(f))
    share_strings(p, {})
    protos[f] = p
  end
  return p
end
finisher.proto_of = proto_of

local lua_functions = setmetatable({}, {__mode = "k"})
local function is_lua(f)
  if type(f) ~= "function" then return false end
  local yes = lua_functions[f]
  if yes == nil then
    yes = debug_getinfo(f, "S").what ~= "C"
    lua_functions[f] = yes
  end
  return yes
end

local function short_src_of(f, proto)
  local s = short_srcs[proto]
  if not s then
    s = debug_getinfo(f, "S").short_src
    short_srcs[proto] = s
  end
  return s
end

-- ------------------------------------------------------------ helpers ---

-- luaF_getlocalname: the name of the reg-th (0-based) active local at pc
-- (1-based instruction index).
function finisher.localname(proto, reg, pc)
  local n, z = reg + 1, pc - 1
  for _, lv in ipairs(proto.locvars or {}) do
    if lv.startpc > z then break end
    if z < lv.endpc then
      n = n - 1
      if n == 0 then return lv.name end
    end
  end
  return nil
end

-- luaT_objtypename
local function objtypename(v)
  local mt = debug_getmetatable(v)
  if mt and (type(v) == "table" or type(v) == "userdata") then
    local name = rawget(mt, "__name")
    if type(name) == "string" then return name end
  end
  return type(v)
end

-- A fresh cell for an open upvalue: the upvalue 1 of `get`.
local function newbox(v)
  local get = function() return v end
  return {f = get, n = 1}
end

local function boxget(box)
  local _, v = debug_getupvalue(box.f, box.n)
  return v
end

-- Registers: a plain 0-based table whose boxed slots are raw nils that a
-- metatable routes to their box. The metatable is there only while some
-- register is boxed: otherwise its __index/__newindex would run for every
-- read of a nil register and every write to one.
local function route(R, boxes)
  setmetatable(R, {
    __index = function(_, r)
      local box = boxes[r]
      if box then return boxget(box) end
      return nil
    end,
    __newindex = function(t, r, v)
      local box = boxes[r]
      if box then debug_setupvalue(box.f, box.n, v) else rawset(t, r, v) end
    end,
  })
end

local function make_registers(regs, links)
  local boxes = {}
  for r, link in next, links or {} do
    boxes[r] = link
    rawset(regs, r, nil)
  end
  if next(boxes) ~= nil then route(regs, boxes) end
  return regs, boxes
end

-- ------------------------------------------------------------ frames ---

-- A frame: {cl, p, R, boxes, varargs, pc, cur, top, tbc = {reg...}, dec,
-- ops, interpret, short_src, done, ret, caller}; `pc` is where execute()
-- starts, `cur` the instruction being executed; `caller` is the finisher
-- frame whose call started this one (nil: started by native code).

local function box_of(fr, r)
  local boxes = fr.boxes
  local box = boxes[r]
  if not box then
    local R = fr.R
    if next(boxes) == nil then route(R, boxes) end
    box = newbox(rawget(R, r))
    rawset(R, r, nil)
    boxes[r] = box
  end
  return box
end

-- luaF_closeupval: unbox every register >= level.
local function closeupvals(fr, level)
  local R, boxes = fr.R, fr.boxes
  if next(boxes) == nil then return end
  for r, box in next, boxes do
    if r >= level then
      local v = boxget(box)
      boxes[r] = nil
      rawset(R, r, v)
    end
  end
  if next(boxes) == nil then setmetatable(R, nil) end
end

local function tbc_error(fr, reg, pc)
  local name = finisher.localname(fr.p, reg, pc) or "?"
  error(string_format("variable '%s' got a non-closable value", name))
end

-- luaF_newtbcupval
local function newtbc(fr, reg)
  local v = fr.R[reg]
  if v == nil or v == false then return end
  local mt = debug_getmetatable(v)
  if mt == nil or rawget(mt, "__close") == nil then
    tbc_error(fr, reg, fr.cur)
  end
  local t = fr.tbc
  t[#t + 1] = reg
end

local start               -- start(f, interpret, caller, args): run f in a new frame
-- SPECIAL[fn](fr) -> what to call in place of fn when finisher frame fr
-- calls it: `error`, and pcall/xpcall of `error`, position messages by
-- stack levels (see "Levels")
local SPECIAL = {}

-- A __close metamethod is called from fr; with a hook, as fr's calls are.
-- Lua 5.5 passes the error only when there is one (lfunc.c callclosemethod:
-- `err` false means no second argument); 5.4 always passes it.
local function callclose(fr, tm, v, err, noerr)
  local interpret = fr.interpret
  if noerr and V55 then
    if interpret and type(tm) == "function" then
      local how = interpret(tm, fr)
      if how == true then return start(tm, interpret, fr, table_pack(v)) end
      if how then tm = how end
    end
    return tm(v)
  end
  if interpret and type(tm) == "function" then
    local how = interpret(tm, fr)
    if how == true then return start(tm, interpret, fr, table_pack(v, err)) end
    if how then tm = how end
  end
  tm(v, err)
end
local function closetbc(fr, level)
  local t = fr.tbc
  while #t > 0 and t[#t] >= level do
    local reg = t[#t]
    t[#t] = nil
    local v = fr.R[reg]
    local mt = debug_getmetatable(v)
    callclose(fr, mt and rawget(mt, "__close"), v, nil, true)
  end
end

local function close(fr, level)
  closeupvals(fr, level)
  closetbc(fr, level)
end

-- finisher.run's own to-be-closed variable: coroutine.close of a suspended
-- coroutine, or of one an error killed, and an error caught below the frame
-- close the frame's pending variables (with the error), as natively. Each
-- gets a native to-be-closed stand-in (PROXY, in close_chain), so a failing
-- __close raises within Lua's own closing: the active message handler sees
-- its error and the next variable gets that, as in luaF_close.
-- (conformance mode: an error a message handler has handled, HANDLED {v =
-- what it returned}; see "Message handlers")
local HANDLED = {}
local function unboxed(e)
  if debug_getmetatable(e) == HANDLED then return e.v end
  return e
end

local PROXY = {__close = function(p, err)
  local c = p.c                  -- shared by one chain: {fr, e, busy, raised}
  if c.busy then c.raised = true end   -- the previous __close raised
  local noerr = false
  if not c.raised then err, noerr = c.e, c.noerr end   -- closed by close_chain's return (nil)
  c.busy = true
  local fr = c.fr
  local t = fr.tbc
  t[#t] = nil                    -- p.reg, the last pending one
  local v = fr.R[p.reg]
  local mt = debug_getmetatable(v)
  callclose(fr, mt and rawget(mt, "__close"), v, unboxed(err), noerr)
  c.busy = false
end}

local function close_chain(c, i)
  local t = c.fr.tbc
  if i > #t then return end
  local p <close> = setmetatable({c = c, reg = t[i]}, PROXY)
  close_chain(c, i + 1)
end

local GUARD = {__close = function(g, ...)
  local fr, e = g.fr, ...
  closeupvals(fr, 0)
  if #fr.tbc == 0 then return end
  close_chain({fr = fr, e = e, noerr = select("#", ...) == 0}, 1)   -- 5.5: no error
end}

-- ------------------------------------------------------ table sizes ---

-- OP_NEWTABLE presizes the table and OP_SETLIST grows its array part at
-- once (luaH_resize, luaH_resizearray); that decides `#` of a constructor
-- with holes and the order of `next`, and Lua code cannot ask for it. So
-- each runs natively, in a tiny function made of the instruction itself
-- (its registers moved to 0), one per distinct instruction.
local natives = {}
local A_MASK = ~(0xFF << 7)
local B_MASK = V55 and ~(0x3F << 16) or ~(0xFF << 16)   -- 5.5: vB

local function native_op(key, code, numparams)
  local fn = natives[key]
  if not fn then
    local chunk = bytecode.write({linedefined = 0, lastlinedefined = 0, numparams = numparams,
      is_vararg = numparams > 0, maxstacksize = 2, code = code, k = {n = 0},
      upvalues = {}, p = {}}, true)
    fn = assert(load(chunk, "=?", "b"))
    natives[key] = fn
  end
  return fn
end

-- NEWTABLE 0 B C k; EXTRAARG; RETURN1 0 (p.code[pc] is the NEWTABLE)
local function newtable_op(p, pc)
  local w, x = p.code[pc] & A_MASK, p.code[pc + 1]
  return native_op((w << 32) | x, {w, x, OP.RETURN1}, 0)
end

-- function(t, ...): VARARGPREP 1; VARARG 1 0 (all); SETLIST 0 0 C k;
-- [EXTRAARG]; RETURN 0 1 2 (a vararg function's return)
local function setlist_op(p, pc, k)
  local w = p.code[pc] & A_MASK & B_MASK
  local x = (k == 1) and p.code[pc + 1] or 0
  local code = {OP.VARARGPREP | (1 << 7), OP.VARARG | (1 << 7), w}
  if k == 1 then code[#code + 1] = x end
  code[#code + 1] = OP.RETURN | (1 << 16) | (2 << 24)
  return native_op((w << 32) | x, code, 1)
end

-- ------------------------------------------------------------- calls ---

-- A new frame's registers and varargs from packed call arguments.
local function arguments(proto, args)
  local np = proto.numparams
  local regs = {}
  for j = 1, np do regs[j - 1] = args[j] end
  local varargs = {n = 0}
  if proto.is_vararg then
    local n = args.n - np
    if n < 0 then n = 0 end
    varargs.n = n
    for j = 1, n do varargs[j] = args[np + j] end
  end
  return regs, varargs
end

-- A tail call to an interpreted function: fr becomes its frame.
local function enter(fr, f, args)
  local proto = proto_of(f)
  local regs, varargs = arguments(proto, args)
  fr.cl, fr.p, fr.dec, fr.ops = f, proto, decode_proto(proto), ops_of(proto)
  fr.R, fr.boxes = make_registers(regs)
  fr.varargs, fr.pc, fr.cur, fr.top, fr.tbc = varargs, 1, 1, proto.maxstacksize, {}
  fr.short_src = short_src_of(f, proto)
end

-- What a call reaches: each `__call` of a chain is called with the object
-- inserted first (luaD_tryfuncTM). A non-callable value stays, for the
-- native call to raise the error.
-- Lua 5.5 counts the chain: the 16th `__call` is an error (ldo.c
-- tryfuncTM, MAX_CCMT).
local function callable(fn, args)
  local n = 0
  while type(fn) ~= "function" do
    local mt = debug_getmetatable(fn)
    local tm = mt and rawget(mt, "__call")
    if tm == nil then break end
    n = n + 1
    if V55 and n > 15 then error("'__call' chain too long") end
    for j = args.n, 1, -1 do args[j + 1] = args[j] end
    args[1], args.n = fn, args.n + 1
    fn = tm
  end
  return fn, args
end

-- Call fn with R[a+1 .. last], results packed. With an interpret hook, a
-- function the hook accepts runs in a finisher frame (a tail call: in fr
-- itself, and nothing is returned); a function the hook returns is called
-- in its place.
local function call(fr, fn, a, last, tail)
  local interpret = fr.interpret
  if interpret then
    local args
    fn, args = callable(fn, table_pack(table_unpack(fr.R, a + 1, last)))
    if type(fn) == "function" then
      local how = interpret(fn, fr)
      if how == true then
        if tail then return enter(fr, fn, args) end
        return table_pack(start(fn, interpret, fr, args))
      elseif how then
        fn = how
      end
    end
    return table_pack(fn(table_unpack(args, 1, args.n)))
  end
  local special = SPECIAL[fn]
  if special then fn = special(fr) end
  return table_pack(fn(table_unpack(fr.R, a + 1, last)))
end

-- Store results r (packed) from R[a]: `wanted` of them, or all (wanted < 0,
-- which sets top).
local function setresults(fr, a, r, wanted)
  local R = fr.R
  if wanted < 0 then
    wanted = r.n
    fr.top = a + wanted
  end
  for j = 1, wanted do R[a + j - 1] = r[j] end
end

-- Unsigned division a / b (lua_Unsigned), b ~= 0.
local function udiv(a, b)
  if b < 0 then                            -- b >= 2^63
    return math_ult(a, b) and 0 or 1
  end
  if a >= 0 then return a // b end
  local q = ((a >> 1) // b) << 1
  local r = a - q * b
  if not math_ult(r, b) then q = q + 1 end
  return q
end

-- luaV_tonumber_ (strings convert, as cvt2num)
local function tonum(v)
  if type(v) == "number" then return v end
  if type(v) == "string" then return tonumber(v) end
  return nil
end

-- luaV_tointeger with floor (step > 0) or ceil (step < 0) rounding.
local function forint(v, ceil)
  v = tonum(v)
  if v == nil then return nil end
  if math_type(v) == "integer" then return v end
  return math_tointeger(ceil and math_ceil(v) or math_floor(v))
end

local function forerror(v, what)
  error(string_format("bad 'for' %s (number expected, got %s)", what, objtypename(v)))
end

-- forlimit: the integer limit, or nil to skip the loop.
local function forlimit(init, lim, step)
  local p = forint(lim, step < 0)
  if p == nil then
    local flim = tonum(lim)
    if flim == nil then forerror(lim, "limit") end
    if 0 < flim then
      if step < 0 then return nil end
      p = maxinteger
    else
      if step > 0 then return nil end
      p = mininteger
    end
  end
  if step > 0 then
    if init > p then return nil end
  else
    if init < p then return nil end
  end
  return p
end

-- forprep: true to skip the loop.
local function forprep(R, a)
  local init, plimit, pstep = R[a], R[a + 1], R[a + 2]
  if math_type(init) == "integer" and math_type(pstep) == "integer" then
    local step = pstep
    if step == 0 then error("'for' step is zero") end
    R[a + 3] = init
    local limit = forlimit(init, plimit, step)
    if limit == nil then return true end
    local count
    if step > 0 then
      count = limit - init
      if step ~= 1 then count = udiv(count, step) end
    else
      count = init - limit
      count = udiv(count, -(step + 1) + 1)
    end
    R[a + 1] = count
  else
    local limit, step, finit = tonum(plimit), tonum(pstep), tonum(init)
    if limit == nil then forerror(plimit, "limit") end
    if step == nil then forerror(pstep, "step") end
    if finit == nil then forerror(init, "initial value") end
    -- tonumber gives floats (an integer converts; a float is copied as is:
    -- `+ 0.0` would turn -0.0 into 0.0), compared as floats
    if math_type(limit) == "integer" then limit = limit + 0.0 end
    if math_type(step) == "integer" then step = step + 0.0 end
    if math_type(finit) == "integer" then finit = finit + 0.0 end
    if step == 0 then error("'for' step is zero") end
    if (0 < step) and (limit < finit) or (not (0 < step)) and (finit < limit) then
      return true
    end
    R[a + 1], R[a + 2] = limit, step
    R[a], R[a + 3] = finit, finit
  end
  return false
end

local function floatforloop(R, a)
  local step, limit = R[a + 2], R[a + 1]
  local idx = R[a] + step
  if (0 < step) and (idx <= limit) or (not (0 < step)) and (limit <= idx) then
    R[a], R[a + 3] = idx, idx
    return true
  end
  return false
end

local function closure(fr, bx)
  local child = fr.p.p[bx + 1]
  local chunk = chunks[child]
  if not chunk then
    chunk = bytecode.write(child)
    chunks[child] = chunk
  end
  local f = assert(load(chunk, "=?", "b"))
  for j, uv in ipairs(child.upvalues) do
    if uv.instack then
      local box = box_of(fr, uv.idx)
      debug_upvaluejoin(f, j, box.f, box.n)
    else
      debug_upvaluejoin(f, j, fr.cl, uv.idx + 1)
    end
  end
  protos[f] = child                      -- what proto_of(f) would read
  return f
end

-- ------------------------------------------------------------ opcodes ---

-- Each instruction runs as a closure made for it, its operands, constants
-- and successors held as upvalues: op(fr, R) (R = fr.R) does the
-- instruction and continues with the next one by a tail call, so that a
-- frame runs in a single call from execute() until it returns or a tail
-- call replaces it. An op that may raise an error or call anything (a
-- callee or a metamethod, which may yield) first sets fr.cur to its own
-- index, for error naming and frames.lua; the others (moves, loads, jumps,
-- tests, loop steps) skip that store.
-- compile[opcode](p, pc, a, b, c, k, ins, succ, ops) -> op, for the instruction
-- at p.code[pc] (ins: it decoded, for its other fields, ins.bx, ins.sbx,
-- ins.sj; succ and ops as in ops_of). Operands are read here, when the
-- prototype is compiled, into the upvalues of the op.

local function setter(a, v, nx) return function(fr, R) R[a] = v; return nx(fr, R) end end

compile[OP.MOVE] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R) R[a] = R[b]; return nx(fr, R) end
end
compile[OP.LOADI] = function(_, pc, a, b, c, k, ins, succ)
  return setter(a, ins.sbx, succ(pc + 1))
end
compile[OP.LOADF] = function(_, pc, a, b, c, k, ins, succ)
  return setter(a, ins.sbx + 0.0, succ(pc + 1))
end
compile[OP.LOADK] = function(p, pc, a, b, c, k, ins, succ)
  return setter(a, p.k[ins.bx + 1], succ(pc + 1))
end
compile[OP.LOADKX] = function(p, pc, a, b, c, k, ins, succ)   -- Ax of the following OP_EXTRAARG
  return setter(a, p.k[decode_proto(p)[pc + 1].ax + 1], succ(pc + 2))
end
compile[OP.LOADFALSE] = function(_, pc, a, b, c, k, ins, succ)
  return setter(a, false, succ(pc + 1))
end
compile[OP.LFALSESKIP] = function(_, pc, a, b, c, k, ins, succ)
  return setter(a, false, succ(pc + 2))
end
compile[OP.LOADTRUE] = function(_, pc, a, b, c, k, ins, succ)
  return setter(a, true, succ(pc + 1))
end
compile[OP.LOADNIL] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R)
    for r = a, a + b do R[r] = nil end
    return nx(fr, R)
  end
end
compile[OP.GETUPVAL] = function(_, pc, a, b, c, k, ins, succ)
  local n, nx = b + 1, succ(pc + 1)
  return function(fr, R)
    local _, v = debug_getupvalue(fr.cl, n)
    R[a] = v
    return nx(fr, R)
  end
end
compile[OP.SETUPVAL] = function(_, pc, a, b, c, k, ins, succ)
  local n, nx = b + 1, succ(pc + 1)
  return function(fr, R)
    debug_setupvalue(fr.cl, n, R[a])
    return nx(fr, R)
  end
end
-- Every operand a native error may blame is a named variable here (`t`,
-- `fn`, `x`, `y`, `v`): its varinfo marks the error as the operator's own,
-- for rewrite() to name the interpreted operand instead.
compile[OP.GETTABUP] = function(p, pc, a, b, c, k, ins, succ)
  local n, key, nx = b + 1, p.k[c + 1], succ(pc + 1)
  return function(fr, R)
    fr.cur = pc
    local _, t = debug_getupvalue(fr.cl, n)
    R[a] = t[key]
    return nx(fr, R)
  end
end
compile[OP.GETTABLE] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R)
    fr.cur = pc
    local t = R[b]
    R[a] = t[R[c]]
    return nx(fr, R)
  end
end
-- GETI (key C) and GETFIELD (key K[C])
local function getkey(key, pc, a, b, nx)
  return function(fr, R)
    fr.cur = pc
    local t = R[b]
    R[a] = t[key]
    return nx(fr, R)
  end
end
compile[OP.GETI] = function(_, pc, a, b, c, k, ins, succ)
  return getkey(c, pc, a, b, succ(pc + 1))
end
compile[OP.GETFIELD] = function(p, pc, a, b, c, k, ins, succ)
  return getkey(p.k[c + 1], pc, a, b, succ(pc + 1))
end
-- The stores: the value is R[C], or the constant K[C] when k is set.
compile[OP.SETTABUP] = function(p, pc, a, b, c, k, ins, succ)
  local n, key, nx = a + 1, p.k[b + 1], succ(pc + 1)
  if k == 1 then
    local v = p.k[c + 1]
    return function(fr, R)
      fr.cur = pc
      local _, t = debug_getupvalue(fr.cl, n)
      t[key] = v
      return nx(fr, R)
    end
  end
  return function(fr, R)
    fr.cur = pc
    local _, t = debug_getupvalue(fr.cl, n)
    t[key] = R[c]
    return nx(fr, R)
  end
end
compile[OP.SETTABLE] = function(p, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  if k == 1 then
    local v = p.k[c + 1]
    return function(fr, R)
      fr.cur = pc
      local t = R[a]
      t[R[b]] = v
      return nx(fr, R)
    end
  end
  return function(fr, R)
    fr.cur = pc
    local t = R[a]
    t[R[b]] = R[c]
    return nx(fr, R)
  end
end
-- SETI (key B) and SETFIELD (key K[B])
local function setkey(p, pc, a, key, c, k, nx)
  if k == 1 then
    local v = p.k[c + 1]
    return function(fr, R)
      fr.cur = pc
      local t = R[a]
      t[key] = v
      return nx(fr, R)
    end
  end
  return function(fr, R)
    fr.cur = pc
    local t = R[a]
    t[key] = R[c]
    return nx(fr, R)
  end
end
compile[OP.SETI] = function(p, pc, a, b, c, k, ins, succ)
  return setkey(p, pc, a, b, c, k, succ(pc + 1))
end
compile[OP.SETFIELD] = function(p, pc, a, b, c, k, ins, succ)
  return setkey(p, pc, a, p.k[b + 1], c, k, succ(pc + 1))
end
compile[OP.NEWTABLE] = function(p, pc, a, b, c, k, ins, succ)
  local nx, make = succ(pc + 2)                -- past the EXTRAARG
  return function(fr, R)
    make = make or newtable_op(p, pc)
    R[a] = make()
    return nx(fr, R)
  end
end
local function compile54_self(p, pc, a, b, c, k, ins, succ)
  local a1, nx = a + 1, succ(pc + 1)
  if k == 1 then
    local key = p.k[c + 1]
    return function(fr, R)
      fr.cur = pc
      local t = R[b]
      R[a1] = t
      R[a] = t[key]
      return nx(fr, R)
    end
  end
  return function(fr, R)
    fr.cur = pc
    local t = R[b]
    R[a1] = t
    R[a] = t[R[c]]
    return nx(fr, R)
  end
end
compile[OP.SELF] = compile54_self

-- Arithmetic: each op does what its following OP_MMBIN* describes (event,
-- operands, flip), which is the source-level operation (`x - 1` is ADDI -1
-- + MMBINI 1 SUB; `2 * x` is MULK + MMBINK flipped), so that a metamethod
-- is called natively as by the MMBIN*; then it goes past the MMBIN*. By
-- event (ltm.h TMS order: ADD is 6), x op y for: registers B and C;
-- register B and a constant y; a constant x and register B. blame() tells
-- the operands apart by the name (x or y) a native error gives. One
-- factory per operator on purpose: the operator must be literal in the
-- closure (a function per operator would double the cost of every
-- arithmetic instruction), and its errors must be raised in this file.
local ARITH_RR = {
  [6] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x + y; return nx(fr, R) end
  end,
  [7] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x - y; return nx(fr, R) end
  end,
  [8] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x * y; return nx(fr, R) end
  end,
  [9] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x % y; return nx(fr, R) end
  end,
  [10] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x ^ y; return nx(fr, R) end
  end,
  [11] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x / y; return nx(fr, R) end
  end,
  [12] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x // y; return nx(fr, R) end
  end,
  [13] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x & y; return nx(fr, R) end
  end,
  [14] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x | y; return nx(fr, R) end
  end,
  [15] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x ~ y; return nx(fr, R) end
  end,
  [16] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x << y; return nx(fr, R) end
  end,
  [17] = function(a, b, c, pc, nx)
    return function(fr, R) fr.cur = pc; local x, y = R[b], R[c]; R[a] = x >> y; return nx(fr, R) end
  end,
}
local ARITH_RK = {
  [6] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x + y; return nx(fr, R) end
  end,
  [7] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x - y; return nx(fr, R) end
  end,
  [8] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x * y; return nx(fr, R) end
  end,
  [9] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x % y; return nx(fr, R) end
  end,
  [10] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x ^ y; return nx(fr, R) end
  end,
  [11] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x / y; return nx(fr, R) end
  end,
  [12] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x // y; return nx(fr, R) end
  end,
  [13] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x & y; return nx(fr, R) end
  end,
  [14] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x | y; return nx(fr, R) end
  end,
  [15] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x ~ y; return nx(fr, R) end
  end,
  [16] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x << y; return nx(fr, R) end
  end,
  [17] = function(a, b, y, pc, nx)
    return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = x >> y; return nx(fr, R) end
  end,
}
local ARITH_KR = {
  [6] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x + y; return nx(fr, R) end
  end,
  [7] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x - y; return nx(fr, R) end
  end,
  [8] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x * y; return nx(fr, R) end
  end,
  [9] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x % y; return nx(fr, R) end
  end,
  [10] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x ^ y; return nx(fr, R) end
  end,
  [11] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x / y; return nx(fr, R) end
  end,
  [12] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x // y; return nx(fr, R) end
  end,
  [13] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x & y; return nx(fr, R) end
  end,
  [14] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x | y; return nx(fr, R) end
  end,
  [15] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x ~ y; return nx(fr, R) end
  end,
  [16] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x << y; return nx(fr, R) end
  end,
  [17] = function(a, b, x, pc, nx)
    return function(fr, R) fr.cur = pc; local y = R[b]; R[a] = x >> y; return nx(fr, R) end
  end,
}

-- An op with an immediate or constant operand: the source-level one is the
-- MMBINI's sB or the MMBINK's K[B].
local function arith_k(p, pc, a, b, c, k, ins, succ)
  local mm = decode_proto(p)[pc + 1]
  local v = (mm.op == OP.MMBINI) and mm.b - OFFSET_sC or p.k[mm.b + 1]
  if mm.k == 1 then return ARITH_KR[mm.c](a, b, v, pc, succ(pc + 2)) end
  return ARITH_RK[mm.c](a, b, v, pc, succ(pc + 2))
end
local function arith_rr(p, pc, a, b, c, k, ins, succ)
  return ARITH_RR[decode_proto(p)[pc + 1].c](a, b, c, pc, succ(pc + 2))
end
for _, name in ipairs({"ADDI", "ADDK", "SUBK", "MULK", "MODK", "POWK", "DIVK", "IDIVK",
    "BANDK", "BORK", "BXORK", "SHRI", "SHLI"}) do
  compile[OP[name]] = arith_k
end
for _, name in ipairs({"ADD", "SUB", "MUL", "MOD", "POW", "DIV", "IDIV", "BAND", "BOR",
    "BXOR", "SHL", "SHR"}) do
  compile[OP[name]] = arith_rr
end
-- No-ops: the arithmetic ops above already ran any metamethod natively and
-- went past these (reached only by a jump, which the compiler never emits);
-- OP_VARARGPREP's varargs are already apart.
local function nop(_, pc, a, b, c, k, ins, succ) return succ(pc + 1) end
compile[OP.MMBIN] = nop
compile[OP.MMBINI] = nop
compile[OP.MMBINK] = nop
compile[OP.VARARGPREP] = nop
compile[OP.UNM] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = -x; return nx(fr, R) end
end
compile[OP.BNOT] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = ~x; return nx(fr, R) end
end
compile[OP.NOT] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R) R[a] = not R[b]; return nx(fr, R) end
end
compile[OP.LEN] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R) fr.cur = pc; local x = R[b]; R[a] = #x; return nx(fr, R) end
end
-- Right to left, as luaV_concat: R[a] := R[a] .. ... .. R[last + 1].
-- frames.lua reads `r` (the register whose concatenation is pending) at
-- this level; `fr.catr` is it too, for blame() (an error may come after a
-- __concat ran, whose result is known only here).
local function concat_op(pc, a, last, nx)
  return function(fr, R)
    fr.cur = pc
    local v = R[last + 1]
    for r = last, a, -1 do
      fr.catr = r
      v = R[r] .. v
    end
    R[a] = v
    return nx(fr, R)
  end
end
compile[OP.CONCAT] = function(_, pc, a, b, c, k, ins, succ)
  return concat_op(pc, a, a + b - 2, succ(pc + 1))
end
compile[OP.CLOSE] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R)
    fr.cur = pc
    close(fr, a)
    return nx(fr, R)
  end
end
compile[OP.TBC] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R)
    fr.cur = pc
    newtbc(fr, a)
    return nx(fr, R)
  end
end
compile[OP.JMP] = function(_, pc, a, b, c, k, ins, succ)
  return succ(pc + 1 + ins.sj)   -- its target
end

-- A test and its following OP_JMP (docondjump): `yes` continues where the
-- condition holding leads, `no` where it failing does; the jump is taken
-- when the condition equals k, else skipped.
local function targets(p, pc, k, succ)
  local jump, past = succ(pc + 2 + decode_proto(p)[pc + 1].sj), succ(pc + 2)
  if k == 1 then return jump, past end
  return past, jump
end
-- Comparisons that may call a metamethod.
compile[OP.EQ] = function(p, pc, a, b, c, k, ins, succ)
  local yes, no = targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] == R[b] then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.LT] = function(p, pc, a, b, c, k, ins, succ)
  local yes, no = targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] < R[b] then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.LE] = function(p, pc, a, b, c, k, ins, succ)
  local yes, no = targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] <= R[b] then return yes(fr, R) end
    return no(fr, R)
  end
end
local function imm(b, c)                 -- sB, a float when C (isf) is set
  b = b - OFFSET_sC
  if c ~= 0 then return b + 0.0 end
  return b
end
compile[OP.LTI] = function(p, pc, a, b, c, k, ins, succ)
  local v, yes, no = imm(b, c), targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] < v then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.LEI] = function(p, pc, a, b, c, k, ins, succ)
  local v, yes, no = imm(b, c), targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] <= v then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.GTI] = function(p, pc, a, b, c, k, ins, succ)
  local v, yes, no = imm(b, c), targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] > v then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.GEI] = function(p, pc, a, b, c, k, ins, succ)
  local v, yes, no = imm(b, c), targets(p, pc, k, succ)
  return function(fr, R)
    fr.cur = pc
    if R[a] >= v then return yes(fr, R) end
    return no(fr, R)
  end
end
-- Equality with a constant or an immediate (never a table or a userdata,
-- so no __eq: raw equality) and truth tests call nothing.
compile[OP.EQK] = function(p, pc, a, b, c, k, ins, succ)
  local v, yes, no = p.k[b + 1], targets(p, pc, k, succ)
  return function(fr, R)
    if R[a] == v then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.EQI] = function(p, pc, a, b, c, k, ins, succ)
  local v, yes, no = imm(b, c), targets(p, pc, k, succ)
  return function(fr, R)
    if R[a] == v then return yes(fr, R) end
    return no(fr, R)
  end
end
compile[OP.TEST] = function(p, pc, a, b, c, k, ins, succ)
  local yes, no = targets(p, pc, k, succ)
  return function(fr, R)
    if R[a] then return yes(fr, R) end
    return no(fr, R)
  end
end
-- TESTSET: when R[B] as a boolean is k, R[A] := R[B] and jump; else skip
-- the jump.
compile[OP.TESTSET] = function(p, pc, a, b, c, k, ins, succ)
  local yes, no = targets(p, pc, k, succ)
  if k == 1 then
    return function(fr, R)
      local v = R[b]
      if v then R[a] = v; return yes(fr, R) end
      return no(fr, R)
    end
  end
  return function(fr, R)
    local v = R[b]
    if v then return yes(fr, R) end
    R[a] = v
    return no(fr, R)
  end
end

-- Calls. Without an interpret hook, a call of up to 3 arguments and up to
-- 1 result (most calls) calls fn directly; the others go through call()
-- and setresults(). `fn` is the callee's name for rewrite().
local function fastcall(a, nargs, nres, pc, general, nx)
  local a1, a2, a3 = a + 1, a + 2, a + 3
  if nres == 0 then
    if nargs == 0 then
      return function(fr, R)
        fr.cur = pc
        local fn = R[a]
        if fr.interpret or SPECIAL[fn] then return general(fr, R) end
        fn()
        return nx(fr, R)
      end
    elseif nargs == 1 then
      return function(fr, R)
        fr.cur = pc
        local fn = R[a]
        if fr.interpret or SPECIAL[fn] then return general(fr, R) end
        fn(R[a1])
        return nx(fr, R)
      end
    elseif nargs == 2 then
      return function(fr, R)
        fr.cur = pc
        local fn = R[a]
        if fr.interpret or SPECIAL[fn] then return general(fr, R) end
        fn(R[a1], R[a2])
        return nx(fr, R)
      end
    end
    return function(fr, R)
      fr.cur = pc
      local fn = R[a]
      if fr.interpret or SPECIAL[fn] then return general(fr, R) end
      fn(R[a1], R[a2], R[a3])
      return nx(fr, R)
    end
  end
  if nargs == 0 then
    return function(fr, R)
      fr.cur = pc
      local fn = R[a]
      if fr.interpret or SPECIAL[fn] then return general(fr, R) end
      R[a] = fn()
      return nx(fr, R)
    end
  elseif nargs == 1 then
    return function(fr, R)
      fr.cur = pc
      local fn = R[a]
      if fr.interpret or SPECIAL[fn] then return general(fr, R) end
      R[a] = fn(R[a1])
      return nx(fr, R)
    end
  elseif nargs == 2 then
    return function(fr, R)
      fr.cur = pc
      local fn = R[a]
      if fr.interpret or SPECIAL[fn] then return general(fr, R) end
      R[a] = fn(R[a1], R[a2])
      return nx(fr, R)
    end
  end
  return function(fr, R)
    fr.cur = pc
    local fn = R[a]
    if fr.interpret or SPECIAL[fn] then return general(fr, R) end
    R[a] = fn(R[a1], R[a2], R[a3])
    return nx(fr, R)
  end
end
compile[OP.CALL] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  local function general(fr, R)
    fr.cur = pc
    local last = (b ~= 0) and (a + b - 1) or (fr.top - 1)
    setresults(fr, a, call(fr, R[a], a, last), c - 1)
    return nx(fr, R)
  end
  if b >= 1 and b <= 4 and (c == 1 or c == 2) then
    return fastcall(a, b - 1, c - 1, pc, general, nx)
  end
  return general
end
-- The frame ends here: execute() sees fr.done, or runs the callee that
-- replaced it.
compile[OP.TAILCALL] = function(_, pc, a, b, c, k)
  return function(fr, R)
    fr.cur = pc
    local last = (b ~= 0) and (a + b - 1) or (fr.top - 1)
    if k == 1 then close(fr, 0) end      -- open upvalues (no tbc: no tail call)
    local ret = call(fr, R[a], a, last, true)
    if ret then                          -- else fr runs the callee now
      fr.ret = ret
      fr.done = true
    end
  end
end
compile[OP.RETURN] = function(_, pc, a, b)
  return function(fr, R)
    fr.cur = pc
    local n = (b ~= 0) and (b - 1) or (fr.top - a)
    local ret = {n = n}
    for j = 1, n do ret[j] = R[a + j - 1] end
    close(fr, 0)
    fr.ret = ret
    fr.done = true
  end
end
compile[OP.RETURN0] = function(_, pc)
  return function(fr)
    fr.cur = pc
    close(fr, 0)
    fr.ret = {n = 0}
    fr.done = true
  end
end
compile[OP.RETURN1] = function(_, pc, a)
  return function(fr, R)
    fr.cur = pc
    local v = R[a]
    close(fr, 0)
    fr.ret = {n = 1, v}
    fr.done = true
  end
end
-- The loops look up their earlier target themselves (succ would add a call).
compile[OP.FORLOOP] = function(_, pc, a, b, c, k, ins, succ, ops)
  local back, nx, a1, a2, a3 = pc + 1 - ins.bx, succ(pc + 1), a + 1, a + 2, a + 3
  return function(fr, R)
    local step = R[a2]
    -- An integer loop has an integer step (lvm.c checks its type). Told
    -- without a call: integer addition wraps around, float addition does
    -- not (the step is not zero, nor NaN in an integer loop).
    if step > 0 and step + maxinteger < 0 or step < 0 and step + mininteger >= 0 then
      local count = R[a1]
      if count == 0 then return nx(fr, R) end   -- unsigned count > 0
      local idx = R[a] + step
      R[a1] = count - 1
      R[a], R[a3] = idx, idx
      return ops[back](fr, R)
    end
    if floatforloop(R, a) then return ops[back](fr, R) end
    return nx(fr, R)
  end
end
compile[OP.FORPREP] = function(_, pc, a, b, c, k, ins, succ)
  local past, nx = succ(pc + ins.bx + 2), succ(pc + 1)
  return function(fr, R)
    fr.cur = pc
    if forprep(R, a) then return past(fr, R) end
    return nx(fr, R)
  end
end
compile[OP.TFORPREP] = function(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1 + ins.bx)              -- the OP_TFORCALL
  return function(fr, R)
    fr.cur = pc
    newtbc(fr, a + 3)
    return nx(fr, R)
  end
end
compile[OP.TFORCALL] = function(_, pc, a, b, c, k, ins, succ)
  local nx, a1, a2, a4, a5, a6 = succ(pc + 1), a + 1, a + 2, a + 4, a + 5, a + 6
  local function general(fr, R)
    fr.cur = pc
    R[a4], R[a5], R[a6] = R[a], R[a1], R[a2]
    setresults(fr, a4, call(fr, R[a4], a4, a6), c)
    return nx(fr, R)
  end
  if c == 1 then
    return function(fr, R)
      fr.cur = pc
      local fn, s, ctl = R[a], R[a1], R[a2]
      if fr.interpret or SPECIAL[fn] then return general(fr, R) end
      R[a4], R[a5], R[a6] = fn, s, ctl
      R[a4] = fn(s, ctl)
      return nx(fr, R)
    end
  elseif c == 2 then
    return function(fr, R)
      fr.cur = pc
      local fn, s, ctl = R[a], R[a1], R[a2]
      if fr.interpret or SPECIAL[fn] then return general(fr, R) end
      R[a4], R[a5], R[a6] = fn, s, ctl
      R[a4], R[a5] = fn(s, ctl)
      return nx(fr, R)
    end
  end
  return general
end
compile[OP.TFORLOOP] = function(_, pc, a, b, c, k, ins, succ, ops)
  local back, nx, a2, a4 = pc + 1 - ins.bx, succ(pc + 1), a + 2, a + 4
  return function(fr, R)
    local v = R[a4]
    if v == nil then return nx(fr, R) end
    R[a2] = v
    return ops[back](fr, R)
  end
end
local function compile54_setlist(p, pc, a, b, c, k, ins, succ)
  local nx = succ((k == 1) and pc + 2 or pc + 1)   -- past the EXTRAARG
  local set
  return function(fr, R)
    set = set or setlist_op(p, pc, k)
    local n = (b ~= 0) and b or (fr.top - a - 1)
    set(R[a], table_unpack(R, a + 1, a + n))
    return nx(fr, R)
  end
end
compile[OP.SETLIST] = compile54_setlist
compile[OP.CLOSURE] = function(_, pc, a, b, c, k, ins, succ)
  local bx, nx = ins.bx, succ(pc + 1)
  return function(fr, R)
    R[a] = closure(fr, bx)
    return nx(fr, R)
  end
end
local function compile54_vararg(_, pc, a, b, c, k, ins, succ)
  local nx = succ(pc + 1)
  return function(fr, R)
    local va, n = fr.varargs, c - 1
    if n < 0 then
      n = va.n
      fr.top = a + n
    end
    for j = 1, n do R[a + j - 1] = va[j] end   -- va[j] is nil past va.n
    return nx(fr, R)
  end
end
compile[OP.VARARG] = compile54_vararg
compile[OP.EXTRAARG] = function()
  return function() error("finisher: unexpected OP_EXTRAARG", 0) end
end

-- ----------------------------------------------- Lua 5.5's instructions ---
-- One instruction table: where Lua 5.5.1 changed an instruction (lvm.c,
-- lopcodes.h), its entry replaces 5.4's here; the rest is shared (OP is the
-- running Lua's numbering, so renumbered opcodes need nothing).
if V55 then
  -- SELF: the key is always K[C]
  compile[OP.SELF] = function(p, pc, a, b, c, k, ins, succ)
    return compile54_self(p, pc, a, b, c, 1, ins, succ)
  end
  -- NEWTABLE and SETLIST are ivABC: vB, vC (newtable_op copies the word)
  compile[OP.SETLIST] = function(p, pc, a, b, c, k, ins, succ)
    return compile54_setlist(p, pc, a, ins.vb, ins.vc, k, ins, succ)
  end
  -- numeric for: R[A] count (integers) or limit (floats), R[A+1] step,
  -- R[A+2] the control variable
  compile[OP.FORLOOP] = function(_, pc, a, b, c, k, ins, succ, ops)
    local back, nx, a1, a2 = pc + 1 - ins.bx, succ(pc + 1), a + 1, a + 2
    return function(fr, R)
      local step = R[a1]
      if step > 0 and step + maxinteger < 0 or step < 0 and step + mininteger >= 0 then
        local count = R[a]
        if count == 0 then return nx(fr, R) end   -- unsigned count > 0
        R[a] = count - 1
        R[a2] = R[a2] + step
        return ops[back](fr, R)
      end
      local idx, limit = R[a2] + step, R[a]
      if (0 < step) and (idx <= limit) or (not (0 < step)) and (limit <= idx) then
        R[a2] = idx
        return ops[back](fr, R)
      end
      return nx(fr, R)
    end
  end
  -- generic for: R[A] iterator, R[A+1] state, R[A+2] closing value, R[A+3]
  -- control variable; the call is made at R[A+3]
  compile[OP.FORPREP] = function(_, pc, a, b, c, k, ins, succ)
    local past, nx, a1, a2, a3 = succ(pc + ins.bx + 2), succ(pc + 1), a + 1, a + 2, a + 3
    return function(fr, R)
      fr.cur = pc
      local keep = R[a3]
      if forprep(R, a) then return past(fr, R) end
      -- 5.4's layout (count or limit, step, control at A+1..A+3) to 5.5's
      R[a], R[a1], R[a2], R[a3] = R[a1], R[a2], R[a3], keep
      return nx(fr, R)
    end
  end
  compile[OP.TFORPREP] = function(_, pc, a, b, c, k, ins, succ)
    local nx, a2, a3 = succ(pc + 1 + ins.bx), a + 2, a + 3   -- the OP_TFORCALL
    return function(fr, R)
      fr.cur = pc
      R[a2], R[a3] = R[a3], R[a2]
      newtbc(fr, a2)
      return nx(fr, R)
    end
  end
  compile[OP.TFORCALL] = function(_, pc, a, b, c, k, ins, succ)
    local nx, a1, a3, a4, a5 = succ(pc + 1), a + 1, a + 3, a + 4, a + 5
    return function(fr, R)
      fr.cur = pc
      R[a5], R[a4], R[a3] = R[a3], R[a1], R[a]
      setresults(fr, a3, call(fr, R[a3], a3, a5), c)
      return nx(fr, R)
    end
  end
  compile[OP.TFORLOOP] = function(_, pc, a, b, c, k, ins, succ, ops)
    local back, nx, a3 = pc + 1 - ins.bx, succ(pc + 1), a + 3
    return function(fr, R)
      if R[a3] == nil then return nx(fr, R) end
      return ops[back](fr, R)
    end
  end
  -- a function with a vararg table (PF_VATAB) gets it in R[numparams]
  -- (luaT_adjustvarargs); hidden varargs leave that register nil
  compile[OP.VARARGPREP] = function(p, pc, a, b, c, k, ins, succ)
    local nx, np = succ(pc + 1), p.numparams
    if (p.flag or 0) & 2 == 0 then return nx end
    return function(fr, R)
      local va, t = fr.varargs, {}
      for j = 1, va.n do t[j] = va[j] end
      t.n = va.n
      R[np] = t
      return nx(fr, R)
    end
  end
  -- VARARG: k says the varargs are the table R[B] (luaT_getvarargs)
  compile[OP.VARARG] = function(_, pc, a, b, c, k, ins, succ)
    if k == 0 then return compile54_vararg(_, pc, a, b, c, k, ins, succ) end
    local nx = succ(pc + 1)
    return function(fr, R)
      fr.cur = pc
      local t, n = R[b], c - 1
      local m = rawget(t, "n")
      if math_type(m) ~= "integer" or m < 0 or m > 0x3FFFFFFF then
        error("vararg table has no proper 'n'")
      end
      if n < 0 then
        n = m
        fr.top = a + n
      end
      for j = 1, n do
        if j <= m then R[a + j - 1] = rawget(t, j) else R[a + j - 1] = nil end
      end
      return nx(fr, R)
    end
  end
  -- GETVARG: R[A] := vararg[R[C]] (luaT_getvararg: an integer or an
  -- integral float, as tointegerns; or "n")
  local function getvararg(va, key)
    local n = math_type(key) and math_tointeger(key)
    if n then
      if n >= 1 and n <= va.n then return va[n] end
      return nil
    end
    if key == "n" then return va.n end
    return nil
  end
  compile[OP.GETVARG] = function(_, pc, a, b, c, k, ins, succ)
    local nx = succ(pc + 1)
    return function(fr, R) R[a] = getvararg(fr.varargs, R[c]); return nx(fr, R) end
  end
  -- ERRNNIL: a `global x` declaration of a defined global (luaG_errnnil)
  compile[OP.ERRNNIL] = function(p, pc, a, b, c, k, ins, succ)
    local nx, v = succ(pc + 1), ins.bx > 0 and p.k[ins.bx] or nil
    local name = type(v) == "string" and v or "?"
    return function(fr, R)
      if R[a] ~= nil then
        fr.cur = pc
        error(string_format("global '%s' already defined", name))
      end
      return nx(fr, R)
    end
  end
end

for name, code in next, OP do
  assert(compile[code], "finisher: no compiler for " .. name)
end

-- ----------------------------------------------------- error naming ---

-- ldebug.c's symbolic execution (findsetreg, getobjname, funcnamefromcode),
-- on 0-based pcs as in the C code: what a native error message says about
-- the value it blames, " (global 'x')", " (local 't')", " (field 'y')".

local SETS_NO_A = {}                      -- !testAMode: R[A] is not set
for _, name in ipairs({"SETUPVAL", "SETTABUP", "SETTABLE", "SETI", "SETFIELD",
    "MMBIN", "MMBINI", "MMBINK", "CLOSE", "TBC", "JMP", "EQ", "LT", "LE", "EQK",
    "EQI", "LTI", "LEI", "GTI", "GEI", "TEST", "RETURN", "RETURN0", "RETURN1",
    "TFORPREP", "TFORCALL", "SETLIST", "EXTRAARG", "ERRNNIL"}) do
  if OP[name] then SETS_NO_A[OP[name]] = true end   -- ERRNNIL: 5.5 only
end
if V55 then SETS_NO_A[OP.VARARGPREP] = true end
local MMBINS = {[OP.MMBIN] = true, [OP.MMBINI] = true, [OP.MMBINK] = true}

-- ltm.c's event names, by TMS (the C of OP_MMBIN*), without "__".
local TMNAME = {[0] = "index", "newindex", "gc", "mode", "len", "eq", "add", "sub",
  "mul", "mod", "pow", "div", "idiv", "band", "bor", "bxor", "shl", "shr", "unm",
  "bnot", "lt", "le", "concat", "call", "close"}
local TM_OF = {
  [OP.SELF] = 0, [OP.GETTABUP] = 0, [OP.GETTABLE] = 0, [OP.GETI] = 0, [OP.GETFIELD] = 0,
  [OP.SETTABUP] = 1, [OP.SETTABLE] = 1, [OP.SETI] = 1, [OP.SETFIELD] = 1,
  [OP.UNM] = 18, [OP.BNOT] = 19, [OP.LEN] = 4, [OP.CONCAT] = 22, [OP.EQ] = 5,
  [OP.LT] = 20, [OP.LTI] = 20, [OP.GTI] = 20, [OP.LE] = 21, [OP.LEI] = 21,
  [OP.GEI] = 21, [OP.CLOSE] = 24, [OP.RETURN] = 24,
}

local function findsetreg(p, lastpc, reg)
  local dec = decode_proto(p)
  if MMBINS[dec[lastpc + 1].op] then lastpc = lastpc - 1 end  -- not executed
  local setreg, jmptarget = -1, 0
  for pc = 0, lastpc - 1 do
    local ins = dec[pc + 1]
    local op, a = ins.op, ins.a
    local change
    if op == OP.LOADNIL then
      change = a <= reg and reg <= a + ins.b
    elseif op == OP.TFORCALL then
      change = reg >= a + 2
    elseif op == OP.CALL or op == OP.TAILCALL then
      change = reg >= a
    elseif op == OP.JMP then
      local dest = pc + 1 + ins.sj
      if dest <= lastpc and dest > jmptarget then jmptarget = dest end
      change = false
    else
      change = not SETS_NO_A[op] and reg == a
    end
    if change then setreg = (pc < jmptarget) and -1 or pc end
  end
  return setreg
end

local function upvalname(p, uv)
  local u = p.upvalues[uv + 1]
  return u and u.name or "?"
end

local function kname(p, index)            -- -> kind, name
  local v = p.k[index + 1]
  if type(v) == "string" then return "constant", v end
  return nil, "?"
end

-- -> kind, name, pc (the instruction that set reg, or -1)
local function basicgetobjname(p, pc, reg)
  local name = finisher.localname(p, reg, pc + 1)
  if name then return "local", name, pc end
  pc = findsetreg(p, pc, reg)
  if pc ~= -1 then
    local ins = decode_proto(p)[pc + 1]
    local op = ins.op
    if op == OP.MOVE then
      if ins.b < ins.a then return basicgetobjname(p, pc, ins.b) end
    elseif op == OP.GETUPVAL then
      return "upvalue", upvalname(p, ins.b), pc
    elseif op == OP.LOADK then
      local kind, kn = kname(p, ins.bx)
      return kind, kn, pc
    elseif op == OP.LOADKX then
      local kind, kn = kname(p, decode_proto(p)[pc + 2].ax)
      return kind, kn, pc
    end
  end
  return nil, nil, pc
end

local function rname(p, pc, c)
  local kind, name = basicgetobjname(p, pc, c)
  if kind ~= "constant" then return "?" end
  return name
end

local function isEnv(p, pc, ins, isup)
  local name
  if isup then
    name = upvalname(p, ins.b)
  else
    local kind, n = basicgetobjname(p, pc, ins.b)
    if kind == "local" or kind == "upvalue" then name = n end
  end
  return name == "_ENV" and "global" or "field"
end

local function getobjname(p, lastpc, reg)
  local kind, name, pc = basicgetobjname(p, lastpc, reg)
  if kind then return kind, name end
  if pc ~= -1 then
    local ins = decode_proto(p)[pc + 1]
    local op = ins.op
    if op == OP.GETTABUP then
      local _, k = kname(p, ins.c)
      return isEnv(p, pc, ins, true), k
    elseif op == OP.GETTABLE then
      return isEnv(p, pc, ins, false), rname(p, pc, ins.c)
    elseif op == OP.GETI then
      return "field", "integer index"
    elseif op == OP.GETFIELD then
      local _, k = kname(p, ins.c)
      return isEnv(p, pc, ins, false), k
    elseif op == OP.SELF then
      if ins.k == 1 or V55 then             -- 5.5: the key is always K[C]
        local _, k = kname(p, ins.c)
        return "method", k
      end
      return "method", rname(p, pc, ins.c)
    end
  end
  return nil
end

local function funcnamefromcode(p, pc)
  local ins = decode_proto(p)[pc + 1]
  local op = ins.op
  if op == OP.CALL or op == OP.TAILCALL then return getobjname(p, pc, ins.a) end
  if op == OP.TFORCALL then return "for iterator", "for iterator" end
  local tm = TM_OF[op]
  if MMBINS[op] then tm = ins.c end
  if tm then return "metamethod", TMNAME[tm] end
  return nil
end

local function varinfo(kind, name)
  if kind == nil then return "" end
  return " (" .. kind .. " '" .. name .. "')"
end

-- The pc natively current when the instruction at fr.cur fails: an
-- arithmetic instruction fails in its OP_MMBIN*.
local function errpc(fr)
  local cur = fr.cur
  local following = fr.dec[cur + 1]
  if following and MMBINS[following.op] and not MMBINS[fr.dec[cur].op] then return cur end
  return cur - 1
end

-- varinfo for the operand a native error of the instruction at fr.cur
-- blamed. `body` is the message, `fname` the finisher variable the native
-- varinfo named (which operand it was, for arithmetic).
local function blame(fr, body, fname)
  local p, ins = fr.p, fr.dec[fr.cur]
  local op, a, b, c = ins.op, ins.a, ins.b, ins.c
  local pc = errpc(fr)
  local reg
  if string_find(body, "^attempt to call") then
    local kind, name = funcnamefromcode(p, pc)
    return varinfo(kind, name)
  elseif string_find(body, "^attempt to index") then
    if op == OP.GETTABUP then return varinfo("upvalue", upvalname(p, b)) end
    if op == OP.SETTABUP then return varinfo("upvalue", upvalname(p, a)) end
    if op == OP.SETTABLE or op == OP.SETI or op == OP.SETFIELD then
      reg = a
    elseif op == OP.GETTABLE or op == OP.GETI or op == OP.GETFIELD or op == OP.SELF then
      reg = b
    end
  elseif op == OP.CONCAT then
    -- `R[r] .. v` failed (luaG_concaterror blames the right operand when the
    -- left one is a string or a number): v is what natively is in R[r + 1]
    reg = (fname == "v") and fr.catr + 1 or fr.catr
  elseif op == OP.UNM or op == OP.BNOT or op == OP.LEN then
    reg = b
  elseif pc ~= fr.cur - 1 then             -- arithmetic: `x op y` in ARITH
    local mm = fr.dec[fr.cur + 1]
    if mm.op == OP.MMBIN then
      reg = (fname == "x") and b or c
    elseif (fname == "x") == (mm.k == 0) then  -- the register, not the constant
      reg = b
    end
  end
  if reg == nil then return "" end
  return varinfo(getobjname(p, pc, reg))
end

-- lauxlib's pushglobalfuncname: "string.rep", "print".
local function findfield(t, fn, level)
  if level == 0 or type(t) ~= "table" then return nil end
  for k, v in next, t do
    if type(k) == "string" then
      if rawequal(v, fn) then return k end
      local sub = findfield(v, fn, level - 1)
      if sub then return k .. "." .. sub end
    end
  end
  return nil
end

local function globalfuncname(fn)
  local name = findfield(rawget(debug_getregistry(), "_LOADED"), fn, 2)
  if name and string_sub(name, 1, 3) == "_G." then name = string_sub(name, 4) end
  return name
end

-- luaL_argerror names a C function after its caller's call instruction:
-- the finisher's `fn(...)`. Name it after the interpreted one.
local function argerror(fr, n, tail)
  local ins = fr.dec[fr.cur]
  local op = ins.op
  if op ~= OP.CALL and op ~= OP.TAILCALL and op ~= OP.TFORCALL then return nil end
  local kind, name = funcnamefromcode(fr.p, fr.cur - 1)
  if kind == "method" then
    n = n - 1
    if n == 0 then return "calling '" .. name .. "' on bad self " .. tail end
  elseif kind == nil then
    local fn = fr.R[op == OP.TFORCALL and ins.a + TFORCALL_FN or ins.a]
    name = globalfuncname(fn) or "?"
  end
  return "bad argument #" .. n .. " to '" .. name .. "' " .. tail
end

-- ------------------------------------------------------------- levels ---

-- luaL_where and `error(msg, level)` count stack levels, one per function
-- natively; here an interpreted frame is several native levels (an op
-- closure, execute, pcall, finisher.run, ...). So levels are counted over the
-- interpreted frames instead. A level is a finisher frame (at its current
-- line), a C level ({c = true, caller = x}: a C function x called, which
-- has no position), or a frame of a restored coroutine waiting in its
-- record (fr.rec, fr.at: frames.lua runs frame fr.at of the record, whose
-- callers are the frames after it: a Lua frame at its pending instruction,
-- {c = "pcall"} / {c = "xpcall"} a C level); past the last, nothing (the
-- coroutine's base; a frame started by native code: its caller).

local function position(p, pc, src)
  local line = line_of(p, pc)
  if line == nil then return "" end      -- ar.currentline > 0 fails
  return src .. ":" .. line .. ": "
end

local execute, finish        -- (below) the levels that show a frame's finisher.run

-- The n-th native level above the finisher.run of finisher frame fr, which native
-- code started (finisher.call, finisher.run): found on the stack by its execute(fr) (or
-- finish(fr), which finisher.run calls once the frame's pcall returned).
local function native_where(fr, n)
  local l = 2
  while true do
    local info = debug_getinfo(l, "f")
    if info == nil then return "" end
    local f = info.func
    if (f == execute or f == finish) and rawequal(select(2, debug_getlocal(l, 1)), fr) then
      info = debug_getinfo(l + (f == execute and 2 or 1) + n, "Sl")
      if info == nil or info.currentline <= 0 then return "" end
      return info.short_src .. ":" .. info.currentline .. ": "
    end
    l = l + 1
  end
end

-- luaL_where(L, level) as seen from x (level 1)
local function where(x, level)
  local rec, k
  for n = 2, level do
    if rec then
      k = k + 1
    elseif x.caller then
      x = x.caller
    elseif x.rec then
      rec, k = x.rec, x.at + 1
    else
      return native_where(x, level - n + 1)
    end
  end
  if rec then
    local e = rec[k]
    if e == nil or e.c then return "" end
    local f = e[RECORD_FN]
    local p = proto_of(f)
    return position(p, e[RECORD_CUR], short_src_of(f, p))
  end
  if x.c then return "" end
  return position(x.p, x.cur, x.short_src)
end

-- `error` called from level x (luaB_error: a string message gets the
-- position of `level`, counted from x).
local function error_from(x)
  return function(...)
    local msg, level = ...
    level = math_tointeger(level == nil and 1 or level)   -- luaL_optinteger
    if type(msg) ~= "string" or level == nil then return error(...) end
    if level > 0 then msg = where(x, level) .. msg end
    error(msg, 0)
  end
end

local function clevel(caller) return {c = true, caller = caller} end

-- pcall/xpcall called from level x: what they call is called by a C level
-- above x; so `error` (pcall(error, m, 2)) and pcall/xpcall again count
-- their levels from there. `leveled` is SPECIAL, or conformance's own.
local function protect(leveled)
  return function(x)
    return function(...)
      local special = leveled[(...)]
      if special then return pcall(special(clevel(x)), select(2, ...)) end
      return pcall(...)
    end
  end, function(x)
    return function(...)
      local f, msgh = ...
      local special = leveled[f]
      if special then return xpcall(special(clevel(x)), msgh, select(3, ...)) end
      return xpcall(...)
    end
  end
end
SPECIAL[error] = error_from
SPECIAL[pcall], SPECIAL[xpcall] = protect(SPECIAL)

-- ------------------------------------------------------------ running ---

-- Runs frame fr: an op continues with the next by a tail call, so this
-- returns when the frame returned (fr.done), or when a tail call made fr the
-- callee's frame (fr.ops, fr.R, fr.pc are new).
function execute(fr)
  repeat fr.ops[fr.pc](fr, fr.R) until fr.done
end
-- the line a level of execute(fr) shows: it stands for fr's caller
local EXECUTE_LINE = debug_getinfo(execute, "S").linedefined + 1

local PREFIX = "^" .. string_gsub(MY_SRC, "%p", "%%%0") .. ":%d+: "

-- Messages of luaG_runerror that operators and handlers here may raise.
local VM_ERRORS = {"^attempt to ", "^number.* has no integer representation$",
  "^table index is ", "^'for' ", "^bad 'for' ", "^variable '.*' got a non%-closable value$",
  "^'__n?e?w?index' chain too long", "^string length overflow$", "stack overflow$"}

-- An error raised in this file: a native operator's (its varinfo names a
-- variable here) or a callee's whose position is here (error(m, 2), a C
-- function's luaL_error). Give it the interpreted frame's position and,
-- for the operator's, the interpreted operand's varinfo.
local function rewrite(fr, e)
  if type(e) ~= "string" or not string_find(e, PREFIX) then return e end
  local rest = string_gsub(e, PREFIX, "", 1)
  -- A native callee's luaL_where one level further than this frame (the
  -- caller of the callee's caller): this frame's caller. So is the caller
  -- of a Lua function this frame tail-called (natively it replaced the
  -- frame; a C function runs above it).
  local at = tonumber(string_match(e, ":(%d+): "))
  local ins = fr.dec[fr.cur]
  if at == EXECUTE_LINE or ins.op == OP.TAILCALL and is_lua(fr.R[ins.a]) then
    return where(fr, 2) .. rest
  end
  local body, fname = string_match(rest, "^(attempt to .-) %([%a ]+ '([^']*)'%)$")
  local n, tail = string_match(rest, "^bad argument #(%d+) to 'fn' (.*)$")
  if body then
    rest = body .. blame(fr, body, fname)
  elseif n then
    rest = argerror(fr, tonumber(n), tail) or rest
  else
    fname = string_match(rest, "^number %([%a ]+ '([^']*)'%) has no integer representation$")
    if fname then
      rest = "number" .. blame(fr, "", fname) .. " has no integer representation"
    end
  end
  local line = line_of(fr.p, fr.cur)
  if line then return fr.short_src .. ":" .. line .. ": " .. rest end
  -- No line information (stripped): luaG_runerror writes line -1 (5.5:
  -- "?:?:", a stripped function has no source), luaL_where (a callee's
  -- error) nothing.
  for _, pattern in ipairs(VM_ERRORS) do
    if string_find(rest, pattern) then
      return (V55 and "?:?: " or fr.short_src .. ":-1: ") .. rest
    end
  end
  return rest
end

-- Message handlers. Natively an xpcall's handler runs where the error is
-- raised, before any to-be-closed variable closes (ldebug.c luaG_errormsg),
-- and stays active while the catching call closes them (ldo.c luaD_pcall
-- restores errfunc after luaD_closeprotected). finisher.run given opts.msgh runs
-- its frame in an xpcall with it; the frame's variables close natively,
-- by GUARD's stand-ins, when the error is caught, so the error of a
-- __close reaches the active handler too. frames.lua gives a restored
-- frame the handler of the xpcall it waits in, and keeps that xpcall's
-- re-created handler from running it again (handler_of). In conformance
-- mode every frame under an interpreted xpcall has a handler (the xpcall
-- replacement's C level passes it down, fr.msgh) and an error passes
-- several finisher.runs: the first to see it runs the user's handler and boxes
-- the result, HANDLED {v = result}, which the others pass on, the
-- stand-ins unbox for __close, and the xpcall replacement unboxes.

-- A handler that fails is called again with its own error, natively until
-- the C stack overflows (LUAI_MAXCCALLS, 200), which ends in "error in
-- error handling" (ldo.c luaE_checkcstack, luaD_seterrorobj).
local function boxing(msgh)
  return function(e)
    if debug_getmetatable(e) == HANDLED then return e end
    for _ = 1, 200 do
      local ok, v = pcall(msgh, e)
      if ok then return setmetatable({v = v}, HANDLED) end
      e = v
    end
    return setmetatable({v = "error in error handling"}, HANDLED)
  end
end

function finish(fr, ok, e)
  if ok then
    local ret = fr.ret
    return table_unpack(ret, 1, ret.n)
  end
  -- the frame's variables close natively, by finisher.run's GUARD, when the error
  -- is caught (after a message handler ran) or at coroutine.close
  error(rewrite(fr, e), 0)
end

function finisher.run(cl, proto, pc, regs, varargs, top, opts)
  opts = opts or {}
  local R, boxes = make_registers(regs or {}, opts.links)
  local tbc = {}
  for j, r in ipairs(opts.tbc or {}) do tbc[j] = r end
  local fr = {
    cl = cl, p = proto, R = R, boxes = boxes,
    varargs = varargs or {n = 0}, pc = pc, cur = pc,
    top = top or proto.maxstacksize, tbc = tbc,
    dec = decode_proto(proto), ops = ops_of(proto), interpret = opts.interpret,
    short_src = short_src_of(cl, proto), caller = opts.caller,
    rec = opts.rec, at = opts.at, msgh = opts.msgh,
  }
  local cat = opts.cat
  if cat then
    -- pc is an OP_CONCAT whose __concat ran (before a restore) and left its
    -- result in R[cat + 1]: the rest of it, then on (luaV_finishOp)
    local ins = fr.dec[pc]
    assert(ins.op == OP.CONCAT, "finisher: cat without a pending OP_CONCAT")
    fr.ops, fr.pc = {[0] = concat_op(pc, ins.a, cat, fr.ops[pc + 1])}, 0
  end
  local guard <close> = setmetatable({fr = fr}, GUARD)
  local msgh = fr.msgh
  if msgh then     -- the message handler of the xpcall the frame runs in
    return finish(fr, xpcall(execute, function(e) return msgh(rewrite(fr, e)) end, fr))
  end
  return finish(fr, pcall(execute, fr))
end

function start(f, interpret, caller, args)
  local proto = proto_of(f)
  local regs, varargs = arguments(proto, args)
  return finisher.run(f, proto, 1, regs, varargs, nil,
    {interpret = interpret, caller = caller, msgh = caller and caller.msgh})
end

function finisher.call(f, ...)
  return start(f, nil, nil, table_pack(...))
end

-- `interpret(callee, fr)` decides whether a Lua callee is interpreted too
-- (true), or names a function to call in its place.
function finisher.call_hooked(interpret, f, ...)
  return start(f, interpret, nil, table_pack(...))
end

finisher.is_lua = is_lua

-- ------------------------------------------------------- conformance ---

local conform                              -- the hook of finisher.conformance

-- A function for C code to call back that runs f interpreted; its caller
-- is that C code (a C level), or nothing (a coroutine's body).
local function interpreted(f, caller)
  if not is_lua(f) then return f end
  return function(...) return start(f, conform, caller, table_pack(...)) end
end

-- C functions that call back an argument: its index.
local CALLBACK = {[coroutine_create] = 1, [coroutine_wrap] = 1, [table_sort] = 2,
  [string_gsub] = 3, [load] = 1}
local COROUTINE = {[coroutine_create] = true, [coroutine_wrap] = true}

-- The callback's caller: the C function fn called from level x, under the
-- same message handler (a coroutine's body: nothing, and none).
local function callback(fn, i, x, args)
  local caller = nil
  if not COROUTINE[fn] then caller = {c = true, caller = x, msgh = x.msgh} end
  args[i] = interpreted(args[i], caller)
end

-- In place of such a function called by interpreted code: not a tail call,
-- so that its argument errors name `fn`, which rewrite() corrects.
local function calling_back(fn, i)
  return function(fr)
    return function(...)
      local args = table_pack(...)
      callback(fn, i, fr, args)
      local r = table_pack(fn(table_unpack(args, 1, args.n)))
      -- load returns a reader's error, handled (lua_load runs the reader
      -- under the active handler: ldo.c luaD_protectedparser)
      if r[1] == nil and fn == load then r[2] = unboxed(r[2]) end
      return table_unpack(r, 1, r.n)
    end
  end
end

-- What pcall/xpcall (the C level x) call for f: f interpreted, or f with
-- its callback interpreted, called by pcall again so that its errors are
-- as when called by pcall (no position; named by pushglobalfuncname).
local function protected(x, f, ...)
  local i = CALLBACK[f]
  if i == nil then return start(f, conform, x, table_pack(...)) end
  local args = table_pack(...)
  callback(f, i, x, args)
  local r = table_pack(pcall(f, table_unpack(args, 1, args.n)))
  if not r[1] then error(r[2], 0) end
  return table_unpack(r, 2, r.n)
end

local function reaches(f) return is_lua(f) or CALLBACK[f] ~= nil end

-- xpcall's results: an error is what the handler returned (HANDLED).
local function unhandled(ok, ...)
  if ok then return ok, ... end
  return false, unboxed((...))
end

-- A message handler whose own errors overflow the C stack: natively the
-- overflow is raised at a C level (the handler's call, ldo.c
-- luaE_checkcstack), so the message has no position; here it is raised in
-- this file's code, whose position is dropped.
local OVERFLOW = PREFIX .. "(C stack overflow)$"
local function overflowed(msgh)
  return function(e, ...)
    if type(e) == "string" then e = string_match(e, OVERFLOW) or e end
    return msgh(e, ...)
  end
end

-- error, pcall and xpcall (see "Levels"); pcall/xpcall of a Lua function
-- or of a function calling back run it interpreted.
local LEVELED = {[error] = error_from}
local plain_pcall, plain_xpcall = protect(LEVELED)
LEVELED[pcall] = function(x)
  local plain = plain_pcall(x)
  return function(...)
    local f = ...
    if reaches(f) then return pcall(protected, clevel(x), ...) end
    return plain(...)
  end
end
LEVELED[xpcall] = function(x)
  local plain = plain_xpcall(x)
  return function(...)
    local f, msgh = ...
    if type(msgh) ~= "function" then return plain(...) end
    msgh = interpreted(msgh)
    if not reaches(f) then return plain(f, overflowed(msgh), select(3, ...)) end
    -- its frames run the handler (HANDLED)
    local h = boxing(msgh)
    return unhandled(xpcall(protected, h, {c = true, caller = x, msgh = h}, f, select(3, ...)))
  end
end
local REPLACE = {}
for fn, make in next, LEVELED do REPLACE[fn] = make end
for fn, i in next, CALLBACK do REPLACE[fn] = calling_back(fn, i) end

function conform(fn, fr)
  if is_lua(fn) then return true end
  local replace = REPLACE[fn]
  return replace and replace(fr)
end

-- Run f with every Lua function it reaches interpreted (see the header).
function finisher.conformance(f, ...)
  return start(f, conform, nil, table_pack(...))
end

return finisher
