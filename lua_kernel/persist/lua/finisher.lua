-- The finisher: a Lua 5.4 bytecode interpreter written in Lua.
--
-- It continues a Lua frame from any instruction, given the frame's closure,
-- its prototype (B.read(string.dump(closure))), a pc, the registers and the
-- varargs. Values, operators and calls stay native: `a + b`, `t[k]`, `a < b`,
-- `f(...)` are Lua's own, so metamethods, coercions, integer/float rules and
-- most errors are exactly native. Every call it makes is a native call (the
-- callee runs at full speed and may yield), unless the optional `interpret`
-- hook asks for the callee to be interpreted too (conformance mode).
--
-- Receives B (bytecode.lua); returns F:
--   F.run(closure, proto, pc, regs, varargs [, top [, opts]]) -> results...
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
--                 interpret = function(callee) -> boolean }
--               `links` says a register is an open upvalue shared with
--               `f`'s upvalue `n` (see "Open upvalues" below).
--   F.call(f, ...) -> results...   run a whole Lua function from its first
--       instruction (conformance entry).
--   F.localname(proto, reg, pc) -> name | nil   (luaF_getlocalname)
--
-- Open upvalues. Registers are slots of a plain table, but a closure made by
-- OP_CLOSURE that captures register r must share the variable with the frame.
-- So the first capture of r turns the register into a *box*: a cell that is
-- the upvalue of a tiny closure (`newbox`); the child's upvalue is joined to
-- it with debug.upvaluejoin, and so is every later capture of r. While boxed,
-- the raw slot R[r] is nil and R's metatable routes reads and writes of r to
-- the box (so unboxed registers cost nothing extra). OP_CLOSE / OP_RETURN
-- close the box: its value goes back into the raw slot and the box is
-- dropped (the closures keep the cell, as after luaF_closeupval).
--
-- Errors. The whole dispatch runs under one pcall. A native error raised by
-- an operator in this file carries this file's position ("finisher.lua:NN:")
-- and a variable name from this file; both are rewritten: the position
-- becomes the interpreted frame's `short_src:line:` and the variable info
-- " (local 'x')" is dropped (the native text would name the interpreted
-- variable; that is not reconstructed yet). Errors from callees and
-- metamethods pass through untouched; `error(msg, 2)` in a callee points at
-- the interpreted line, as natively. On error, pending to-be-closed variables
-- are closed with the error object, in reverse order, as natively.
--
-- Known differences: OP_NEWTABLE/OP_SETLIST cannot presize a table from Lua,
-- so `#t` of a constructor with holes ({...} with nils) may pick another
-- border than native (both are valid borders); `pairs` order of such tables
-- may differ likewise. Error variable info (" (global 'f')") is dropped.

local B = ...

local debug_getupvalue, debug_setupvalue = debug.getupvalue, debug.setupvalue
local debug_upvaluejoin, debug_getinfo = debug.upvaluejoin, debug.getinfo
local debug_getmetatable = debug.getmetatable
local select, type, error, pcall, load = select, type, error, pcall, load
local rawset, rawget, rawequal, setmetatable = rawset, rawget, rawequal, setmetatable
local tonumber, tostring = tonumber, tostring
local math_type, math_tointeger, math_floor, math_ceil, math_ult =
  math.type, math.tointeger, math.floor, math.ceil, math.ult
local maxinteger, mininteger = math.maxinteger, math.mininteger
local table_unpack, table_pack = table.unpack, table.pack
local decode, OP, line_of = B.decode, B.OP, B.line_of

local F = {}

local MY_SRC = debug_getinfo(1, "S").short_src
local OFFSET_sC = 127                 -- MAXARG_C >> 1
local MAXARG_C1 = 256                 -- MAXARG_C + 1

-- ------------------------------------------------------------ caches ---

