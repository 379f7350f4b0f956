-- 1,000 coroutines, each suspended 10 Lua frames deep, as in
-- bench_coroutines.py part A (which uses this file's `deep`): a recursive
-- function with three locals per frame yields at the bottom. check() resumes every coroutine to its end
-- (so it uses them up) and sums what they return.
local N, DEPTH = 1000, 10

local function deep(d, seed)
  local a, b, c = d * 2, seed .. ":" .. d, {d}
  if d == 1 then
    local got = coroutine.yield(b)
    return got + a + #c
  end
  return deep(d - 1, seed) + a + c[1]
end

return {
  name = "1,000 coroutines suspended 10 frames deep",
  build = function()
    local data = {}
    for i = 1, N do
      local co = coroutine.create(deep)
      data[i] = co
      assert(coroutine.resume(co, DEPTH, "c" .. i))
    end
    return data
  end,
  check = function(data)
    local sum, suspended = 0, 0
    for i = 1, #data do
      if coroutine.status(data[i]) == "suspended" then suspended = suspended + 1 end
      local ok, v = coroutine.resume(data[i], i)
      assert(ok, v)
      assert(coroutine.status(data[i]) == "dead")
      sum = sum + v
    end
    return string.format("n=%d suspended=%d sum=%d", #data, suspended, sum)
  end,
  deep = deep,      -- (bench_coroutines.py suspends the same function)
}
