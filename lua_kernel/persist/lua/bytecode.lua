-- Lua 5.4 binary chunks (the output of `string.dump`) as plain Lua tables.
--
-- The finisher (the bytecode interpreter that resumes restored coroutines)
-- needs each frame's prototype: its instructions, constants, upvalue
-- descriptions, children and line table. This module reads them from
-- `string.dump(f)` and writes a prototype back as a loadable chunk. Writing a
-- *child* prototype as a main function is what makes `load` give a closure of
-- any nested function (with fresh upvalues, which the caller then sets).
--
-- Returns `bytecode`:
--   bytecode.read(dump)          -> proto        (error "bytecode: ..." if malformed)
--   bytecode.write(proto[,strip])-> chunk        (accepted by load(chunk, name, "b"))
--   bytecode.line_of(proto, pc)  -> line | nil   (pc 1-based into proto.code)
--   bytecode.decode(i)           -> op, a, b, c, k, bx, sbx, ax, sj
--   bytecode.fields(i)           -> {op =, a =, b =, c =, k =, bx =, sbx =, ax =, sj =}
--   bytecode.OP[name] -> opcode, bytecode.OPNAMES[opcode] -> name   (0-based, lopcodes.h)
--
-- A proto is
--   { source = string|nil, source_was_null = true|nil,
--     linedefined, lastlinedefined, numparams, is_vararg = boolean,
--     maxstacksize,
--     code = { instruction, ... }          -- 32-bit unsigned integers
--     k = { n = count, value, ... }        -- nil/false/true/int/float/string
--     upvalues = { {instack = bool, idx = int, kind = int, name = str|nil} },
--     p = { child proto, ... },
--     lineinfo = { signed byte, ... },     -- empty when stripped
--     abslineinfo = { {pc = int, line = int}, ... },  -- pc 0-based, as dumped
--     locvars = { {name = str|nil, startpc = int, endpc = int}, ... },
--     nupvalues_main = int }               -- only on the proto bytecode.read returns
-- `source_was_null` marks a function whose dumped source was absent; it got
-- its parent's source (nil for a main function), as lundump.c does. Writing
-- compares sources by value: a child whose source equals its parent's is
-- written without one, exactly as ldump.c does for the shared source string.
--
-- ============================= THE FORMAT ================================
-- (ldump.c / lundump.c of Lua 5.4; all multi-byte numbers in native order)
--
-- chunk   = header, byte nupvalues, function
-- header  = "\27Lua", byte 0x54 (version), byte 0 (format),
--           "\x19\x93\r\n\x1a\n" (LUAC_DATA: catches text-mode mangling),
--           byte 4 (sizeof Instruction), byte 8 (lua_Integer),
--           byte 8 (lua_Number), integer 0x5678, number 370.5
--           (the last two check the integer and float encodings)
-- varint  = 7 bits per byte, most significant group first; the last byte
--           has bit 0x80 set (`int` values must stay below 2^31)
-- string  = varint size; 0 means NULL, else size - 1 bytes follow
-- function= string source (NULL: same as the parent), varint linedefined,
--           varint lastlinedefined, byte numparams, byte is_vararg,
--           byte maxstacksize,
--           code:      varint n, n x 4-byte instructions
--           constants: varint n, n x (byte tag, payload):
--                        0 nil, 1 false, 17 true, 3 integer (8 bytes),
--                        19 float (8 bytes), 4 short / 20 long string
--           upvalues:  varint n, n x (byte instack, byte idx, byte kind)
--           protos:    varint n, n x function
--           debug:     varint n, n x signed byte lineinfo (line deltas;
--                        -128 = "see abslineinfo"),
--                      varint n, n x (varint pc, varint line) abslineinfo,
--                      varint n, n x (string name, varint startpc,
--                        varint endpc) locvars,
--                      varint n (0 or #upvalues), n x string upvalue name
-- A stripped dump has NULL sources and all four debug counts 0.

local string_byte, string_char, string_sub = string.byte, string.char, string.sub
local string_pack, string_unpack, string_packsize =
  string.pack, string.unpack, string.packsize
local string_format = string.format
local table_concat, table_unpack = table.concat, table.unpack
local math_type = math.type
local error, type, tostring = error, type, tostring

local bytecode = {}

-- ------------------------------------------------------------ opcodes ---

-- ORDER OP, as lopnames.h.
local OPNAMES = {
  [0] = "MOVE", "LOADI", "LOADF", "LOADK", "LOADKX", "LOADFALSE",
  "LFALSESKIP", "LOADTRUE", "LOADNIL", "GETUPVAL", "SETUPVAL", "GETTABUP",
  "GETTABLE", "GETI", "GETFIELD", "SETTABUP", "SETTABLE", "SETI", "SETFIELD",
  "NEWTABLE", "SELF", "ADDI", "ADDK", "SUBK", "MULK", "MODK", "POWK", "DIVK",
  "IDIVK", "BANDK", "BORK", "BXORK", "SHRI", "SHLI", "ADD", "SUB", "MUL",
  "MOD", "POW", "DIV", "IDIV", "BAND", "BOR", "BXOR", "SHL", "SHR", "MMBIN",
  "MMBINI", "MMBINK", "UNM", "BNOT", "NOT", "LEN", "CONCAT", "CLOSE", "TBC",
  "JMP", "EQ", "LT", "LE", "EQK", "EQI", "LTI", "LEI", "GTI", "GEI", "TEST",
  "TESTSET", "CALL", "TAILCALL", "RETURN", "RETURN0", "RETURN1", "FORLOOP",
  "FORPREP", "TFORPREP", "TFORCALL", "TFORLOOP", "SETLIST", "CLOSURE",
  "VARARG", "VARARGPREP", "EXTRAARG",
}
local OP = {}
for n = 0, #OPNAMES do OP[OPNAMES[n]] = n end
bytecode.OP, bytecode.OPNAMES = OP, OPNAMES

local OFFSET_sBx = (1 << 17 >> 1) - 1     -- MAXARG_Bx >> 1 = 65535
local OFFSET_sJ = (1 << 25 >> 1) - 1      -- MAXARG_sJ >> 1 = 2^24 - 1

-- Instruction layout (lopcodes.h): op 0-6, A 7-14, k 15, B 16-23, C 24-31;
-- Bx/sBx 15-31; Ax/sJ 7-31.
function bytecode.decode(i)
  local bx = (i >> 15) & 0x1FFFF
  local ax = (i >> 7) & 0x1FFFFFF
  return i & 0x7F, (i >> 7) & 0xFF, (i >> 16) & 0xFF, (i >> 24) & 0xFF,
         (i >> 15) & 1, bx, bx - OFFSET_sBx, ax, ax - OFFSET_sJ
end
local decode = bytecode.decode

-- The same by name, lopcodes.h's GETARG_* (C of an OP_MMBIN* is its event,
-- k of a test its condition): the one list of the names.
function bytecode.fields(i)
  local op, a, b, c, k, bx, sbx, ax, sj = decode(i)
  return {op = op, a = a, b = b, c = c, k = k, bx = bx, sbx = sbx, ax = ax, sj = sj}
