-- lua_kernel/repr.lua: how Lua values look in a notebook.
--
-- Loaded once per Lua state; the chunk returns a module table M:
--   M.init(env)         remember the globals table and index the standard builtins
--   M.text(v [, opts])  text/plain rendering   (opts: depth=4, items=100, width=80,
--                       budget=10000 entries in all, name=for a top-level function)
--   M.html(v [, opts])  text/html rendering    (opts: depth=3, items=100, width=80,
--                       budget=2000 rows in all)
--
-- Everything the printer needs from the standard library is captured below,
-- at load time, so user code that later replaces globals (tostring, pairs,
-- type, string.format, ...) cannot break it.  Tables are walked with
-- next/rawget only, so __pairs, __index or __len cannot fool it either.
-- __tostring and __name are honoured on purpose.

local type, next, rawget, rawequal, pcall = type, next, rawget, rawequal, pcall
local tostring, tonumber, getmetatable = tostring, tonumber, getmetatable
local math_floor = math.floor
-- LuaJIT (Lua 5.1) has no math.type: its numbers are doubles, and an
-- integral one prints as an integer does (tostring(3.0) is "3")
local math_type = math.type or function(x)
  if type(x) ~= "number" then return nil end
  return x == math_floor(x) and x > -2 ^ 53 and x < 2 ^ 53 and "integer" or "float"
end
local sbyte, sfind, sformat, sgsub, ssub = string.byte, string.find, string.format, string.gsub, string.sub
local tconcat, tsort = table.concat, table.sort
local utf8_len = utf8 and utf8.len
local co_status = coroutine.status
local getinfo = debug and debug.getinfo
local getlocal = debug and debug.getlocal
-- debug.getmetatable sees through __metatable, like tostring itself does
local rawmeta = debug and debug.getmetatable or getmetatable

local M = {}
M.math_type = math_type    -- for the other Lua files: math.type, or LuaJIT's stand-in

local globals = nil   -- the globals table given to M.init
local builtins = {}   -- C function -> "string.format", "print", "file:read", ...

---------------------------------------------------------------------------
-- Small helpers
---------------------------------------------------------------------------

-- A string key that can be written bare: `x = 1` (lua/names.lua).
local is_ident = ...
M.is_ident = is_ident

-- Display width: characters for valid UTF-8, bytes otherwise.
local function dwidth(s)
  return utf8_len and utf8_len(s) or #s
end

local function address(v)
  return sformat("%p", v)
end

-- tostring that never errors (a broken __tostring falls back to the address).
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return type(v) .. ": " .. address(v)
end

-- Keep an error message on one line, usable inside --[[ ]].
local function one_line(msg)
  msg = type(msg) == "string" and msg or safe_tostring(msg)
  msg = sgsub(msg, "%s+", " ")
  return (sgsub(msg, "%]%]", "] ]"))
end

-- Numbers as Lua's tostring shows them ("%.14g", plus ".0" on integral
-- floats), computed without tostring so a number metatable cannot interfere.
local function number_text(x)
  if math_type(x) == "integer" then return sformat("%d", x) end
  local s = sformat("%.14g", x)
  if sfind(s, "^[-0-9]*$") then s = s .. ".0" end
  return s
end

---------------------------------------------------------------------------
-- Strings
---------------------------------------------------------------------------

local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" }
local SPECIAL = '[%c"\\\128-\255]'   -- bytes that need a closer look

-- Length of the valid UTF-8 sequence starting at s[i] (lead byte b), or nil.
local function utf8_seq_len(s, i, b)
  local n, lo, hi
  if b >= 0xC2 and b <= 0xDF then n, lo, hi = 2, 0x80, 0xBF
  elseif b == 0xE0 then n, lo, hi = 3, 0xA0, 0xBF            -- no overlongs
  elseif b == 0xED then n, lo, hi = 3, 0x80, 0x9F            -- no surrogates
  elseif b >= 0xE1 and b <= 0xEF then n, lo, hi = 3, 0x80, 0xBF
  elseif b == 0xF0 then n, lo, hi = 4, 0x90, 0xBF            -- no overlongs
  elseif b == 0xF4 then n, lo, hi = 4, 0x80, 0x8F            -- <= U+10FFFF
  elseif b >= 0xF1 and b <= 0xF3 then n, lo, hi = 4, 0x80, 0xBF
  else return nil end
  local c = sbyte(s, i + 1)
  if not c or c < lo or c > hi then return nil end
  for k = i + 2, i + n - 1 do
    c = sbyte(s, k)
    if not c or c < 0x80 or c > 0xBF then return nil end
  end
  return n
