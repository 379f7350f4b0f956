-- The Lua half of the saved-pc reader (lua_kernel/persist/framepeek.py).
--
-- Loaded once per Lua state with `permanent`, the serializer's lookup of the
-- standard library as it was before any user code ran (state.lua's
-- M.permanent), so that a notebook that replaced `debug.getinfo` or
-- `coroutine.yield` cannot mislead the reader, `bytecode`, the module of
-- persist/lua/bytecode.lua, and optionally `proto_of`, the finisher's cache
-- of prototypes by function (finisher.proto_of). Returns `framepeek`:
--   framepeek.frames(co [, collect]) -> record | nil, reason    what the debug
--                      library says; with `collect`, each Lua level also
--                      gets regs (the values of its nslots slots, 1-based:
--                      regs[r + 1] is register r) and va (its varargs, {n=})
--   framepeek.pack(record)  -> the record as bytes for framepeek.py (struct layout
--                      in `framepeek.pack` below)
--   framepeek.proto(f)      -> f's prototype as bytecode.lua reads it from
--                      string.dump (with debug info) | nil, reason
--   framepeek.line_of(f, pc) -> the line of f's instruction pc (1-based),
--                      -1 without line information | nil
--   framepeek.samples()     -> suspended coroutines with known pcs, for the self-check
--   framepeek.original(name, current) -> the library function `name` as it was
--                      before user code ran (`current` if there is no such)
--
-- A record describes a suspended coroutine, level by level as debug.getinfo
-- numbers them (level 0 is always `coroutine.yield`):
--   thread  "%p" of the thread (its lua_State*)
--   yield   "%p" of the original coroutine.yield (a light C function)
--   n       the number of levels (0 .. n-1)
--   [level] { what, func, line (currentline),
--             src (short_src), linedefined, namewhat, nslots, shift }
-- where nslots, for Lua frames, counts the slots debug.getlocal shows
-- (named locals and "(temporary)" ones): everything below the function slot
-- of the frame it is calling; and shift is how far a vararg Lua function's
-- slot moved up from where its caller put it (0 for other functions).
local permanent, bytecode, proto_of = ...

local function original(name, current)
  local v = permanent and permanent(name)
  if v == nil then v = current end
  return v
end

local getinfo = original("debug.getinfo", debug.getinfo)
local getlocal = original("debug.getlocal", debug.getlocal)
local getupvalue = original("debug.getupvalue", debug.getupvalue)
local yield = original("coroutine.yield", coroutine.yield)
local costatus = original("coroutine.status", coroutine.status)
local cocreate = original("coroutine.create", coroutine.create)
local resume = original("coroutine.resume", coroutine.resume)
local sformat = original("string.format", string.format)
local sdump = original("string.dump", string.dump)
local pcall = original("pcall", pcall)
local ipairs = original("ipairs", ipairs)
local type = original("type", type)
local rawequal = original("rawequal", rawequal)

local framepeek = {}
framepeek.original = original
framepeek.VERSION = bytecode.VERSION     -- 0x54 | 0x55: the Lua this runs in

-- What getinfo says of a function itself ("S", "u"), asked once per function.
local fninfo = setmetatable({}, { __mode = "k" })

local function level_record(co, level, collect)
  local info = getinfo(co, level, "lnf")
  if info == nil then return nil end
  local func = info.func
  local fi = fninfo[func]
  if fi == nil then
    fi = getinfo(func, "Su")
    if fi.isvararg and bytecode.VERSION == 0x55 then
      -- 5.5: a function with a vararg table (PF_VATAB) keeps its slot
      -- (luaT_adjustvarargs builds the table in place)
      local p = framepeek.proto(func)
      fi.vatab = p ~= nil and (p.flag or 0) & 2 ~= 0
    end
    fninfo[func] = fi
  end
  local r = {
    what = fi.what, func = func, line = info.currentline, src = fi.short_src,
    linedefined = fi.linedefined, namewhat = info.namewhat, shift = 0,
  }
  if fi.what ~= "C" then
    local regs = collect and {} or nil
    local n = 0
    while true do
      local name, v = getlocal(co, level, n + 1)
      if name == nil then break end
      n = n + 1
      if regs then regs[n] = v end
    end
    r.nslots, r.regs = n, regs
    if fi.isvararg and not fi.vatab then
      -- OP_VARARGPREP moved the function slot above its arguments
      -- (luaT_adjustvarargs): it is 1 + nparams + #varargs above where the
      -- caller put it
      local va = collect and {} or nil
      local extra = 0
      while true do
        local name, v = getlocal(co, level, -(extra + 1))
        if name == nil then break end
        extra = extra + 1
        if va then va[extra] = v end
      end
      if va then va.n = extra end
      r.shift, r.va = 1 + fi.nparams + extra, va
    end
  end
  return r
