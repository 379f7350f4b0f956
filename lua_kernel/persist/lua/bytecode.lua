-- Lua 5.4 and 5.5 binary chunks (the output of `string.dump`) as plain
-- Lua tables.
--
-- The finisher (the bytecode interpreter that resumes restored coroutines)
-- needs each frame's prototype: its instructions, constants, upvalue
-- descriptions, children and line table. This module reads them from
-- `string.dump(f)` and writes a prototype back as a loadable chunk. Writing a
-- *child* prototype as a main function is what makes `load` give a closure of
-- any nested function (with fresh upvalues, which the caller then sets).
--
-- Returns `bytecode`, for the Lua it runs in (5.5 where _VERSION is
-- "Lua 5.5", else 5.4):
--   bytecode.read(dump)          -> proto        (error "bytecode: ..." if malformed)
--   bytecode.write(proto[,strip])-> chunk        (accepted by load(chunk, name, "b"))
--   bytecode.line_of(proto, pc)  -> line | nil   (pc 1-based into proto.code)
--   bytecode.decode(i)           -> op, a, b, c, k, bx, sbx, ax, sj [, vb, vc]
--   bytecode.fields(i)           -> {op =, a =, b =, c =, k =, bx =, sbx =, ax =, sj =
--                                    [, vb =, vc =]}
--   bytecode.OP[name] -> opcode, bytecode.OPNAMES[opcode] -> name   (0-based, lopcodes.h)
--   bytecode.OPMODES[opcode] -> "iABC" | "ivABC" | "iABx" | "iAsBx" | "iAx" | "isJ"
--   bytecode.VERSION             -> 0x54 | 0x55  (the chunks' version byte)
--   bytecode.for_version(v)      -> the same module for Lua v (54, 55, "5.4", "5.5")
-- The formats are described once each, in FORMATS below; everything else is
-- shared. vb and vc (5.5 only) are the fields of the ivABC instructions.
--
-- A proto is
--   { source = string|nil, source_was_null = true|nil,
--     linedefined, lastlinedefined, numparams, is_vararg = boolean,
--     flag = int,                          -- 5.5 only: the dumped flag byte
--     maxstacksize,
--     code = { instruction, ... }          -- 32-bit unsigned integers
--     k = { n = count, value, ... }        -- nil/false/true/int/float/string
--     upvalues = { {instack = bool, idx = int, kind = int, name = str|nil} },
--     p = { child proto, ... },
--     lineinfo = { signed byte, ... },     -- empty when stripped
--     abslineinfo = { {pc = int, line = int}, ... },  -- pc 0-based, as dumped
--     locvars = { {name = str|nil, startpc = int, endpc = int}, ... },
--     nupvalues_main = int }               -- only on the proto bytecode.read returns
-- 5.4: `source_was_null` marks a function whose dumped source was absent; it
-- got its parent's source (nil for a main function), as lundump.c does.
-- Writing compares sources by value: a child whose source equals its
-- parent's is written without one, exactly as ldump.c does for the shared
-- source string.
-- 5.5: every function has its own source (nil: none, as in a stripped dump).
-- `flag` is PF_VAHID (1, hidden varargs) | PF_VATAB (2, a vararg table) |
-- PF_FIXED (4); is_vararg is flag & 3 ~= 0. Writing takes `flag`, or 1 for
-- is_vararg when there is none.
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
--
-- Lua 5.5 (its ldump.c / lundump.c) differs in:
-- header  = "\27Lua", byte 0x55, byte 0, LUAC_DATA, then a size byte and a
--           check value for each of int (4, -0x5678), Instruction
--           (4, 0x12345678), lua_Integer (8, -0x5678), lua_Number (8, -370.5)
-- varint  = every byte but the last has bit 0x80 set (a continuation bit)
-- string  = varint size; size >= 1: size - 1 bytes and a NUL, and the
--           string is saved as the next of the chunk's strings (1, 2, ...);
--           size 0: a varint index follows, 0 = NULL, else that saved string
--           (so each distinct string is written once per chunk)
-- function= varint linedefined, varint lastlinedefined, byte numparams,
--           byte flag, byte maxstacksize, code, constants, upvalues, protos,
--           string source (after the protos; NULL stays NULL), debug
-- code and abslineinfo are aligned: zero bytes pad the chunk to a multiple
--           of 4 before the instructions and before a non-empty abslineinfo
-- integer constants: a varint of the zigzag code (x >= 0: 2x, else -2x - 1)
-- abslineinfo: n x (4-byte int pc, 4-byte int line), not varints
-- The opcodes (lopcodes.h): SHLI and SHRI trade places (32, 33); GETVARG
-- (81) and ERRNNIL (82) come before VARARGPREP (83) and EXTRAARG (84);
-- NEWTABLE and SETLIST are ivABC: vB in bits 16-21, vC in bits 22-31.
-- Reading refuses what ldump.c never writes (padding other than zeros, a
-- string without its NUL); a string written in full twice is read (lundump.c
-- takes it) but written back once, as ldump.c would.

local string_byte, string_char, string_sub, string_rep =
  string.byte, string.char, string.sub, string.rep
local string_pack, string_unpack, string_packsize =
  string.pack, string.unpack, string.packsize
local string_format = string.format
local table_concat, table_unpack, table_remove = table.concat, table.unpack, table.remove
local math_type, math_ult = math.type, math.ult
local error, type, tostring, pairs, ipairs = error, type, tostring, pairs, ipairs

-- ------------------------------------------------------------ constants ---

local SIGNATURE = "\27Lua"
local FORMAT = 0
local LUAC_DATA = "\x19\x93\r\n\x1a\n"
local SIZE_INSTRUCTION, SIZE_INTEGER, SIZE_NUMBER =
  4, string_packsize("j"), string_packsize("n")
local FMT_INSTRUCTION, FMT_INTEGER, FMT_NUMBER = "=I4", "=j", "=n"

local T_NIL, T_FALSE, T_TRUE = 0, 1, 17
local T_INT, T_FLT, T_SHRSTR, T_LNGSTR = 3, 19, 4, 20
local MAXSHORTLEN = 40                     -- LUAI_MAXSHORTLEN
local INT_MAX = 0x7FFFFFFF
local SIZE_MAX = math.maxinteger           -- sizes as Lua integers
local MAXUNSIGNED = -1                     -- LUA_MAXUNSIGNED, as a Lua integer
local MAX_DEPTH = 1000                     -- nesting of functions
local MAX_UPVALUE_KIND = 3                 -- the kinds of a variable in a register
local PF_VAHID, PF_VATAB = 1, 2            -- 5.5's vararg flags

local ABSLINEINFO, MAXIWTHABS = -0x80, 128

local OFFSET_sBx = (1 << 17 >> 1) - 1     -- MAXARG_Bx >> 1 = 65535
local OFFSET_sJ = (1 << 25 >> 1) - 1      -- MAXARG_sJ >> 1 = 2^24 - 1

local function fail(fmt, ...)
  error("bytecode: " .. string_format(fmt, ...), 0)
end

-- ------------------------------------------------------------ formats ---

-- Lua 5.4's instruction layout (lopcodes.h): op 0-6, A 7-14, k 15, B 16-23,
-- C 24-31; Bx/sBx 15-31; Ax/sJ 7-31.
local function decode54(i)
  local bx = (i >> 15) & 0x1FFFF
  local ax = (i >> 7) & 0x1FFFFFF
  return i & 0x7F, (i >> 7) & 0xFF, (i >> 16) & 0xFF, (i >> 24) & 0xFF,
         (i >> 15) & 1, bx, bx - OFFSET_sBx, ax, ax - OFFSET_sJ
end

-- The same by name, lopcodes.h's GETARG_* (C of an OP_MMBIN* is its event,
-- k of a test its condition): the one list of the names.
local function fields54(i)
  local op, a, b, c, k, bx, sbx, ax, sj = decode54(i)
  return {op = op, a = a, b = b, c = c, k = k, bx = bx, sbx = sbx, ax = ax, sj = sj}
