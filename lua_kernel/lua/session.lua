-- The Lua half of a kernel session: output, input, interrupts, running cells.
--
-- Loaded once per Lua state by lua_kernel/session.py, which passes `host`, a
-- table of Python callbacks:
--   host.emit(stream, text)        stream is "stdout" or "stderr"
--   host.readline(prompt)          one line of user input without "\n", or nil at EOF
--   host.interrupted()             true once the user asked to interrupt this cell
--   host.publish(kind, data, meta) a display message (see M.display below)
--   host.display_value(value)      display(value): Python builds the MIME bundle
--   host.is_name(s)                a name that can be written bare (lua/names.lua)
-- and returns the module table M.
local host = ...

local M = {}

-- Originals, captured before any user code can replace the globals.
local _G = _G
local type, tostring, tonumber, select, error, rawequal = type, tostring, tonumber, select, error, rawequal
local setmetatable, getmetatable, load, xpcall = setmetatable, getmetatable, load, xpcall
local concat = table.concat
-- LuaJIT is Lua 5.1: no table.pack/unpack, math.type or math.tointeger, and
-- its numbers are doubles (an integral one prints as an integer does)
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack
local sfind, ssub, sformat, smatch = string.find, string.sub, string.format, string.match
local sgsub, sgmatch = string.gsub, string.gmatch
local clock = os.clock
local sethook, gethook, getinfo, traceback = debug.sethook, debug.gethook, debug.getinfo, debug.traceback
local getupvalue, dgetmetatable = debug.getupvalue, debug.getmetatable
local floor, max = math.floor, math.max
local mtype = math.type or function(x)
  if type(x) ~= "number" then return nil end
  return x == floor(x) and x > -2 ^ 53 and x < 2 ^ 53 and "integer" or "float"
end
local tointeger = math.tointeger or function(x)
  x = tonumber(x)
  return x and mtype(x) == "integer" and x or nil
end
local cocreate, cowrap, corunning = coroutine.create, coroutine.wrap, coroutine.running
local coyield = coroutine.yield
-- LuaJIT gives no handle on the main thread (coroutine.running() is nil
-- there) and keeps one hook for the whole VM. MAIN stands for the main
-- thread in the kernel's records; sethook_on() turns it back into "no
-- thread argument" for the debug library (in Lua 5.4 MAIN is the thread).
local MAIN = corunning() or setmetatable({}, { __name = "main thread" })
local function running() return corunning() or MAIN end
local function sethook_on(co, ...)
  if type(co) ~= "thread" then return sethook(...) end
  return sethook(co, ...)
end
M.is_name = host.is_name     -- lua/names.lua: for the serializer's paths

---------------------------------------------------------------------------
-- Errors as the C library raises them. luaL_error positions a message at
-- the line of the library function's caller (none when that is C, such as
-- pcall), and luaL_argerror names the function as that caller called it
-- (a method call does not count self), else by its global name. Our
-- replacements raise through these: the first frame outside this file is
-- the caller, the last one inside it is the library function.
---------------------------------------------------------------------------
local OURS = getinfo(1, "S").source

local function caller_level()      -- as error() counts from the function calling this
  local level = 3
  while true do
    local ar = getinfo(level, "S")
    if not ar or ar.source ~= OURS then return level - 1 end
    level = level + 1
  end
end

local function raise(msg)
  error(msg, caller_level())
end

local function argerror(arg, extramsg, global)
  local level = caller_level()               -- the caller, from here
  local ar = getinfo(level - 1, "n")         -- the library function, as it was called
  local name = ar and ar.name
  if ar and ar.namewhat == "method" then
    arg = arg - 1
    if arg == 0 then
      error(sformat("calling '%s' on bad self (%s)", name, extramsg), level)
    end
  end
  error(sformat("bad argument #%d to '%s' (%s)", arg, name or global, extramsg), level)
end

local function typename(v, given)  -- luaL_typeerror's name for a value's type
  if not given then return "no value" end
  local mt = dgetmetatable(v)
  local n = type(mt) == "table" and rawget(mt, "__name")
  if type(n) == "string" then return n end
  return type(v)
end


-- Native streams (see Output below): lua_kernel/native.py pointed the
-- state's own stdio handles at the notebook before this file runs.
local NATIVE = host.native_streams