end

-- ------------------------------------------------------------ constants ---

local SIGNATURE = "\27Lua"
local VERSION, FORMAT = 0x54, 0
local LUAC_DATA = "\x19\x93\r\n\x1a\n"
local LUAC_INT, LUAC_NUM = 0x5678, 370.5
local SIZE_INSTRUCTION, SIZE_INTEGER, SIZE_NUMBER =
  4, string_packsize("j"), string_packsize("n")
local FMT_INSTRUCTION, FMT_INTEGER, FMT_NUMBER = "=I4", "=j", "=n"

local T_NIL, T_FALSE, T_TRUE = 0, 1, 17
local T_INT, T_FLT, T_SHRSTR, T_LNGSTR = 3, 19, 4, 20
local MAXSHORTLEN = 40                     -- LUAI_MAXSHORTLEN
local INT_MAX = 0x7FFFFFFF
local SIZE_MAX = math.maxinteger           -- sizes as Lua integers
local MAX_DEPTH = 1000                     -- nesting of functions

local ABSLINEINFO, MAXIWTHABS = -0x80, 128

local function fail(fmt, ...)
  error("bytecode: " .. string_format(fmt, ...), 0)
end

-- ------------------------------------------------- reading and writing ---

-- As lundump.c and ldump.c: one reader per part of a chunk (load_*), each
-- beside the writer of the same part (dump_*). Each side keeps its state
-- in this file's upvalues for the duration of one read or write (neither
-- calls out, so neither is re-entered): the chunk and the position in it
-- (`src`, `pos`, `len`); the pieces written so far and `strip`.

