-- The numbers of state.lua's bodies in LuaJIT: the codec for a runtime
-- whose numbers are doubles (what a codec gives: see the header of
-- persist/lua/codec53.lua; state.lua's source reaches LuaJIT through
-- persist/jitsource.py, which turns its integer operators into arithmetic
-- exact below 2^53).
--
-- What differs from Lua 5.3's codec, and why:
--   * "integer" (mtype) is an integral double of magnitude below 2^50, and
--     not -0.0: its code, v * 8 + tag, stays below 2^53, so every code is
--     exact. Other numbers (-0.0, 2^53, NaN, inf) go in F, bit for bit; so
--     there are no big integers (J stays empty).
--   * A table's header word is n * 2^27 + m * 2 + has_metatable, below 2^53:
--     n and m below 2^26.
--   * An 8-byte chunk of an integer section holds doubles (exact integers),
--     not int64: the magic says so ("LKSTATEj"), and only this codec reads it.
-- Numbers are copied in and out with the FFI, in the machine's byte order,
-- which must be little-endian (as Lua 5.3's codec writes).
local ffi = require("ffi")
if not ffi.abi("le") then error("persist/lua/codec_jit.lua needs a little-endian machine", 0) end

local floor, type, tonumber = math.floor, type, tonumber
local sbyte, ssub, fstring, fcopy, fcast = string.byte, string.sub, ffi.string, ffi.copy, ffi.cast

local MAGIC = "LKSTATEj"
local LIMIT = 2 ^ 50
local CHUNK = 4096
local I32 = ffi.new("int32_t[?]", CHUNK)
local F64 = ffi.new("double[?]", CHUNK)
local I64 = ffi.new("int64_t[1]")
local U32 = ffi.new("uint32_t[1]")
local BYTES = ffi.typeof("const uint8_t *")

local codec = { MAGIC = MAGIC, CHUNK = CHUNK, HSHIFT = 2 ^ 27, HMOD = 2 ^ 26, HMAX = 2 ^ 26 }

function codec.mtype(v)
  if type(v) ~= "number" then return nil end
  if v == floor(v) and v > -LIMIT and v < LIMIT and (v ~= 0 or 1 / v > 0) then
    return "integer"
  end
  return "float"
end

function codec.len(n)
  I64[0] = n
  return fstring(I64, 8)
end

function codec.head(version)
  U32[0] = version
  return MAGIC .. fstring(U32, 4)
end

-- The int64 at byte `pos` (1-based) of s, or nil past its end.
local function int64_at(s, pos)
  if pos + 7 > #s then return nil end
  fcopy(I64, fcast(BYTES, s) + pos - 1, 8)
  return tonumber(I64[0])
end

function codec.count(s) return int64_at(s, 1) end

function codec.split(body)
  local nb = #body
  if nb < 12 then return nil end
  fcopy(U32, fcast(BYTES, body) + 8, 4)
  local out, pos = { U32[0] }, 13
  for k = 2, 9 do
    local l = int64_at(body, pos)
    if l == nil or l < 0 or pos + 8 + l - 1 > nb then return nil end
    out[k] = ssub(body, pos + 8, pos + 7 + l)
    pos = pos + 8 + l
  end
  return out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8], out[9], pos
end

-- The bytes of A[i..j] as numbers of buf's type, `width` bytes each.
local function copied(buf, width, A, i, j)
  for x = i, j do buf[x - i] = A[x] end
  return fstring(buf, width * (j - i + 1))
end

-- a chunk of integers: width byte 4 (int32) or 8 (doubles), the numbers
function codec.ints(A, i, j)
  for x = i, j do
    local v = A[x]
    if v < -2147483648 or v > 2147483647 then return "\8", copied(F64, 8, A, i, j) end
  end
  return "\4", copied(I32, 4, A, i, j)
end

function codec.floats(A, i, j) return copied(F64, 8, A, i, j) end

-- The k numbers of `width` bytes (4: int32, 8: double) at pos into A[i..].
local function read(s, pos, width, k, A, i)
  if pos + width * k - 1 > #s then return nil, "truncated" end
  local buf = width == 4 and I32 or F64
  fcopy(buf, fcast(BYTES, s) + pos - 1, width * k)
  for x = 0, k - 1 do A[i + x] = buf[x] end
  return pos + width * k
end

function codec.read_ints(s, pos, k, A, i)
  local w = sbyte(s, pos)
  if w ~= 4 and w ~= 8 then return nil, "chunk" end
  return read(s, pos + 1, w, k, A, i)
end

function codec.read_floats(s, pos, k, A, i) return read(s, pos, 8, k, A, i) end

return codec