end

function framepeek.frames(co, collect)
  if type(co) == "function" then        -- a coroutine.wrap function
    local _, t = getupvalue(co, 1)
    if type(t) == "thread" then co = t end
  end
  if type(co) == "function" then
    return nil, "not a coroutine (got a function; lupa hands a coroutine " ..
      "that has not started to Python as its function, and one that has " ..
      "not started has no frames)"
  elseif type(co) ~= "thread" then
    return nil, "not a coroutine (got a " .. type(co) .. ")"
  end
  local status = costatus(co)
  if status == "dead" then
    return nil, "the coroutine is dead: it has no frames"
  elseif status ~= "suspended" then
    return nil, "the coroutine is " .. status .. ", not suspended"
  end
  local top = getinfo(co, 0, "f")
  if top == nil then
    return nil, "the coroutine has not started: it has no frames"
  end
  if not rawequal(top.func, yield) then
    local info = getinfo(co, 0, "S")
    return nil, sformat("the coroutine is not suspended in coroutine.yield " ..
      "(its innermost frame is %s function %s:%d)", info.what, info.short_src,
      info.linedefined)
  end
  local rec = { thread = sformat("%p", co), yield = sformat("%p", yield) }
  local level = 0
  while true do
    local r = level_record(co, level, collect)
    if r == nil then break end
    rec[level] = r
    level = level + 1
  end
  rec.n = level
  return rec
end

-- The bytes framepeek.py reads (little-endian, no padding): j thread, j yield
-- (the addresses "%p" shows), I4 n; then per level: B what (0 Lua, 1 C,
-- 2 main), j fp, i4 line, i4 linedefined, B namewhat (index in NAMEWHATS,
-- 0 for ""), i4 nslots, i4 shift.
local NAMEWHATS = { "global", "local", "method", "field", "upvalue", "constant",
  "metamethod", "for iterator", "hook" }
local NWCODE = {}
for i, w in ipairs(NAMEWHATS) do NWCODE[w] = i end
local WHAT = { Lua = 0, C = 1, main = 2 }
local spack = original("string.pack", string.pack)
local concat = original("table.concat", table.concat)
local tonumber = original("tonumber", tonumber)

function framepeek.pack(rec)
  local out = { spack("<jjI4", tonumber(rec.thread), tonumber(rec.yield), rec.n) }
  for level = 0, rec.n - 1 do
    local r = rec[level]
    out[level + 2] = spack("<BjiiBii", WHAT[r.what] or 1, tonumber(sformat("%p", r.func)) or 0, r.line,
      r.linedefined, NWCODE[r.namewhat] or 0, r.nslots or 0, r.shift)
  end
  return concat(out)
end

-- Prototypes per function: the finisher's cache (`proto_of`) when this
-- state has one, else this file's.
if proto_of == nil then
  local protos = setmetatable({}, { __mode = "k" })
  proto_of = function(f)
    local p = protos[f]
    if p == nil then
      p = bytecode.read(sdump(f))
      protos[f] = p
    end
    return p
  end
end

function framepeek.proto(f)
  local ok, p = pcall(proto_of, f)
  if not ok then return nil, p end
  return p
end

-- The line of f's instruction pc (1-based): bytecode.lua's line_of, the one
-- reader of line information (framepeek.py checks a pc it read against
-- getinfo's currentline with it); -1 when f has no line information, as
-- currentline; nil when pc is outside f's code or f cannot be dumped.
function framepeek.line_of(f, pc)
  local p = framepeek.proto(f)
  if p == nil then return nil end
  if #p.lineinfo == 0 then return -1 end
  return bytecode.line_of(p, pc)
end

-- Coroutines suspended at known places. Each function has exactly one
-- call-like instruction (CALL, TAILCALL or TFORCALL), so the pc of a frame
-- running it is known from its bytecode alone.
local function one() local x = 1; x = yield(x); return x end
local function two() local r = one(); return r end
local function three() local ok, r = pcall(two); return ok and r end
local function iter() yield(); return nil end
local function four() for _ in iter do end end
local function five(...) return yield(5, ...) end
local function six() local a, b, c = 1, 2, 3; local t = { a, b, yield(c) }; return t end
local function va(...) local x = yield(...); return x end
local function seven(p) local r = va(p, 2, 3); return r end

function framepeek.samples()
  local out = {}
  for i, f in ipairs({ one, two, three, four, five, six, seven }) do
    local co = cocreate(f)
    resume(co, 1, 2, 3)
    out[i] = co
  end
  return out
end

return framepeek