local real_io = { write = io.write, read = io.read, lines = io.lines, close = io.close,
                  input = io.input, output = io.output, type = io.type,
                  stdin = io.stdin, stdout = io.stdout, stderr = io.stderr }

---------------------------------------------------------------------------
-- Interrupts and the tail-flush tick share one debug hook.
--
-- No hook is active while code runs normally: an active count hook makes the
-- VM check hooks on every instruction (measured: 1.7x slower tight loops).
-- Python arms the hook only when needed, through lua_sethook (which Lua
-- documents as safe to call asynchronously), on the main thread and on every
-- coroutine in the chain of running ones. The C hook looks up the Lua hook
-- function registered for the thread, so every thread gets `hook` registered
-- (mask 0) when it is created.
---------------------------------------------------------------------------
local INTERRUPTED = setmetatable({}, { __name = "interrupt",
  __tostring = function() return "interrupted" end })
M.INTERRUPTED = INTERRUPTED

local interrupting = false   -- the current cell was interrupted
local unwinding = false      -- the error reached the cell's own handler
local interrupt_where        -- traceback at the point of interruption
local cell_handler           -- defined below; the hook must not fire inside it
local flush                  -- defined below

local busy = false           -- the output buffer is being changed
local print_loop             -- defined below: the hook must not raise in it
local rehook                 -- defined below: the thread's registration, mask as set

local function hook()
  -- While the output buffer is half-updated, neither flush nor raise: a count
  -- hook stays armed and fires again shortly.
  if unwinding or busy then return end
  if not interrupting then
    -- A tail-flush tick: disarm first, then look at the flag, so an interrupt
    -- armed concurrently is never lost (Python sets the flag, then arms).
    rehook(running())
    if not host.interrupted() then
      flush()
      return
    end
    interrupting = true
    sethook(hook, "", 1)
  end
  local info = getinfo(2, "f")
  if info and rawequal(info.func, cell_handler) then
    unwinding = true
    return
  end
  -- print's own loop ends only as planned (its spare in place); the
  -- interrupt is raised in what print called, or after it returns
  if info and rawequal(info.func, print_loop) then return end
  if not interrupt_where then
    interrupt_where = traceback(nil, 2)
  end
  -- Keep raising at every instruction: a user's pcall may catch this once,
  -- but the next instruction outside it raises again.
  error(INTERRUPTED, 0)
end
M.hook = hook
M.sethook = sethook          -- the original, for interrupt_probe.lua

---------------------------------------------------------------------------
-- A user's own debug hook. Python arms interrupts through lua_sethook, and
-- Lua's C hook then calls the Lua function registered for the thread, so
-- that function must stay ours. debug.sethook registers a chain instead:
-- count events the user did not ask for (or any, once interrupted) go to
-- the interrupt hook, the rest to the user's hook, which keeps running.
-- debug.gethook answers with what the user set; clearing the user's hook
-- registers ours again (natively it would be gone, and interrupts with it).
---------------------------------------------------------------------------
local user_hooks = setmetatable({}, { __mode = "k" })   -- thread -> {chain, mask, count, f}

-- The kernel's replacements are Lua functions where the originals are C: a
-- user's hook does not see what happens inside them (their lines, their
-- calls), only their own call and return, as for the C originals. From
-- here, level 3 is the function the event is about; an event is internal
-- when it runs in our code, or when the nearest Lua function calling it
-- (past C functions such as pcall) is ours.
local function internal(event)
  local level = event == "line" and 3 or 4
  while true do
    local ar = getinfo(level, "S")
    if not ar then return false end
    if ar.what ~= "C" then return ar.source == OURS end
    level = level + 1
  end
end

local function chain(f, count)
  return function(event, line)
    if event == "count" and (count == 0 or host.interrupted()) then
      return hook(event, line)
    end
    if internal(event) then return end
    return f(event, line)
  end
end

rehook = function(co)
  local u = user_hooks[co]
  if u then
    sethook_on(co, u[1], u[2], u[3])
  else
    sethook_on(co, hook, "", 0)
  end
end

-- The original checks the arguments, on a scratch thread: the user's hook is
-- never registered as such, not even for a moment (it would see our frames).
-- Given no thread, the scratch one shifts the argument numbers by one.
local scratch = cocreate(function() end)
local function check_sethook(...)
  sethook(scratch, ...)                 -- not a tail call: keeps the name
  sethook(scratch)
end