local src, pos, len                        -- reading
local out, nout, strip                     -- writing

-- ............................................... reading: primitives ...

local function need(n, what)
  if n > len - pos + 1 then
    fail("truncated chunk (%s at byte %d, %d byte(s) needed, %d left)",
         what, pos - 1, n, len - pos + 1)
  end
end

local function load_byte(what)
  need(1, what)
  local b = string_byte(src, pos)
  pos = pos + 1
  return b
end

-- varint (loadUnsigned): fails before the value could pass `limit`.
local function load_unsigned(limit, what)
  local x = 0
  limit = limit >> 7
  repeat
    local b = load_byte(what)
    if x >= limit then fail("integer overflow in %s at byte %d", what, pos - 1) end
    x = (x << 7) | (b & 0x7F)
  until b & 0x80 ~= 0
  return x
end
local function load_int(what) return load_unsigned(INT_MAX, what) end

-- A count of items that take at least `each` bytes each.
local function load_count(what, each)
  local n = load_int(what)
  if n * each > len - pos + 1 then
    fail("truncated chunk (%d %s at byte %d, only %d byte(s) left)",
         n, what, pos - 1, len - pos + 1)
  end
  return n
end

local function load_fixed(fmt, size, what)
  need(size, what)
  local v = string_unpack(fmt, src, pos)
  pos = pos + size
  return v
end

-- string: NULL (nil) or bytes.
local function load_string(what)
  local size = load_unsigned(SIZE_MAX, what)
  if size == 0 then return nil end
  size = size - 1
  need(size, what)
  local v = string_sub(src, pos, pos + size - 1)
  pos = pos + size
  return v
end

local function load_boolean(what)
  local b = load_byte(what)
  if b > 1 then fail("bad %s byte %d at byte %d", what, b, pos - 1) end
  return b == 1
end

-- ............................................... writing: primitives ...

local function put(v) nout = nout + 1; out[nout] = v end

local function check_int(v, lo, hi, what)
  if math_type(v) ~= "integer" or v < lo or v > hi then
    fail("%s must be an integer in [%d, %d], got %s", what, lo, hi, tostring(v))
  end
  return v
end

