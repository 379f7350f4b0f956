-- lua_kernel/introspect.lua: the Lua half of completion and inspection.
--
-- Loaded once per Lua state by lua_kernel/introspect.py, which passes the
-- globals table; returns a module table M:
--   M.resolve(base, k1, ..., kn)   follow a chain of keys from `base` (nil: the
--                                  globals); returns "ok", value | "missing" |
--                                  "python", object, keys_used
--   M.names(v, methods)            "\n"-joined identifier keys of v (nil: the
--                                  globals) and of its __index table chain
--                                  (methods: only callable values)
--   M.builtin_name(v)              "string.format", "print", "file:write", "io",
--                                  ... for standard library values, else nil
--   M.func_info(f)                 what, source, short_src, linedefined,
--                                  lastlinedefined, "a, b, ..."
--   M.table_info(t, limit)         a text summary of a table
--   M.literal(text)                the value of one string or number token
--   M.kind(v)                      type(v), or "python" for Python objects
--
-- Nothing here runs user code: tables are read with next/rawget, __index is
-- followed only when it is a table, and no metamethod is ever called.

local env, repr = ...   -- the globals, and lua/repr.lua's module

local type, next, rawget, rawequal, pcall, select = type, next, rawget, rawequal, pcall, select
local rawlen = rawlen or function(t) return #t end     -- LuaJIT: # ignores __len on tables
local load = load
local math_type = repr.math_type
local sfind, sformat, sgsub, ssub = string.find, string.format, string.gsub, string.sub
local tconcat, tsort = table.concat, table.sort
local getmt = debug.getmetatable
local getinfo, getlocal, getregistry = debug.getinfo, debug.getlocal, debug.getregistry

local M = {}

local is_ident = repr.is_ident       -- a name that can be written bare

local function is_python(v)
  if type(v) ~= "userdata" then return false end
  local mt = getmt(v)
  return type(mt) == "table" and rawget(mt, "__name") == "POBJECT"
end

function M.kind(v)
  if is_python(v) then return "python" end
  return type(v)
end

---------------------------------------------------------------------------
-- The standard library, indexed by identity when this module is loaded.
-- C functions count, and so do the kernel's own Lua replacements (print,
-- io.write, io.stdout, ...), which are defined in lua_kernel/ chunks.
---------------------------------------------------------------------------
local builtin = {}

local function from_kernel(f)
  local ok, info = pcall(getinfo, f, "S")
  if not ok or not info then return false end
  return info.what == "C" or sfind(info.source, "^=lua_kernel/") ~= nil
end

local function index_value(v, name)
  local tv = type(v)
  if builtin[v] ~= nil then return end
  if tv == "function" then
    if from_kernel(v) then builtin[v] = name end
  elseif tv == "table" or tv == "userdata" then
    builtin[v] = name
  end
end

-- The library tables a runtime may have as globals (LuaJIT adds bit and jit),
-- and the modules LuaJIT has only through require (or as fields: jit.opt),
-- named as they are required; those are indexed once package.loaded has them.
local LIBS = { "coroutine", "debug", "io", "math", "os", "package", "string", "table", "utf8",
               "bit", "jit" }
local MODULES = { "ffi", "jit.opt", "jit.profile", "jit.util", "string.buffer",
                  "table.clear", "table.new" }

local function index_methods(mt)
  if type(mt) ~= "table" then return end
  local idx = rawget(mt, "__index")
  if type(idx) ~= "table" then return end
  local k, v = next(idx)
  while k ~= nil do
    if type(k) == "string" and type(v) == "function" and builtin[v] == nil and from_kernel(v) then
      builtin[v] = "file:" .. k
    end
    k, v = next(idx, k)
  end
end

do
  builtin[env] = "_G"
  for i = 1, #LIBS do
    local lib = LIBS[i]
    local t = rawget(env, lib)
    if type(t) == "table" and builtin[t] == nil then builtin[t] = lib end
  end
  -- file methods first, so that "file:write" wins over nothing else
  index_methods(getregistry and rawget(getregistry(), "FILE*"))
  local io_t = rawget(env, "io")
  if type(io_t) == "table" then
    index_methods(getmt(rawget(io_t, "stdout")))
  end
  local k, v = next(env)
  while k ~= nil do
    if type(k) == "string" and type(v) == "function" then index_value(v, k) end
    k, v = next(env, k)
  end
  for i = 1, #LIBS do
    local lib = LIBS[i]
    local t = rawget(env, lib)
    if type(t) == "table" then
      k, v = next(t)
      while k ~= nil do
        if type(k) == "string" then index_value(v, lib .. "." .. k) end
        k, v = next(t, k)
      end
    end
  end
