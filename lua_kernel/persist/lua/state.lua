-- The Lua state as bytes and back: the serializer of lua_kernel snapshots.
--
-- Loaded once per Lua state by lua_kernel/persist/state.py, right after the
-- kernel's own files and before any user code runs, with `kernel`, the module
-- table of lua/session.lua (is_name, INTERRUPTED, hook), and `tracked`, what
-- persist/lua/track.lua records (thread_fn, wrapped, files). Returns M:
--   M.capture(pickle_many)     -> address, size, head, tail, issues, counts
--                                 (the body stays in M.kept; M.take() gives it,
--                                 M.release() drops it; see state.py)
--   M.apply(body, unpickle_at) -> true, notes | false, message
-- where `pickle_many(objects, n)` returns (blob, {index = reason}) and
-- `unpickle_at(offset, length)` returns (true, objects) or (false, reason):
-- the Python halves for Python objects (persist/pyobjects.py), called once.
--
-- What is saved: everything reachable from the roots, which are the globals
-- table `_G` and the metatables of the basic types (nil, boolean, number,
-- string, function, thread, light userdata). The walk is iterative: objects
-- are numbered as they are discovered, and the numbers are the work queue,
-- so no recursion grows with the depth of the data.
--
-- Permanents. A fresh state (before any user code) is walked once, at load
-- time: `_G`, the standard libraries, `package.loaded`, the string metatable,
-- the metatables of real and notebook file handles, the kernel's own objects,
-- and C functions that are only met as return values (the `ipairs` iterator,
-- ...). Each object found gets a name, the shortest path to it, fixed by
-- visiting keys in sorted order, so the same name means the same thing in
-- every fresh state. Permanents are written by name. A permanent table is also
-- written as a delta against the copy taken at load time: the entries that
-- differ (a deleted entry as nil) and its metatable if it changed. So user
-- globals are simply the delta of `_G`, and `function string.trim() end`
-- comes back as an entry of the delta of `string`. Every capture checks all
-- permanent tables, since a changed one may be reachable only through
-- unchanged entries (`string` through the string metatable).
--
-- ============================= THE FORMAT ================================
--
-- Everything is numbers. A value is written as one integer, its CODE:
--
--     code = payload * 8 + tag
--
--   tag 0  nil
--   tag 1  false
--   tag 2  true
--   tag 3  integer; payload = the integer itself (only when -2^60 <= v < 2^60,
--          so that payload * 8 cannot overflow)
--   tag 4  float; the value is the next one of the float stream F (floats are
--          kept as 8 bytes, bit for bit: -0.0, inf, NaN with its payload)
--   tag 5  string; payload = its number in the string pool
--   tag 6  object (table, function, thread, userdata); payload = its number
--   tag 7  extension; payload = len * 8 + sub:
--            sub 0  a big integer: the next one of the big-integer stream J
--            sub 1  a shared upvalue: the next number in C is owner * 256 +
--                   index, the closure and upvalue it is shared with
--            sub 2  "unchanged": a permanent table's metatable is as it was
--            sub 3  in an array: the next `len` elements are the next `len`
--                   floats of F (restored with one table.move)
--            sub 4  in an array: the next `len` elements are integers, the
--                   next `len` numbers of C as they are (one table.move)
--
-- Strings and objects are numbered from 1 in the order they are discovered,
-- each kind on its own. A string is stored once however often it is used;
-- that includes bytecode, so each distinct prototype is stored once.
--
-- The body. Every section is s8: an 8-byte length, then the bytes. "ints" is
-- a stream of integers: a count (j), then chunks of up to 4096 numbers, each
-- one byte, 4 or 8 (the width that fits the whole chunk: a pcall'd pack as
-- i4, else j), then the numbers. "floats" is the same with 8-byte doubles and
-- no width byte. All little-endian.
--
--   c8   "LKSTATE\0"  magic
--   I4   VERSION      format version of this body
--   s8   ints         the length of every string of the pool, in order
--   s8   bytes        the strings of the pool, concatenated
--   s8   ints    H    one header per object, in object order (below)
--   s8   ints    T    threads and wrap functions: one code each, in object order
--   s8   ints    C    contents of tables, closures and permanent tables
--   s8   floats  F    the floats of tag-4 codes and float runs, in reading order
--   s8   ints    J    the big integers of extension 0, in reading order
--   s8   ints    X    the roots and the Python record (below)
--
-- H, one record per object: what must exist before anything is filled in.
--   1 TABLE                         a new, empty table; contents in C
--   2 PERM name                     a permanent function, userdata, thread or
--                                   opaque table (the registry): by name
--   3 PERMTABLE name                a permanent table; its delta is in C
--   4 LFUNC proto                   a Lua closure: `load` of the bytecode string
--                                   (debug info kept, so tracebacks still say
--                                   In[3]:2); upvalues in C
--   5 NIL where reason              could not be saved; restored as nil, and
--                                   reported at restore time again
--   6 THREAD state                  a coroutine: 0 not started, 1 dead, 2 dead
--                                   by an error (version 3); its code in T is
--                                   its function (not started) or, for 2, a
--                                   table {e = error, n = k, [1..k] = values
--                                   of its pending to-be-closed variables,
--                                   first created first} (frames.lua CF.failed)
--   7 WRAP                          a coroutine.wrap function; its thread in T
--   8 FILE path mode pos where      a file handle. path nil: restored closed
--                                   (closed, or not opened through io.open);
--                                   else reopened without truncating ("w"
--                                   and "w+" as "r+") and moved to pos (nil:
--                                   not seekable); where = its graph path
--   9 PYOBJ index where             a Python object: element `index` of the
--                                   pickled list; where = its graph path
--  10 LIVE where 0                  a suspended coroutine with a call stack:
--                                   its record (persist/lua/frames.lua), a
--                                   table, is its code in T; where = its path
--   (name, proto, where, reason, path, mode are string codes; state and index
--    plain integers; pos a code)
--
-- C, in object order, for the kinds that have contents:
--   TABLE      one word n << 33 | m << 1 | has_metatable; codes and runs for
--              t[1..n] (the keys 1, 2, 3, ... that `next` gives first, from
--              the array part: n < 2^30); m pairs key code, value code for
--              the other entries; the metatable code if it has one
--   PERMTABLE  m, then m pairs key code, value code (nil: deleted);
--              the metatable code, or extension 2 if unchanged
--   LFUNC      n, then for each upvalue 1..n its value code, or extension 1
--              when a closure written before it holds the same upvalue
--              (debug.upvalueid): restored with debug.upvaluejoin, so
--              shared variables stay shared
--
-- X: 8 codes: _G and the metatables of nil, boolean, number, string,
--   function, thread and light userdata; then the Python record: the code
--   of the pickled list (a string, or nil when there are no Python objects),
--   k, then k pairs (index, reason code) for the objects that could not be
--   pickled (they are None in the list); then (version 2) the open upvalues
--   of suspended frames: l, then l triples (frame code, register, owner),
--   where owner = closure * 256 + upvalue index, as for extension 1: the
--   register of that frame record is that closure's upvalue.
--
-- Suspended coroutines. A coroutine with a live call stack is written as
-- its record (frames.lua): its frames as plain tables, each frame's closure,
-- pending instruction, registers, varargs and pending to-be-closed
-- variables; the saved pcs come from persist/framepeek.py, asked once for
-- all the coroutines found so far. Which registers are open upvalues is
-- found by sentinel probing: each register that a child closure of the
-- frame's function may capture is set (debug.setlocal) to a fresh table for
-- the duration of the capture; a closure whose upvalue then holds that
-- table shares the register. The walk writes the real values, and every
-- probed register gets its value back before capture returns.
--
-- Restoring goes in phases, so nothing user-visible runs half-built:
-- (1) streams and strings, (2) Python objects (one call), (3) all objects of
-- H created empty (tables empty, closures with fresh upvalues), (4) threads
-- and wrap functions, (5) contents filled with raw writes, upvalues set and
-- joined, (6) metatables set last, with debug.setmetatable, so __newindex
-- and __gc do not fire during filling and __metatable does not stop us.
---------------------------------------------------------------------------