-- Decoded instructions per prototype: dec[pc] = {op, a, b, c, k, bx, sbx, sj}.
local decoded = setmetatable({}, {__mode = "k"})
local function decode_proto(proto)
  local d = decoded[proto]
  if d then return d end
  d = {}
  for pc, i in ipairs(proto.code) do
    local op, a, b, c, k, bx, sbx, _, sj = decode(i)
    d[pc] = {op, a, b, c, k, bx, sbx, sj}
  end
  decoded[proto] = d
  return d
end

-- Loadable chunk per child prototype (B.write once).
local chunks = setmetatable({}, {__mode = "k"})

-- ------------------------------------------------------------ helpers ---

-- luaF_getlocalname: the name of the reg-th (0-based) active local at pc
-- (1-based instruction index).
function F.localname(proto, reg, pc)
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

-- Registers: a plain 0-based table whose boxed slots are raw nils that the
-- metatable routes to their box.
local function boxget(box)
  local _, v = debug_getupvalue(box.f, box.n)
  return v
end

local function make_registers(regs, links)
  local boxes = {}
  for r, link in pairs(links or {}) do
    boxes[r] = link
    rawset(regs, r, nil)
  end
  setmetatable(regs, {
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
  return regs, boxes
end

-- ------------------------------------------------------------ frames ---

-- A frame: {cl, p, R, boxes, K, varargs, pc, cur, top, tbc = {reg...},
-- interpret, done, ret}.

local function getupval(fr, idx)           -- idx 0-based, as in the bytecode
  local _, v = debug_getupvalue(fr.cl, idx + 1)
  return v
end

local function box_of(fr, r)
  local box = fr.boxes[r]
  if not box then
    box = newbox(rawget(fr.R, r))
    rawset(fr.R, r, nil)
    fr.boxes[r] = box
  end
  return box
end

-- luaF_closeupval: unbox every register >= level.
local function closeupvals(fr, level)
  local R, boxes = fr.R, fr.boxes
  for r, box in pairs(boxes) do
    if r >= level then
      local v = boxget(box)
      boxes[r] = nil
      rawset(R, r, v)
    end
  end
end

local function tbc_error(fr, reg, pc)
  local name = F.localname(fr.p, reg, pc) or "?"
  error(string.format("variable '%s' got a non-closable value", name))
end

-- luaF_newtbcupval
local function newtbc(fr, reg)
  local v = fr.R[reg]
  if v == nil or v == false then return end
  local mt = debug_getmetatable(v)
  if mt == nil or mt.__close == nil then
    tbc_error(fr, reg, fr.cur)
  end
  local t = fr.tbc
  t[#t + 1] = reg
end

-- Call the pending to-be-closed variables >= level, last first (luaF_close).
-- With `err` (an error is propagating) a failing __close replaces it.
local function closetbc(fr, level, haserr, err)
  local t = fr.tbc
  while #t > 0 and t[#t] >= level do
    local reg = t[#t]
    t[#t] = nil
    local v = fr.R[reg]
    local mt = debug_getmetatable(v)
    local tm = mt and mt.__close
    if haserr then
      local ok, e = pcall(tm, v, err)
      if not ok then err = e end
    else
      tm(v, nil)
    end
  end
  return err
end

local function close(fr, level)
  closeupvals(fr, level)
  closetbc(fr, level, false)
end

-- Call fn with R[a+1 .. last], results packed.
local function call(fr, fn, a, last)
  local interpret = fr.interpret
  if interpret and type(fn) == "function" and interpret(fn) then
    return table_pack(F.call_hooked(interpret, fn, table_unpack(fr.R, a + 1, last)))
  end
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

-- docondjump: if cond ~= k then skip the next instruction (a JMP), else do it.
local function condjump(fr, cond, k)
  local pc = fr.pc
  if cond ~= (k == 1) then
    fr.pc = pc + 1
  else
    fr.pc = pc + fr.dec[pc][8] + 1
  end
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
  error(string.format("bad 'for' %s (number expected, got %s)", what, objtypename(v)))
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
local function forprep(fr, a)
  local R = fr.R
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
    if step == 0 then error("'for' step is zero") end
    if (0 < step) and (limit < finit) or (not (0 < step)) and (finit < limit) then
      return true
    end
    R[a + 1], R[a + 2] = limit + 0.0, step + 0.0
    R[a], R[a + 3] = finit + 0.0, finit + 0.0
  end
  return false
end

local function floatforloop(fr, a)
  local R = fr.R
  local step, limit = R[a + 2], R[a + 1]
  local idx = R[a] + step
  if (0 < step) and (idx <= limit) or (not (0 < step)) and (limit <= idx) then
    R[a], R[a + 3] = idx, idx
    return true
  end
  return false
end

-- Native operators by tag-method event (ltm.h TMS order: ADD is 6).
local ARITH = {
  [6] = function(x, y) return x + y end,   [7] = function(x, y) return x - y end,
  [8] = function(x, y) return x * y end,   [9] = function(x, y) return x % y end,
  [10] = function(x, y) return x ^ y end,  [11] = function(x, y) return x / y end,
  [12] = function(x, y) return x // y end, [13] = function(x, y) return x & y end,
  [14] = function(x, y) return x | y end,  [15] = function(x, y) return x ~ y end,
  [16] = function(x, y) return x << y end, [17] = function(x, y) return x >> y end,
}

-- An arithmetic op with an immediate or constant operand: do what its
-- following OP_MMBINI/OP_MMBINK describes (event, original operand, flip),
-- which is the source-level operation (`x - 1` is ADDI -1 + MMBINI 1 SUB;
-- `2 * x` is MULK + MMBINK flipped), then skip the MMBIN*.
local function arith_imm(fr, a, b)
  local pc = fr.pc
  local m = fr.dec[pc]
  local op, mb, mc, mk = m[1], m[3], m[4], m[5]
  local imm
  if op == OP.MMBINI then imm = mb - OFFSET_sC else imm = fr.K[mb + 1] end
  local x = fr.R[b]
  if mk == 1 then
    fr.R[a] = ARITH[mc](imm, x)
  else
    fr.R[a] = ARITH[mc](x, imm)
  end
  fr.pc = pc + 1
end

-- A register-register arithmetic op; skip the following OP_MMBIN.
local function arith(fr, a, x, y, f)
  fr.R[a] = f(x, y)
  fr.pc = fr.pc + 1
end

local function RK(fr, c, k)
  if k == 1 then return fr.K[c + 1] end
  return fr.R[c]
end

local function closure(fr, bx)
  local child = fr.p.p[bx + 1]
  local chunk = chunks[child]
  if not chunk then
    chunk = B.write(child)
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
  return f
end

-- ------------------------------------------------------------ opcodes ---

-- One handler per opcode, lopcodes.h order: h(fr, a, b, c, k, bx, sbx, sj).
-- fr.pc is the next instruction (savedpc).
local X = {}

X[OP.MOVE] = function(fr, a, b) fr.R[a] = fr.R[b] end
X[OP.LOADI] = function(fr, a, b, c, k, bx, sbx) fr.R[a] = sbx end
X[OP.LOADF] = function(fr, a, b, c, k, bx, sbx) fr.R[a] = sbx + 0.0 end
X[OP.LOADK] = function(fr, a, b, c, k, bx) fr.R[a] = fr.K[bx + 1] end
X[OP.LOADKX] = function(fr, a)
  local ax = fr.p.code[fr.pc] >> 7      -- the following OP_EXTRAARG
  fr.R[a] = fr.K[ax + 1]
  fr.pc = fr.pc + 1
end
X[OP.LOADFALSE] = function(fr, a) fr.R[a] = false end
X[OP.LFALSESKIP] = function(fr, a) fr.R[a] = false; fr.pc = fr.pc + 1 end
X[OP.LOADTRUE] = function(fr, a) fr.R[a] = true end
X[OP.LOADNIL] = function(fr, a, b)
  local R = fr.R
  for r = a, a + b do R[r] = nil end
end
X[OP.GETUPVAL] = function(fr, a, b) fr.R[a] = getupval(fr, b) end
X[OP.SETUPVAL] = function(fr, a, b) debug_setupvalue(fr.cl, b + 1, fr.R[a]) end
X[OP.GETTABUP] = function(fr, a, b, c) fr.R[a] = getupval(fr, b)[fr.K[c + 1]] end
X[OP.GETTABLE] = function(fr, a, b, c) fr.R[a] = fr.R[b][fr.R[c]] end
X[OP.GETI] = function(fr, a, b, c) fr.R[a] = fr.R[b][c] end
X[OP.GETFIELD] = function(fr, a, b, c) fr.R[a] = fr.R[b][fr.K[c + 1]] end
X[OP.SETTABUP] = function(fr, a, b, c, k) getupval(fr, a)[fr.K[b + 1]] = RK(fr, c, k) end
X[OP.SETTABLE] = function(fr, a, b, c, k) fr.R[a][fr.R[b]] = RK(fr, c, k) end
X[OP.SETI] = function(fr, a, b, c, k) fr.R[a][b] = RK(fr, c, k) end
X[OP.SETFIELD] = function(fr, a, b, c, k) fr.R[a][fr.K[b + 1]] = RK(fr, c, k) end
X[OP.NEWTABLE] = function(fr, a) fr.R[a] = {}; fr.pc = fr.pc + 1 end  -- skip EXTRAARG
X[OP.SELF] = function(fr, a, b, c, k)
  local R = fr.R
  local t = R[b]
  R[a + 1] = t
  R[a] = t[RK(fr, c, k)]
end
X[OP.ADDI] = function(fr, a, b) arith_imm(fr, a, b) end
X[OP.ADDK] = function(fr, a, b) arith_imm(fr, a, b) end
X[OP.SUBK] = X[OP.ADDK]
X[OP.MULK] = X[OP.ADDK]
X[OP.MODK] = X[OP.ADDK]
X[OP.POWK] = X[OP.ADDK]
X[OP.DIVK] = X[OP.ADDK]
X[OP.IDIVK] = X[OP.ADDK]
X[OP.BANDK] = X[OP.ADDK]
X[OP.BORK] = X[OP.ADDK]
X[OP.BXORK] = X[OP.ADDK]
X[OP.SHRI] = X[OP.ADDI]
X[OP.SHLI] = X[OP.ADDI]
X[OP.ADD] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[6]) end
X[OP.SUB] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[7]) end
X[OP.MUL] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[8]) end
X[OP.MOD] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[9]) end
X[OP.POW] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[10]) end
X[OP.DIV] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[11]) end
X[OP.IDIV] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[12]) end
X[OP.BAND] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[13]) end
X[OP.BOR] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[14]) end
X[OP.BXOR] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[15]) end
X[OP.SHL] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[16]) end
X[OP.SHR] = function(fr, a, b, c) arith(fr, a, fr.R[b], fr.R[c], ARITH[17]) end
-- The arithmetic ops above already ran any metamethod natively and skipped
-- these; reached only by a jump, which the compiler never emits.
X[OP.MMBIN] = function() end
X[OP.MMBINI] = X[OP.MMBIN]
X[OP.MMBINK] = X[OP.MMBIN]
X[OP.UNM] = function(fr, a, b) fr.R[a] = -fr.R[b] end
X[OP.BNOT] = function(fr, a, b) fr.R[a] = ~fr.R[b] end
X[OP.NOT] = function(fr, a, b) fr.R[a] = not fr.R[b] end
X[OP.LEN] = function(fr, a, b) fr.R[a] = #fr.R[b] end
X[OP.CONCAT] = function(fr, a, b)        -- right to left, as luaV_concat
  local R = fr.R
  local v = R[a + b - 1]
  for r = a + b - 2, a, -1 do v = R[r] .. v end
  R[a] = v
