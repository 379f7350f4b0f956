-- What persistence must see from the first line of user code, and the
-- kernel does not keep: the function of each coroutine (a coroutine that
-- has not started shows it to no debug function), the thread of each
-- coroutine.wrap function, and the path and mode of each file io.open
-- opened (to reopen it at restore). All weak: tracking keeps nothing alive.
--
-- Loaded by persist/state.py when persistence attaches to a fresh Lua state,
-- with `kernel` (lua/session.lua's module: its watchers) and `abspath`
-- (Python's os.path.abspath: a relative name is kept as the absolute path it
-- meant when the file was opened). Returns
--   { thread_fn = {[co] = f}, wrapped = {[wrapfn] = co},
--     files = {[fh] = {path = string, mode = string}} }
local kernel, abspath = ...

local pcall, type = pcall, type

local weak = { __mode = "k" }
local tracked = {
  thread_fn = setmetatable({}, weak),
  wrapped = setmetatable({}, weak),
  files = setmetatable({}, weak),
}
local thread_fn, wrapped, files = tracked.thread_fn, tracked.wrapped, tracked.files

kernel.watch("thread", function(co, f, wrapfn)
  thread_fn[co] = f
  if wrapfn then wrapped[wrapfn] = co end
end)

kernel.watch("file", function(fh, filename, mode)
  local ok, path = pcall(abspath, filename)
  files[fh] = { path = ok and type(path) == "string" and path or filename, mode = mode }
end)

return tracked