end

-- "\ddd" for byte b; padded to 3 digits when a digit follows (as %q does).
local function byte_escape(s, i, b)
  local nb = sbyte(s, i + 1)
  if nb and nb >= 48 and nb <= 57 then return sformat("\\%03d", b) end
  return sformat("\\%d", b)
end

-- Double-quoted string; at most `limit` bytes, then `..." (N bytes)`.
local function quote(s, limit)
  local n = #s
  local cut = n > limit
  if not cut and not sfind(s, SPECIAL) then return '"' .. s .. '"' end
  local stop = cut and limit or n
  local out, o, i = {}, 0, 1
  while i <= stop do
    local j = sfind(s, SPECIAL, i)
    if not j or j > stop then          -- plain run up to the end
      o = o + 1; out[o] = ssub(s, i, stop)
      break
    end
    if j > i then o = o + 1; out[o] = ssub(s, i, j - 1) end
    local b = sbyte(s, j)
    if b < 128 then                    -- control byte, quote or backslash
      o = o + 1; out[o] = ESCAPES[ssub(s, j, j)] or byte_escape(s, j, b)
      i = j + 1
    else
      local len = utf8_seq_len(s, j, b)
      if not len then                  -- not part of valid UTF-8
        o = o + 1; out[o] = byte_escape(s, j, b)
        i = j + 1
      elseif j + len - 1 <= stop then  -- valid multibyte character: keep
        o = o + 1; out[o] = ssub(s, j, j + len - 1)
        i = j + len
      else                             -- character straddles the cut
        break
      end
    end
  end
  if cut then return '"' .. tconcat(out) .. '..." (' .. n .. ' bytes)' end
  return '"' .. tconcat(out) .. '"'
end

---------------------------------------------------------------------------
-- Functions
---------------------------------------------------------------------------

local function fn_info(f)
  if not getinfo then return nil end
  local ok, info = pcall(getinfo, f, "Su")
  return ok and info or nil
end

local function param_list(f, info)
  local names = {}
  local n = info.nparams or 0
  for i = 1, n do
    names[i] = (getlocal and getlocal(f, i)) or "?"
  end
  if info.isvararg then names[n + 1] = "..." end
  return tconcat(names, ", ")
end

-- Name of a global variable holding f (smallest such name), or nil.
local function global_name(f)
  if type(globals) ~= "table" then return nil end
  local best = nil
  local k, v = next(globals)
  while k ~= nil do
    if rawequal(v, f) and type(k) == "string" and is_ident(k) and (best == nil or k < best) then
      best = k
    end
    k, v = next(globals, k)
  end
  return best
end

-- Full form: text plus a location for a trailing `-- comment` (Lua functions).
-- `name` is only given at top level.
local function function_text(f, name)
  local b = builtins[f]
  if b then return "builtin: " .. b end
  local info = fn_info(f)
  if not info or info.what == "C" then return "function: builtin (" .. address(f) .. ")" end
  if info.what == "main" then return "function: main chunk (" .. info.short_src .. ")" end
  local head = name and ("function " .. name) or "function"
  return head .. "(" .. param_list(f, info) .. ")", info.short_src .. ":" .. info.linedefined
end

-- Compact one-line form, for table keys.
local function function_short(f)
  local b = builtins[f]
  if b then return "builtin: " .. b end
  local info = fn_info(f)
  if not info or info.what == "C" then return "function: builtin (" .. address(f) .. ")" end
  if info.what == "main" then return "function: main chunk (" .. info.short_src .. ")" end
  return "function (" .. info.short_src .. ":" .. info.linedefined .. ")"
end

---------------------------------------------------------------------------
-- Tables: shared pieces
---------------------------------------------------------------------------

-- Metatable facts: mt (or nil), __name (or nil), and for a working
-- __tostring its result; for a failing one the error message.
local function meta_of(t)
  local mt = rawmeta(t)
  if type(mt) ~= "table" then return nil end
  local name = rawget(mt, "__name")
  if type(name) ~= "string" then name = nil end
  local shown, err
  if rawget(mt, "__tostring") ~= nil then
    local ok, s = pcall(tostring, t)
    if ok and type(s) == "string" then shown = s else err = one_line(s) end
  end
  return mt, name, shown, err
end

