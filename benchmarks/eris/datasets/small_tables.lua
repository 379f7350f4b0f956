-- 100,000 small tables, as in bench_snapshot.py.
-- A data set for bench_eris.py: build() makes the data; check(data) sums it
-- up in a string that a faithful copy reproduces (run on the native data and
-- on each restored copy, on both sides).
local N = 100000
return {
  name = "100,000 small tables",
  build = function()
    local data = {}
    for i = 1, N do data[i] = {x = i, y = i * 0.5, name = "n" .. i} end
    return data
  end,
  check = function(data)
    local sx, sy, names = 0, 0, 0
    for i = 1, #data do
      local t = data[i]
      sx, sy = sx + t.x, sy + t.y
      if t.name == "n" .. t.x and math.type(t.x) == "integer" then names = names + 1 end
    end
    return string.format("n=%d sx=%d sy=%.17g names=%d last=%s",
                         #data, sx, sy, names, data[#data].name)
  end,
}