function debug.sethook(...)
  local co, f, mask, count
  if type((...)) == "thread" then co, f, mask, count = ... else
    co = running()
    f, mask, count = ...
  end
  -- the original's argument checks and messages, at the caller's position
  local ok, err
  if type((...)) == "thread" then
    ok, err = pcall(check_sethook, select(2, ...))
  else
    ok, err = pcall(check_sethook, ...)
    if not ok then
      err = sgsub(err, "#(%d+)", function(n) return "#" .. (tointeger(n) - 1) end, 1)
    end
  end
  if not ok then
    -- named as the caller called us; under pcall, by the global name
    local ar = getinfo(1, "n")
    local name = ar and ar.name or "debug.sethook"
    err = sgsub(err, "to 'sethook'", function() return "to '" .. name .. "'" end, 1)
    raise((sgsub(err, "^[^\n]-:%d+: ", "", 1)))
  end
  if f == nil then
    user_hooks[co] = nil
  else
    count = tointeger(count) or 0
    local m = (sfind(mask, "c", 1, true) and "c" or "") .. (sfind(mask, "r", 1, true)
      and "r" or "") .. (sfind(mask, "l", 1, true) and "l" or "")
    user_hooks[co] = { chain(f, count), m, count, f }
  end
  rehook(co)
end

function debug.gethook(co)
  local u = user_hooks[co or running()]
  if u then return u[4], u[2], u[3] end
  if type(co) == "thread" then return gethook(co) end
  return gethook()
end