end
X[OP.CLOSE] = function(fr, a) close(fr, a) end
X[OP.TBC] = function(fr, a) newtbc(fr, a) end
X[OP.JMP] = function(fr, a, b, c, k, bx, sbx, sj) fr.pc = fr.pc + sj end
X[OP.EQ] = function(fr, a, b, c, k) condjump(fr, fr.R[a] == fr.R[b], k) end
X[OP.LT] = function(fr, a, b, c, k) condjump(fr, fr.R[a] < fr.R[b], k) end
X[OP.LE] = function(fr, a, b, c, k) condjump(fr, fr.R[a] <= fr.R[b], k) end
X[OP.EQK] = function(fr, a, b, c, k) condjump(fr, rawequal(fr.R[a], fr.K[b + 1]), k) end
local function imm(b, c)                 -- sB, a float when C (isf) is set
  b = b - OFFSET_sC
  if c ~= 0 then return b + 0.0 end
  return b
end
X[OP.EQI] = function(fr, a, b, c, k) condjump(fr, fr.R[a] == imm(b, c), k) end
X[OP.LTI] = function(fr, a, b, c, k) condjump(fr, fr.R[a] < imm(b, c), k) end
X[OP.LEI] = function(fr, a, b, c, k) condjump(fr, fr.R[a] <= imm(b, c), k) end
X[OP.GTI] = function(fr, a, b, c, k) condjump(fr, fr.R[a] > imm(b, c), k) end
X[OP.GEI] = function(fr, a, b, c, k) condjump(fr, fr.R[a] >= imm(b, c), k) end
X[OP.TEST] = function(fr, a, b, c, k) condjump(fr, not not fr.R[a], k) end
X[OP.TESTSET] = function(fr, a, b, c, k)
  local v = fr.R[b]
  if (not v) == (k == 1) then
    fr.pc = fr.pc + 1
  else
    fr.R[a] = v
    fr.pc = fr.pc + fr.dec[fr.pc][8] + 1
  end