local kernel, tracked = ...

local M = {}

local MAGIC, VERSION = "LKSTATE\0", 3    -- versions 1 (no suspended stacks) and 2
                                         -- (no coroutines dead by an error) are read too

-- Originals, before any user code can replace them.
local type, next, pairs, ipairs, select, error, pcall = type, next, pairs, ipairs, select, error, pcall
local rawget, rawset, rawlen, rawequal = rawget, rawset, rawlen, rawequal
local tostring, tonumber, load, setmetatable = tostring, tonumber, load, setmetatable
local collectgarbage = collectgarbage
local mtype = math.type
local spack, sunpack, sbyte, ssub, srep, sformat, sfind, smatch, sdump =
  string.pack, string.unpack, string.byte, string.sub, string.rep, string.format,
  string.find, string.match, string.dump
local concat, unpack, tmove, tsort = table.concat, table.unpack, table.move, table.sort
local dgetmt, dsetmt, getupvalue, setupvalue, upvalueid, upvaluejoin, getinfo, setlocal =
  debug.getmetatable, debug.setmetatable, debug.getupvalue, debug.setupvalue,
  debug.upvalueid, debug.upvaluejoin, debug.getinfo, debug.setlocal
local costatus, coresume = coroutine.status, coroutine.resume
local kcreate, kwrap = coroutine.create, coroutine.wrap     -- the kernel's, registering
local kopen, iotype, tmpfile = io.open, io.type, io.tmpfile  -- the kernel's io.open
local clock = os.clock

local thread_fn, wrapped, kfiles = tracked.thread_fn, tracked.wrapped, tracked.files
local G = _G                 -- the globals table, whatever `_G` is made to mean later

-- value tags
local T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_OBJ, T_EXT = 0, 1, 2, 3, 4, 5, 6, 7
-- extensions: code = (len * 8 + sub) * 8 + T_EXT
local X_BIGINT, X_JOIN, X_SAME, X_FRUN, X_IRUN = 0, 1, 2, 3, 4
local C_BIGINT = X_BIGINT * 8 + T_EXT
local C_JOIN = X_JOIN * 8 + T_EXT
local C_SAME = X_SAME * 8 + T_EXT
local INL_LO, INL_HI = -(1 << 60), 1 << 60
-- object kinds
local K_TABLE, K_PERM, K_PERMTABLE, K_LFUNC, K_NIL, K_THREAD, K_WRAP, K_FILE, K_PYOBJ, K_LIVE =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10
-- how an object was first reached (for paths in reports); nil: a table entry
local E_ROOT, E_KEY, E_UPVALUE, E_META, E_FN, E_THREAD, E_STACK = 1, 2, 3, 4, 5, 6, 7

local CHUNK = 4096

---------------------------------------------------------------------------
-- Permanents: the fresh state, walked once, now.
---------------------------------------------------------------------------
local permname = {}     -- value -> name
local permvalue = {}    -- name -> value
local base = {}         -- permanent table -> copy of its entries
local basemt = {}       -- permanent table -> its metatable (false: none)

local real_file = tmpfile()
local FILE_MT = real_file and dgetmt(real_file)
local fseek, fflush = FILE_MT.__index.seek, FILE_MT.__index.flush
if real_file then real_file:close() end
local STREAM_MT = dgetmt(io.stdout)
local MAIN = coroutine.running()
local POBJ_MT = type(python) == "table" and python.builtins ~= nil and dgetmt(python.builtins) or nil
local LIGHT = upvalueid(function() return MAIN end, 1)     -- any light userdata

local is_name = kernel.is_name       -- a key that can be written bare in a path

-- "[3]", `["a b"]`, "[<table>]": a key written after a path
local function key_text(k)
  local tk = type(k)
  if tk == "string" then return (sformat("[%q]", k):gsub("\\\n", "\\n")) end
  if tk == "number" or tk == "boolean" then return "[" .. tostring(k) .. "]" end
  return "[<" .. tk .. ">]"
end

local function child_name(parent, k)
  if parent == "_G" and is_name(k) then return k end
  if is_name(k) then return parent .. "." .. k end
  return parent .. key_text(k)
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta > tb end     -- strings before numbers
  return a < b
end

