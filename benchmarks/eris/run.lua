-- The Eris side of bench_eris.py, run by the `lua` binary of an OC-Eris build
-- (Lua 5.4 with the eris library opened by luaL_openlibs):
--
--     lua run.lua DATASET.lua REPS
--
-- Builds the data set (the same file our side runs), then times REPS calls
-- of eris.persist(perms, data) and of eris.unpersist(uperms, s) with
-- os.clock() (CPU time), a full collection before each, untimed. The last
-- unpersisted copy is checked with the data set's check() against a native
-- copy built in this state. Results go to stdout as `key value` lines.
local path, reps = arg[1], tonumber(arg[2] or "5")
assert(path and reps and reps >= 1, "usage: lua run.lua DATASET.lua REPS")
assert(eris and eris.persist, "this lua has no eris library")

-- Permanents: _G and everything reachable from it two levels deep (the
-- standard library's tables and functions, io's standard files, ...),
-- walked before the data set exists so nothing of the data is permanent.
-- perms maps value -> key for persist, uperms key -> value for unpersist.
-- (Eris adds its own internal permanents, such as the continuation of
-- coroutine.yield, itself.)
local perms, uperms = {}, {}
local function permanent(v, key)
  local tv = type(v)
  if (tv == "table" or tv == "function" or tv == "userdata" or tv == "thread")
      and perms[v] == nil then
    perms[v], uperms[key] = key, v
    return true
  end
  return false
end
permanent(_G, "_G")
local level1 = {}
for k, v in pairs(_G) do
  if type(k) == "string" and permanent(v, k) and type(v) == "table" then
    level1[#level1 + 1] = {k, v}
  end
end
for _, kv in ipairs(level1) do
  for k2, v2 in pairs(kv[2]) do
    if type(k2) == "string" then permanent(v2, kv[1] .. "." .. k2) end
  end
end
local nperms = 0
for _ in pairs(uperms) do nperms = nperms + 1 end

local set = dofile(path)
local expected = set.check(set.build())   -- a native copy, used up by check
collectgarbage()
collectgarbage()

data = set.build()                         -- a global, as on our side
local lua_kb = collectgarbage("count")

local function timed(fn)
  local times, result = {}, nil
  for i = 1, reps do
    result = nil
    collectgarbage()
    collectgarbage()
    local t0 = os.clock()
    result = fn()
    times[i] = os.clock() - t0
  end
  return times, result
end

local persist_times, s = timed(function() return eris.persist(perms, data) end)
local unpersist_times, copy = timed(function() return eris.unpersist(uperms, s) end)
assert(type(copy) == "table" and copy ~= data, "unpersist gave no copy")
local got = set.check(copy)

local function line(key, ...) io.write(key, " ", table.concat({...}, " "), "\n") end
line("name", set.name)
line("version", _VERSION)
line("perms", nperms)
line("lua_kb", string.format("%.1f", lua_kb))
line("size", #s)
line("persist", table.unpack(persist_times))
line("unpersist", table.unpack(unpersist_times))
line("expected", expected)
line("got", got)
line("check", got == expected and "ok" or "MISMATCH")