end
X[OP.CALL] = function(fr, a, b, c)
  local last = (b ~= 0) and (a + b - 1) or (fr.top - 1)
  setresults(fr, a, call(fr, fr.R[a], a, last), c - 1)
end
X[OP.TAILCALL] = function(fr, a, b, c, k)
  local last = (b ~= 0) and (a + b - 1) or (fr.top - 1)
  if k == 1 then close(fr, 0) end        -- never: tail calls need no close
  fr.ret = call(fr, fr.R[a], a, last)
  fr.done = true
end
X[OP.RETURN] = function(fr, a, b, c, k)
  local n = (b ~= 0) and (b - 1) or (fr.top - a)
  local R = fr.R
  local ret = {n = n}
  for j = 1, n do ret[j] = R[a + j - 1] end
  close(fr, 0)
  fr.ret = ret
  fr.done = true
end
X[OP.RETURN0] = function(fr) close(fr, 0); fr.ret = {n = 0}; fr.done = true end
X[OP.RETURN1] = function(fr, a)
  local v = fr.R[a]
  close(fr, 0)
  fr.ret = {n = 1, v}
  fr.done = true
end
X[OP.FORLOOP] = function(fr, a, b, c, k, bx)
  local R = fr.R
  if math_type(R[a + 2]) == "integer" then
    local count = R[a + 1]
    if count ~= 0 then                   -- unsigned count > 0
      local idx = R[a] + R[a + 2]
      R[a + 1] = count - 1
      R[a], R[a + 3] = idx, idx
      fr.pc = fr.pc - bx
    end
  elseif floatforloop(fr, a) then
    fr.pc = fr.pc - bx
  end