-- After a cell: an interrupt replaced the registrations of the threads it
-- stopped; the users' hooks come back. Python disarms the main thread after
-- every call (the kernel's own Lua, capture and display, runs hook-free), so
-- a user's hook on the main thread is registered again as each cell starts.
local function rehook_users()
  for co in pairs(user_hooks) do rehook(co) end
end
local main_thread = MAIN

-- An error raised by a hook runs the active message handler with hooks off
-- (ldo.c), so a user's xpcall handler that loops could never be interrupted
-- again. While an interrupt unwinds, user message handlers are skipped.
local real_xpcall = xpcall
local guarded = setmetatable({}, { __mode = "k" })

function _G.xpcall(f, msgh, ...)
  if type(msgh) ~= "function" then
    argerror(2, "function expected, got " .. typename(msgh, select("#", ...) > 0 or msgh ~= nil),
      "xpcall")
  end
  local g = guarded[msgh]
  if not g then
    g = function(e)
      if interrupting then return e end
      return msgh(e)
    end
    guarded[msgh] = g
  end
  return real_xpcall(f, g, ...)
end

-- Watchers: another room (persistence) is told of every thread and file user
-- code makes, from the first line on: M.watch("thread", fn) calls
-- fn(co, f, wrapfn) for each new coroutine (wrapfn: the coroutine.wrap
-- function, else nil); M.watch("file", fn) calls fn(fh, filename, mode) for
-- each file io.open opened. The kernel itself keeps no record of them.
local watchers = { thread = {}, file = {} }

function M.watch(kind, fn)
  local list = watchers[kind]
  list[#list + 1] = fn
end

local function tell(list, a, b, c)
  for i = 1, #list do list[i](a, b, c) end
end
local thread_watchers, file_watchers = watchers.thread, watchers.file

-- Both constructors check their argument like the originals, then register
-- the new thread: its function, and the hook (mask 0) for interrupts.
local function check_function(f, name, given)
  if type(f) ~= "function" then
    argerror(1, "function expected, got " .. typename(f, given), "coroutine." .. name)
  end
end

local function register(co, f, w)
  sethook(co, hook, "", 0)
  tell(thread_watchers, co, f, w)
end

function coroutine.create(...)
  local f = ...
  check_function(f, "create", select("#", ...) > 0)
  local co = cocreate(f)
  register(co, f)
  return co
end

function coroutine.wrap(...)
  local f = ...
  check_function(f, "wrap", select("#", ...) > 0)
  local w = cowrap(f)
  local _, co = getupvalue(w, 1)
  if type(co) == "thread" then
    register(co, f, w)
  end
  return w
end

---------------------------------------------------------------------------
-- Output: print, io.write and the io.stdout/io.stderr objects go to one
-- buffer. It is handed to Python when it grows past 64 KiB, when the stream
-- changes (so stdout and stderr stay in order), at the end of the cell and
-- before reading input. The first piece after a quiet spell (50 ms) goes out
-- at once; otherwise Python is told once that output is pending and arms the
-- hook 50 ms later through lua_sethook (like an interrupt), so the tail of a
-- burst followed by a long computation still shows promptly, and nothing is
-- paid per instruction or per print meanwhile. Where that is not available,
-- a one-shot count hook does the same job.
---------------------------------------------------------------------------
local buf, nbuf, nbytes, bufstream = {}, 0, 0, nil
local last_flush = clock()
local FLUSH_BYTES, FLUSH_SECONDS, TICK_INSTRUCTIONS = 65536, 0.05, 200000

flush = function()
  busy = true
  if nbuf > 0 then
    local text = nbuf == 1 and buf[1] or concat(buf, "", 1, nbuf)
    buf, nbuf, nbytes = {}, 0, 0
    busy = false
    host.emit(bufstream, text)
  end
  busy = false
  last_flush = clock()
end
M.flush = flush

local out
out = function(stream, s)
  if bufstream ~= stream then
    flush()
    bufstream = stream
  end
  busy = true
  buf[nbuf + 1] = s          -- store first: a memory error leaves nbuf right
  nbuf = nbuf + 1
  nbytes = nbytes + #s
  busy = false
  if nbytes >= FLUSH_BYTES then
    flush()
  elseif nbuf == 1 then
    if clock() - last_flush >= FLUSH_SECONDS then
      flush()
    elseif not host.output_pending() and not interrupting and gethook() == nil then
      sethook(hook, "", TICK_INSTRUCTIONS)   -- the tail-flush tick, done in Lua
    end
  end
end

-- With native streams, the io library is Lua's own: io.write, io.stdout:write
-- and io.stderr:write are the C functions writing into FILE*s whose output
-- reaches Python (native.NativeStreams), which gathers it into pieces of up to
-- 64 KiB, in order across the two streams. Only `print` stays ours (Lua's
-- writes to the process's C stdout): it writes into io.stdout with the C
-- method. The first piece after a quiet spell still goes out at once (for
-- print; io.write's within 50 ms); Python arms the hook every 50 ms while a
-- cell runs, and the hook hands the pieces over.
if NATIVE then
  local fh = real_io.stdout
  local cwrite = dgetmetatable(fh).__index.write
  local written = false       -- print wrote since the last flush
  flush = function()
    written = false
    host.flush_output()
    last_flush = clock()
  end
  M.flush = flush
  out = function(_, s)
    cwrite(fh, s)
    if not written then       -- the clock is read once per flush cycle
      written = true
      if clock() - last_flush >= FLUSH_SECONDS then flush() end
    end
  end
end

local function print_packed(args)     -- args: table.pack of print's arguments
  local n = args.n
  if n == 1 then
    out("stdout", tostring(args[1]) .. "\n")
    return
  end
  for i = 1, n do args[i] = tostring(args[i]) end
  out("stdout", concat(args, "\t", 1, n) .. "\n")
end

-- print is a C function, as Lua's is (debug.getinfo says "C", string.dump
-- and debug.upvaluejoin refuse it): a coroutine.wrap closure, whose C
-- function resumes the thread in its upvalue, running print_packed in a
-- loop. While one print runs, the upvalue holds a spare thread, so that a
-- print from inside it (a __tostring, a __gc) runs there. print_packed runs
-- as a __tostring called by tostring, a C call that cannot be yielded
-- across, as C print cannot (string.gsub did the same at twice the cost).
-- An error kills the thread (the spare stays); its position, added by the
-- wrap closure as by luaL_error, is print's caller's (an error raised by a
-- __tostring has its own position natively).
local setupvalue = debug.setupvalue
local spares = {}            -- suspended print threads
local print_args             -- the arguments, for the proxy
local cprint

local print_proxy = setmetatable({}, { __tostring = function()
  print_packed(print_args)
  return ""
end })

-- Every print thread is kept, and Python told of it: an interrupt arms them
-- all, since the walk of running coroutines stops at the spare (native.py).
local print_threads = {}

local function print_thread()
  local co = cocreate(print_loop)
  sethook(co, hook, "", 0)   -- interruptible, like every thread
  print_threads[#print_threads + 1] = co
  host.print_thread(tostring(co))
  return co
end

print_loop = function(...)
  local args = pack(...)
  local me = corunning()
  while true do
    local spare = spares[#spares]
    if spare then spares[#spares] = nil else spare = print_thread() end
    setupvalue(cprint, 1, spare)
    print_args = args
    local ok, err = pcall(tostring, print_proxy)
    if not ok then
      -- the wrap closure adds the caller's position: one position, not two
      if type(err) == "string" then err = sgsub(err, "^[^\n]-:%d+: ", "", 1) end
      error(err, 0)          -- this thread dies; the spare serves the next print
    end
    setupvalue(cprint, 1, me)
    spares[#spares + 1] = spare
    args = pack(coyield())
  end
end

cprint = cowrap(print_loop)
setupvalue(cprint, 1, print_thread())   -- registered for the hook, like the spares
print = cprint

-- The name luaL_argerror falls back on when the call has none (under pcall):
-- the function's global name; a method of the streams has none ("?").
local function global_name(first, name)
  return first == 1 and "io." .. name or "?"
end

-- io.write and file:write accept only strings and numbers, like the
-- originals; `first` is the argument number of the first value (2 after self).
local function write_values(stream, self, first, ...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local tv = type(v)
    if tv == "number" then
      v = sformat(mtype(v) == "integer" and "%d" or "%.14g", v)
    elseif tv ~= "string" then
      argerror(first + i - 1, "string expected, got " .. typename(v, true), global_name(first, "write"))
    end
    out(stream, v)
  end
  return self
end

---------------------------------------------------------------------------
-- Standard streams: io.stdin/io.stdout/io.stderr become objects that behave
-- like file handles (io.type says "file") but talk to the notebook. They are
-- the state's own stdio handles, full userdata like the originals, each given
-- a metatable of its own (Lua keeps one per userdata object): type() says
-- "userdata", rawlen refuses them, tostring shows "file (0x...)". The io
-- library's own functions no longer take them; they are all replaced below.
---------------------------------------------------------------------------
local stream_mt = { __name = "FILE*" }
stream_mt.__index = stream_mt
local is_stream = setmetatable({}, { __mode = "k" })
local stream_name = setmetatable({}, { __mode = "k" })
local dsetmetatable = debug.setmetatable

local function new_stream(name)
  local s = real_io[name]
  if NATIVE then return s end
  dsetmetatable(s, stream_mt)
  is_stream[s] = true
  stream_name[s] = name
  return s
end
stream_mt.__tostring = function(self)
  return sformat("file (%p)", self)
end

local stdin, stdout, stderr = new_stream("stdin"), new_stream("stdout"), new_stream("stderr")
M.stdin, M.stdout, M.stderr = stdin, stdout, stderr

function stream_mt.write(self, ...)
  if self == stdin then return nil, "Bad file descriptor", 9 end
  local r = write_values(stream_name[self], self, 2, ...)   -- not a tail call: errors count levels
  return r
end
function stream_mt.flush(self)
  if self ~= stdin then flush() end
  return self
end
function stream_mt.close()
  return nil, "cannot close standard file"
end
function stream_mt.setvbuf() return true end
function stream_mt.seek() return nil, "Illegal seek", 29 end

-- Input. Lines come from the frontend one at a time (Jupyter's input_request);
-- `pending` holds what was received and not yet consumed, including "\n".
local pending, at_eof = "", false

local function fill(prompt)
  if at_eof then return false end
  flush()
  local ok, line = host.readline(prompt or "")
  if not ok then
    if line == nil then      -- interrupted while waiting for input
      interrupting = true
      error(INTERRUPTED, 0)
    end
    error(line, 0)
  end
  if line == nil then
    at_eof = true
    return false
  end
  pending = pending .. line .. "\n"
  return true
end

local function read_line(keep_nl)
  if pending == "" and not fill() then return nil end
  local nl = sfind(pending, "\n", 1, true)
  local line = ssub(pending, 1, keep_nl and nl or nl - 1)
  pending = ssub(pending, nl + 1)
  return line
end

local function read_number()
  while pending == "" or smatch(pending, "^%s*$") do
    pending = ""
    if not fill() then return nil end
  end
  pending = sgsub(pending, "^%s+", "")
  -- the longest prefix that reads as a numeral, as Lua's reader would take
  local cand = smatch(pending, "^[%+%-]?0[xX][%x%.]*[pP]?[%+%-]?%x*")
            or smatch(pending, "^[%+%-]?[%d%.]*[eE]?[%+%-]?%d*")
  for len = #cand, 1, -1 do
    local v = tonumber(ssub(cand, 1, len))
    if v then
      pending = ssub(pending, len + 1)
      return v
    end
  end
  return nil   -- like Lua: a failed read returns fail
end

local function read_chars(k)
  if k == 0 then
    if pending == "" and not fill() then return nil end
    return ""
  end
  if pending == "" and not fill() then return nil end
  local s = ssub(pending, 1, k)
  pending = ssub(pending, k + 1)
  return s
end

local function read_all()
  -- Jupyter has no end-of-file gesture for a whole text, so "a" returns what
  -- is pending plus one more reply from the frontend.
  if pending == "" then fill() end
  local s = pending
  pending = ""
  return s
end

-- `base`: the argument number of the first format (2 after self)
local function read_formats(base, first, ...)
  local n = select("#", ...) + 1
  local fmts = first == nil and { "l" } or { first, ... }
  if first == nil then n = 1 end
  local results = {}
  for i = 1, n do
    local f = fmts[i]
    local v
    if type(f) == "number" then
      v = read_chars(floor(f))
    else
      if type(f) ~= "string" then
        argerror(base + i - 1, "string expected, got " .. typename(f, true), global_name(base, "read"))
      end
      local c = smatch(f, "^%*?(.)")
      if c == "n" then v = read_number()
      elseif c == "l" then v = read_line(false)
      elseif c == "L" then v = read_line(true)
      elseif c == "a" then v = read_all()
      else argerror(base + i - 1, "invalid format", global_name(base, "read"))
      end
    end
    results[i] = v
    if v == nil then return unpack(results, 1, i) end
  end
  return unpack(results, 1, n)
end

function stream_mt.read(self, ...)
  if self ~= stdin then return nil, "Bad file descriptor", 9 end
  local r = pack(read_formats(2, ...))    -- not a tail call: errors count levels
  return unpack(r, 1, r.n)
end
function stream_mt.lines(self, ...)
  local fmts = pack(...)
  return function()
    return stream_mt.read(self, unpack(fmts, 1, fmts.n))
  end
end

-- io.open tells the file watchers of each file it opened (with its name and
-- mode). The arguments are checked here, with the messages of the original,
-- so errors point at the caller.
local real_open = io.open

local function valid_mode(mode)
  local rest = smatch(mode, "^[rwa]%+?(.*)$")
  return rest ~= nil and smatch(rest, "^b*$") ~= nil
end

local function tracked_open(...)
  local filename, mode = ...
  local tf = type(filename)
  if tf ~= "string" and tf ~= "number" then
    argerror(1, "string expected, got " .. typename(filename, select("#", ...) > 0), "io.open")
  end
  if mode == nil then
    mode = "r"
  elseif type(mode) == "number" then
    mode = tostring(mode)
  elseif type(mode) ~= "string" then
    argerror(2, "string expected, got " .. typename(mode, true), "io.open")
  end
  if not valid_mode(mode) then
    argerror(2, "invalid mode", "io.open")
  end
  filename = tostring(filename)
  local fh, err, code = real_open(filename, mode)
  if fh then tell(file_watchers, fh, filename, mode) end
  return fh, err, code
end
io.open = tracked_open

-- io.input(name) / io.output(name): opened as the originals do, with their
-- message when that fails ("cannot open file 'x' (reason)", at the caller's line).
local function open_checked(name, mode)
  local fh, err = tracked_open(name, mode)
  if not fh then
    raise(sformat("cannot open file '%s' (%s)", name, ssub(err, #name + 3)))
  end
  return fh
end

-- The io library, rerouted through the current default input and output.
local cur_in, cur_out = stdin, stdout

-- A C function's errors name the caller of our wrapper, as they would
-- have named the caller of the original.
local function as_library(ok, ...)
  if not ok then raise((...)) end
  return ...
end

-- what io.output/io.input switch to: a name is opened, a file taken as it is
local function default_file(file, mode, global)
  if type(file) == "string" or type(file) == "number" then
    return open_checked(tostring(file), mode)
  end
  if not (is_stream[file] or real_io.type(file)) then
    argerror(1, "FILE* expected, got " .. typename(file, true), global)
  end
  return file
end

-- io.output(name) and io.input(name) open the file through io.open, so that
-- persistence knows its path (the C functions would fopen it unseen); the
-- C functions then make it the default. Everything else is Lua's own.
if NATIVE then
  function io.output(file)
    if file ~= nil then file = default_file(file, "w", "io.output") end
    return as_library(pcall(real_io.output, file))
  end
  function io.input(file)
    if file ~= nil then file = default_file(file, "r", "io.input") end
    return as_library(pcall(real_io.input, file))
  end
end

if not NATIVE then
  io.stdin, io.stdout, io.stderr = stdin, stdout, stderr

  function io.write(...)
    if cur_out == stdout then
      local r = write_values("stdout", stdout, 1, ...)  -- not a tail call: errors count levels
      return r
    end
    return cur_out:write(...)
  end
  function io.read(...)
    if cur_in == stdin then
      local r = pack(read_formats(1, ...))  -- not a tail call: errors count levels
      return unpack(r, 1, r.n)
    end
    return as_library(pcall(cur_in.read, cur_in, ...))
  end
  function io.output(file)
    if file ~= nil then cur_out = default_file(file, "w", "io.output") end
    return cur_out
  end
  function io.input(file)
    if file ~= nil then cur_in = default_file(file, "r", "io.input") end
    return cur_in
  end
  function io.lines(filename, ...)
    if filename == nil then return cur_in:lines(...) end
    return as_library(pcall(real_io.lines, filename, ...))
  end
  function io.close(file)
    if file == nil then file = cur_out end
    return file:close()
  end
  function io.type(obj)
    if is_stream[obj] then return "file" end
    return real_io.type(obj)
  end
end

---------------------------------------------------------------------------
-- Rich display from Lua: display(value) and display.<kind>(data).
---------------------------------------------------------------------------
local display = {}
local function publish(kind, data, meta)
  flush()
  host.publish(kind, data, meta)
end
for _, kind in ipairs({ "html", "markdown", "svg", "png", "jpeg", "latex", "json", "javascript" }) do
  display[kind] = function(data, meta)
    if kind == "json" then
      if type(data) ~= "table" then
        error("bad argument #1 to 'display.json' (table expected, got " .. type(data) .. ")", 2)
      end
    elseif type(data) ~= "string" then
      error(sformat("bad argument #1 to 'display.%s' (string expected, got %s)", kind, type(data)), 2)
    end
    publish(kind, data, meta)
  end
end
function display.clear(wait)
  publish("clear", wait and true or false)
end
setmetatable(display, {
  __name = "display",
  __tostring = function() return "builtin: display" end,
  __call = function(_, ...)
    flush()
    for i = 1, select("#", ...) do
      host.display_value((select(i, ...)))
    end
  end,
})
_G.display = display
M.display = display

---------------------------------------------------------------------------
-- Cells. A cell runs like a line in the `lua` REPL, shaped for notebooks:
-- `return <cell>` is tried first, so an expression list shows its values; a
-- trailing ";" keeps them quiet; a cell whose last line is an expression or
-- a call after some statements shows its value, as in IPython.
---------------------------------------------------------------------------
local function trailing_semicolon(code)
  return smatch(code, ";%s*$") ~= nil
end

-- A cell's values are returned through an identity function, never by
-- `return <expr>` itself: `return f()` is a tail call, and a traceback from
-- inside f would lose the cell's own line ("(...tail calls...)"). As an
-- argument, f() is an ordinary call from the cell. The closing parenthesis
-- goes on a line of its own (the cell may end in a comment); line numbers
-- stay the same.
local RETURN, CLOSE = "return (function(...) return ... end)(", "\n)"

local function returning(exprs)   -- the quieting `;` cannot stand in an argument list
  return RETURN .. sgsub(exprs, ";%s*$", "") .. CLOSE
end

-- `return` before one of the last lines: the cell's value is its final
-- expression (or call) after some statements. Line numbers stay the same.
-- Both halves must stand on their own: the tail an expression list, the head
-- complete statements; otherwise `return` could land inside a block (before
-- a loop's closing `end`) and change what the code does.
local function return_last(code, chunkname)
  local starts = { 1 }
  for pos in sgmatch(code, "\n()") do starts[#starts + 1] = pos end
  for i = #starts, max(2, #starts - 20), -1 do
    local s = starts[i]
    local head, tail = ssub(code, 1, s - 1), ssub(code, s)
    if load("return " .. tail, "=tail", "t") and load(head, "=head", "t") then
      local g = load(head .. returning(tail), chunkname, "t")
      if g then return g end
    end
  end
end

-- (function, show): show is false when a trailing `;` keeps the values quiet.
-- A chunk's own `return` values show too, as the `lua` REPL prints them.
function M.compile(code, chunkname)
  local show = not trailing_semicolon(code)
  if load("return " .. code, "=expr", "t") then
    local f = load(returning(code), chunkname, "t")
    if f then return f, show end
  end
  local f, err = load(code, chunkname, "t")
  -- A cell ending in an expression (not a statement on its own), or in a
  -- call, shows that value; a call is the only statement that is also an
  -- expression, so this cannot change what valid code does.
  local g = return_last(code, chunkname)
  if g then return g, show end
  if f then return f, show end
  return nil, err
end

-- Where require looks: Python's runtime.module_paths around Lua's defaults.
-- cbefore nil: no C modules in this state (another Lua's C API is the one
-- this process made visible to them; see lua_kernel/runtime.py).
function M.search_paths(before, after, cbefore, cafter)
  package.path = before .. ";" .. package.path .. ";" .. after
  if cbefore then
    package.cpath = cbefore .. ";" .. package.cpath .. ";" .. cafter
  else
    package.cpath = ""
  end
end

-- io.write returns its file: a cell ending in io.write(...) shows nothing.
function M.is_stream(v)
  return v == stdout or v == stderr
end

-- What the cell's error handler records, read by Python after the cell.
local last_error

cell_handler = function(e)
  -- The hook marks this too when it fires on our first instruction; when the
  -- error was raised by the hook itself, this handler runs with hooks off.
  unwinding = true
  local tb = interrupt_where or traceback(nil, 2)
  last_error = { value = e, traceback = tb }
  return e
end

local function message_of(e)
  if type(e) == "string" then return e end
  local mt = getmetatable(e)
  if mt and mt.__tostring then
    local ok, s = pcall(tostring, e)
    if ok and type(s) == "string" then return s end
  end
  if type(e) == "number" then return tostring(e) end
  return sformat("(error object is a %s value)", type(e))
end
M.message_of = message_of

-- Drop the kernel's own frames from a traceback: the machinery at the bottom
-- (this file, the xpcall that runs the cell, the C entry from Python) and the
-- kernel's Lua wrappers (print, io.write, ...) wherever they appear.
local function ours(line)
  return sfind(line, "lua_kernel/", 1, true) ~= nil
end

local function clean_traceback(tb)
  local lines = {}
  for line in sgmatch(tb or "", "[^\n]+") do lines[#lines + 1] = line end
  while #lines > 1 and (ours(lines[#lines]) or sfind(lines[#lines], "^%s*%[C%]: in ")) do
    lines[#lines] = nil
  end
  local kept = {}
  for _, line in ipairs(lines) do
    if not ours(line) then kept[#kept + 1] = line end
  end
  if #kept <= 1 then return "" end   -- only the "stack traceback:" header
  return concat(kept, "\n")
end
M.clean_traceback = clean_traceback

-- Run a compiled cell (or any function, with arguments). Returns true, n,
-- values... or false, kind, message, traceback, value where kind is "error",
-- "interrupt" or "memory".
function M.run(f, ...)
  interrupting, unwinding, interrupt_where, last_error = false, false, nil, nil
  busy = false
  if user_hooks[main_thread] then rehook(main_thread) end
  local r = pack(xpcall(f, cell_handler, ...))
  if interrupting then rehook_users() end
  flush()
  if r[1] then
    return true, r.n - 1, unpack(r, 2, r.n)
  end
  local e = r[2]
  local tb = last_error and last_error.traceback
  local kind = "error"
  if interrupting or rawequal(e, INTERRUPTED) or host.interrupted() then
    kind = "interrupt"
    e = INTERRUPTED
  elseif e == "not enough memory" then
    kind = "memory"
  end
  return false, kind, message_of(e), clean_traceback(tb), e
end

-- text/html for a table: its metatable's __html, else the generic rendering.
function M.html_of(v, repr)
  local mt = dgetmetatable(v)
  local h = type(mt) == "table" and rawget(mt, "__html")
  if h then
    local ok, s = pcall(h, v)
    if ok and type(s) == "string" then return s end
  end
  return repr.html(v)
end

function M.address(v)
  return sformat("%p", v)
end

-- Input state belongs to a cell: a new cell starts with no pending input.
function M.reset_input()
  pending, at_eof = "", false
end

return M