end

-- A list of opcode names (0-based) with some renamed and some inserted
-- before another.
local function edited(opnames, renamed, before, inserted)
  local out = {}
  for n = 0, #opnames do
    local name = opnames[n]
    if name == before then
      for _, new in ipairs(inserted) do out[#out + 1] = new end
    end
    out[#out + 1] = renamed[name] or name
  end
  out[0] = table_remove(out, 1)
  return out
end

-- What differs between the versions, as data: the header after LUAC_DATA
-- ({"size", name, bytes} or {"value", name, pack format, value}, in order),
-- the dump grammar's choices (see THE FORMAT above), the opcodes (ORDER OP,
-- as lopnames.h), the opcodes whose format is not iABC (lopcodes.c) and the
-- instruction fields (decode, fields).
local FORMATS = {}

-- Lua 5.4.
FORMATS[54] = {
  version = 0x54,
  header = {
    {"size", "Instruction", SIZE_INSTRUCTION}, {"size", "lua_Integer", SIZE_INTEGER},
    {"size", "lua_Number", SIZE_NUMBER},
    {"value", "integer", FMT_INTEGER, 0x5678}, {"value", "float", FMT_NUMBER, 370.5},
  },
  varint_continues = false,    -- the last byte of a varint has 0x80 set
  saved_strings = false,       -- every string written in full
  zigzag_integers = false,     -- integer constants: 8 bytes
  source_first = true,         -- source opens a function; NULL = the parent's
  vararg_flags = false,        -- a byte is_vararg (0 or 1)
  align = 0,                   -- no padding anywhere
  abslineinfo_ints = false,    -- abslineinfo as varints
  opnames = {
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
  },
  modes = {
    iAsBx = {"LOADI", "LOADF"},
    iABx = {"LOADK", "LOADKX", "FORLOOP", "FORPREP", "TFORPREP", "TFORLOOP", "CLOSURE"},
    iAx = {"EXTRAARG"}, isJ = {"JMP"},
  },
  decode = decode54,
  fields = fields54,
}

-- Lua 5.5. The layout of 5.4 plus ivABC (NEWTABLE, SETLIST): vB 16-21,
-- vC 22-31.
FORMATS[55] = {
  version = 0x55,
  header = {
    {"size", "int", 4}, {"value", "int", "=i4", -0x5678},
    {"size", "Instruction", SIZE_INSTRUCTION}, {"value", "instruction", FMT_INSTRUCTION, 0x12345678},
    {"size", "lua_Integer", SIZE_INTEGER}, {"value", "integer", FMT_INTEGER, -0x5678},
    {"size", "lua_Number", SIZE_NUMBER}, {"value", "float", FMT_NUMBER, -370.5},
  },
  varint_continues = true,     -- every byte but the last has 0x80 set
  saved_strings = true,        -- a string seen before is written as its index
  zigzag_integers = true,      -- integer constants: varint of the zigzag code
  source_first = false,        -- source after the protos; NULL stays NULL
  vararg_flags = true,         -- a byte flag (PF_VAHID | PF_VATAB | PF_FIXED)
  align = 4,                   -- code and abslineinfo start at a multiple of 4
  abslineinfo_ints = true,     -- abslineinfo as pairs of 4-byte ints
  -- 5.4's, with SHLI and SHRI in each other's places and two new opcodes
  -- before VARARGPREP
  opnames = edited(FORMATS[54].opnames, {SHRI = "SHLI", SHLI = "SHRI"},
                   "VARARGPREP", {"GETVARG", "ERRNNIL"}),
  modes = {
    iAsBx = {"LOADI", "LOADF"},
    iABx = {"LOADK", "LOADKX", "FORLOOP", "FORPREP", "TFORPREP", "TFORLOOP", "CLOSURE",
            "ERRNNIL"},
    iAx = {"EXTRAARG"}, isJ = {"JMP"}, ivABC = {"NEWTABLE", "SETLIST"},
  },
  decode = function(i)
    local op, a, b, c, k, bx, sbx, ax, sj = decode54(i)
    return op, a, b, c, k, bx, sbx, ax, sj, (i >> 16) & 0x3F, (i >> 22) & 0x3FF
  end,
  fields = function(i)
    local t = fields54(i)
    t.vb, t.vc = (i >> 16) & 0x3F, (i >> 22) & 0x3FF
    return t
  end,
}

-- OP, OPNAMES and OPMODES of each format.
for _, F in pairs(FORMATS) do
  local OP, OPMODES = {}, {}
  for n = 0, #F.opnames do
    OP[F.opnames[n]] = n
    OPMODES[n] = "iABC"
  end
  for mode, names in pairs(F.modes) do
    for _, name in ipairs(names) do OPMODES[OP[name]] = mode end
  end
  F.OP, F.OPMODES = OP, OPMODES
end

-- ------------------------------------------------- reading and writing ---

-- As lundump.c and ldump.c: one reader per part of a chunk (load_*), each
-- beside the writer of the same part (dump_*). Each side keeps its state
-- in this file's upvalues for the duration of one read or write (neither
-- calls out, so neither is re-entered): the chunk and the position in it
-- (`src`, `pos`, `len`) and the strings read so far (`loaded`, 5.5); the
-- pieces written so far, how many bytes the first `counted` of them hold
-- (`offset`, for alignment), `strip` and the strings written so far with
-- their indices (`saved`, 5.5).
--
-- `use(F)`, at the start of each read and write, sets the choices of the
-- format F: the primitives that differ between the versions (varints and
-- strings) and the flags the parts test.