end
X[OP.FORPREP] = function(fr, a, b, c, k, bx)
  if forprep(fr, a) then fr.pc = fr.pc + bx + 1 end
end
X[OP.TFORPREP] = function(fr, a, b, c, k, bx)
  newtbc(fr, a + 3)
  fr.pc = fr.pc + bx                     -- to the OP_TFORCALL
end
X[OP.TFORCALL] = function(fr, a, b, c)
  local R = fr.R
  R[a + 4], R[a + 5], R[a + 6] = R[a], R[a + 1], R[a + 2]
  setresults(fr, a + 4, call(fr, R[a + 4], a + 4, a + 6), c)
end
X[OP.TFORLOOP] = function(fr, a, b, c, k, bx)
  local R = fr.R
  local v = R[a + 4]
  if v ~= nil then
    R[a + 2] = v
    fr.pc = fr.pc - bx
  end
end
X[OP.SETLIST] = function(fr, a, b, c, k)
  local R = fr.R
  local n = (b ~= 0) and b or (fr.top - a - 1)
  local last = c
  if k == 1 then
    last = last + (fr.p.code[fr.pc] >> 7) * MAXARG_C1
    fr.pc = fr.pc + 1
  end
  local t = R[a]
  for j = 1, n do t[last + j] = R[a + j] end
