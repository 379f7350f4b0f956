-- Facts the interrupter needs about this Lua state (see lua_kernel/native.py).
-- Receives the session's hook function and the original debug.sethook (the
-- kernel's own treats every hook as the user's); registers the hook for the
-- main thread with a count so large it never fires, so that lua_gethook
-- reveals Lua's C hook.
local hook, sethook = ...
local P = {}

-- LuaJIT (Lua 5.1) has no handle on its main thread, and one hook for the
-- whole VM: any live thread will do, so P keeps one.
local main = coroutine.running()
if main == nil then
  P.anchor = coroutine.create(function() end)
  main = P.anchor
end
P.main = tostring(main)
P.resume = string.format("%p", coroutine.resume)
P.wrap_closure = string.format("%p", coroutine.wrap(function() end))
sethook(hook, "", 2 ^ 30)

function P.disarm()
  sethook(hook, "", 0)
end

-- Self-check: main resumes `outer` (coroutine.resume), which calls `inner`
-- (a coroutine.wrap function); from inside, the walk must find exactly
-- main, outer, inner.
function P.check(callback)
  local main = P.main
  local outer
  local inner = coroutine.wrap(function()
    return callback(main, tostring(outer), tostring(coroutine.running()))
  end)
  outer = coroutine.create(function() return inner() end)
  local ok, result = coroutine.resume(outer)
  return ok and result
end

return P