local src, pos, len, loaded, nloaded                  -- reading
local out, nout, counted, offset, strip, saved, nsaved  -- writing

local load_unsigned, load_string, dump_varint, dump_string   -- set by use(F)
local SOURCE_FIRST, VARARG_FLAGS, ZIGZAG_INTEGERS, ALIGN, ABSLINEINFO_INTS, STRIPPED_DEBUG

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

-- varint, 5.4 (loadUnsigned): the last byte marked; fails before the
-- value could pass `limit`.
local function load_unsigned_marked(limit, what)
  local x = 0
  limit = limit >> 7
  repeat
    local b = load_byte(what)
    if x >= limit then fail("integer overflow in %s at byte %d", what, pos - 1) end
    x = (x << 7) | (b & 0x7F)
  until b & 0x80 ~= 0
  return x
end

-- varint, 5.5 (loadVarint): every byte but the last marked; `limit` and
-- the value are unsigned (MAXUNSIGNED: any 64 bits).
local function load_unsigned_continued(limit, what)
  local x = 0
  limit = limit >> 7
  repeat
    local b = load_byte(what)
    if math_ult(limit, x) then fail("integer overflow in %s at byte %d", what, pos - 1) end
    x = (x << 7) | (b & 0x7F)
  until b & 0x80 == 0
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