end

local indexed = {}   -- MODULES already indexed

local function index_modules()
  local pkg = rawget(env, "package")
  local loaded = type(pkg) == "table" and rawget(pkg, "loaded")
  if type(loaded) ~= "table" then return end
  for i = 1, #MODULES do
    local name = MODULES[i]
    local m = not indexed[name] and rawget(loaded, name)
    if m then
      indexed[name] = true
      if type(m) == "table" then
        if builtin[m] == nil then builtin[m] = name end
        local k, v = next(m)
        while k ~= nil do
          if type(k) == "string" then index_value(v, name .. "." .. k) end
          k, v = next(m, k)
        end
      else
        index_value(m, name)
      end
    end
  end
end
index_modules()

function M.builtin_name(v)
  local tv = type(v)
  if tv == "function" or tv == "table" or tv == "userdata" then
    if builtin[v] == nil then index_modules() end    -- a module required since
    return builtin[v]
  end
  return nil
end

---------------------------------------------------------------------------
-- Resolving chains of keys
---------------------------------------------------------------------------

-- v[k] without metamethods other than __index tables; found, value.
local function index(v, k)
  local seen = 0
  local cur = v
  if type(cur) == "table" then
    local r = rawget(cur, k)
    if r ~= nil then return true, r end
  end
  while seen < 100 do
    seen = seen + 1
    local mt = getmt(cur)
    if type(mt) ~= "table" then return false end
    local idx = rawget(mt, "__index")
    if type(idx) ~= "table" then return false end
    local r = rawget(idx, k)
    if r ~= nil then return true, r end
    cur = idx
  end
  return false
end

function M.resolve(base, ...)
  local v = base
  if v == nil then v = env end
  local n = select("#", ...)
  for i = 1, n do
    if is_python(v) then return "python", v, i - 1 end
    local k = select(i, ...)
    if k == nil then return "missing" end
    local found, r = index(v, k)
    if not found then return "missing" end
    v = r
  end
  return "ok", v
end

local function callable(v)
  if type(v) == "function" then return true end
  if is_python(v) then return true end
  local mt = getmt(v)
  return type(mt) == "table" and rawget(mt, "__call") ~= nil
end

local function add_keys(t, out, methods)
  local k, v = next(t)
  while k ~= nil do
    if is_ident(k) and (not methods or callable(v)) then out[k] = true end
    k, v = next(t, k)
  end
end

