-- The numbers of state.lua's bodies in Lua 5.3 and later (5.4, 5.5): the
-- codec with 64-bit integers and string.pack.
--
-- A codec is what state.lua's format leaves to the runtime (the other one
-- is persist/lua/codec_jit.lua, for LuaJIT; state.py picks one and hands it
-- to state.lua). It gives:
--   MAGIC            the body's first 8 bytes: which codec wrote it
--   CHUNK            how many numbers a chunk holds at most
--   mtype(v)         math.type: "integer" for a number written as a code or
--                    raw in C, "float" for one in F, nil for others
--   HSHIFT, HMOD, HMAX  a table's header word in C is
--                    n * HSHIFT + m * 2 + has_metatable, m < HMOD; n, m < HMAX
--   head(version)    magic and format version, the body's first 12 bytes
--   split(body)      version, the 8 sections' strings, the position after
--                    them; nil if truncated
--   len(n), count(s) an 8-byte length or count; the one s starts with (nil
--                    if s is shorter)
--   ints(A, i, j), floats(A, i, j)   A[i..j] as one chunk of a section (one
--                    or two strings, concatenated)
--   read_ints(s, pos, k, A, i), read_floats(s, pos, k, A, i)
--                    the chunk of k numbers at pos into A[i..]: the position
--                    after it, or nil and "chunk" (bad width) or "truncated"
-- (state.lua's STREAM cuts sections into chunks and puts them together).
--
-- Here a chunk of integers is a width byte, 4 (all fit in i4) or 8 (i8),
-- then the numbers; a chunk of floats is the doubles.
local spack, sunpack, sbyte, srep = string.pack, string.unpack, string.byte, string.rep
local unpack, tmove, pcall = table.unpack, table.move, pcall

local MAGIC = "LKSTATE\0"

local FMT = { i4 = {}, j = {}, d = {} }
local function fmt(kind, k)
  local cache = FMT[kind]
  local f = cache[k]
  if not f then
    f = "<" .. srep(kind, k)
    cache[k] = f
  end
  return f
end

local codec = {
  MAGIC = MAGIC, CHUNK = 4096,
  mtype = math.type,
  HSHIFT = 1 << 33, HMOD = 1 << 32, HMAX = 1 << 30,
}

function codec.head(version) return spack("<c8I4", MAGIC, version) end
function codec.len(n) return spack("<j", n) end

function codec.count(s)
  if #s < 8 then return nil end
  return (sunpack("<j", s))
end

function codec.split(body)
  local ok, _, version, slens, sblob, sH, sT, sC, sF, sJ, sX, tail =
    pcall(sunpack, "<c8I4s8s8s8s8s8s8s8s8", body)
  if not ok then return nil end
  return version, slens, sblob, sH, sT, sC, sF, sJ, sX, tail
end

function codec.ints(A, i, j)
  local k = j - i + 1
  local ok, s = pcall(spack, fmt("i4", k), unpack(A, i, j))
  if ok then return "\4", s end
  return "\8", spack(fmt("j", k), unpack(A, i, j))
end

function codec.floats(A, i, j) return spack(fmt("d", j - i + 1), unpack(A, i, j)) end

-- The k numbers of format f at pos into A[i..].
local function read(f, s, pos, k, A, i)
  local chunk = { pcall(sunpack, f, s, pos) }
  if not chunk[1] then return nil, "truncated" end
  tmove(chunk, 2, k + 1, i, A)
  return chunk[k + 2]
end

function codec.read_ints(s, pos, k, A, i)
  local w = sbyte(s, pos)
  if w == 4 then return read(fmt("i4", k), s, pos + 1, k, A, i) end
  if w == 8 then return read(fmt("j", k), s, pos + 1, k, A, i) end
  return nil, "chunk"
end

function codec.read_floats(s, pos, k, A, i) return read(fmt("d", k), s, pos, k, A, i) end

return codec
