-- What every generated program starts with (chunk "prelude"): the log and
-- the helpers that write to it. Everything logged must be the same in any
-- Lua state: values are shown by `show`, never with addresses.
log = {}

local function show(v)
  local t = type(v)
  if t == "string" then return (v:gsub("\n", "\\n")) end
  if math.type(v) == "float" then
    local s = tostring(v)            -- "-0.0", "nan", "-inf" stay readable
    if v == v and tonumber(s) ~= v then s = string.format("%q", v) end
    return s
  end
  if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
  return t                           -- tables, functions, threads: the type only
end
S = show

-- L(...): one log line, the arguments shown and separated by spaces.
function L(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = show(t[i]) end
  log[#log + 1] = table.concat(t, " ")
end

-- R(co, ...): resume (or call, if coroutine.wrap made it) and log what came back.
function R(co, ...)
  if type(co) == "function" then return L("W", pcall(co, ...)) end
  if type(co) ~= "thread" then return L("R", "not a coroutine", type(co)) end
  L("R", coroutine.resume(co, ...))
end

-- C(name, yields): a to-be-closed value that logs its closing (with the error,
-- if any, and whether it may yield) and, if `yields`, yields in its __close.
function C(name, yields)
  return setmetatable({}, {__close = function(_, e)
    L("close", name, e, coroutine.isyieldable())
    if yields then L("close resumed", name, coroutine.yield("close " .. name)) end
  end})
end

-- Q(): a quiet to-be-closed value, counted in `quiet`.
quiet = 0
local counting = {__close = function() quiet = quiet + 1 end}
function Q() return setmetatable({}, counting) end

-- O(): an object whose every metamethod yields; the value it is resumed with
-- is the metamethod's result.
local function operand(x) return type(x) == "table" and "o" or show(x) end
YMT = {}
for _, ev in ipairs({"add", "sub", "mul", "div", "mod", "idiv", "pow", "unm",
                     "concat", "lt", "le", "eq", "len", "index", "call"}) do
  YMT["__" .. ev] = function(a, b)
    return coroutine.yield("mm " .. ev, operand(a), operand(b))
  end
end
function YMT.__newindex(_, k, v)
  L("newindex", k, v, coroutine.yield("mm newindex " .. show(k)))
end
function O() return setmetatable({}, YMT) end