-- varint (dumpSize): 7-bit groups, most significant first, last marked.
local function dump_varint(x)
  local groups = { x & 0x7F | 0x80 }
  x = x >> 7
  while x ~= 0 do
    groups[#groups + 1] = x & 0x7F
    x = x >> 7
  end
  local g = #groups
  for i = 1, g // 2 do
    groups[i], groups[g + 1 - i] = groups[g + 1 - i], groups[i]
  end
  put(string_char(table_unpack(groups)))
end
local function dump_int(v, what) dump_varint(check_int(v, 0, INT_MAX, what)) end
local function dump_byte(v, what) put(string_char(check_int(v, 0, 255, what))) end

-- string: NULL as size 0, else size + 1 and the bytes.
local function dump_string(v, what)
  if v == nil then
    dump_varint(0)
  elseif type(v) ~= "string" then
    fail("%s must be a string or nil, got %s", what, type(v))
  else
    dump_varint(#v + 1)
    put(v)
  end
end

local function list(v, what)
  if type(v) ~= "table" then fail("%s must be a table, got %s", what, type(v)) end
  return v
end

-- ............................................................ header ...

local function load_literal(lit, msg)
  need(#lit, "header")
  if string_sub(src, pos, pos + #lit - 1) ~= lit then fail("%s", msg) end
  pos = pos + #lit
end

local function load_size_check(size, name)
  local b = load_byte("header")
  if b ~= size then
    fail("%s size mismatch (chunk has %d, this Lua %d)", name, b, size)
  end
end

local function load_header()
  load_literal(SIGNATURE, "not a binary chunk (no \\27Lua signature)")
  local v = load_byte("header")
  if v ~= VERSION then fail("version mismatch (0x%02X, expected 0x54)", v) end
  v = load_byte("header")
  if v ~= FORMAT then fail("format mismatch (%d, expected 0)", v) end
  load_literal(LUAC_DATA, "corrupted chunk (LUAC_DATA)")
  load_size_check(SIZE_INSTRUCTION, "Instruction")
  load_size_check(SIZE_INTEGER, "lua_Integer")
  load_size_check(SIZE_NUMBER, "lua_Number")
  if load_fixed(FMT_INTEGER, SIZE_INTEGER, "header") ~= LUAC_INT then
    fail("integer format mismatch")
  end
  if load_fixed(FMT_NUMBER, SIZE_NUMBER, "header") ~= LUAC_NUM then
    fail("float format mismatch")
  end
end

local function dump_header()
  put(SIGNATURE)
  put(string_char(VERSION, FORMAT))
  put(LUAC_DATA)
  put(string_char(SIZE_INSTRUCTION, SIZE_INTEGER, SIZE_NUMBER))
  put(string_pack(FMT_INTEGER, LUAC_INT))
  put(string_pack(FMT_NUMBER, LUAC_NUM))
end

-- .............................................................. code ...

local function load_code(f)                -- 4-byte instructions
  local code = {}
  local n = load_count("instructions", SIZE_INSTRUCTION)
  for i = 1, n do
    code[i] = string_unpack(FMT_INSTRUCTION, src, pos)
    pos = pos + SIZE_INSTRUCTION
  end
  f.code = code
end

local function dump_code(f)
  local code = list(f.code, "code")
  dump_int(#code, "code size")
  for i = 1, #code do
    put(string_pack(FMT_INSTRUCTION, check_int(code[i], 0, 0xFFFFFFFF, "instruction")))
  end
end

-- ......................................................... constants ...

local function load_constants(f)           -- tag byte, then payload
  local n = load_count("constants", 1)
  local k = { n = n }
  for i = 1, n do
    local t = load_byte("constant tag")
    if t == T_NIL then
      k[i] = nil
    elseif t == T_FALSE then
      k[i] = false
    elseif t == T_TRUE then
      k[i] = true
    elseif t == T_INT then
      k[i] = load_fixed(FMT_INTEGER, SIZE_INTEGER, "integer constant")
    elseif t == T_FLT then
      k[i] = load_fixed(FMT_NUMBER, SIZE_NUMBER, "float constant")
    elseif t == T_SHRSTR or t == T_LNGSTR then
      local v = load_string("string constant")
      if v == nil then fail("bad format for constant string at byte %d", pos - 1) end
      k[i] = v
    else
      fail("bad constant tag %d at byte %d", t, pos - 1)
    end
  end
  f.k = k
end

local function dump_constants(f)           -- k.n counts the nils
  local k = list(f.k, "k")
  local nk = k.n or #k
  dump_int(nk, "constant count")
  for i = 1, nk do
    local v = k[i]
    local t = type(v)
    if v == nil then
      put(string_char(T_NIL))
    elseif v == false then
      put(string_char(T_FALSE))
    elseif v == true then
      put(string_char(T_TRUE))
    elseif math_type(v) == "integer" then
      put(string_char(T_INT) .. string_pack(FMT_INTEGER, v))
    elseif t == "number" then
      put(string_char(T_FLT) .. string_pack(FMT_NUMBER, v))
    elseif t == "string" then
      put(string_char(#v <= MAXSHORTLEN and T_SHRSTR or T_LNGSTR))
      dump_string(v, "string constant")
    else
      fail("constant %d has type %s", i, t)
    end
  end
end

-- .......................................................... upvalues ...

local function load_upvalues(f)            -- instack, idx, kind
  local n = load_count("upvalues", 3)
  local upvalues = {}
  for i = 1, n do
    local instack = load_boolean("upvalue instack")
    local idx = load_byte("upvalue idx")
    local kind = load_byte("upvalue kind")
    if kind > 3 then fail("bad upvalue kind %d at byte %d", kind, pos - 1) end
    upvalues[i] = { instack = instack, idx = idx, kind = kind }
  end
  f.upvalues = upvalues
end

local function dump_upvalues(f)
  local upvalues = list(f.upvalues, "upvalues")
  dump_int(#upvalues, "upvalue count")
  for i = 1, #upvalues do
    local u = list(upvalues[i], "upvalue")
    put(u.instack and "\1" or "\0")
    dump_byte(u.idx, "upvalue idx")
    dump_byte(u.kind or 0, "upvalue kind")
  end
end

-- ............................................................ protos ...

local load_function, dump_function

local function load_protos(f, depth)       -- each with f's source as parent's
  local n = load_count("functions", 1)
  local p = {}
  for i = 1, n do p[i] = load_function(f.source, depth + 1) end
  f.p = p
end

local function dump_protos(f, depth)
  local p = list(f.p, "p")
  dump_int(#p, "proto count")
  for i = 1, #p do dump_function(p[i], f.source, depth + 1) end
end

-- ............................................................. debug ...

-- lineinfo (signed bytes), abslineinfo, locvars, upvalue names
local function load_debug(f)
  local n = load_count("lineinfo entries", 1)
  if n ~= 0 and n ~= #f.code then
    fail("%d lineinfo entries for %d instructions", n, #f.code)
  end
  local lineinfo = {}
  for i = 1, n do
    local b = string_byte(src, pos)
    pos = pos + 1
    lineinfo[i] = b >= 0x80 and b - 0x100 or b
  end
  f.lineinfo = lineinfo
  n = load_count("abslineinfo entries", 2)
  local abslineinfo = {}
  for i = 1, n do
    local apc = load_int("abslineinfo pc")
    abslineinfo[i] = { pc = apc, line = load_int("abslineinfo line") }
  end
  f.abslineinfo = abslineinfo
  n = load_count("local variables", 3)
  local locvars = {}
  for i = 1, n do
    local name = load_string("local variable name")
    local startpc = load_int("local variable startpc")
    locvars[i] = { name = name, startpc = startpc, endpc = load_int("local variable endpc") }
  end
  f.locvars = locvars
  local upvalues = f.upvalues
  n = load_count("upvalue names", 1)
  if n ~= 0 and n ~= #upvalues then
    fail("%d upvalue names for %d upvalues", n, #upvalues)
  end
  for i = 1, n do upvalues[i].name = load_string("upvalue name") end
end

local function dump_debug(f)
  if strip then
    put("\x80\x80\x80\x80")   -- four zero counts
    return
  end
  local lineinfo = list(f.lineinfo or {}, "lineinfo")
  dump_int(#lineinfo, "lineinfo size")
  for i = 1, #lineinfo do
    put(string_char(check_int(lineinfo[i], -128, 127, "lineinfo entry") & 0xFF))
  end
  local abslineinfo = list(f.abslineinfo or {}, "abslineinfo")
  dump_int(#abslineinfo, "abslineinfo size")
  for i = 1, #abslineinfo do
    local a = list(abslineinfo[i], "abslineinfo entry")
    dump_int(a.pc, "abslineinfo pc")
    dump_int(a.line, "abslineinfo line")
  end
  local locvars = list(f.locvars or {}, "locvars")
  dump_int(#locvars, "locvars size")
  for i = 1, #locvars do
    local l = list(locvars[i], "locvar")
    dump_string(l.name, "local variable name")
    dump_int(l.startpc, "local variable startpc")
    dump_int(l.endpc, "local variable endpc")
  end
  local upvalues = f.upvalues
  dump_int(#upvalues, "upvalue names count")
  for i = 1, #upvalues do dump_string(upvalues[i].name, "upvalue name") end
end

-- .......................................................... function ...

function load_function(psource, depth)
  if depth > MAX_DEPTH then fail("functions nested too deep") end
  local f = {}
  local source = load_string("source")     -- NULL means the parent's
  if source == nil then
    source = psource
    f.source_was_null = true
  end
  f.source = source
  f.linedefined = load_int("linedefined")
  f.lastlinedefined = load_int("lastlinedefined")
  f.numparams = load_byte("numparams")
  f.is_vararg = load_boolean("is_vararg")
  f.maxstacksize = load_byte("maxstacksize")
  load_code(f)
  load_constants(f)
  load_upvalues(f)
  load_protos(f, depth)
  load_debug(f)
  return f
end

function dump_function(f, psource, depth)
  if depth > MAX_DEPTH then fail("functions nested too deep") end
  list(f, "proto")
  -- source: omitted when stripped or the same as the parent's
  if strip or f.source == nil or f.source == psource then
    dump_string(nil)
  else
    dump_string(f.source, "source")
  end
  dump_int(f.linedefined, "linedefined")
  dump_int(f.lastlinedefined, "lastlinedefined")
  dump_byte(f.numparams, "numparams")
  put(f.is_vararg and "\1" or "\0")
  dump_byte(f.maxstacksize, "maxstacksize")
  dump_code(f)
  dump_constants(f)
  dump_upvalues(f)
  dump_protos(f, depth)
  dump_debug(f)
end

-- ............................................................. chunk ...

function bytecode.read(dump)
  if type(dump) ~= "string" then
    fail("expected a string, got %s", type(dump))
  end
  src, pos, len = dump, 1, #dump
  load_header()
  local nupvalues = load_byte("header")
  local main = load_function(nil, 1)
  if nupvalues ~= #main.upvalues then
    fail("header says %d upvalues, main function has %d", nupvalues, #main.upvalues)
  end
  if pos <= len then
    fail("%d trailing byte(s) after the chunk", len - pos + 1)
  end
  src = nil                                -- (not kept alive)
  main.nupvalues_main = nupvalues
  return main
end

function bytecode.write(proto, strip_debug)
  strip = strip_debug and true or false
  out, nout = {}, 0
  list(proto, "proto")
  dump_header()
  dump_byte(#list(proto.upvalues, "upvalues"), "upvalue count")
  dump_function(proto, nil, 1)
  local chunk = table_concat(out)
  out = nil
  return chunk
end

-- ------------------------------------------------------------ line info ---

-- luaG_getfuncline: start from the last abslineinfo checkpoint at or before
-- the instruction (or linedefined), then add the deltas after it.
function bytecode.line_of(proto, pc)
  local lineinfo, code = proto.lineinfo, proto.code
  if lineinfo == nil or #lineinfo == 0 then return nil end  -- stripped
  if math_type(pc) ~= "integer" or pc < 1 or pc > #lineinfo then return nil end
  local z = pc - 1                          -- 0-based, as in the C code
  local abs = proto.abslineinfo or {}
  local basepc, line
  if #abs == 0 or z < abs[1].pc then
    basepc, line = -1, proto.linedefined
  else
    local i = z // MAXIWTHABS               -- 1-based estimate (a lower bound)
    if i < 1 then i = 1 end
    if i > #abs then i = #abs end
    while i > 1 and abs[i].pc > z do i = i - 1 end  -- only if malformed
    while i < #abs and z >= abs[i + 1].pc do i = i + 1 end
    basepc, line = abs[i].pc, abs[i].line
  end
  while basepc < z do
    basepc = basepc + 1
    local d = lineinfo[basepc + 1]
    if d == ABSLINEINFO then return nil end  -- malformed: missed checkpoint
    line = line + d
  end
  return line
end

return bytecode
