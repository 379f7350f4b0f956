-- A stand-in for lua/session.lua's module in a bare LuaJIT state (until
-- session.lua runs on LuaJIT): what state.lua and track.lua take from the
-- kernel (is_name, INTERRUPTED, hook, watch), and the kernel's tracking
-- coroutine.create, coroutine.wrap and io.open.
local is_name = ...
local K = { is_name = is_name, INTERRUPTED = setmetatable({}, { __name = "interrupt" }) }
function K.hook() end

local watchers = { thread = {}, file = {} }
function K.watch(kind, fn) table.insert(watchers[kind], fn) end
local function tell(kind, a, b, c)
  for _, fn in ipairs(watchers[kind]) do fn(a, b, c) end
end

local cocreate, cowrap, open = coroutine.create, coroutine.wrap, io.open
function coroutine.create(f)
  local co = cocreate(f)
  tell("thread", co, f)
  return co
end
function coroutine.wrap(f)
  local w = cowrap(f)
  local _, co = debug.getupvalue(w, 1)
  if type(co) == "thread" then tell("thread", co, f, w) end
  return w
end
function io.open(name, mode)
  local fh, err, code = open(name, mode)
  if fh then tell("file", fh, name, mode or "r") end
  return fh, err, code
end
return K