-- Compact form of a table, for keys: `{...}`, `{}`, `Point {...}`, or its
-- __tostring text when that is a single line.
local function table_short(t)
  local _, name, shown = meta_of(t)
  if shown and not sfind(shown, "\n", 1, true) then return shown end
  return (name and name .. " " or "") .. (next(t) == nil and "{}" or "{...}")
end

-- Key order: numbers ascending, then strings, then the rest by type name
-- and tostring.  Numbers and strings are sorted with the plain `<` (fast,
-- C-side); only the rest needs a Lua comparator.
local function make_other_less()
  local cache = {}
  local function sort_string(k)
    local s = cache[k]
    if s == nil then
      if type(k) == "boolean" then s = k and "true" or "false" else s = safe_tostring(k) end
      cache[k] = s
    end
    return s
  end
  return function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    return sort_string(a) < sort_string(b)
  end
end

-- Sequence length n (keys 1..n all present), the other keys sorted, and
-- their count.
local function collect_keys(t)
  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local nums, strs, others, nn, ns, no = {}, {}, {}, 0, 0, 0
  local k = next(t)
  while k ~= nil do
    local tk = type(k)
    if tk == "number" then
      if not (math_type(k) == "integer" and k >= 1 and k <= n) then nn = nn + 1; nums[nn] = k end
    elseif tk == "string" then ns = ns + 1; strs[ns] = k
    else no = no + 1; others[no] = k end
    k = next(t, k)
  end
  if nn > 1 then tsort(nums) end
  if ns > 1 then tsort(strs) end
  if no > 1 then tsort(others, make_other_less()) end
  -- concatenate into nums
  for i = 1, ns do nums[nn + i] = strs[i] end
  for i = 1, no do nums[nn + ns + i] = others[i] end
  return n, nums, nn + ns + no
end

-- Options with defaults; read raw, tolerate junk.
local function make_ctx(opts, default_depth, default_budget)
  local function opt(name, default)
    local v = type(opts) == "table" and tonumber(rawget(opts, name)) or nil
    if v == nil or v ~= v then return default end
    return math_floor(v)
  end
  local width = opt("width", 80)
  if width < 1 then width = 1 end
  local depth = opt("depth", default_depth)
  if depth > 100 then depth = 100 end   -- deeper is unreadable, and output grows quadratically
  local name = type(opts) == "table" and rawget(opts, "name") or nil
  return {
    depth = depth,
    items = opt("items", 100),
    width = width,
    strlimit = width * 20,
    budget = opt("budget", default_budget),  -- total entries per call (shared tables multiply)
    name = type(name) == "string" and name or nil,
    active = {},                     -- tables on the current path, for <cycle>
  }
end

---------------------------------------------------------------------------
-- text/plain
---------------------------------------------------------------------------

local render  -- forward declaration

local function key_text(k, ctx)
  local tk = type(k)
  if tk == "string" then
    if is_ident(k) then return k end
    return "[" .. quote(k, ctx.strlimit) .. "]"
  elseif tk == "number" then return "[" .. number_text(k) .. "]"
  elseif tk == "boolean" then return k and "[true]" or "[false]"
  elseif tk == "table" then return "[" .. table_short(k) .. "]"
  elseif tk == "function" then return "[" .. function_short(k) .. "]"
  end
  return "[" .. safe_tostring(k) .. "]"
end