do
  local roots = {
    { "_G", _G },
    { "<string metatable>", dgetmt("") },
    { "<FILE* metatable>", FILE_MT },
    { "<stream metatable>", STREAM_MT },
    { "<main thread>", MAIN },
    { "<registry>", debug.getregistry(), opaque = true },
    { "<interrupted>", kernel.INTERRUPTED },
    { "<kernel hook>", kernel.hook },
    { "ipairs()", (ipairs({})) },
    { "utf8.codes()", (utf8.codes("")) },
    { "utf8.codes(lax)", (utf8.codes("", true)) },
  }
  if type(python) == "table" then
    local ok, empty = pcall(python.eval, "[]")
    for _, fname in ipairs({ "iter", "iterex", "enumerate" }) do
      if ok and type(python[fname]) == "function" then
        local ok2, f = pcall(python[fname], empty)
        if ok2 and type(f) == "function" then
          roots[#roots + 1] = { "python." .. fname .. "()", f }
        end
      end
    end
  end
  local queue, qn = {}, 0
  local function visit(v, name, opaque)
    local tv = type(v)
    if v == nil or tv == "string" or tv == "number" or tv == "boolean" then return end
    if permname[v] or permvalue[name] ~= nil then return end
    permname[v], permvalue[name] = name, v
    if not opaque and (tv == "table" or tv == "userdata") then
      qn = qn + 1
      queue[qn] = v
    end
  end
  for _, r in ipairs(roots) do visit(r[2], r[1], r.opaque) end
  local i = 1
  while i <= qn do
    local v = queue[i]
    i = i + 1
    local name = permname[v]
    if type(v) == "table" then
      local copy, keys = {}, {}
      for k, x in next, v do
        copy[k] = x
        local tk = type(k)
        if tk == "string" or tk == "number" then keys[#keys + 1] = k end
      end
      base[v] = copy
      basemt[v] = dgetmt(v) or false
      tsort(keys, key_order)
      for _, k in ipairs(keys) do visit(rawget(v, k), child_name(name, k)) end
    end
    visit(dgetmt(v), name .. "<metatable>")
  end
end

local nperm = 0
for _ in next, permvalue do nperm = nperm + 1 end
M.permanents = nperm

-- The permanent tables, by name: each capture checks them all for changes,
-- since a changed one may be reachable only through unchanged entries
-- (`string.trim` through the string metatable).
local PERMTABLES = {}
for t in next, base do PERMTABLES[#PERMTABLES + 1] = permname[t] end
tsort(PERMTABLES)
for i, name in ipairs(PERMTABLES) do PERMTABLES[i] = permvalue[name] end

local function changed(t)
  local b = base[t]
  for k, v in next, t do
    if not rawequal(b[k], v) then return true end
  end
  for k in next, b do
    if rawget(t, k) == nil then return true end
  end
  return not rawequal(dgetmt(t), basemt[t] or nil)
end

function M.permanent(name) return permvalue[name] end
function M.name_of(value) return permname[value] end

-- Suspended coroutines: frames.lua's module and Python's batch of saved pcs
-- (framepeek.py's saved_pcs_many), set by state.py once both exist.
local CF, saved_pcs_many
function M.use_frames(cf, pcs_many)
  CF, saved_pcs_many = cf, pcs_many
end

-- Registers probed during a capture: sentinel -> {frame, reg, value}, and
-- the list to put back.
local SENT, PROBED, nprobed = {}, {}, 0

local function probe(co, level, reg, frame, value)
  local s = {}
  SENT[s] = { frame = frame, reg = reg, value = value }
  setlocal(co, level, reg + 1, s)
  nprobed = nprobed + 1
  PROBED[nprobed] = { co, level, reg + 1, value }
end

local function unprobe()
  for i = nprobed, 1, -1 do
    local r = PROBED[i]
    setlocal(r[1], r[2], r[3], r[4])
    PROBED[i] = nil
  end
  nprobed = 0
  SENT = {}
end

---------------------------------------------------------------------------
-- Streams of numbers.
---------------------------------------------------------------------------
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

-- ints: count, then chunks (width byte 4 or 8, numbers)
local function pack_ints(A, n)
  local out, no = { spack("<j", n) }, 1
  local i = 1
  while i <= n do
    local j = i + CHUNK - 1
    if j > n then j = n end
    local k = j - i + 1
    local ok, s = pcall(spack, fmt("i4", k), unpack(A, i, j))
    if ok then
      out[no + 1], out[no + 2] = "\4", s
    else
      out[no + 1], out[no + 2] = "\8", spack(fmt("j", k), unpack(A, i, j))
    end
    no = no + 2
    i = j + 1
  end
  return concat(out)
end

local function unpack_ints(s, what)
  if #s < 8 then error(what .. " are truncated", 0) end
  local n, pos = sunpack("<j", s)
  if n < 0 or n > #s then error("bad count in " .. what, 0) end
  local A = {}
  local i = 1
  while i <= n do
    local k = n - i + 1
    if k > CHUNK then k = CHUNK end
    local w = sbyte(s, pos)
    local f
    if w == 4 then f = fmt("i4", k) elseif w == 8 then f = fmt("j", k)
    else error("bad chunk in " .. what, 0) end
    local chunk = { pcall(sunpack, f, s, pos + 1) }
    if not chunk[1] then error(what .. " are truncated", 0) end
    pos = chunk[k + 2]
    tmove(chunk, 2, k + 1, i, A)
    i = i + k
  end
  if pos ~= #s + 1 then error("trailing bytes in " .. what, 0) end
  return A, n
end

-- floats: count, then chunks of doubles
local function pack_floats(A, n)
  local out, no = { spack("<j", n) }, 1
  local i = 1
  while i <= n do
    local j = i + CHUNK - 1
    if j > n then j = n end
    no = no + 1
    out[no] = spack(fmt("d", j - i + 1), unpack(A, i, j))
    i = j + 1
  end
  return concat(out)
end

local function unpack_floats(s)
  if #s < 8 then error("floats are truncated", 0) end
  local n, pos = sunpack("<j", s)
  if n < 0 or n > #s // 8 then error("bad count in floats", 0) end
  local A = {}
  local i = 1
  while i <= n do
    local k = n - i + 1
    if k > CHUNK then k = CHUNK end
    local chunk = { pcall(sunpack, fmt("d", k), s, pos) }
    if not chunk[1] then error("floats are truncated", 0) end
    pos = chunk[k + 2]
    tmove(chunk, 2, k + 1, i, A)
    i = i + k
  end
  if pos ~= #s + 1 then error("trailing bytes in floats", 0) end
  return A, n
end

---------------------------------------------------------------------------
-- Capture.
---------------------------------------------------------------------------
local function capture(pickle_many)
  local t0 = clock()
  -- `seen` maps every string and object met so far to its code, so the
  -- common case (a value seen before) is one table lookup.
  local seen = {}
  local S, ns = {}, 0                   -- the string pool
  local O, K, nobj = {}, {}, 0          -- objects and their kinds
  local PAR, PKEY, PEDGE = {}, {}, {}   -- how each object was first reached
  local H, nh, T, nt, C, nc = {}, 0, {}, 0, {}, 0
  local F, nf, J, nj = {}, 0, {}, 0
  local PY, npy = {}, 0
  local issues, nissues = {}, 0
  local uvowner = {}          -- upvalueid -> owner * 256 + index
  local HPOS = {}             -- suspended coroutine -> position of its header
  local plans = {}            -- suspended coroutine -> frames.lua plan, or reason
  local FAILED = {}           -- id of a coroutine dead by an error -> CF.failed record
  local nproto, nfunc, ntable, nthread, nudata = 0, 0, 0, 0, 0

  -- The path of an object, from the parents recorded when it was found:
  -- "_G.cfg.items[3]", "_G.f<upvalue 'x'>". A very deep one keeps its first
  -- step and its last 12: "_G.list<999987 more>.next.next...".
  local function segment(id)
    local e, k, par = PEDGE[id], PKEY[id], PAR[id]
    if e == nil then return is_name(k) and "." .. k or key_text(k) end
    if e == E_UPVALUE then return sformat("<upvalue '%s'>", (getupvalue(O[par], k)) or "?") end
    if e == E_KEY then return "<key>" end
    if e == E_META then return "<metatable>" end
    if e == E_FN then return "<function>" end
    if e == E_STACK then return "<stack>" end
    return "<thread>"
  end
  local function pathof(id)
    local segs, n, skipped = {}, 0, 0
    while id and id > 0 do
      local nm = permname[O[id]]
      if nm then n = n + 1; segs[n] = nm; break end
      if PEDGE[id] == E_ROOT then n = n + 1; segs[n] = PKEY[id]; break end
      local par = PAR[id]
      if n < 12 or PEDGE[par] == E_ROOT or permname[O[par]] then
        if skipped > 0 then
          n = n + 1
          segs[n] = sformat("<%d more>", skipped)
          skipped = 0
        end
        n = n + 1
        segs[n] = segment(id)
      else
        skipped = skipped + 1
      end
      id = par
    end
    local out = {}
    for i = n, 1, -1 do out[#out + 1] = segs[i] end
    return concat(out)
  end

  local function scode(s)
    local c = seen[s]
    if not c then
      ns = ns + 1
      S[ns] = s
      c = ns * 8 + T_STR
      seen[s] = c
    end
    return c
  end

  local function issue(id, reason)
    local where = pathof(id)
    nissues = nissues + 1
    issues[nissues] = { path = where, reason = reason }
    return where
  end

  local function header_nil(id, reason)
    K[id] = K_NIL
    local where = issue(id, reason)
    H[nh + 1], H[nh + 2], H[nh + 3] = K_NIL, scode(where), scode(reason)
    nh = nh + 3
  end

  -- What a coroutine is, for saving: "new", "dead" or "live" (suspended
  -- with a call stack, or restored so and not resumed yet), or nil and why not.
  local function thread_state(co)
    if type(co) ~= "thread" then return nil, "coroutine.wrap function without its thread" end
    if CF and CF.pending(co) then return "live" end
    local st = costatus(co)
    if st == "dead" then
      local rec = CF and CF.failed(co)
      if rec then return "failed", rec end
      return "dead"
    end
    if st == "suspended" then
      if getinfo(co, 0, "l") == nil then
        if thread_fn[co] == nil then
          return nil, "not-started coroutine whose function is unknown"
        end
        return "new"
      end
      if CF == nil then return nil, "suspended coroutine: frames cannot be saved here" end
      return "live"
    end
    return nil, st .. " coroutine cannot be saved"
  end

  -- Number a newly met object and write its header; returns its code.
  local function discover(v, tv, par, key, edge)
    nobj = nobj + 1
    local id = nobj
    local c = id * 8 + T_OBJ
    seen[v], O[id], PAR[id], PKEY[id] = c, v, par, key
    if edge then PEDGE[id] = edge end
    local nm = permname[v]
    if nm then
      local kind = base[v] and K_PERMTABLE or K_PERM
      K[id] = kind
      H[nh + 1], H[nh + 2] = kind, scode(nm)
      nh = nh + 2
    elseif tv == "table" then
      K[id] = K_TABLE
      nh = nh + 1
      H[nh] = K_TABLE
      ntable = ntable + 1
    elseif tv == "function" then
      if wrapped[v] ~= nil then
        local _, co = getupvalue(v, 1)
        local ok, why = thread_state(co)
        if ok then
          K[id] = K_WRAP
          nh = nh + 1
          H[nh] = K_WRAP
          nfunc = nfunc + 1
        else
          header_nil(id, why)
        end
        return c
      end
      local ok, d = pcall(sdump, v)
      if ok then
        local dc = seen[d]
        if not dc then
          nproto = nproto + 1
          dc = scode(d)
        end
        K[id] = K_LFUNC
        H[nh + 1], H[nh + 2] = K_LFUNC, dc
        nh = nh + 2
        nfunc = nfunc + 1
      else
        header_nil(id, "C function that is not part of the standard environment")
      end
    elseif tv == "thread" then
      local st, why = thread_state(v)
      if st == "live" then
        K[id] = K_LIVE
        HPOS[id] = nh + 1
        H[nh + 1], H[nh + 2], H[nh + 3] = K_LIVE, scode(pathof(id)), 0
        nh = nh + 3
        nthread = nthread + 1
      elseif st then
        K[id] = K_THREAD
        if st == "failed" then FAILED[id] = why end
        H[nh + 1], H[nh + 2] = K_THREAD, st == "new" and 0 or st == "failed" and 2 or 1
        nh = nh + 2
        nthread = nthread + 1
      else
        header_nil(id, why)
      end
    elseif tv == "userdata" then
      local mt = dgetmt(v)
      if mt ~= nil and mt == POBJ_MT then
        npy = npy + 1
        PY[npy] = v
        K[id] = K_PYOBJ
        H[nh + 1], H[nh + 2], H[nh + 3] = K_PYOBJ, npy, scode(pathof(id))
        nh = nh + 3
      elseif mt ~= nil and mt == FILE_MT then
        nudata = nudata + 1
        K[id] = K_FILE
        local rec = kfiles[v]
        local st = iotype(v)
        local path, mode, pos, where = T_NIL, T_NIL, T_NIL, T_NIL
        if st == "file" and rec then
          -- written data must be in the file the snapshot points into
          if not sfind(rec.mode, "^r[^+]*$") then fflush(v) end
          local at = fseek(v)
          path, mode, where = scode(rec.path), scode(rec.mode), scode(pathof(id))
          if mtype(at) == "integer" then pos = at * 8 + T_INT end
        elseif st == "file" then
          where = scode(issue(id, "open file not opened with io.open (restored closed)"))
        end
        H[nh + 1], H[nh + 2], H[nh + 3], H[nh + 4], H[nh + 5] = K_FILE, path, mode, pos, where
        nh = nh + 5
      else
        nudata = nudata + 1
        local uname = mt ~= nil and rawget(mt, "__name")
        header_nil(id, (type(uname) == "string" and "userdata " .. uname or "userdata")
          .. " that is not part of the standard environment")
      end
    else
      header_nil(id, "value of type " .. tv .. " cannot be saved")
    end
    return c
  end

  -- The code of a value not in `seen` (objects are discovered here).
  local function fresh(v, par, key, edge)
    local tv = type(v)
    if tv == "string" then
      ns = ns + 1
      S[ns] = v
      local c = ns * 8 + T_STR
      seen[v] = c
      return c
    elseif tv == "number" then
      if mtype(v) == "integer" then
        if v >= INL_LO and v < INL_HI then return v * 8 + T_INT end
        nj = nj + 1
        J[nj] = v
        return C_BIGINT
      end
      nf = nf + 1
      F[nf] = v
      return T_FLT
    elseif tv == "boolean" then
      return v and T_TRUE or T_FALSE
    elseif v == nil then
      return T_NIL
    end
    return discover(v, tv, par, key, edge)
  end

  -- The code of any value.
  local function code(v, par, key, edge)
    return seen[v] or fresh(v, par, key, edge)
  end

  -- The record of suspended coroutine `id` (frames.lua), or nil and why
  -- not. The saved pcs of all the coroutines found so far and not yet
  -- asked about come from Python in one call.
  local function live_record(id)
    local co = O[id]
    local rec = CF.pending(co)
    if rec then return rec end
    if plans[co] == nil then
      local parts, tables, batch = {}, {}, {}
      for q = id, nobj do
        local cq = O[q]
        if K[q] == K_LIVE and plans[cq] == nil and not CF.pending(cq) then
          local plan, why = CF.prepare(cq)
          plans[cq] = plan or why
          if plan and #plan.wanted > 0 then
            local n = #batch + 1
            batch[n], tables[n] = plan, plan.table
            local w = plan.wanted
            parts[n] = spack("<s4I4", CF.packed(plan), #w) .. spack("<" .. srep("i4", #w), unpack(w))
          end
        end
      end
      if #batch > 0 then
        local answer, why = saved_pcs_many(concat(parts), tables)
        local pos = 1
        for _, plan in ipairs(batch) do
          if type(answer) ~= "string" then
            plans[plan.co] = why
          elseif sbyte(answer, pos) == 0 then
            local k = sunpack("<I4", answer, pos + 1)
            local pcs = { sunpack("<" .. srep("i4", 2 * k), answer, pos + 5) }
            pos = pcs[2 * k + 1]
            for j = 1, 2 * k, 2 do plan.pcs[pcs[j]] = pcs[j + 1] end
          else
            plans[plan.co], pos = sunpack("<s4", answer, pos + 1)
          end
        end
      end
    end
    local plan = plans[co]
    if type(plan) ~= "table" then return nil, plan end
    return CF.build(plan, probe)
  end

  -- Roots.
  local ROOTS = {
    { G, "_G" }, { dgetmt(nil), "<nil metatable>" }, { dgetmt(true), "<boolean metatable>" },
    { dgetmt(0), "<number metatable>" }, { dgetmt(""), "<string metatable>" },
    { dgetmt(dgetmt), "<function metatable>" }, { dgetmt(MAIN), "<thread metatable>" },
    { dgetmt(LIGHT), "<light userdata metatable>" },
  }
  local X, nx = {}, 0
  for i = 1, #ROOTS do
    nx = nx + 1
    X[nx] = code(ROOTS[i][1], 0, ROOTS[i][2], E_ROOT)
  end
  for _, t in ipairs(PERMTABLES) do
    if not seen[t] and changed(t) then code(t, 0, permname[t], E_ROOT) end
  end

  -- The walk: objects in the order they were found; the contents of each
  -- may find more. The table loop is the hot path, so the encoding of a
  -- value is written out in it (numbers first: one C call, no lookup).
  local p = 1
  while p <= nobj do
    local kind = K[p]
    local o = O[p]
    if kind == K_TABLE then
      -- `next` gives the array part first, in order: while keys come as
      -- 1, 2, 3, ... only values are written, and runs of numbers go as
      -- runs (floats in F, integers raw in C); from the first other key
      -- on, pairs. The header word is filled in at the end.
      nc = nc + 1
      local hpos, n, m, inarray = nc, 0, 0, true
      local run, rpos, rlen = 0, 0, 0      -- run: 0 none, X_FRUN or X_IRUN
      for k, v in next, o do
        if inarray and k == n + 1 then
          n = n + 1
          local vt = mtype(v)
          if vt == "float" then
            if run ~= X_FRUN then
              if run == X_IRUN then C[rpos] = (rlen * 8 + X_IRUN) * 8 + T_EXT end
              nc = nc + 1
              run, rpos, rlen = X_FRUN, nc, 0
            end
            rlen = rlen + 1
            nf = nf + 1
            F[nf] = v
          elseif vt == "integer" then
            if run ~= X_IRUN then
              if run == X_FRUN then C[rpos] = (rlen * 8 + X_FRUN) * 8 + T_EXT end
              nc = nc + 1
              run, rpos, rlen = X_IRUN, nc, 0
            end
            rlen = rlen + 1
            nc = nc + 1
            C[nc] = v
          else
            if run ~= 0 then
              C[rpos] = (rlen * 8 + run) * 8 + T_EXT
              run = 0
            end
            local c = seen[v]
            if not c then
              local tv = type(v)
              if tv == "string" then
                ns = ns + 1
                S[ns] = v
                c = ns * 8 + T_STR
                seen[v] = c
              elseif tv == "table" and not permname[v] then
                nobj, nh, ntable = nobj + 1, nh + 1, ntable + 1
                c = nobj * 8 + T_OBJ
                seen[v], O[nobj], PAR[nobj], PKEY[nobj], K[nobj], H[nh] = c, v, p, k, K_TABLE, K_TABLE
              else
                c = fresh(v, p, k)
              end
            end
            nc = nc + 1
            C[nc] = c
          end
        else
          if inarray then
            inarray = false
            if run ~= 0 then
              C[rpos] = (rlen * 8 + run) * 8 + T_EXT
              run = 0
            end
          end
          local ck = seen[k]
          if not ck then
            if mtype(k) == "integer" and k >= INL_LO and k < INL_HI then
              ck = k * 8 + T_INT
            else
              ck = fresh(k, p, nil, E_KEY)
            end
          end
          local c
          local vt = mtype(v)
          if vt == "float" then
            nf = nf + 1
            F[nf] = v
            c = T_FLT
          elseif vt == "integer" and v >= INL_LO and v < INL_HI then
            c = v * 8 + T_INT
          else
            c = seen[v]
            if not c then
              local tv = type(v)
              if tv == "string" then
                ns = ns + 1
                S[ns] = v
                c = ns * 8 + T_STR
                seen[v] = c
              elseif tv == "table" and not permname[v] then
                nobj, nh, ntable = nobj + 1, nh + 1, ntable + 1
                c = nobj * 8 + T_OBJ
                seen[v], O[nobj], PAR[nobj], PKEY[nobj], K[nobj], H[nh] = c, v, p, k, K_TABLE, K_TABLE
              else
                c = fresh(v, p, k)
              end
            end
          end
          C[nc + 1], C[nc + 2] = ck, c
          nc = nc + 2
          m = m + 1
        end
      end
      if run ~= 0 then C[rpos] = (rlen * 8 + run) * 8 + T_EXT end
      local mt = dgetmt(o)
      if mt == nil then
        C[hpos] = n << 33 | m << 1
      else
        C[hpos] = n << 33 | m << 1 | 1
        nc = nc + 1
        C[nc] = seen[mt] or fresh(mt, p, nil, E_META)
      end
    elseif kind == K_LFUNC then
      nc = nc + 1
      local cpos = nc
      local i = 1
      while true do
        local name, v = getupvalue(o, i)
        if name == nil then break end
        if nprobed > 0 then
          local s = SENT[v]
          if s then v = s.value end
        end
        local uid = upvalueid(o, i)
        local owner = uvowner[uid]
        if owner then
          C[nc + 1], C[nc + 2] = C_JOIN, owner
          nc = nc + 2
        else
          uvowner[uid] = p * 256 + i
          nc = nc + 1
          C[nc] = code(v, p, i, E_UPVALUE)
        end
        i = i + 1
      end
      C[cpos] = i - 1
    elseif kind == K_PERMTABLE then
      local b = base[o]
      nc = nc + 1
      local cpos, m = nc, 0
      for k, v in next, o do
        if not rawequal(b[k], v) then
          local ck = code(k, p, nil, E_KEY)
          C[nc + 1], C[nc + 2] = ck, code(v, p, k)
          nc = nc + 2
          m = m + 1
        end
      end
      for k in next, b do
        if rawget(o, k) == nil then
          C[nc + 1], C[nc + 2] = code(k, p, nil, E_KEY), T_NIL
          nc = nc + 2
          m = m + 1
        end
      end
      C[cpos] = m
      local mt = dgetmt(o)
      nc = nc + 1
      if rawequal(mt, basemt[o] or nil) then
        C[nc] = C_SAME
      else
        C[nc] = code(mt, p, nil, E_META)
      end
    elseif kind == K_THREAD then
      nt = nt + 1
      if FAILED[p] then
        T[nt] = code(FAILED[p], p, nil, E_STACK)
      else
        T[nt] = costatus(o) == "dead" and T_NIL or code(thread_fn[o], p, nil, E_FN)
      end
    elseif kind == K_WRAP then
      local _, co = getupvalue(o, 1)
      nt = nt + 1
      T[nt] = code(co, p, nil, E_THREAD)
    elseif kind == K_LIVE then
      local rec, why = live_record(p)
      if rec then
        nt = nt + 1
        T[nt] = code(rec, p, nil, E_STACK)
      else
        -- not capturable: the header becomes a NIL one (same size)
        why = "suspended coroutine cannot be saved: " .. tostring(why)
        local hp = HPOS[p]
        K[p] = K_NIL
        H[hp], H[hp + 1], H[hp + 2] = K_NIL, scode(issue(p, why)), scode(why)
        nthread = nthread - 1
      end
    end
    p = p + 1
  end

  -- Open upvalues of suspended frames: every closure upvalue that holds a
  -- probe sentinel shares that frame's register (see THE FORMAT).
  local L, nl = {}, 0
  if nprobed > 0 then
    local linked = {}
    for id = 1, nobj do
      if K[id] == K_LFUNC then
        local f = O[id]
        local i = 1
        while true do
          local name, v = getupvalue(f, i)
          if name == nil then break end
          local s = SENT[v]
          if s then
            local uid = upvalueid(f, i)
            if not linked[uid] then
              linked[uid] = true
              L[nl + 1], L[nl + 2], L[nl + 3] = seen[s.frame], s.reg, uvowner[uid]
              nl = nl + 3
            end
          end
          i = i + 1
        end
      end
    end
  end

  -- Python objects: one call pickles them all (shared references between
  -- them stay shared); the ones that cannot be pickled are reported.
  if npy > 0 then
    local blob, failures = pickle_many(PY, npy)
    nx = nx + 1
    X[nx] = type(blob) == "string" and scode(blob) or T_NIL
    local fl, k = {}, 0
    if failures then
      for i in next, failures do
        k = k + 1
        fl[k] = i
      end
      tsort(fl)
    end
    nx = nx + 1
    X[nx] = k
    for j = 1, k do
      local i = fl[j]
      local reason = tostring(failures[i])
      issue(seen[PY[i]] >> 3, reason)
      X[nx + 1], X[nx + 2] = i, scode(reason)
      nx = nx + 2
    end
  else
    X[nx + 1], X[nx + 2] = T_NIL, 0
    nx = nx + 2
  end
  X[nx + 1] = nl // 3
  tmove(L, 1, nl, nx + 2, X)
  nx = nx + 1 + nl

  -- The pool, then the body, in one concatenation.
  local lens, sbytes = {}, 0
  for i = 1, ns do
    local l = #S[i]
    lens[i] = l
    sbytes = sbytes + l
  end
  local parts = { spack("<c8I4", MAGIC, VERSION) }
  local function section(s)
    parts[#parts + 1] = spack("<j", #s)
    parts[#parts + 1] = s
  end
  section(pack_ints(lens, ns))
  parts[#parts + 1] = spack("<j", sbytes)
  tmove(S, 1, ns, #parts + 1, parts)
  section(pack_ints(H, nh))
  section(pack_ints(T, nt))
  section(pack_ints(C, nc))
  section(pack_floats(F, nf))
  section(pack_ints(J, nj))
  section(pack_ints(X, nx))
  local body = concat(parts)
  local counts = {
    tables = ntable, functions = nfunc, prototypes = nproto, strings = ns,
    string_bytes = sbytes, threads = nthread, userdata = nudata, python_objects = npy,
    objects = nobj, seconds = clock() - t0,
  }
  return body, issues, counts
end

-- Serialize, with the collector stopped (a finalizer must not change the
-- state half-way through the walk). The body stays referenced in M.kept
-- until Python has copied it (see state.py).
function M.capture(pickle_many)
  local running = collectgarbage("isrunning")
  collectgarbage("stop")
  local ok, body, issues, counts = pcall(capture, pickle_many)
  unprobe()
  if running then collectgarbage("restart") end
  if not ok then error(body, 0) end
  M.kept = body
  return sformat("%p", body), #body, ssub(body, 1, 64), ssub(body, -64), issues, counts
end

function M.take()
  return M.kept
end

function M.release()
  M.kept = nil
end

---------------------------------------------------------------------------
-- Apply.
---------------------------------------------------------------------------
local function dead_thread()
  local co = kcreate(function() end)
  coresume(co)
  return co
end

local function closed_file()
  local fh = tmpfile()
  if fh then fh:close() end
  return fh
end

-- A file is reopened without ever truncating it: "w" and "w+" as "r+".
local function reopen_mode(mode)
  local first, rest = smatch(mode, "^([rwa])(.*)$")
  if first == "w" then return "r+" .. rest:gsub("%+", "") end
  return mode
end

local function apply(body, unpickle_at)
  if type(body) ~= "string" then error("the body is not a string", 0) end
  if ssub(body, 1, 8) ~= MAGIC then error("not a Lua state body (bad magic)", 0) end
  local ok, magic, version, slens, sblob, sH, sT, sC, sF, sJ, sX, tail =
    pcall(sunpack, "<c8I4s8s8s8s8s8s8s8s8", body)
  if not ok then error("the body is truncated", 0) end
  if version ~= VERSION and version ~= 1 and version ~= 2 then
    error(sformat("Lua state format version %d is not supported (this kernel reads %d)",
      version, VERSION), 0)
  end
  if tail ~= #body + 1 then error("trailing bytes after the body", 0) end
  -- where the string blob starts inside body (for Python objects)
  local blob_at = 8 + 4 + 8 + #slens + 8

  local notes, nnotes = {}, 0
  local function note(where, reason)
    nnotes = nnotes + 1
    notes[nnotes] = { path = where, reason = reason }
  end

  -- (1) strings and streams
  local lens, ns = unpack_ints(slens, "string lengths")
  local S, SAT = {}, {}
  local pos = 1
  local nblob = #sblob
  for i = 1, ns do
    local l = lens[i]
    if l < 0 or pos + l - 1 > nblob then error("string pool does not match its lengths", 0) end
    SAT[i] = pos
    S[i] = ssub(sblob, pos, pos + l - 1)
    pos = pos + l
  end
  if pos ~= #sblob + 1 then error("string pool does not match its lengths", 0) end
  local H, nh = unpack_ints(sH, "headers")
  local T = unpack_ints(sT, "threads")
  local C, ncodes = unpack_ints(sC, "contents")
  local F, nfl = unpack_floats(sF)
  local J = unpack_ints(sJ, "big integers")
  local X = unpack_ints(sX, "roots")

  local function str(c)
    if c == T_NIL then return nil end
    if c & 7 ~= T_STR then error("string expected in header", 0) end
    local s = S[c >> 3]
    if s == nil then error("bad string reference", 0) end
    return s
  end

  -- (2) Python objects
  local pyobjs, pyfail = {}, {}
  local blobc = X[9]
  local nfail = X[10] or 0
  for j = 1, nfail do
    pyfail[X[9 + 2 * j]] = str(X[10 + 2 * j])
  end
  local pyerror
  if blobc and blobc ~= T_NIL then
    local sid = blobc >> 3
    if S[sid] == nil then error("bad Python record", 0) end
    local ok, objs = unpickle_at(blob_at + SAT[sid] - 1, lens[sid])
    if ok then pyobjs = objs else pyerror = objs end
  end

  -- (3) objects
  local O, K = {}, {}
  local hp, id = 1, 0
  local pending = {}       -- threads and wraps: id -> T code
  local tcount = 0
  while hp <= nh do
    id = id + 1
    local kind = H[hp]
    K[id] = kind
    if kind == K_TABLE then
      O[id] = {}
      hp = hp + 1
    elseif kind == K_LFUNC then
      local f, err = load(str(H[hp + 1]), "=(snapshot)", "b")
      if not f then error("cannot load a function: " .. tostring(err), 0) end
      O[id] = f
      hp = hp + 2
    elseif kind == K_PERM or kind == K_PERMTABLE then
      local name = str(H[hp + 1])
      local v = permvalue[name]
      if v == nil then
        note(name, "not part of this kernel's standard environment; restored as nil")
      elseif kind == K_PERMTABLE and type(v) ~= "table" then
        error("permanent " .. name .. " is not a table", 0)
      end
      O[id] = v
      hp = hp + 2
    elseif kind == K_NIL then
      note(str(H[hp + 1]), "not saved: " .. str(H[hp + 2]) .. "; restored as nil")
      hp = hp + 3
    elseif kind == K_THREAD then
      tcount = tcount + 1
      pending[id] = { kind, H[hp + 1], T[tcount] }
      hp = hp + 2
    elseif kind == K_WRAP then
      tcount = tcount + 1
      pending[id] = { kind, nil, T[tcount] }
      hp = hp + 1
    elseif kind == K_LIVE then
      if CF == nil then error("suspended coroutines cannot be restored here", 0) end
      tcount = tcount + 1
      pending[id] = { kind, nil, T[tcount], where = str(H[hp + 1]) }
      hp = hp + 3
    elseif kind == K_FILE then
      local path, mode, posc, where = str(H[hp + 1]), str(H[hp + 2]), H[hp + 3], str(H[hp + 4])
      hp = hp + 5
      local fh
      if path then
        local err
        fh, err = kopen(path, reopen_mode(mode))
        if fh then
          local rec = kfiles[fh]
          if rec then rec.mode = mode end
          if posc ~= T_NIL then
            local ok, serr = fseek(fh, "set", posc // 8)
            if not ok then
              note(where or path, sformat("file %s reopened, but cannot seek to %d (%s)",
                path, posc // 8, tostring(serr)))
            end
          end
        else
          note(where or path, "file cannot be reopened (" .. tostring(err) .. "); restored closed")
          fh = closed_file()
        end
      else
        if where then note(where, "open file not opened with io.open; restored closed") end
        fh = closed_file()
      end
      O[id] = fh
    elseif kind == K_PYOBJ then
      local index, where = H[hp + 1], str(H[hp + 2])
      hp = hp + 3
      local v = pyobjs[index]
      if v == nil then
        local why = pyfail[index] and "not saved: " .. pyfail[index]
          or pyerror and "cannot be unpickled: " .. tostring(pyerror)
          or "Python object missing from the snapshot"
        note(where, why .. "; restored as nil")
      end
      O[id] = v
    else
      error("bad object kind " .. tostring(kind), 0)
    end
  end
  local nobj = id
  if not (X[1] and X[1] & 7 == T_OBJ and rawequal(O[X[1] >> 3], G)) then
    error("the globals table is not the first root", 0)
  end

  -- (4) threads and wrap functions: a wrap over a not-started thread is made
  -- with coroutine.wrap(fn), and its thread *is* the restored thread; a
  -- thread waits until its function exists (it may be a wrap function).
  local claimed = {}
  local failing, nfailing = {}, 0       -- threads dead by an error, to kill in (7)
  local adopted, adopted_at = {}, {}     -- restored suspended threads (and paths), started in (7)
  for wid, rec in next, pending do
    if rec[1] == K_WRAP then
      local c = rec[3]
      local trec = c & 7 == T_OBJ and pending[c >> 3]
      if trec and (trec[1] == K_THREAD or trec[1] == K_LIVE) then
        claimed[c >> 3] = claimed[c >> 3] or wid
      end
    end
  end
  local function ready(c)   -- the object a T code names exists (or never will)
    if c & 7 ~= T_OBJ then return true end
    local r = pending[c >> 3]
    return r == nil or r.done
  end
  local function value_of(c)
    if c & 7 == T_OBJ then return O[c >> 3] end
    return nil
  end
  -- A suspended coroutine continues its record (a table, filled in (5)).
  local function frames_of(rec)
    local r = value_of(rec[3])
    if type(r) ~= "table" then
      error("a suspended coroutine without frames: " .. tostring(rec.where), 0)
    end
    return r
  end
  local progress = true
  while progress do
    progress = false
    for pid, rec in next, pending do
      if not rec.done then
        local kind, state, c = rec[1], rec[2], rec[3]
        if kind == K_LIVE and not claimed[pid] then
          local r = frames_of(rec)
          O[pid] = kcreate(CF.revive(r))
          CF.adopt(O[pid], r)
          local n = #adopted + 1
          adopted[n], adopted_at[n] = O[pid], rec.where
          rec.done, progress = true, true
        elseif kind == K_THREAD and not claimed[pid] then
          if state == 1 then
            O[pid] = dead_thread()
            rec.done, progress = true, true
          elseif state == 2 then      -- dies in (7), once its record is complete
            if CF == nil then error("coroutines dead by an error cannot be restored here", 0) end
            O[pid] = kcreate(CF.die)
            nfailing = nfailing + 1
            failing[nfailing] = { O[pid], c }
            rec.done, progress = true, true
          elseif ready(c) then
            local fn = value_of(c)
            if type(fn) == "function" then O[pid] = kcreate(fn) end
            rec.done, progress = true, true
          end
        elseif kind == K_WRAP then
          local tid = c & 7 == T_OBJ and c >> 3
          local trec = tid and pending[tid]
          if trec and claimed[tid] == pid then
            if trec[1] == K_LIVE then
              local r = frames_of(trec)
              local w = kwrap(CF.revive(r))
              O[pid], O[tid] = w, select(2, getupvalue(w, 1))
              CF.adopt(O[tid], r)
              local n = #adopted + 1
              adopted[n], adopted_at[n] = O[tid], trec.where
              rec.done, trec.done, progress = true, true, true
            elseif trec[2] == 1 or trec[2] == 2 then
              local w = kwrap(function() end)
              w()
              O[pid], O[tid] = w, select(2, getupvalue(w, 1))
              rec.done, trec.done, progress = true, true, true
            elseif ready(trec[3]) then
              local fn = value_of(trec[3])
              if type(fn) == "function" then
                local w = kwrap(fn)
                O[pid], O[tid] = w, select(2, getupvalue(w, 1))
              end
              rec.done, trec.done, progress = true, true, true
            end
          elseif trec == nil or trec.done then
            -- a thread saved as nil, or one that another wrap owns
            if tid and O[tid] ~= nil then
              local fn = thread_fn[O[tid]]
              if fn then O[pid] = kwrap(fn) end
            end
            rec.done, progress = true, true
          end
        end
      end
    end
  end

  -- (5) contents. Decoding a code is written out in the table loop (the
  -- hot path); `val` is the same for the rest.
  local cp, fp, jp = 1, 0, 0
  local function val(c)
    local tag = c & 7
    if tag == T_OBJ then return O[c >> 3]
    elseif tag == T_STR then return S[c >> 3]
    elseif tag == T_INT then return c // 8
    elseif tag == T_FLT then fp = fp + 1; return F[fp]
    elseif tag == T_TRUE then return true
    elseif tag == T_FALSE then return false
    elseif c == C_BIGINT then jp = jp + 1; return J[jp]
    elseif tag == T_NIL then return nil
    end
    error("bad value code " .. c, 0)
  end
  local mts, nmts = {}, 0
  for oid = 1, nobj do
    local kind = K[oid]
    if kind == K_TABLE then
      local t = O[oid]
      local hdr = C[cp]
      cp = cp + 1
      local n, m = hdr >> 33, (hdr >> 1) & 0xFFFFFFFF
      local i = 1
      while i <= n do
        local c = C[cp]
        cp = cp + 1
        local tag = c & 7
        if tag == T_EXT then
          local ext = c >> 3
          local sub, len = ext & 7, ext >> 3
          if len > n - i + 1 then error("bad run length", 0) end
          if sub == X_FRUN then
            if fp + len > nfl then error("float run past the floats", 0) end
            tmove(F, fp + 1, fp + len, i, t)
            fp = fp + len
          elseif sub == X_IRUN then
            if cp + len - 1 > ncodes then error("integer run past the contents", 0) end
            tmove(C, cp, cp + len - 1, i, t)
            cp = cp + len
          elseif c == C_BIGINT then
            jp = jp + 1
            t[i] = J[jp]
            len = 1
          else
            error("bad code in an array", 0)
          end
          i = i + len
        else
          local v
          if tag == T_OBJ then v = O[c >> 3]
          elseif tag == T_STR then v = S[c >> 3]
          elseif tag == T_INT then v = c // 8
          elseif tag == T_FLT then fp = fp + 1; v = F[fp]
          elseif tag == T_TRUE then v = true
          elseif tag == T_FALSE then v = false
          end
          t[i] = v
          i = i + 1
        end
      end
      for _ = 1, m do
        local c = C[cp]
        local tag = c & 7
        local k
        if tag == T_STR then k = S[c >> 3]
        elseif tag == T_INT then k = c // 8
        elseif tag == T_OBJ then k = O[c >> 3]
        elseif tag == T_FLT then fp = fp + 1; k = F[fp]
        else k = val(c)
        end
        c = C[cp + 1]
        cp = cp + 2
        tag = c & 7
        local v
        if tag == T_OBJ then v = O[c >> 3]
        elseif tag == T_STR then v = S[c >> 3]
        elseif tag == T_INT then v = c // 8
        elseif tag == T_FLT then fp = fp + 1; v = F[fp]
        else v = val(c)
        end
        if k ~= nil and k == k then t[k] = v end
      end
      if hdr & 1 == 1 then
        local mt = val(C[cp])
        cp = cp + 1
        if mt ~= nil then
          if type(mt) ~= "table" then error("a metatable that is not a table", 0) end
          nmts = nmts + 1
          mts[nmts] = { t, mt }
        end
      end
    elseif kind == K_LFUNC then
      local f = O[oid]
      local n = C[cp]
      cp = cp + 1
      for i = 1, n do
        local c = C[cp]
        cp = cp + 1
        if c == C_JOIN then
          local owner = C[cp]
          cp = cp + 1
          local g = O[owner >> 8]
          if K[owner >> 8] ~= K_LFUNC then error("bad shared upvalue", 0) end
          upvaluejoin(f, i, g, owner & 255)
        else
          setupvalue(f, i, val(c))
        end
      end
    elseif kind == K_PERMTABLE then
      local t = O[oid]        -- nil if this kernel does not have it
      local m = C[cp]
      cp = cp + 1
      for _ = 1, m do
        local k = val(C[cp])
        cp = cp + 1
        local v = val(C[cp])
        cp = cp + 1
        if t ~= nil and k ~= nil and k == k then rawset(t, k, v) end
      end
      local c = C[cp]
      cp = cp + 1
      if c ~= C_SAME and t ~= nil then
        local mt = val(c)
        if mt ~= nil and type(mt) ~= "table" then error("a metatable that is not a table", 0) end
        nmts = nmts + 1
        mts[nmts] = { t, mt }
      end
    end
  end
  if cp ~= ncodes + 1 then error("contents do not match the objects", 0) end

  -- (5b) open upvalues of suspended frames
  local xl = 11 + 2 * nfail
  local nlinks = X[xl] or 0
  for j = 0, nlinks - 1 do
    local frame = val(X[xl + 1 + 3 * j])
    local reg, owner = X[xl + 2 + 3 * j], X[xl + 3 + 3 * j]
    if type(frame) ~= "table" or mtype(reg) ~= "integer" or mtype(owner) ~= "integer"
        or K[owner >> 8] ~= K_LFUNC then
      error("bad open upvalue record", 0)
    end
    local f = O[owner >> 8]
    local links = rawget(frame, "links")
    if links == nil then
      links = {}
      rawset(frame, "links", links)
    end
    links[reg] = { f = f, n = owner & 255 }
  end

  -- (6) metatables last
  for i = 1, nmts do
    local r = mts[i]
    dsetmt(r[1], r[2])
  end
  local samples = { nil, true, 0, "", dgetmt, MAIN, LIGHT }
  for i = 2, 8 do
    local c = X[i]
    local mt = c & 7 == T_OBJ and O[c >> 3] or nil
    if type(mt) == "table" or mt == nil then
      if not rawequal(dgetmt(samples[i - 1]), mt) then dsetmt(samples[i - 1], mt) end
    end
  end
  -- (7) coroutines dead by an error die again, keeping the error and the
  -- pending to-be-closed variables; restored suspended coroutines start, up
  -- to their first resume (frames.lua: their pcalls and to-be-closed guards
  -- become native levels)
  for i = 1, nfailing do
    local r = val(failing[i][2])
    if type(r) ~= "table" then error("a coroutine dead by an error without its record", 0) end
    coresume(failing[i][1], r)
  end
  if CF then
    for _, f in ipairs(CF.start(adopted)) do
      note(adopted_at[f[1]] or "?", "restored coroutine cannot be started: " .. f[2])
    end
  end
  return notes
end

function M.apply(body, unpickle_at)
  local ok, notes = pcall(apply, body, unpickle_at)
  if not ok then
    return false, "malformed Lua state: " .. tostring(notes)
  end
  return true, notes
end

return M
