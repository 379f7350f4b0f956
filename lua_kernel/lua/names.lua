-- Names that can be written bare (`t.x`, not `t["x"]`, `_G.x` as `x`): not
-- one of Lua's reserved words, which Python's runtime.KEYWORDS lists (the
-- package's one list). Returns the test; repr.lua, introspect.lua and the
-- serializer's paths use it.
local keywords = ...
local reserved = {}
for _, w in ipairs(keywords) do reserved[w] = true end
local type, smatch = type, string.match

return function(s)
  return type(s) == "string" and smatch(s, "^[%a_][%w_]*$") ~= nil and not reserved[s]
end