-- A table at `indent` (the indentation of the line it starts on), whose
-- text starts at column `col`; `level` is 1 for the outermost table.
local function render_table(t, ctx, indent, col, level)
  if ctx.active[t] then return "<cycle>" end
  local mt, name, shown, err = meta_of(t)
  if shown then
    -- keep continuation lines of a multi-line __tostring under the entry
    if indent ~= "" then shown = sgsub(shown, "\n", "\n" .. indent) end
    return shown
  end
  local prefix = name and (name .. " ") or ""
  local suffix = err and (" --[[__tostring error: " .. err .. "]]") or ""
  local show_mt = mt ~= nil and name == nil   -- a __name already says what it is
  local empty = next(t) == nil
  if empty and not show_mt then return prefix .. "{}" .. suffix end
  if level > ctx.depth or ctx.budget <= 0 then
    return prefix .. (empty and "{}" or "{...}") .. suffix
  end

  ctx.active[t] = true
  local n, keys, m = collect_keys(t)
  local inner = indent .. "  "
  local entries, comments, e = {}, {}, 0

  local function add(ktext, v)
    local kc = ktext and (ktext .. " = ") or ""
    -- column if this entry ends up on its own line (+1 for the comma)
    local s, c = render(v, ctx, inner, #inner + dwidth(kc) + 1, level + 1)
    e = e + 1
    entries[e], comments[e] = kc .. s, c
    ctx.budget = ctx.budget - 1
  end

  local shown_count, total = 0, n + m
  local function room() return shown_count < ctx.items and ctx.budget > 0 end
  for i = 1, n do
    if not room() then break end
    add(nil, rawget(t, i))
    shown_count = shown_count + 1
  end
  for i = 1, m do
    if not room() then break end
    local k = keys[i]
    add(key_text(k, ctx), rawget(t, k))
    shown_count = shown_count + 1
  end
  if total > shown_count then
    e = e + 1
    entries[e] = "... (" .. (total - shown_count) .. " more)"
  end
  if show_mt then add("<metatable>", mt) end
  ctx.active[t] = nil

  -- one line if nothing inside needs its own line and it fits
  local oneline = true
  for i = 1, e do
    if comments[i] or sfind(entries[i], "\n", 1, true) then oneline = false; break end
  end
  if oneline then
    local line = prefix .. "{ " .. tconcat(entries, ", ") .. " }" .. suffix
    if col + dwidth(line) <= ctx.width then return line end
  end

  -- otherwise one entry per line; a function's location comment goes after the comma
  local out = { prefix .. "{" }
  for i = 1, e do
    local line = inner .. entries[i]
    if i < e then line = line .. "," end
    if comments[i] then line = line .. " -- " .. comments[i] end
    out[i + 1] = line
  end
  out[e + 2] = indent .. "}" .. suffix
  return tconcat(out, "\n")
end

-- Any value.  Returns the text and, for Lua functions, a location that the
-- caller places in a trailing `-- comment`.
render = function(v, ctx, indent, col, level, top)
  local tv = type(v)
  if tv == "nil" then return "nil"
  elseif tv == "boolean" then return v and "true" or "false"
  elseif tv == "number" then return number_text(v)
  elseif tv == "string" then return quote(v, ctx.strlimit)
  elseif tv == "table" then return render_table(v, ctx, indent, col, level)
  elseif tv == "function" then
    return function_text(v, top and (ctx.name or global_name(v)) or nil)
  elseif tv == "thread" then
    local s = safe_tostring(v)
    local ok, status = pcall(co_status, v)
    if ok then s = s .. " (" .. status .. ")" end
    return s
  end
  return safe_tostring(v)  -- userdata (honours __tostring / __name)
end

local function text_impl(v, opts)
  local ctx = make_ctx(opts, 4, 10000)
  local s, comment = render(v, ctx, "", 0, 1, true)
  if comment then s = s .. " -- " .. comment end
  return s
end

function M.text(v, opts)
  local ok, s = pcall(text_impl, v, opts)
  if ok and type(s) == "string" then return s end
  return safe_tostring(v)
end

---------------------------------------------------------------------------
-- text/html
---------------------------------------------------------------------------

local HTML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

local function esc(s)
  return (sgsub(s, "[&<>\"']", HTML_ESCAPES))
end

-- font and white-space are inherited; alignment and padding must be per cell
-- (notebook front ends right-align table cells by default)
local TABLE_OPEN = '<table class="lua-table" style="font-family:monospace;white-space:pre-wrap;border-collapse:collapse">'
local CELL = 'style="text-align:left;vertical-align:top;padding:1px 6px"'
local TH = '<th colspan="2" ' .. CELL .. '>'
local TD_KEY = '<td class="lua-key" ' .. CELL .. '>'
local TD_VAL = '<td class="lua-value" ' .. CELL .. '>'

-- Keys: the column already separates them, so no brackets.
local function html_key(k, ctx)
  local tk = type(k)
  if tk == "string" then return esc(is_ident(k) and k or quote(k, ctx.strlimit))
  elseif tk == "number" then return esc(number_text(k))
  elseif tk == "boolean" then return k and "true" or "false"
  elseif tk == "table" then return esc(table_short(k))
  elseif tk == "function" then return esc(function_short(k))
  end
  return esc(safe_tostring(k))
end

local html_value  -- forward declaration

-- Returns the HTML and whether it is a <table> (false: plain text).
local function html_table(t, ctx, level)
  if ctx.active[t] then return "&lt;cycle&gt;", false end
  local mt, name, shown, err = meta_of(t)
  if shown then return esc(shown), false end
  local prefix = name and (name .. " ") or ""
  local note = err and (" --[[__tostring error: " .. err .. "]]") or ""
  local show_mt = mt ~= nil and name == nil
  local empty = next(t) == nil
  if empty and not show_mt and level > 1 then return esc(prefix .. "{}" .. note), false end
  if level > ctx.depth or ctx.budget <= 0 then
    return esc(prefix .. (empty and "{}" or "{...}") .. note), false
  end

  ctx.active[t] = true
  local n, keys, m = collect_keys(t)
  local total = n + m
  local out = {
    TABLE_OPEN,
    "<tr>" .. TH .. esc((name or "table") .. " (" .. total .. (total == 1 and " entry" or " entries") .. ")" .. note) .. "</th></tr>",
  }
  local function row(khtml, v)
    out[#out + 1] = "<tr>" .. TD_KEY .. khtml .. "</td>" .. TD_VAL .. html_value(v, ctx, level + 1) .. "</td></tr>"
    ctx.budget = ctx.budget - 1
  end
  local shown_count = 0
  local function room() return shown_count < ctx.items and ctx.budget > 0 end
  for i = 1, n do
    if not room() then break end
    row(sformat("%d", i), rawget(t, i))
    shown_count = shown_count + 1
  end
  for i = 1, m do
    if not room() then break end
    row(html_key(keys[i], ctx), rawget(t, keys[i]))
    shown_count = shown_count + 1
  end
  if total > shown_count then
    out[#out + 1] = '<tr><td colspan="2" ' .. CELL .. '>... (' .. (total - shown_count) .. ' more)</td></tr>'
  end
  if show_mt then row("&lt;metatable&gt;", mt) end
  ctx.active[t] = nil
  out[#out + 1] = "</table>"
  return tconcat(out), true
end

html_value = function(v, ctx, level)
  if type(v) == "table" then return (html_table(v, ctx, level)) end
  local s, comment = render(v, ctx, "", 0, level, false)
  if comment then s = s .. " -- " .. comment end
  return esc(s)
end

local function html_impl(v, opts)
  if type(v) == "table" then
    local h, is_table = html_table(v, make_ctx(opts, 3, 2000), 1)
    if is_table then return h end
  end
  return "<pre>" .. esc(M.text(v, opts)) .. "</pre>"
end

function M.html(v, opts)
  local ok, s = pcall(html_impl, v, opts)
  if ok and type(s) == "string" then return s end
  return "<pre>" .. esc(M.text(v, opts)) .. "</pre>"
end

---------------------------------------------------------------------------
-- Builtins
---------------------------------------------------------------------------

local LIBRARIES = { "coroutine", "debug", "io", "math", "os", "package", "string", "table", "utf8",
                    "display" }

-- Builtins are the C functions of the standard library and the kernel's own
-- Lua replacements (print, io.write, ...), which live in lua_kernel/ chunks.
local function is_builtin_function(f)
  if not getinfo then return true end
  local info = fn_info(f)
  return info ~= nil and (info.what == "C" or sfind(info.source, "=lua_kernel/", 1, true) == 1)
end

-- Record the builtin functions of table `t` under `prefix .. key`, keys in sorted
-- order so the first name found is stable.
local function index_functions(t, prefix)
  if type(t) ~= "table" then return end
  local names, n = {}, 0
  local k = next(t)
  while k ~= nil do
    if type(k) == "string" then n = n + 1; names[n] = k end
    k = next(t, k)
  end
  tsort(names)
  for i = 1, n do
    local f = rawget(t, names[i])
    if type(f) == "function" and builtins[f] == nil and is_builtin_function(f) then
      builtins[f] = prefix .. names[i]
    end
  end
end

-- `env` is the globals table of a fresh state: whatever C functions it and
-- the standard libraries hold now are the builtins.  Later additions are not.
function M.init(env)
  globals = env
  builtins = {}
  if type(env) ~= "table" then return M end
  index_functions(env, "")                       -- print, pairs, require, ...
  for i = 1, #LIBRARIES do
    local lib = LIBRARIES[i]
    index_functions(rawget(env, lib), lib .. ".")  -- string.format, io.write, ...
  end
  -- file methods: file:read, file:write, ...
  local io_lib = rawget(env, "io")
  local stdout = type(io_lib) == "table" and rawget(io_lib, "stdout") or nil
  local fmt = stdout ~= nil and rawmeta(stdout) or nil
  if type(fmt) == "table" then index_functions(rawget(fmt, "__index"), "file:") end
  return M
end

return M
