-- 1,000,000 numbers, all of subtype float (math.type), as in the anchor figures.
local N = 1000000
return {
  name = "1,000,000 floats",
  build = function()
    local data = {}
    for i = 1, N do data[i] = i * 0.25 + 0.5 end
    return data
  end,
  check = function(data)
    local sum, floats = 0, 0
    for i = 1, #data do
      local v = data[i]
      sum = sum + v
      if math.type(v) == "float" then floats = floats + 1 end
    end
    return string.format("n=%d floats=%d sum=%.17g mid=%.17g", #data, floats, sum, data[#data // 2])
  end,
}
