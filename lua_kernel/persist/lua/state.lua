-- The Lua state as bytes and back: the serializer of lua_kernel snapshots.
--
-- Loaded once per Lua state by lua_kernel/persist/state.py, right after the
-- kernel's own files and before any user code runs, with `kernel`, the module
-- table of lua/session.lua (is_name, INTERRUPTED, hook), and `tracked`, what
-- persist/lua/track.lua records (thread_fn, wrapped, files), and the
-- runtime's codec (persist/lua/codec53.lua; in LuaJIT codec_jit.lua, with
-- this file's integer operators rewritten by persist/jitsource.py, since
-- LuaJIT is Lua 5.1: one source for every runtime). Returns M:
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
-- ========================= THE FORMAT, OVERVIEW ==========================
--
-- Everything is numbers. A value is written as one integer, its CODE
-- (payload * 8 + tag; see "Value codes"). Strings and objects are numbered
-- from 1 in the order they are discovered, each kind on its own; a string is
-- stored once however often it is used (bytecode too, so each distinct
-- prototype is stored once). The body is a header and sections of numbers
-- (see "The body"): the string pool, then
--   H  one header per object, in object order: what must exist before
--      anything is filled in (its kind, then the kind's fields);
--   T  one code per thread and wrap function: what it runs;
--   C  the contents of tables, closures and permanent tables;
--   F, J  the floats and the big integers that codes refer to, in order;
--   X  the roots, the Python record and the open upvalues.
-- Each kind of object has a writer and a reader, side by side below, under
-- the grammar of its records: TABLE, PERM, PERMTABLE, LFUNC, NIL, THREAD,
-- WRAP, FILE, PYOBJ, LIVE; then X. Writing is one walk (discover an object:
-- number it and write its header; take the next object of the queue: write
-- its contents, which may discover more); reading goes in phases (see
-- "Restore").
---------------------------------------------------------------------------

local kernel, tracked, CODEC = ...

local M = {}

---------------------------------------------------------------------------
-- The border: what the kernel (lua/session.lua) and state.py give this
-- file, and what they take from it, in one place.
---------------------------------------------------------------------------
local thread_fn, wrapped, kfiles = tracked.thread_fn, tracked.wrapped, tracked.files
local is_name = kernel.is_name       -- a key that can be written bare in a path
local INTERRUPTED, KERNEL_HOOK = kernel.INTERRUPTED, kernel.hook

local permname = {}     -- permanent value -> name (filled below, at load time)
local permvalue = {}    -- name -> permanent value
function M.permanent(name) return permvalue[name] end
function M.name_of(value) return permname[value] end

-- Suspended coroutines: frames.lua's module and Python's batch of saved pcs
-- (framepeek.py's saved_pcs_many), set by state.py once both exist; or,
-- in a runtime whose frames cannot be read yet, why not.
local CF, saved_pcs_many, NO_FRAMES
function M.use_frames(cf, pcs_many, why_not)
  CF, saved_pcs_many, NO_FRAMES = cf, pcs_many, why_not
end

local VERSION = 3
-- versions 1 (no suspended stacks) and 2 (no coroutines dead by an error) are read too
local READABLE = { [1] = true, [2] = true, [VERSION] = true }

-- Originals, before any user code can replace them.
local type, next, pairs, ipairs, select, error, pcall = type, next, pairs, ipairs, select, error, pcall
local rawget, rawset, rawequal = rawget, rawset, rawequal
local tostring, load = tostring, load
local collectgarbage = collectgarbage
local spack, sunpack, sbyte, ssub, srep, sformat, sfind, smatch, sdump =
  string.pack, string.unpack, string.byte, string.sub, string.rep, string.format,
  string.find, string.match, string.dump
local concat, unpack, tmove, tsort = table.concat, table.unpack or unpack, table.move, table.sort
local dgetmt, dsetmt, getupvalue, setupvalue, upvalueid, upvaluejoin, getinfo, setlocal =
  debug.getmetatable, debug.setmetatable, debug.getupvalue, debug.setupvalue,
  debug.upvalueid, debug.upvaluejoin, debug.getinfo, debug.setlocal
local costatus, coresume = coroutine.status, coroutine.resume
local kcreate, kwrap = coroutine.create, coroutine.wrap     -- the kernel's, registering
local kopen, iotype, tmpfile = io.open, io.type, io.tmpfile  -- the kernel's io.open
local clock = os.clock

local G = _G                 -- the globals table, whatever `_G` is made to mean later

---------------------------------------------------------------------------
-- Value codes.
--
--     code = payload * 8 + tag
--
--   tag 0  nil
--   tag 1  false
--   tag 2  true
--   tag 3  integer; payload = the integer itself (only when -2^60 <= v < 2^60,
--          so that payload * 8 cannot overflow; in LuaJIT an "integer" is
--          what its codec's mtype says: an integral double below 2^50)
--   tag 4  float; the value is the next one of the float stream F (floats are
--          kept as 8 bytes, bit for bit: -0.0, inf, NaN with its payload)
--   tag 5  string; payload = its number in the string pool
--   tag 6  object (table, function, thread, userdata); payload = its number
--   tag 7  extension; payload = len * 8 + sub, made by ext(sub, len) only:
--            sub 0  a big integer: the next one of the big-integer stream J
--            sub 1  a shared upvalue: the next number in C is owner * 256 +
--                   index, the closure and upvalue it is shared with
--            sub 2  "unchanged": a permanent table's metatable is as it was
--            sub 3  in an array: the next `len` elements are the next `len`
--                   floats of F (restored with one table.move)
--            sub 4  in an array: the next `len` elements are integers, the
--                   next `len` numbers of C as they are (one table.move)
---------------------------------------------------------------------------
local T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_OBJ, T_EXT = 0, 1, 2, 3, 4, 5, 6, 7
local X_BIGINT, X_JOIN, X_SAME, X_FRUN, X_IRUN = 0, 1, 2, 3, 4
local function ext(sub, len) return (len * 8 + sub) * 8 + T_EXT end
local C_BIGINT, C_JOIN, C_SAME = ext(X_BIGINT, 0), ext(X_JOIN, 0), ext(X_SAME, 0)
local RUN_SUB = { float = X_FRUN, integer = X_IRUN }   -- math.type -> run extension
local INL_LO, INL_HI = -(1 << 60), 1 << 60

-- object kinds: the first number of a header
local K_TABLE, K_PERM, K_PERMTABLE, K_LFUNC, K_NIL, K_THREAD, K_WRAP, K_FILE, K_PYOBJ, K_LIVE =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10
local HEAD_SIZE = { 1, 2, 2, 2, 3, 2, 1, 5, 3, 3 }    -- numbers in H, by kind
local KIND_NAME = { "table", "permanent", "permanent table", "Lua function", "nil",
  "coroutine", "coroutine.wrap function", "file", "Python object", "suspended coroutine" }
-- how an object was first reached (for paths in reports); nil: a table entry
local E_ROOT, E_KEY, E_UPVALUE, E_META, E_FN, E_THREAD, E_STACK = 1, 2, 3, 4, 5, 6, 7

-- What a malformed body is told apart by; said once here. Restore errors
-- raised while an object is made or filled name that object (see bad()).
local ERR = {
  not_string = "the body is not a string",
  magic = "not a Lua state body (bad magic)",
  truncated_body = "the body is truncated",
  version = "Lua state format version %d is not supported (this kernel reads %d)",
  trailing = "trailing bytes after the body",
  truncated = "%s are truncated",
  count = "bad count in %s",
  chunk = "bad chunk in %s",
  trailing_in = "trailing bytes in %s",
  pool = "string pool does not match its lengths",
  string_expected = "string expected in header",
  string_ref = "bad string reference",
  python = "bad Python record",
  kind = "bad object kind %s",
  load = "cannot load a function: %s",
  not_table = "permanent %s is not a table",
  no_frames_here = "suspended coroutines cannot be restored here",
  no_failed_here = "coroutines dead by an error cannot be restored here",
  no_frames = "a suspended coroutine without frames: %s",
  first_root = "the globals table is not the first root",
  value = "bad value code %s",
  run_length = "bad run length",
  float_run = "float run past the floats",
  int_run = "integer run past the contents",
  array_code = "bad code in an array",
  metatable = "a metatable that is not a table",
  shared_upvalue = "bad shared upvalue",
  contents = "contents do not match the objects",
  open_upvalue = "bad open upvalue record",
  failed_record = "a coroutine dead by an error without its record",
  codec = "a Lua state body of another runtime's codec (magic %q; this one reads %q)",
  too_big = "a table too big to save here (%d array entries, %d others)",
}

-- CODEC, the runtime's part of the format (persist/lua/codec53.lua or
-- codec_jit.lua, as state.py chose): which numbers are "integer" (mtype),
-- the split of a table's header word, the numbers' bytes; its magic opens
-- the body.
local mtype, HSHIFT, HMOD, HMAX = CODEC.mtype, CODEC.HSHIFT, CODEC.HMOD, CODEC.HMAX

-- The writers and readers of the kinds, filled in by each kind's section.
local HEAD_OF = {}   -- Lua type -> head_<kind>(W, id, v): header of a new object
local PUT = {}       -- kind -> put_<kind>(W, id, object): its contents (the walk)
local PUT_STRETCH = {}  -- kind -> put_<kinds>(W, id): a stretch of them; the next id
local MAKE = {}      -- kind -> make_<kind>(R, id, hp): object from its header; next hp
                     -- (tables and closures: make_tables, make_closures, a stretch at a time)
local LINK = {}      -- kind -> link_<kind>(R, id, rec): threads and wraps, made in order
local GET = {}       -- kind -> get_<kind>(R, id, object): fill in its contents
local GET_STRETCH = {}  -- kind -> get_<kinds>(R, id): a stretch of them; the next id
---------------------------------------------------------------------------
-- Permanents: the fresh state, walked once, now.
---------------------------------------------------------------------------
local base = {}         -- permanent table -> copy of its entries
local basemt = {}       -- permanent table -> its metatable (false: none)

local real_file = tmpfile()
local FILE_MT = real_file and dgetmt(real_file)
local fseek, fflush = FILE_MT.__index.seek, FILE_MT.__index.flush
if real_file then real_file:close() end
local STREAM_MT = dgetmt(io.stdout)
local MAIN = coroutine.running()      -- nil in LuaJIT, whose main thread is out of reach
local POBJ_MT = type(python) == "table" and python.builtins ~= nil and dgetmt(python.builtins) or nil
local LIGHT = upvalueid(function() return MAIN end, 1)     -- any light userdata


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
    { "<interrupted>", INTERRUPTED },
    { "<kernel hook>", KERNEL_HOOK },
    { "ipairs()", (ipairs({})) },
    { "utf8.codes()", utf8 and (utf8.codes("")) },            -- no utf8 in LuaJIT
    { "utf8.codes(lax)", utf8 and (utf8.codes("", true)) },
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
-- Sections of numbers: a count, then chunks of up to CODEC.CHUNK numbers,
-- each in the codec's bytes (CODEC.ints, floats; read_ints, read_floats).
---------------------------------------------------------------------------
local STREAM = {}
do
  local CHUNK, len, count = CODEC.CHUNK, CODEC.len, CODEC.count

  function STREAM.pack(A, n, chunk)
    local out, no = { len(n) }, 1
    for i = 1, n, CHUNK do
      local j = i + CHUNK - 1
      local a, b = chunk(A, i, j > n and n or j)    -- one or two strings: not copied to join
      out[no + 1], out[no + 2] = a, b
      no = no + (b and 2 or 1)
    end
    return concat(out)
  end

  -- A section's numbers and their count; `width`: the fewest bytes a number
  -- takes (for the check of the count).
  function STREAM.unpack(s, what, read, width)
    local n = count(s)
    if n == nil then error(sformat(ERR.truncated, what), 0) end
    if n < 0 or n > #s // width then error(sformat(ERR.count, what), 0) end
    local A, pos, i = {}, 9, 1
    while i <= n do
      local k = n - i + 1
      if k > CHUNK then k = CHUNK end
      local why
      pos, why = read(s, pos, k, A, i)
      if not pos then error(sformat(ERR[why], what), 0) end
      i = i + k
    end
    if pos ~= #s + 1 then error(sformat(ERR.trailing_in, what), 0) end
    return A, n
  end
end

---------------------------------------------------------------------------
---------------------------------------------------------------------------
-- The writer's state W, one per capture. `seen` maps every string and
-- object met so far to its code, so the common case (a value seen before) is
-- one table lookup. Objects: O (the object), K (its kind), and how it was
-- first reached, for paths in reports: PAR (parent's number), PKEY (key,
-- upvalue index or root name), PEDGE (E_*; nil: a table entry). Sections
-- H, T, C, F, J, X with their counts nh, nt, ...; S, ns the string pool.
---------------------------------------------------------------------------
local function new_writer()
  return {
    seen = {}, S = {}, ns = 0,
    O = {}, K = {}, PAR = {}, PKEY = {}, PEDGE = {}, nobj = 0,
    H = {}, nh = 0, T = {}, nt = 0, C = {}, nc = 0, F = {}, nf = 0, J = {}, nj = 0,
    X = {}, nx = 0,
    PY = {}, npy = 0,                 -- Python objects, pickled in one call
    issues = {}, nissues = 0,
    uvowner = {},       -- upvalueid -> owner * 256 + index
    HPOS = {},          -- suspended coroutine -> position of its header
    plans = {},         -- suspended coroutine -> frames.lua plan, or reason
    FAILED = {},        -- id of a coroutine dead by an error -> CF.failed record
    nproto = 0, nfunc = 0, ntable = 0, nthread = 0, nudata = 0,
  }
end

-- The path of an object, from the parents recorded when it was found:
-- "_G.cfg.items[3]", "_G.f<upvalue 'x'>". A very deep one keeps its first
-- step and its last 12: "_G.list<999987 more>.next.next...".
local function segment(W, id)
  local e, k, par = W.PEDGE[id], W.PKEY[id], W.PAR[id]
  if e == nil then return is_name(k) and "." .. k or key_text(k) end
  if e == E_UPVALUE then return sformat("<upvalue '%s'>", (getupvalue(W.O[par], k)) or "?") end
  if e == E_KEY then return "<key>" end
  if e == E_META then return "<metatable>" end
  if e == E_FN then return "<function>" end
  if e == E_STACK then return "<stack>" end
  return "<thread>"
end

local function pathof(W, id)
  local O, PAR, PEDGE = W.O, W.PAR, W.PEDGE
  local segs, n, skipped = {}, 0, 0
  while id and id > 0 do
    local nm = permname[O[id]]
    if nm then n = n + 1; segs[n] = nm; break end
    if PEDGE[id] == E_ROOT then n = n + 1; segs[n] = W.PKEY[id]; break end
    local par = PAR[id]
    if n < 12 or PEDGE[par] == E_ROOT or permname[O[par]] then
      if skipped > 0 then
        n = n + 1
        segs[n] = sformat("<%d more>", skipped)
        skipped = 0
      end
      n = n + 1
      segs[n] = segment(W, id)
    else
      skipped = skipped + 1
    end
    id = par
  end
  local out = {}
  for i = n, 1, -1 do out[#out + 1] = segs[i] end
  return concat(out)
end

local function issue(W, id, reason)
  local where = pathof(W, id)
  local n = W.nissues + 1
  W.nissues = n
  W.issues[n] = { path = where, reason = reason }
  return where
end

-- The code of a string (added to the pool when new).
local function scode(W, s)
  local c = W.seen[s]
  if not c then
    local ns = W.ns + 1
    W.ns = ns
    W.S[ns] = s
    c = ns * 8 + T_STR
    W.seen[s] = c
  end
  return c
end

-- Write object `id`'s header: its kind and the kind's fields.
local function head(W, id, kind, a, b, c, d)
  local H, nh = W.H, W.nh
  W.K[id] = kind
  H[nh + 1], H[nh + 2], H[nh + 3], H[nh + 4], H[nh + 5] = kind, a, b, c, d
  W.nh = nh + HEAD_SIZE[kind]
end

-- Number a newly met object and write its header; returns its code.
local function discover(W, v, tv, par, key, edge)
  local id = W.nobj + 1
  W.nobj = id
  local c = id * 8 + T_OBJ
  W.seen[v], W.O[id], W.PAR[id], W.PKEY[id] = c, v, par, key
  if edge then W.PEDGE[id] = edge end
  local nm = permname[v]
  local write = nm and HEAD_OF.permanent or HEAD_OF[tv] or HEAD_OF.other
  write(W, id, v, nm)
  return c
end

-- The code of a value not in `seen` (objects are discovered here).
local function fresh(W, v, par, key, edge)
  local tv = type(v)
  if tv == "string" then
    return scode(W, v)
  elseif tv == "number" then
    if mtype(v) == "integer" then
      if v >= INL_LO and v < INL_HI then return v * 8 + T_INT end
      local nj = W.nj + 1
      W.nj = nj
      W.J[nj] = v
      return C_BIGINT
    end
    local nf = W.nf + 1
    W.nf = nf
    W.F[nf] = v
    return T_FLT
  elseif tv == "boolean" then
    return v and T_TRUE or T_FALSE
  elseif v == nil then
    return T_NIL
  end
  return discover(W, v, tv, par, key, edge)
end

-- The code of any value.
local function code(W, v, par, key, edge)
  return W.seen[v] or fresh(W, v, par, key, edge)
end

---------------------------------------------------------------------------
-- The reader's state R, one per restore: the sections as read (S, SAT the
-- strings and where each starts in the pool; H, T, C, F, J, X), the objects
-- (O, K), the positions cp, fp, jp in C, F, J, what phases hand on (pending
-- threads and wraps, metatables, ...), and the notes for the caller. R.at is
-- the object being made or filled, which errors name.
---------------------------------------------------------------------------
local function bad(R, msg, ...)
  if select("#", ...) > 0 then msg = sformat(msg, ...) end
  local at = R and R.at
  if at then
    msg = sformat("%s (object %d, %s)", msg, at, KIND_NAME[R.K[at]] or "of no kind")
  end
  error(msg, 0)
end

-- bad() for object `id` (the stretch readers set R.at only when they fail).
local function bad_at(R, id, msg, ...)
  R.at = id
  bad(R, msg, ...)
end

local function note(R, where, reason)
  local n = R.nnotes + 1
  R.nnotes = n
  R.notes[n] = { path = where, reason = reason }
end

-- The string a header field names (nil for T_NIL).
local function str(R, c)
  if c == T_NIL then return nil end
  if c & 7 ~= T_STR then bad(R, ERR.string_expected) end
  local s = R.S[c >> 3]
  if s == nil then bad(R, ERR.string_ref) end
  return s
end

-- The value of any code (floats and big integers: the next of F, J).
local function val(R, c)
  local tag = c & 7
  if tag == T_OBJ then return R.O[c >> 3]
  elseif tag == T_STR then return R.S[c >> 3]
  elseif tag == T_INT then return c // 8
  elseif tag == T_FLT then
    local fp = R.fp + 1
    R.fp = fp
    return R.F[fp]
  elseif tag == T_TRUE then return true
  elseif tag == T_FALSE then return false
  elseif c == C_BIGINT then
    local jp = R.jp + 1
    R.jp = jp
    return R.J[jp]
  elseif tag == T_NIL then return nil
  end
  bad(R, ERR.value, c)
end

-- The next code of C, and its value.
local function next_code(R)
  local cp = R.cp
  R.cp = cp + 1
  return R.C[cp]
end

local function next_val(R)
  return val(R, next_code(R))
end

-- The object a code names, or nil (no object code).
local function obj_id(c)
  return c & 7 == T_OBJ and c >> 3 or nil
end

---------------------------------------------------------------------------
-- TABLE
--   H  1 TABLE                 a new, empty table
--   C  one word n * HSHIFT + m * 2 + has_metatable (the codec's split: in
--      Lua 5.3+ n << 33 | m << 1 | has_metatable; n, m < HMAX); codes and
--      runs for t[1..n] (the keys 1, 2, 3, ... that `next` gives first, from
--      the array part); m pairs key code, value code for the other entries;
--      the metatable code if it has one
--
-- The hot path: tables follow each other in the queue, so put_tables writes
-- the contents of a whole stretch of them with the writer's counts in
-- locals, and encodes values itself: numbers first (one C call, no lookup),
-- then `seen`, strings and new plain tables; other new objects go through
-- discover(), other keys and metatables through fresh() (slow_code), with
-- the counts handed over and back.
---------------------------------------------------------------------------
HEAD_OF.table = function(W, id) head(W, id, K_TABLE); W.ntable = W.ntable + 1 end

-- Makes table `id` and the tables whose headers follow; returns the last
-- one's number and the position after its header.
local function make_tables(R, id, hp)
  local H, O, K = R.H, R.O, R.K
  while true do
    O[id], K[id] = {}, K_TABLE
    hp = hp + 1
    if H[hp] ~= K_TABLE then return id, hp end
    id = id + 1
  end
end

local function slow_code(W, v, par, key, edge, ns, nf, nobj, nh)
  W.ns, W.nf, W.nobj, W.nh = ns, nf, nobj, nh
  local tv = type(v)
  local c
  if tv == "function" or tv == "table" or tv == "thread" or tv == "userdata" then
    c = discover(W, v, tv, par, key, edge)
  else
    c = fresh(W, v, par, key, edge)
  end
  return c, W.ns, W.nf, W.nobj, W.nh
end

-- Writes the contents of table p and of the tables queued right after it;
-- returns the number of the first object that is not one of them.
local function put_tables(W, p)
  local seen, S, C, F, O, K, PAR, PKEY, H = W.seen, W.S, W.C, W.F, W.O, W.K, W.PAR, W.PKEY, W.H
  local nc, nf, ns, nobj, nh = W.nc, W.nf, W.ns, W.nobj, W.nh
  repeat
    -- `next` gives the array part first, in order: while keys come as
    -- 1, 2, 3, ... only values are written, and runs of numbers go as runs
    -- (floats in F, integers raw in C; `run` is the math.type of the open
    -- one); from the first other key on, pairs. The header word is filled
    -- in at the end.
    nc = nc + 1
    local hpos, n, m, inarray = nc, 0, 0, true
    local run, rpos, rlen = nil, 0, 0
    for k, v in next, O[p] do
      local ck, c             -- ck: the key's code; false for t[n] in the array part
      if inarray and k == n + 1 then
        n = n + 1
        local vt = mtype(v)
        if vt ~= run then
          if run then C[rpos] = (rlen * 8 + RUN_SUB[run]) * 8 + T_EXT end   -- ext(), inlined
          run = vt
          if vt then
            nc = nc + 1
            rpos, rlen = nc, 0
          end
        end
        if vt == "float" then
          rlen = rlen + 1
          nf = nf + 1
          F[nf] = v
          goto next_entry
        elseif vt then
          rlen = rlen + 1
          nc = nc + 1
          C[nc] = v
          goto next_entry
        end
        ck, c = false, seen[v]
      else
        if inarray then
          inarray = false
          if run then C[rpos] = ext(RUN_SUB[run], rlen) end
          run = nil
        end
        ck = seen[k]
        if not ck then
          if mtype(k) == "integer" and k >= INL_LO and k < INL_HI then
            ck = k * 8 + T_INT
          else
            ck, ns, nf, nobj, nh = slow_code(W, k, p, nil, E_KEY, ns, nf, nobj, nh)
          end
        end
        local vt = mtype(v)
        if vt == "float" then
          nf = nf + 1
          F[nf] = v
          c = T_FLT
        elseif vt == "integer" and v >= INL_LO and v < INL_HI then
          c = v * 8 + T_INT
        else
          c = seen[v]
        end
        if c then             -- the common case, written here
          C[nc + 1], C[nc + 2] = ck, c
          nc, m = nc + 2, m + 1
          goto next_entry
        end
      end
      -- A value met for the first time (in either part).
      if not c then
        local tv = type(v)
        if tv == "string" then
          ns = ns + 1
          S[ns] = v
          c = ns * 8 + T_STR
          seen[v] = c
        elseif tv == "table" and not permname[v] then
          nobj, nh, W.ntable = nobj + 1, nh + 1, W.ntable + 1
          c = nobj * 8 + T_OBJ
          seen[v], O[nobj], PAR[nobj], PKEY[nobj], K[nobj], H[nh] = c, v, p, k, K_TABLE, K_TABLE
        elseif tv == "boolean" then
          c = v and T_TRUE or T_FALSE
        elseif tv == "number" then
          c = fresh(W, v)                  -- a big integer (others are done above)
        else                               -- discover(): the counts it moves, handed over and back
          W.ns, W.nobj, W.nh = ns, nobj, nh
          c = discover(W, v, tv, p, k)
          ns, nobj, nh = W.ns, W.nobj, W.nh
        end
      end
      if ck then
        C[nc + 1], C[nc + 2] = ck, c
        nc, m = nc + 2, m + 1
      else
        nc = nc + 1
        C[nc] = c
      end
      ::next_entry::
    end
    if run then C[rpos] = ext(RUN_SUB[run], rlen) end
    if n >= HMAX or m >= HMAX then error(sformat(ERR.too_big, n, m), 0) end
    local mt = dgetmt(O[p])
    if mt == nil then
      C[hpos] = n * HSHIFT + m * 2
    else
      C[hpos] = n * HSHIFT + m * 2 + 1
      local c = seen[mt]
      if not c then
        c, ns, nf, nobj, nh = slow_code(W, mt, p, nil, E_META, ns, nf, nobj, nh)
      end
      nc = nc + 1
      C[nc] = c
    end
    p = p + 1
  until K[p] ~= K_TABLE
  W.nc, W.nf, W.ns, W.nobj, W.nh = nc, nf, ns, nobj, nh
  return p
end

-- The value of a code that is not an object, string, integer or float
-- (those are decoded in place by get_tables), and the new position in J.
local function rare_value(R, c, jp, id)
  local tag = c & 7
  if tag == T_TRUE then return true, jp
  elseif tag == T_FALSE then return false, jp
  elseif tag == T_NIL then return nil, jp
  elseif c == C_BIGINT then return R.J[jp + 1], jp + 1
  end
  bad_at(R, id, ERR.value, c)
end

-- Fills table `id` and the tables numbered right after it, the same way;
-- returns the first object that is not one of them.
local function get_tables(R, id)
  local O, K, C, S, F = R.O, R.K, R.C, R.S, R.F
  local cp, fp, jp, ncodes, nfl = R.cp, R.fp, R.jp, R.ncodes, R.nfl
  local mts, nmts = R.mts, R.nmts
  repeat
    local t = O[id]
    local hdr = C[cp]
    cp = cp + 1
    local n, m = hdr // HSHIFT, (hdr >> 1) % HMOD
    local i = 1
    while i <= n do
      local c = C[cp]
      cp = cp + 1
      local tag = c & 7
      if tag == T_EXT then          -- first: runs are the hot case
        local sub, len = (c >> 3) & 7, c >> 6
        if len > n - i + 1 then bad_at(R, id, ERR.run_length) end
        if sub == X_FRUN then
          if fp + len > nfl then bad_at(R, id, ERR.float_run) end
          tmove(F, fp + 1, fp + len, i, t)
          fp = fp + len
        elseif sub == X_IRUN then
          if cp + len - 1 > ncodes then bad_at(R, id, ERR.int_run) end
          tmove(C, cp, cp + len - 1, i, t)
          cp = cp + len
        elseif c == C_BIGINT then
          t[i], jp = rare_value(R, c, jp, id)
          len = 1
        else
          bad_at(R, id, ERR.array_code)
        end
        i = i + len
      else
        if tag == T_OBJ then t[i] = O[c >> 3]
        elseif tag == T_STR then t[i] = S[c >> 3]
        elseif tag == T_INT then t[i] = c // 8
        elseif tag == T_FLT then fp = fp + 1; t[i] = F[fp]
        else t[i], jp = rare_value(R, c, jp, id)
        end
        i = i + 1
      end
    end
    for _ = 1, m do
      local c = C[cp]
      local tag = c & 7
      local k, v
      if tag == T_STR then k = S[c >> 3]
      elseif tag == T_INT then k = c // 8
      elseif tag == T_OBJ then k = O[c >> 3]
      elseif tag == T_FLT then fp = fp + 1; k = F[fp]
      else k, jp = rare_value(R, c, jp, id)
      end
      c = C[cp + 1]
      cp = cp + 2
      tag = c & 7
      if tag == T_OBJ then v = O[c >> 3]
      elseif tag == T_STR then v = S[c >> 3]
      elseif tag == T_INT then v = c // 8
      elseif tag == T_FLT then fp = fp + 1; v = F[fp]
      else v, jp = rare_value(R, c, jp, id)
      end
      if k ~= nil and k == k then t[k] = v end
    end
    if hdr & 1 == 1 then
      R.cp, R.fp, R.jp, R.at = cp, fp, jp, id
      local mt = next_val(R)
      cp, fp, jp = R.cp, R.fp, R.jp
      if mt ~= nil then
        if type(mt) ~= "table" then bad_at(R, id, ERR.metatable) end
        nmts = nmts + 1
        mts[nmts] = { t, mt }
      end
    end
    id = id + 1
  until K[id] ~= K_TABLE
  R.cp, R.fp, R.jp, R.nmts = cp, fp, jp, nmts
  return id
end
PUT_STRETCH[K_TABLE], GET_STRETCH[K_TABLE] = put_tables, get_tables

---------------------------------------------------------------------------
-- NIL (first: any kind that cannot be saved is written as NIL)
--   H  5 NIL where reason      could not be saved; restored as nil, and
--                              reported at restore time again
---------------------------------------------------------------------------
local function put_nil(W, id, reason, hp)
  local where = issue(W, id, reason)
  if hp then       -- in place of a header of the same size (LIVE)
    W.K[id] = K_NIL
    W.H[hp], W.H[hp + 1], W.H[hp + 2] = K_NIL, scode(W, where), scode(W, reason)
  else
    head(W, id, K_NIL, scode(W, where), scode(W, reason))
  end
end

HEAD_OF.other = function(W, id, v)
  put_nil(W, id, "value of type " .. type(v) .. " cannot be saved")
end

HEAD_OF.cdata = function(W, id)     -- LuaJIT's FFI: ffi.new(...), 1LL
  put_nil(W, id, "FFI cdata (ffi.new, 64-bit integers such as 1LL) has no counterpart "
    .. "outside LuaJIT's FFI and is not saved")
end

MAKE[K_NIL] = function(R, id, hp)
  note(R, str(R, R.H[hp + 1]), "not saved: " .. str(R, R.H[hp + 2]) .. "; restored as nil")
  return hp + 3
end

---------------------------------------------------------------------------
-- PERM, PERMTABLE
--   H  2 PERM name             a permanent function, userdata, thread or
--                              opaque table (the registry): by name
--   H  3 PERMTABLE name        a permanent table; its delta is in C:
--   C  m, then m pairs key code, value code (nil: deleted); the metatable
--      code, or extension 2 if unchanged
-- A name this kernel does not have is restored as nil, with a note.
---------------------------------------------------------------------------
HEAD_OF.permanent = function(W, id, v, name)
  head(W, id, base[v] and K_PERMTABLE or K_PERM, scode(W, name))
end

local c_modules = {}   -- below: add, forget, required

local function make_permanent(R, id, hp)
  local kind, name = R.H[hp], str(R, R.H[hp + 1])
  local v = permvalue[name]
  if v == nil and ssub(name, 1, 8) == "require:" then
    v = c_modules.required(R, name)
  elseif v == nil then
    note(R, name, "not part of this kernel's standard environment; restored as nil")
  elseif kind == K_PERMTABLE and type(v) ~= "table" then
    bad(R, ERR.not_table, name)
  end
  R.O[id] = v
  return hp + 2
end
MAKE[K_PERM], MAKE[K_PERMTABLE] = make_permanent, make_permanent

PUT[K_PERMTABLE] = function(W, p, o)
  local b, C = base[o], W.C
  local cpos, m = W.nc + 1, 0
  W.nc = cpos
  for k, v in next, o do
    if not rawequal(b[k], v) then
      local ck = code(W, k, p, nil, E_KEY)
      local nc = W.nc
      C[nc + 1], C[nc + 2] = ck, code(W, v, p, k)
      W.nc, m = nc + 2, m + 1
    end
  end
  for k in next, b do
    if rawget(o, k) == nil then
      local nc = W.nc
      C[nc + 1], C[nc + 2] = code(W, k, p, nil, E_KEY), T_NIL
      W.nc, m = nc + 2, m + 1
    end
  end
  C[cpos] = m
  local mt = dgetmt(o)
  local nc = W.nc + 1
  W.nc = nc
  if rawequal(mt, basemt[o] or nil) then
    C[nc] = C_SAME
  else
    C[nc] = code(W, mt, p, nil, E_META)
  end
end

GET[K_PERMTABLE] = function(R, id)
  local t = R.O[id]        -- nil if this kernel does not have it
  for _ = 1, next_code(R) do
    local k = next_val(R)
    local v = next_val(R)
    if t ~= nil and k ~= nil and k == k then rawset(t, k, v) end
  end
  local c = next_code(R)
  if c ~= C_SAME and t ~= nil then
    local mt = val(R, c)
    if mt ~= nil and type(mt) ~= "table" then bad(R, ERR.metatable) end
    R.nmts = R.nmts + 1
    R.mts[R.nmts] = { t, mt }
  end
end

---------------------------------------------------------------------------
-- LFUNC
--   H  4 LFUNC proto           a Lua closure: `load` of the bytecode string
--                              (debug info kept, so tracebacks still say
--                              In[3]:2); upvalues in C:
--   C  n, then for each upvalue 1..n its value code, or extension 1 when a
--      closure written before it holds the same upvalue (debug.upvalueid):
--      restored with debug.upvaluejoin, so shared variables stay shared
---------------------------------------------------------------------------
-- A function: a wrap function (see WRAP), a Lua closure, or else NIL.
HEAD_OF["function"] = function(W, id, v)
  if wrapped[v] ~= nil then return HEAD_OF.wrap(W, id, v) end
  local ok, dump = pcall(sdump, v)
  if not ok then
    return put_nil(W, id, "C function that is not part of the standard environment")
  end
  local dc = W.seen[dump]                -- LFUNC's header, written out (the hot path)
  if not dc then
    W.nproto = W.nproto + 1
    dc = scode(W, dump)
  end
  local H, nh = W.H, W.nh
  W.K[id], H[nh + 1], H[nh + 2] = K_LFUNC, K_LFUNC, dc
  W.nh = nh + 2
  W.nfunc = W.nfunc + 1
end

-- Makes closure `id` and the closures whose headers follow (like
-- make_tables); returns the last one's number and the position after it.
local function make_closures(R, id, hp)
  local H, O, K, S = R.H, R.O, R.K, R.S
  while true do
    K[id] = K_LFUNC
    local pc = H[hp + 1]
    local proto = pc & 7 == T_STR and S[pc >> 3]
    if not proto then
      R.at = id
      proto = str(R, pc)              -- says what is wrong
    end
    local f, err = load(proto, "=(snapshot)", "b")
    if not f then bad_at(R, id, ERR.load, tostring(err)) end
    O[id] = f
    hp = hp + 2
    if H[hp] ~= K_LFUNC then return id, hp end
    id = id + 1
  end
end

-- Writes the upvalues of closure p and of the closures queued right after
-- it (like put_tables); returns the first object that is not one of them.
local function put_closures(W, p)
  local O, K, C, uvowner, seen = W.O, W.K, W.C, W.uvowner, W.seen
  local nc = W.nc
  repeat
    local o = O[p]
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
        C[nc] = seen[v] or fresh(W, v, p, i, E_UPVALUE)
      end
      i = i + 1
    end
    C[cpos] = i - 1
    p = p + 1
  until K[p] ~= K_LFUNC
  W.nc = nc
  return p
end

-- Sets the upvalues of closure `id` and of the closures numbered right
-- after it; returns the first object that is not one of them.
local function get_closures(R, id)
  local C, O, K, S = R.C, R.O, R.K, R.S
  local cp = R.cp
  repeat
    local f = O[id]
    local n = C[cp]
    cp = cp + 1
    for i = 1, n do
      local c = C[cp]
      cp = cp + 1
      if c == C_JOIN then
        local owner = C[cp]
        cp = cp + 1
        if K[owner >> 8] ~= K_LFUNC then bad_at(R, id, ERR.shared_upvalue) end
        upvaluejoin(f, i, O[owner >> 8], owner & 255)
      else
        local tag, v = c & 7, nil
        if tag == T_INT then v = c // 8
        elseif tag == T_OBJ then v = O[c >> 3]
        elseif tag == T_STR then v = S[c >> 3]
        else
          R.at = id
          v = val(R, c)                 -- val moves fp and jp, never cp
        end
        setupvalue(f, i, v)
      end
    end
    id = id + 1
  until K[id] ~= K_LFUNC
  R.cp = cp
  return id
end
PUT_STRETCH[K_LFUNC], GET_STRETCH[K_LFUNC] = put_closures, get_closures

---------------------------------------------------------------------------
-- THREAD
--   H  6 THREAD state          a coroutine: 0 not started, 1 dead, 2 dead by
--                              an error (version 3)
--   T  its function (not started); nil (dead); for 2, a table {e = error,
--      n = k, [1..k] = values of its pending to-be-closed variables, first
--      created first} (frames.lua CF.failed)
-- A thread a wrap function holds is made by that wrap (see WRAP).
---------------------------------------------------------------------------

-- What a coroutine is, for saving: "new", "dead", "failed" (and its record)
-- or "live" (suspended with a call stack, or restored so and not resumed
-- yet), or nil and why not.
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
    if CF == nil then
      return nil, "suspended coroutine: " .. (NO_FRAMES or "frames cannot be saved here")
    end
    return "live"
  end
  return nil, st .. " coroutine cannot be saved"
end

local THREAD_STATE = { new = 0, dead = 1, failed = 2 }

HEAD_OF.thread = function(W, id, v)
  local st, why = thread_state(v)
  if st == "live" then
    return HEAD_OF.live(W, id, v)
  elseif st == nil then
    return put_nil(W, id, why)
  end
  if st == "failed" then W.FAILED[id] = why end
  head(W, id, K_THREAD, THREAD_STATE[st])
  W.nthread = W.nthread + 1
end

local function put_t(W, c)
  local nt = W.nt + 1
  W.nt = nt
  W.T[nt] = c
end

PUT[K_THREAD] = function(W, p, o)
  local failed = W.FAILED[p]
  if failed then
    put_t(W, code(W, failed, p, nil, E_STACK))
  else
    put_t(W, costatus(o) == "dead" and T_NIL or code(W, thread_fn[o], p, nil, E_FN))
  end
end

-- Threads and wraps wait in R.pending until phase 4 (link) makes them.
local function make_pending(R, id, kind, state, where)
  R.tcount = R.tcount + 1
  R.pending[id] = { kind = kind, state = state, code = R.T[R.tcount], where = where }
  R.npend = R.npend + 1
  R.pend[R.npend] = id
end

MAKE[K_THREAD] = function(R, id, hp)
  make_pending(R, id, K_THREAD, R.H[hp + 1])
  return hp + 2
end

local function dead_thread()
  local co = kcreate(function() end)
  coresume(co)
  return co
end

-- A thread of a restored wrap function, or of any coroutine.wrap function.
local function thread_of(w)
  return (select(2, getupvalue(w, 1)))
end

-- A pending thread or wrap, made after what it needs; false when it needs
-- itself (a cycle: it stays nil, as nothing can make it).
local function link(R, id)
  local rec = R.pending[id]
  if rec == nil or rec.done then return true end
  local owner = R.claimed[id]
  if owner then return link(R, owner) end
  if rec.busy then return false end
  rec.busy = true
  LINK[rec.kind](R, id, rec)
  rec.done = true
  return true
end

-- The function a not-started thread runs (made first if it is pending).
local function function_of(R, rec)
  local fid = obj_id(rec.code)
  if fid and not link(R, fid) then return nil end
  local fn = fid and R.O[fid]
  return type(fn) == "function" and fn or nil
end

LINK[K_THREAD] = function(R, id, rec)
  local O = R.O
  if rec.state == 1 then
    O[id] = dead_thread()
  elseif rec.state == 2 then     -- dies in phase 7, once its record is filled
    if CF == nil then bad(R, ERR.no_failed_here) end
    O[id] = kcreate(CF.die)
    R.nfailing = R.nfailing + 1
    R.failing[R.nfailing] = { O[id], rec.code }
  else
    local fn = function_of(R, rec)
    if fn then O[id] = kcreate(fn) end
  end
end

---------------------------------------------------------------------------
-- WRAP
--   H  7 WRAP                  a coroutine.wrap function
--   T  its thread
-- The first wrap (in object order) over a not-started, dead or suspended
-- thread makes it: coroutine.wrap(fn), whose thread *is* the restored
-- thread. A wrap over a thread saved as nil or made otherwise wraps that
-- thread's function anew.
---------------------------------------------------------------------------
HEAD_OF.wrap = function(W, id, v)
  local ok, why = thread_state(thread_of(v))
  if not ok then return put_nil(W, id, why) end
  head(W, id, K_WRAP)
  W.nfunc = W.nfunc + 1
end

PUT[K_WRAP] = function(W, p, o)
  put_t(W, code(W, thread_of(o), p, nil, E_THREAD))
end

MAKE[K_WRAP] = function(R, id, hp)
  make_pending(R, id, K_WRAP)
  return hp + 1
end

local adopt_live     -- (LIVE, below)

LINK[K_WRAP] = function(R, id, rec)
  local O = R.O
  local tid = obj_id(rec.code)
  local trec = tid and R.pending[tid]
  if trec and R.claimed[tid] == id then
    local w
    if trec.kind == K_LIVE then
      w = adopt_live(R, tid, trec, kwrap)
    elseif trec.state == 1 or trec.state == 2 then
      w = kwrap(function() end)
      w()
    else
      local fn = function_of(R, trec)
      w = fn and kwrap(fn)
    end
    if w then O[id], O[tid] = w, thread_of(w) end
    trec.done = true
  elseif tid and link(R, tid) and O[tid] ~= nil then
    local fn = thread_fn[O[tid]]
    if fn then O[id] = kwrap(fn) end
  end
end

---------------------------------------------------------------------------
-- FILE
--   H  8 FILE path mode pos where
--                              a file handle. path nil: restored closed
--                              (closed, or not opened through io.open);
--                              else reopened without truncating ("w" and
--                              "w+" as "r+") and moved to pos (nil: not
--                              seekable); where = its graph path
---------------------------------------------------------------------------
local function put_file(W, id, v)
  W.nudata = W.nudata + 1
  local rec = kfiles[v]
  local st = iotype(v)
  local path, mode, pos, where = T_NIL, T_NIL, T_NIL, T_NIL
  if st == "file" and rec then
    -- written data must be in the file the snapshot points into
    if not sfind(rec.mode, "^r[^+]*$") then fflush(v) end
    local at = fseek(v)
    path, mode, where = scode(W, rec.path), scode(W, rec.mode), scode(W, pathof(W, id))
    if mtype(at) == "integer" then pos = at * 8 + T_INT end
  elseif st == "file" then
    where = scode(W, issue(W, id, "open file not opened with io.open (restored closed)"))
  end
  head(W, id, K_FILE, path, mode, pos, where)
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

MAKE[K_FILE] = function(R, id, hp)
  local H = R.H
  local path, mode, posc, where = str(R, H[hp + 1]), str(R, H[hp + 2]), H[hp + 3], str(R, H[hp + 4])
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
          note(R, where or path, sformat("file %s reopened, but cannot seek to %d (%s)",
            path, posc // 8, tostring(serr)))
        end
      end
    else
      note(R, where or path, "file cannot be reopened (" .. tostring(err) .. "); restored closed")
      fh = closed_file()
    end
  else
    if where then note(R, where, "open file not opened with io.open; restored closed") end
    fh = closed_file()
  end
  R.O[id] = fh
  return hp + 5
end

---------------------------------------------------------------------------
-- PYOBJ
--   H  9 PYOBJ index where     a Python object: element `index` of the
--                              pickled list (see X); where = its graph path
---------------------------------------------------------------------------
local function put_pyobj(W, id, v)
  local n = W.npy + 1
  W.npy = n
  W.PY[n] = v
  head(W, id, K_PYOBJ, n, scode(W, pathof(W, id)))
end

MAKE[K_PYOBJ] = function(R, id, hp)
  local index, where = R.H[hp + 1], str(R, R.H[hp + 2])
  local v = R.pyobjs[index]
  if v == nil then
    local why = R.pyfail[index] and "not saved: " .. R.pyfail[index]
      or R.pyerror and "cannot be unpickled: " .. tostring(R.pyerror)
      or "Python object missing from the snapshot"
    note(R, where, why .. "; restored as nil")
  end
  R.O[id] = v
  return hp + 3
end

HEAD_OF.userdata = function(W, id, v)
  local mt = dgetmt(v)
  if mt ~= nil and mt == POBJ_MT then
    put_pyobj(W, id, v)
  elseif mt ~= nil and mt == FILE_MT then
    put_file(W, id, v)
  else
    W.nudata = W.nudata + 1
    local uname = mt ~= nil and rawget(mt, "__name")
    put_nil(W, id, (type(uname) == "string" and "userdata " .. uname or "userdata")
      .. " that is not part of the standard environment")
  end
end
---------------------------------------------------------------------------
-- LIVE
--   H 10 LIVE where 0          a suspended coroutine with a call stack;
--                              where = its graph path
--   T  its record (persist/lua/frames.lua), a table
--
-- The record: its frames as plain tables, each frame's closure, pending
-- instruction, registers, varargs and pending to-be-closed variables; the
-- saved pcs come from persist/framepeek.py, asked once for all the
-- coroutines found so far. Which registers are open upvalues is found by
-- sentinel probing: each register that a child closure of the frame's
-- function may capture is set (debug.setlocal) to a fresh table for the
-- duration of the capture; a closure whose upvalue then holds that table
-- shares the register (see X: the open upvalues). The walk writes the real
-- values, and every probed register gets its value back before capture
-- returns. A coroutine whose record cannot be made gets a NIL header in
-- place of its LIVE one (the same size).
---------------------------------------------------------------------------
HEAD_OF.live = function(W, id)
  W.HPOS[id] = W.nh + 1
  head(W, id, K_LIVE, scode(W, pathof(W, id)), 0)
  W.nthread = W.nthread + 1
end

-- Asks Python for the saved pcs of the suspended coroutines found from `id`
-- on that have no plan yet, in one call; their plans (or why not) go to
-- W.plans.
local function plan_batch(W, id)
  local O, K, plans = W.O, W.K, W.plans
  local parts, tables, batch = {}, {}, {}
  for q = id, W.nobj do
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
  if #batch == 0 then return end
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

-- The record of suspended coroutine `id` (frames.lua), or nil and why not.
local function live_record(W, id)
  local co = W.O[id]
  local rec = CF.pending(co)
  if rec then return rec end
  if W.plans[co] == nil then plan_batch(W, id) end
  local plan = W.plans[co]
  if type(plan) ~= "table" then return nil, plan end
  return CF.build(plan, probe)
end

PUT[K_LIVE] = function(W, p)
  local rec, why = live_record(W, p)
  if rec then
    put_t(W, code(W, rec, p, nil, E_STACK))
  else
    put_nil(W, p, "suspended coroutine cannot be saved: " .. tostring(why), W.HPOS[p])
    W.nthread = W.nthread - 1
  end
end

MAKE[K_LIVE] = function(R, id, hp)
  if CF == nil then bad(R, ERR.no_frames_here) end
  make_pending(R, id, K_LIVE, nil, str(R, R.H[hp + 1]))
  return hp + 3
end

-- Makes suspended coroutine `id` with `make` (coroutine.create, or wrap for
-- a wrap function's thread) over its record (a table, filled in phase 5);
-- it starts in phase 7. Returns what `make` made.
adopt_live = function(R, id, rec, make)
  local r = obj_id(rec.code) and R.O[obj_id(rec.code)]
  if type(r) ~= "table" then bad(R, ERR.no_frames, tostring(rec.where)) end
  local made = make(CF.revive(r))
  local co = made
  if make == kwrap then co = thread_of(made) end
  R.O[id] = co
  CF.adopt(co, r)
  local n = #R.adopted + 1
  R.adopted[n], R.adopted_at[n] = co, rec.where
  return made
end

LINK[K_LIVE] = function(R, id, rec)
  adopt_live(R, id, rec, kcreate)
end

---------------------------------------------------------------------------
-- X, the roots section
--   8 codes: _G and the metatables of nil, boolean, number, string,
--   function, thread and light userdata; then the Python record: the code
--   of the pickled list (a string, or nil when there are no Python
--   objects), k, then k pairs (index, reason code) for the objects that
--   could not be pickled (they are None in the list); then (version 2) the
--   open upvalues of suspended frames: l, then l triples (frame code,
--   register, owner), where owner = closure * 256 + upvalue index, as for
--   extension 1: the register of that frame record is that closure's upvalue.
---------------------------------------------------------------------------
-- a value of each basic type
local ROOT_SAMPLES = { nil, true, 0, "", dgetmt, MAIN or kcreate(dgetmt), LIGHT }
local ROOT_NAMES = { "<nil metatable>", "<boolean metatable>", "<number metatable>",
  "<string metatable>", "<function metatable>", "<thread metatable>",
  "<light userdata metatable>" }

local function put_x(W, c)
  local nx = W.nx + 1
  W.nx = nx
  W.X[nx] = c
end

-- The roots, then the changed permanent tables that they do not reach.
local function put_roots(W)
  put_x(W, code(W, G, 0, "_G", E_ROOT))
  for i = 1, 7 do
    put_x(W, code(W, dgetmt(ROOT_SAMPLES[i]), 0, ROOT_NAMES[i], E_ROOT))
  end
  for _, t in ipairs(PERMTABLES) do
    if not W.seen[t] and changed(t) then code(W, t, 0, permname[t], E_ROOT) end
  end
end

local function check_first_root(R)
  local c = R.X[1]
  if not (c and obj_id(c) and rawequal(R.O[obj_id(c)], G)) then bad(nil, ERR.first_root) end
end

-- Phase 6: the basic types' metatables, after all the others.
local function get_root_metatables(R)
  for i = 1, 7 do
    local c = R.X[i + 1]
    local mt = obj_id(c) and R.O[obj_id(c)] or nil
    if type(mt) == "table" or mt == nil then
      if not rawequal(dgetmt(ROOT_SAMPLES[i]), mt) then dsetmt(ROOT_SAMPLES[i], mt) end
    end
  end
end

-- Python objects: one call pickles them all (shared references between
-- them stay shared); the ones that cannot be pickled are reported.
local function put_python(W, pickle_many)
  if W.npy == 0 then
    put_x(W, T_NIL)
    put_x(W, 0)
    return
  end
  local blob, failures = pickle_many(W.PY, W.npy)
  put_x(W, type(blob) == "string" and scode(W, blob) or T_NIL)
  local fl, k = {}, 0
  if failures then
    for i in next, failures do
      k = k + 1
      fl[k] = i
    end
    tsort(fl)
  end
  put_x(W, k)
  for j = 1, k do
    local i = fl[j]
    local reason = tostring(failures[i])
    issue(W, W.seen[W.PY[i]] >> 3, reason)
    put_x(W, i)
    put_x(W, scode(W, reason))
  end
end

-- Phase 2: one call unpickles them all (R.pyobjs, or R.pyerror).
local function get_python(R, unpickle_at)
  local X = R.X
  local blobc = X[9]
  R.nfail = X[10] or 0
  for j = 1, R.nfail do
    R.pyfail[X[9 + 2 * j]] = str(R, X[10 + 2 * j])
  end
  if blobc and blobc ~= T_NIL then
    local sid = blobc >> 3
    if R.S[sid] == nil then bad(nil, ERR.python) end
    local ok, objs = unpickle_at(R.blob_at + R.SAT[sid] - 1, R.lens[sid])
    if ok then R.pyobjs = objs else R.pyerror = objs end
  end
end

-- The open upvalues: every closure upvalue that holds a probe sentinel
-- shares that frame's register.
local function put_links(W)
  local L, nl = {}, 0
  if nprobed > 0 then
    local linked = {}
    for id = 1, W.nobj do
      if W.K[id] == K_LFUNC then
        local f = W.O[id]
        local i = 1
        while true do
          local name, v = getupvalue(f, i)
          if name == nil then break end
          local s = SENT[v]
          if s then
            local uid = upvalueid(f, i)
            if not linked[uid] then
              linked[uid] = true
              L[nl + 1], L[nl + 2], L[nl + 3] = W.seen[s.frame], s.reg, W.uvowner[uid]
              nl = nl + 3
            end
          end
          i = i + 1
        end
      end
    end
  end
  put_x(W, nl // 3)
  tmove(L, 1, nl, W.nx + 1, W.X)
  W.nx = W.nx + nl
end

-- Phase 5b: each link goes into its frame record (frames.lua reads them).
local function get_links(R)
  local X, O, K = R.X, R.O, R.K
  local xl = 11 + 2 * R.nfail
  for j = 0, (X[xl] or 0) - 1 do
    local frame = val(R, X[xl + 1 + 3 * j])
    local reg, owner = X[xl + 2 + 3 * j], X[xl + 3 + 3 * j]
    if type(frame) ~= "table" or mtype(reg) ~= "integer" or mtype(owner) ~= "integer"
        or K[owner >> 8] ~= K_LFUNC then
      bad(nil, ERR.open_upvalue)
    end
    local links = rawget(frame, "links")
    if links == nil then
      links = {}
      rawset(frame, "links", links)
    end
    links[reg] = { f = O[owner >> 8], n = owner & 255 }
  end
end
---------------------------------------------------------------------------
-- The walk of capture and the filling of restore: the objects in order,
-- each by its kind's function (PUT or GET, called with the object's number
-- and the object); the kinds of STRETCH (tables, closures) a stretch at a
-- time. S is W or R; the walk's S.nobj grows as objects are discovered.
---------------------------------------------------------------------------
local function each_object(S, STRETCH, ONE)
  local K, O = S.K, S.O
  local id = 1
  while id <= S.nobj do
    local kind = K[id]
    local stretch = STRETCH[kind]
    if stretch then
      id = stretch(S, id)
    else
      local one = ONE[kind]
      if one then
        S.at = id
        one(S, id, O[id])
      end
      id = id + 1
    end
  end
  S.at = nil
end

---------------------------------------------------------------------------
-- The body. Every section is s8: an 8-byte length, then the bytes.
--
--   c8   MAGIC        the codec's: "LKSTATE\0" (Lua 5.3+), "LKSTATEj" (LuaJIT)
--   I4   VERSION      format version of this body
--   s8   ints         the length of every string of the pool, in order
--   s8   bytes        the strings of the pool, concatenated
--   s8   ints    H    one header per object, in object order
--   s8   ints    T    threads and wrap functions: one code each, in object order
--   s8   ints    C    contents of tables, closures and permanent tables
--   s8   floats  F    the floats of tag-4 codes and float runs, in reading order
--   s8   ints    J    the big integers of extension 0, in reading order
--   s8   ints    X    the roots and the Python record
-- where ints and floats are sections of numbers in the codec's bytes (STREAM).
---------------------------------------------------------------------------
local function put_body(W)
  local S, ns = W.S, W.ns
  local lens, sbytes = {}, 0
  for i = 1, ns do
    local l = #S[i]
    lens[i] = l
    sbytes = sbytes + l
  end
  local len, pack, ints = CODEC.len, STREAM.pack, CODEC.ints
  local function pack_ints(A, n) return pack(A, n, ints) end
  local parts = { CODEC.head(VERSION) }
  local function section(s)
    parts[#parts + 1] = len(#s)
    parts[#parts + 1] = s
  end
  section(pack_ints(lens, ns))
  parts[#parts + 1] = len(sbytes)
  tmove(S, 1, ns, #parts + 1, parts)
  section(pack_ints(W.H, W.nh))
  section(pack_ints(W.T, W.nt))
  section(pack_ints(W.C, W.nc))
  section(pack(W.F, W.nf, CODEC.floats))
  section(pack_ints(W.J, W.nj))
  section(pack_ints(W.X, W.nx))
  return concat(parts), sbytes
end

-- Phase 1: the sections and the string pool, into a new reader state.
local function get_body(body)
  if type(body) ~= "string" then bad(nil, ERR.not_string) end
  local magic = ssub(body, 1, 8)
  if magic ~= CODEC.MAGIC then
    if ssub(magic, 1, 7) == "LKSTATE" then bad(nil, ERR.codec, magic, CODEC.MAGIC) end
    bad(nil, ERR.magic)
  end
  local version, slens, sblob, sH, sT, sC, sF, sJ, sX, tail = CODEC.split(body)
  if not version then bad(nil, ERR.truncated_body) end
  if not READABLE[version] then bad(nil, ERR.version, version, VERSION) end
  if tail ~= #body + 1 then bad(nil, ERR.trailing) end
  local R = {
    blob_at = 8 + 4 + 8 + #slens + 8,    -- where the string pool starts in body
    S = {}, SAT = {}, O = {}, K = {}, cp = 1, fp = 0, jp = 0,
    notes = {}, nnotes = 0, pyobjs = {}, pyfail = {}, nfail = 0,
    pending = {}, pend = {}, npend = 0, tcount = 0, claimed = {},
    failing = {}, nfailing = 0, adopted = {}, adopted_at = {}, mts = {}, nmts = 0,
  }
  local unpack, read_ints = STREAM.unpack, CODEC.read_ints
  local function unpack_ints(s, what) return unpack(s, what, read_ints, 1) end
  local lens, ns = unpack_ints(slens, "string lengths")
  local S, SAT = R.S, R.SAT
  local pos, nblob = 1, #sblob
  for i = 1, ns do
    local l = lens[i]
    if l < 0 or pos + l - 1 > nblob then bad(nil, ERR.pool) end
    SAT[i] = pos
    S[i] = ssub(sblob, pos, pos + l - 1)
    pos = pos + l
  end
  if pos ~= nblob + 1 then bad(nil, ERR.pool) end
  R.lens = lens
  R.H, R.nh = unpack_ints(sH, "headers")
  R.T = unpack_ints(sT, "threads")
  R.C, R.ncodes = unpack_ints(sC, "contents")
  R.F, R.nfl = unpack(sF, "floats", CODEC.read_floats, 8)
  R.J = unpack_ints(sJ, "big integers")
  R.X = unpack_ints(sX, "roots")
  return R
end

---------------------------------------------------------------------------
-- C modules (issue 13). A module that `require` loaded from a C library
-- (one package.cpath finds) is a permanent while a capture runs: its table
-- is PERMTABLE "require:NAME", with its C functions as the base (so the
-- delta holds the fields the user set), and each of those C functions is
-- PERM "require:NAME:KEY". Restore requires NAME again and finds the values
-- by the same names; a module that cannot be required comes back as nil,
-- with a note. Userdata a module made (a socket, a database handle) is not
-- saved: it is reported by path, as any userdata.
---------------------------------------------------------------------------
do   -- one local (c_modules) for the main chunk, which is near Lua's 200
  local REQUIRE = "require:"
  local loaded, searchpath, krequire = package.loaded, package.searchpath, require

  -- Name the C modules' tables and functions for one capture; returns what to
  -- forget afterwards.
  -- module table -> whether a C library backs it: asked of the file system
  -- once per module, not at every capture
  local from_c = setmetatable({}, { __mode = "k" })
  local function is_c_module(name, mod)
    local c = from_c[mod]
    if c == nil then
      c = searchpath(name, package.cpath) ~= nil
      from_c[mod] = c
    end
    return c
  end

  function c_modules.add()
    local added = {}
    for name, mod in next, loaded do
      if type(name) == "string" and type(mod) == "table" and permname[mod] == nil
          and is_c_module(name, mod) then
        local b = {}
        permname[mod], base[mod], basemt[mod] = REQUIRE .. name, b, dgetmt(mod) or false
        added[#added + 1] = mod
        for k, v in next, mod do
          if type(k) == "string" and type(v) == "function" and permname[v] == nil
              and not pcall(sdump, v) then           -- a C function
            permname[v], b[k] = REQUIRE .. name .. ":" .. k, v
            added[#added + 1] = v
          end
        end
      end
    end
    return added
  end

  function c_modules.forget(added)
    for _, v in ipairs(added) do permname[v], base[v], basemt[v] = nil, nil, nil end
  end

  -- At restore: the value a "require:" name stands for, requiring the module
  -- (once per restore).
  function c_modules.required(R, name)
    local mod, key = smatch(name, "^require:([^:]*):(.*)$")
    mod = mod or ssub(name, #REQUIRE + 1)
    R.required = R.required or {}
    local got = R.required[mod]
    if got == nil then
      local ok, m = pcall(krequire, mod)
      got = ok and type(m) == "table" and m or false
      R.required[mod] = got
      if not got then
        note(R, name, "require '" .. mod .. "' failed: " .. tostring(ok and "not a table" or m)
          .. "; restored as nil")
      end
    end
    if not got then return nil end
    if key == nil then return got end
    local v = rawget(got, key)
    if v == nil then note(R, name, "the module no longer has it; restored as nil") end
    return v
  end
end

---------------------------------------------------------------------------
-- Capture: the walk. Objects in the order they were found; the contents
-- of each may find more.
---------------------------------------------------------------------------
local function walk(W)
  each_object(W, PUT_STRETCH, PUT)
end

local function capture(pickle_many)
  local t0 = clock()
  local W = new_writer()
  put_roots(W)
  walk(W)
  put_python(W, pickle_many)
  put_links(W)
  local body, sbytes = put_body(W)
  local counts = {
    tables = W.ntable, functions = W.nfunc, prototypes = W.nproto, strings = W.ns,
    string_bytes = sbytes, threads = W.nthread, userdata = W.nudata, python_objects = W.npy,
    objects = W.nobj, seconds = clock() - t0,
  }
  return body, W.issues, counts
end

-- Serialize, with the collector stopped (a finalizer must not change the
-- state half-way through the walk). The body stays referenced in M.kept
-- until Python has copied it (see state.py).
function M.capture(pickle_many)
  local running = collectgarbage("isrunning")
  collectgarbage("stop")
  local added = c_modules.add()
  local ok, body, issues, counts = pcall(capture, pickle_many)
  c_modules.forget(added)
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
-- Restore, in phases, so nothing user-visible runs half-built:
-- (1) streams and strings, (2) Python objects (one call), (3) all objects of
-- H created empty (tables empty, closures with fresh upvalues), (4) threads
-- and wrap functions, each after what it needs, (5) contents filled with raw
-- writes, upvalues set and joined, (5b) open upvalues into their frame
-- records, (6) metatables set last, with debug.setmetatable, so __newindex
-- and __gc do not fire during filling and __metatable does not stop us, (7)
-- coroutines dead by an error die again, keeping the error and the pending
-- to-be-closed variables; restored suspended coroutines start, up to their
-- first resume (frames.lua: their pcalls and to-be-closed guards become
-- native levels).
---------------------------------------------------------------------------
local function create(R)            -- (3)
  local H, K, nh = R.H, R.K, R.nh
  local hp, id = 1, 0
  while hp <= nh do
    id = id + 1
    local kind = H[hp]
    if kind == K_TABLE then
      id, hp = make_tables(R, id, hp)
    elseif kind == K_LFUNC then
      id, hp = make_closures(R, id, hp)
    else
      K[id] = kind
      R.at = id
      local make = MAKE[kind]
      if make == nil then bad(R, ERR.kind, tostring(kind)) end
      hp = make(R, id, hp)
    end
  end
  R.nobj, R.at = id, nil
end

local function link_all(R)          -- (4)
  local pending, claimed = R.pending, R.claimed
  for j = 1, R.npend do            -- the first wrap over a thread makes it
    local wid = R.pend[j]
    local tid = pending[wid].kind == K_WRAP and obj_id(pending[wid].code)
    local trec = tid and pending[tid]
    if trec and (trec.kind == K_THREAD or trec.kind == K_LIVE) then
      claimed[tid] = claimed[tid] or wid
    end
  end
  for j = 1, R.npend do
    R.at = R.pend[j]
    link(R, R.pend[j])
  end
  R.at = nil
end

local function fill(R)              -- (5)
  each_object(R, GET_STRETCH, GET)
  if R.cp ~= R.ncodes + 1 then bad(nil, ERR.contents) end
end

local function set_metatables(R)    -- (6)
  local mts = R.mts
  for i = 1, R.nmts do
    local r = mts[i]
    dsetmt(r[1], r[2])
  end
  get_root_metatables(R)
end

local function start(R)             -- (7)
  for i = 1, R.nfailing do
    local r = val(R, R.failing[i][2])
    if type(r) ~= "table" then bad(nil, ERR.failed_record) end
    coresume(R.failing[i][1], r)
  end
  if CF then
    for _, f in ipairs(CF.start(R.adopted)) do
      note(R, R.adopted_at[f[1]] or "?", "restored coroutine cannot be started: " .. f[2])
    end
  end
end

local function apply(body, unpickle_at)
  local R = get_body(body)
  get_python(R, unpickle_at)
  create(R)
  check_first_root(R)
  link_all(R)
  fill(R)
  get_links(R)
  set_metatables(R)
  start(R)
  return R.notes
end

function M.apply(body, unpickle_at)
  local ok, notes = pcall(apply, body, unpickle_at)
  if not ok then
    return false, "malformed Lua state: " .. tostring(notes)
  end
  return true, notes
end

return M