-- string, 5.4: NULL (nil) or bytes.
local function load_plain_string(what)
  local size = load_unsigned(SIZE_MAX, what)
  if size == 0 then return nil end
  size = size - 1
  need(size, what)
  local v = string_sub(src, pos, pos + size - 1)
  pos = pos + size
  return v
end

-- string, 5.5: NULL (nil), a string read before (by its index) or bytes
-- and their NUL, then saved as the next string.
local function load_saved_string(what)
  local size = load_unsigned(SIZE_MAX, what)
  if size == 0 then
    local idx = load_unsigned(MAXUNSIGNED, what)
    if idx == 0 then return nil end
    local v = loaded[idx]
    if v == nil then fail("invalid string index %d in %s at byte %d", idx, what, pos - 1) end
    return v
  end
  need(size, what)                          -- size - 1 bytes and the NUL
  local v = string_sub(src, pos, pos + size - 2)
  pos = pos + size
  if string_byte(src, pos - 1) ~= 0 then fail("%s without its NUL at byte %d", what, pos - 1) end
  nloaded = nloaded + 1
  loaded[nloaded] = v
  return v
end

-- integer constant, 5.5: a varint of the zigzag code (2x; -2x - 1).
-- (5.4's: 8 bytes.)
local function load_zigzag_integer(what)
  local cx = load_unsigned(MAXUNSIGNED, what)
  if cx & 1 ~= 0 then return ~(cx >> 1) end
  return cx >> 1
end

local function load_boolean(what)
  local b = load_byte(what)
  if b > 1 then fail("bad %s byte %d at byte %d", what, b, pos - 1) end
  return b == 1
end

-- 5.5's loadAlign: padding to the next multiple of ALIGN from the chunk's
-- start (ldump.c writes zeros; other bytes are refused).
local function load_align(what)
  local pad = -(pos - 1) % ALIGN
  if pad > 0 then
    need(pad, what)
    if string_sub(src, pos, pos + pad - 1) ~= string_rep("\0", pad) then
      fail("non-zero padding before %s at byte %d", what, pos - 1)
    end
    pos = pos + pad
  end
end

-- ............................................... writing: primitives ...

local function put(v) nout = nout + 1; out[nout] = v end

local function check_int(v, lo, hi, what)
  if math_type(v) ~= "integer" or v < lo or v > hi then
    fail("%s must be an integer in [%d, %d], got %s", what, lo, hi, tostring(v))
  end
  return v
end

-- varint, 5.4 (dumpSize): 7-bit groups, most significant first, the last
-- marked.
local function dump_varint_marked(x)
  if x < 0x80 then put(string_char(x | 0x80)) return end  -- (x >= 0)
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

-- varint, 5.5 (dumpVarint): the same groups, all but the last marked; x
-- unsigned.
local function dump_varint_continued(x)
  if x >= 0 and x < 0x80 then put(string_char(x)) return end
  local n, y = 1, x >> 7
  while y ~= 0 do n, y = n + 1, y >> 7 end
  local groups = {}
  for i = n, 1, -1 do
    groups[i] = x & 0x7F | (i < n and 0x80 or 0)
    x = x >> 7
  end
  put(string_char(table_unpack(groups, 1, n)))
end

local function dump_int(v, what) dump_varint(check_int(v, 0, INT_MAX, what)) end
local function dump_byte(v, what) put(string_char(check_int(v, 0, 255, what))) end

-- string, 5.4: NULL as size 0, else size + 1 and the bytes.
local function dump_plain_string(v, what)
  if v == nil then
    dump_varint(0)
  elseif type(v) ~= "string" then
    fail("%s must be a string or nil, got %s", what, type(v))
  else
    dump_varint(#v + 1)
    put(v)
  end
end

-- string, 5.5: NULL as 0, 0; a string written before as 0, its index; any
-- other as size + 1, the bytes and a NUL, saved with the next index.
local function dump_saved_string(v, what)
  if v == nil then put("\0\0") return end
  if type(v) ~= "string" then fail("%s must be a string or nil, got %s", what, type(v)) end
  local idx = saved[v]
  if idx then
    put("\0")
    dump_varint(idx)
    return
  end
  dump_varint(#v + 1)
  put(v)
  put("\0")
  nsaved = nsaved + 1
  saved[v] = nsaved
end

-- integer constant, 5.5: the zigzag code as a varint. (5.4's: 8 bytes.)
local function dump_zigzag_integer(v)
  dump_varint(v >= 0 and v << 1 or ~v << 1 | 1)
end

-- 5.5's dumpAlign: zero bytes up to the next multiple of ALIGN.
local function dump_align()
  for i = counted + 1, nout do offset = offset + #out[i] end
  counted = nout
  local pad = -offset % ALIGN
  if pad > 0 then put(string_rep("\0", pad)) end
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

local function load_header(F)
  load_literal(SIGNATURE, "not a binary chunk (no \\27Lua signature)")
  local v = load_byte("header")
  if v ~= F.version then fail("version mismatch (0x%02X, expected 0x%02X)", v, F.version) end
  v = load_byte("header")
  if v ~= FORMAT then fail("format mismatch (%d, expected 0)", v) end
  load_literal(LUAC_DATA, "corrupted chunk (LUAC_DATA)")
  for _, h in ipairs(F.header) do
    if h[1] == "size" then
      local b = load_byte("header")
      if b ~= h[3] then
        fail("%s size mismatch (chunk has %d, this Lua %d)", h[2], b, h[3])
      end
    elseif load_fixed(h[3], string_packsize(h[3]), "header") ~= h[4] then
      fail("%s format mismatch", h[2])
    end
  end
end

local function dump_header(F)
  put(SIGNATURE)
  put(string_char(F.version, FORMAT))
  put(LUAC_DATA)
  for _, h in ipairs(F.header) do
    put(h[1] == "size" and string_char(h[3]) or string_pack(h[3], h[4]))
  end
end

-- .............................................................. code ...

local function load_code(f)                -- 4-byte instructions
  local code = {}
  local n = load_count("instructions", SIZE_INSTRUCTION)
  if ALIGN > 0 then
    load_align("instructions")
    need(n * SIZE_INSTRUCTION, "instructions")
  end
  for i = 1, n do
    code[i] = string_unpack(FMT_INSTRUCTION, src, pos)
    pos = pos + SIZE_INSTRUCTION
  end
  f.code = code
end

local function dump_code(f)
  local code = list(f.code, "code")
  dump_int(#code, "code size")
  if ALIGN > 0 then dump_align() end
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
      if ZIGZAG_INTEGERS then
        k[i] = load_zigzag_integer("integer constant")
      else
        k[i] = load_fixed(FMT_INTEGER, SIZE_INTEGER, "integer constant")
      end
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
      if ZIGZAG_INTEGERS then
        put(string_char(T_INT))
        dump_zigzag_integer(v)
      else
        put(string_char(T_INT) .. string_pack(FMT_INTEGER, v))
      end
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
    if kind > MAX_UPVALUE_KIND then fail("bad upvalue kind %d at byte %d", kind, pos - 1) end
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

-- abslineinfo: (pc, line) pairs, as varints (5.4) or aligned 4-byte ints
-- (5.5)
local function load_abslineinfo()
  local abslineinfo = {}
  if ABSLINEINFO_INTS then
    local n = load_count("abslineinfo entries", 8)
    if n > 0 then
      load_align("abslineinfo")
      need(8 * n, "abslineinfo")
    end
    for i = 1, n do
      local apc, line = string_unpack("=i4i4", src, pos)
      if apc < 0 or line < 0 then fail("negative abslineinfo entry at byte %d", pos - 1) end
      pos = pos + 8
      abslineinfo[i] = { pc = apc, line = line }
    end
  else
    local n = load_count("abslineinfo entries", 2)
    for i = 1, n do
      local apc = load_int("abslineinfo pc")
      abslineinfo[i] = { pc = apc, line = load_int("abslineinfo line") }
    end
  end
  return abslineinfo
end

local function dump_abslineinfo(f)
  local abslineinfo = list(f.abslineinfo or {}, "abslineinfo")
  dump_int(#abslineinfo, "abslineinfo size")
  if ABSLINEINFO_INTS and #abslineinfo > 0 then dump_align() end
  for i = 1, #abslineinfo do
    local a = list(abslineinfo[i], "abslineinfo entry")
    if ABSLINEINFO_INTS then
      put(string_pack("=i4i4", check_int(a.pc, 0, INT_MAX, "abslineinfo pc"),
                      check_int(a.line, 0, INT_MAX, "abslineinfo line")))
    else
      dump_int(a.pc, "abslineinfo pc")
      dump_int(a.line, "abslineinfo line")
    end
  end
end

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
  f.abslineinfo = load_abslineinfo()
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
    put(STRIPPED_DEBUG)                     -- four zero counts
    return
  end
  local lineinfo = list(f.lineinfo or {}, "lineinfo")
  dump_int(#lineinfo, "lineinfo size")
  for i = 1, #lineinfo do
    put(string_char(check_int(lineinfo[i], -128, 127, "lineinfo entry") & 0xFF))
  end
  dump_abslineinfo(f)
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
  if SOURCE_FIRST then
    local source = load_string("source")   -- NULL means the parent's
    if source == nil then
      source = psource
      f.source_was_null = true
    end
    f.source = source
  end
  f.linedefined = load_int("linedefined")
  f.lastlinedefined = load_int("lastlinedefined")
  f.numparams = load_byte("numparams")
  if VARARG_FLAGS then
    local flag = load_byte("flag")
    f.flag, f.is_vararg = flag, flag & (PF_VAHID | PF_VATAB) ~= 0
  else
    f.is_vararg = load_boolean("is_vararg")
  end
  f.maxstacksize = load_byte("maxstacksize")
  load_code(f)
  load_constants(f)
  load_upvalues(f)
  load_protos(f, depth)
  if not SOURCE_FIRST then f.source = load_string("source") end
  load_debug(f)
  return f
end

function dump_function(f, psource, depth)
  if depth > MAX_DEPTH then fail("functions nested too deep") end
  list(f, "proto")
  -- 5.4's source: omitted when stripped or the same as the parent's
  if not SOURCE_FIRST then
    -- (after the protos)
  elseif strip or f.source == nil or f.source == psource then
    dump_string(nil)
  else
    dump_string(f.source, "source")
  end
  dump_int(f.linedefined, "linedefined")
  dump_int(f.lastlinedefined, "lastlinedefined")
  dump_byte(f.numparams, "numparams")
  if VARARG_FLAGS then
    dump_byte(f.flag or (f.is_vararg and PF_VAHID or 0), "flag")
  else
    put(f.is_vararg and "\1" or "\0")
  end
  dump_byte(f.maxstacksize, "maxstacksize")
  dump_code(f)
  dump_constants(f)
  dump_upvalues(f)
  dump_protos(f, depth)
  if not SOURCE_FIRST then dump_string(not strip and f.source or nil, "source") end
  dump_debug(f)
end

-- ............................................................. chunk ...

local function read_chunk(F, dump)
  if type(dump) ~= "string" then
    fail("expected a string, got %s", type(dump))
  end
  src, pos, len = dump, 1, #dump
  loaded, nloaded = {}, 0
  load_header(F)
  local nupvalues = load_byte("header")
  local main = load_function(nil, 1)
  if nupvalues ~= #main.upvalues then
    fail("header says %d upvalues, main function has %d", nupvalues, #main.upvalues)
  end
  if pos <= len then
    fail("%d trailing byte(s) after the chunk", len - pos + 1)
  end
  src, loaded = nil, nil                    -- (not kept alive)
  main.nupvalues_main = nupvalues
  return main
end

local function write_chunk(F, proto, strip_debug)
  strip = strip_debug and true or false
  out, nout, counted, offset = {}, 0, 0, 0
  saved, nsaved = {}, 0
  list(proto, "proto")
  dump_header(F)
  dump_byte(#list(proto.upvalues, "upvalues"), "upvalue count")
  dump_function(proto, nil, 1)
  local chunk = table_concat(out)
  out, saved = nil, nil
  return chunk
end

-- The format's choices into the upvalues above.
local function use(F)
  if F.varint_continues then
    load_unsigned, dump_varint = load_unsigned_continued, dump_varint_continued
  else
    load_unsigned, dump_varint = load_unsigned_marked, dump_varint_marked
  end
  if F.saved_strings then
    load_string, dump_string = load_saved_string, dump_saved_string
  else
    load_string, dump_string = load_plain_string, dump_plain_string
  end
  SOURCE_FIRST, VARARG_FLAGS = F.source_first, F.vararg_flags
  ZIGZAG_INTEGERS = F.zigzag_integers
  ALIGN, ABSLINEINFO_INTS = F.align, F.abslineinfo_ints
  STRIPPED_DEBUG = string_rep(F.varint_continues and "\0" or "\x80", 4)
end

-- ------------------------------------------------------------ line info ---

-- luaG_getfuncline (the same in 5.4 and 5.5): start from the last
-- abslineinfo checkpoint at or before the instruction (or linedefined),
-- then add the deltas after it.
local function line_of(proto, pc)
  local lineinfo = proto.lineinfo
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

-- ------------------------------------------------------------ modules ---

-- One module table per format, made once: the format's tables and decoders
-- and a read and a write that first put the format in use.
local VERSIONS = {[54] = 54, [55] = 55, [0x54] = 54, [0x55] = 55,
                  ["5.4"] = 54, ["5.5"] = 55, ["Lua 5.4"] = 54, ["Lua 5.5"] = 55}
local modules = {}

local function for_version(v)
  local n = VERSIONS[v]
  if n == nil then fail("no format for Lua version %s (5.4 and 5.5 are known)", tostring(v)) end
  local m = modules[n]
  if m then return m end
  local F = FORMATS[n]
  m = {
    VERSION = F.version, OP = F.OP, OPNAMES = F.opnames, OPMODES = F.OPMODES,
    decode = F.decode, fields = F.fields, line_of = line_of,
    read = function(dump) use(F) return read_chunk(F, dump) end,
    write = function(proto, strip_debug) use(F) return write_chunk(F, proto, strip_debug) end,
  }
  modules[n] = m
  return m
end
for n in pairs(FORMATS) do for_version(n).for_version = for_version end

return for_version(_VERSION == "Lua 5.5" and 55 or 54)