function M.names(v, methods)
  if v == nil then v = env end
  local out = {}
  if type(v) == "table" then add_keys(v, out, methods) end
  local cur, seen = v, {}
  while true do
    local mt = getmt(cur)
    if type(mt) ~= "table" then break end
    local idx = rawget(mt, "__index")
    if type(idx) ~= "table" or seen[idx] then break end
    seen[idx] = true
    add_keys(idx, out, methods)
    cur = idx
  end
  local list = {}
  for k in next, out do list[#list + 1] = k end
  tsort(list)
  return tconcat(list, "\n")
end

function M.literal(text)
  local f = load("return " .. text, "=literal", "t")
  if not f then return nil end
  local ok, v = pcall(f)
  if ok and (type(v) == "string" or type(v) == "number") then return v end
  return nil
end

---------------------------------------------------------------------------
-- Functions
---------------------------------------------------------------------------

function M.func_info(f)
  local ok, info = pcall(getinfo, f, "Su")
  if not ok or not info then return nil end
  local params = {}
  local n = info.nparams or 0
  for i = 1, n do params[i] = getlocal(f, i) or ("arg" .. i) end
  if info.isvararg then params[n + 1] = "..." end
  return info.what, info.source, info.short_src, info.linedefined,
         info.lastlinedefined, tconcat(params, ", ")
end

---------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------

local function number_text(x)
  return repr.text(x)
end

local function quoted(s, limit)
  local cut = #s > limit
  if cut then s = ssub(s, 1, limit) end
  s = sgsub(sformat("%q", s), "\\\n", "\\n")
  if cut then s = ssub(s, 1, -2) .. '..."' end
  return s
end

local function key_text(k)
  local tk = type(k)
  if is_ident(k) then return k end
  if tk == "string" then return "[" .. quoted(k, 40) .. "]" end
  if tk == "number" then return "[" .. number_text(k) .. "]" end
  if tk == "boolean" then return k and "[true]" or "[false]" end
  return sformat("[%s: %p]", tk, k)
end

local function value_note(v)
  local tv = type(v)
  if tv == "number" then return tv .. " = " .. number_text(v) end
  if tv == "boolean" then return tv .. " = " .. (v and "true" or "false") end
  if tv == "string" then
    if #v <= 40 then return tv .. " = " .. quoted(v, 40) end
    return tv .. " (" .. #v .. " bytes)"
  end
  if is_python(v) then return "Python object" end
  if tv == "table" or tv == "userdata" then
    local mt = getmt(v)
    local name = type(mt) == "table" and rawget(mt, "__name")
    if type(name) == "string" then return tv .. " (" .. name .. ")" end
  end
  return tv
end

-- A global variable holding v (the smallest such name), or nil.
local function global_name(v)
  local best
  local k, g = next(env)
  while k ~= nil do
    if rawequal(g, v) and is_ident(k) and (best == nil or k < best) then best = k end
    k, g = next(env, k)
  end
  return best
end

local TYPE_ORDER = { number = 1, string = 2, boolean = 3 }

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  local oa, ob = TYPE_ORDER[ta] or 4, TYPE_ORDER[tb] or 4
  if oa ~= ob then return oa < ob end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return (not a) and b end
  if ta ~= tb then return ta < tb end
  return sformat("%p", a) < sformat("%p", b)
end

function M.table_info(t, limit)
  limit = limit or 50
  local total = 0
  local k = next(t)
  while k ~= nil do total = total + 1; k = next(t, k) end
  local seq = 0
  while rawget(t, seq + 1) ~= nil do seq = seq + 1 end
  local lines = {}
  lines[1] = sformat("%d %s, #t = %d", total, total == 1 and "entry" or "entries", rawlen(t))

  if seq > 0 then
    local types, tlist = {}, {}
    for i = 1, seq do
      local tv = type(rawget(t, i))
      if not types[tv] then types[tv] = true; tlist[#tlist + 1] = tv end
    end
    lines[#lines + 1] = sformat("  [1..%d]: %s", seq, tconcat(tlist, ", "))
  end

  local keys = {}
  k = next(t)
  while k ~= nil do
    if not (math_type(k) == "integer" and k >= 1 and k <= seq) then keys[#keys + 1] = k end
    k = next(t, k)
  end
  tsort(keys, key_less)
  for i = 1, #keys do
    if i > limit then
      lines[#lines + 1] = sformat("  ... (%d more)", #keys - limit)
      break
    end
    local key = keys[i]
    lines[#lines + 1] = "  " .. key_text(key) .. ": " .. value_note(rawget(t, key))
  end

  local mt = getmt(t)
  if mt ~= nil then
    if type(mt) ~= "table" then
      lines[#lines + 1] = "metatable: " .. type(mt)
    else
      local parts = {}
      local gname = global_name(mt)
      if gname then parts[#parts + 1] = gname end
      local name = rawget(mt, "__name")
      if name ~= nil then
        parts[#parts + 1] = "__name = " .. (type(name) == "string" and quoted(name, 60) or type(name))
      end
      local idx = rawget(mt, "__index")
      if idx ~= nil then
        local desc = type(idx)
        if type(idx) == "table" then
          local iname = builtin[idx]
          if iname then desc = desc .. " (" .. iname .. ")"
          elseif rawequal(idx, mt) then desc = desc .. " (the metatable itself)" end
        end
        parts[#parts + 1] = "__index = " .. desc
      end
      local others = {}
      k = next(mt)
      while k ~= nil do
        if type(k) == "string" and sfind(k, "^__") and k ~= "__name" and k ~= "__index" then
          others[#others + 1] = k
        end
        k = next(mt, k)
      end
      tsort(others)
      if #others > 0 then parts[#parts + 1] = "also " .. tconcat(others, ", ") end
      lines[#lines + 1] = "metatable: " .. (#parts > 0 and tconcat(parts, "; ") or "(no metamethods)")
    end
  end
  return tconcat(lines, "\n")
end

return M
