-- 100,000 closures sharing upvalues in pairs, as in bench_snapshot.py: a
-- getter and a setter over the same local. check() reads every getter, then
-- sets through every setter and reads again, so a copy whose pairs no longer
-- share their upvalue gives another answer.
local PAIRS = 50000
return {
  name = "100,000 closures sharing upvalues in pairs",
  build = function()
    local data = {}
    for i = 1, PAIRS do
      local v = i
      data[2 * i - 1] = function() return v end
      data[2 * i] = function(n) v = n end
    end
    return data
  end,
  check = function(data)
    local before, after = 0, 0
    for i = 1, #data // 2 do before = before + data[2 * i - 1]() end
    for i = 1, #data // 2 do data[2 * i](-i) end
    for i = 1, #data // 2 do after = after + data[2 * i - 1]() end
    return string.format("n=%d before=%d after=%d", #data, before, after)
  end,
}