end
X[OP.CLOSURE] = function(fr, a, b, c, k, bx) fr.R[a] = closure(fr, bx) end
X[OP.VARARG] = function(fr, a, b, c)
  local R, va = fr.R, fr.varargs
  local n = c - 1
  if n < 0 then
    n = va.n
    fr.top = a + n
  end
  for j = 1, n do R[a + j - 1] = va[j] end   -- va[j] is nil past va.n
end
X[OP.VARARGPREP] = function() end          -- varargs are already apart
X[OP.EXTRAARG] = function() error("finisher: unexpected OP_EXTRAARG", 0) end

for name, code in pairs(OP) do
  assert(X[code], "finisher: no handler for " .. name)
end

-- ------------------------------------------------------------ running ---

local function execute(fr)
  local dec = fr.dec
  while not fr.done do
    local pc = fr.pc
    local d = dec[pc]
    fr.cur = pc
    fr.pc = pc + 1
    X[d[1]](fr, d[2], d[3], d[4], d[5], d[6], d[7], d[8])
  end
end

local PREFIX = "^" .. MY_SRC:gsub("%p", "%%%0") .. ":%d+: "

local function rewrite(fr, e)
  if type(e) ~= "string" or not e:find(PREFIX) then return e end
  local rest = e:gsub(PREFIX, "", 1)
  rest = rest:gsub(" %([%a ]+ '[^']*'%)$", "", 1)
  local line = line_of(fr.p, fr.cur)
  if fr.short_src and line then
    return fr.short_src .. ":" .. line .. ": " .. rest
  end
  return "?: " .. rest
end

local function finish(fr, ok, e)
  if ok then
    local ret = fr.ret
    return table_unpack(ret, 1, ret.n)
  end
  e = rewrite(fr, e)
  closeupvals(fr, 0)
  e = closetbc(fr, 0, true, e)
  error(e, 0)
end

function F.run(cl, proto, pc, regs, varargs, top, opts)
  opts = opts or {}
  local R, boxes = make_registers(regs or {}, opts.links)
  local tbc = {}
  for j, r in ipairs(opts.tbc or {}) do tbc[j] = r end
  local fr = {
    cl = cl, p = proto, R = R, boxes = boxes, K = proto.k,
    varargs = varargs or {n = 0}, pc = pc, cur = pc,
    top = top or proto.maxstacksize, tbc = tbc,
    dec = decode_proto(proto), interpret = opts.interpret,
    short_src = debug_getinfo(cl, "S").short_src,
  }
  return finish(fr, pcall(execute, fr))
end

-- Prototypes per closure function (string.dump is per prototype, but a
-- closure is the key we have).
local protos = setmetatable({}, {__mode = "k"})
local function proto_of(f)
  local p = protos[f]
  if not p then
    p = B.read(string.dump(f))
    protos[f] = p
  end
  return p
end
F.proto_of = proto_of

local function start(f, interpret, ...)
  local proto = proto_of(f)
  local args = table_pack(...)
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
  return F.run(f, proto, 1, regs, varargs, nil, {interpret = interpret})
end

function F.call(f, ...)
  return start(f, nil, ...)
end

-- Conformance mode: `interpret(callee)` decides whether a Lua callee is
-- interpreted too (default: every Lua function).
function F.call_hooked(interpret, f, ...)
  return start(f, interpret, ...)
end

function F.is_lua(f)
  return type(f) == "function" and debug_getinfo(f, "S").what ~= "C"
end

return F
