-- Interactive widgets from Lua: the `widgets` module over ipywidgets.
--
-- Loaded once per Lua state by lua_kernel/widgets.py, after session.lua and
-- before the serializer takes its baseline, with `host` (Python callbacks,
-- below) and `kernel` (session.lua's module: flush, display, INTERRUPTED,
-- message_of, clean_traceback). Returns M, whose `module` is the global
-- `widgets`.
--
-- A widget is a proxy table: its raw fields are `_ref` (the Python handle,
-- widgets.py's Ref), `_class`, and the Lua callbacks `_observers` and
-- `_clicks`; everything else (w.value, w.description, w:close(), ...) goes
-- to the ipywidgets object through the metatable. Keeping the callbacks in
-- Lua means a snapshot saves them with the proxy, and they work again on the
-- widget recreated at restore.
--
-- Callbacks never run inside a Python call. Python queues what happened (a
-- trait change, a click) and whoever called Python runs the queue: the
-- metamethods below right after `host.set` / `host.call` return (so
-- `w.value = 9` in a cell runs the observers before the next statement, as
-- in IPython), and the kernel after a frontend message (each event through
-- Session.call, the interruptible path a cell takes).
--
-- host (Python, widgets.py's WidgetHost):
--   host.new(class, opts)          -> true, proxy | false, message
--   host.get(p, name)              -> "value", v | "method" | false, message
--   host.set(p, name, value)       -> true | false, message
--   host.call(p, name, ...)        -> true, results... | false, message
--   host.observed(p), host.clicked(p)   Python starts queueing for p
--   host.take()                    -> the next queued event, or nil
--   host.repr(p)                   -> text
--   host.capture_begin(p)          -> the Output's previous msg_id
--   host.capture_end(p, previous)
--   host.show_error(message, traceback)   a callback's error, shown
local host, kernel = ...

local M = {}

local type, rawget, rawset, rawequal, select, error = type, rawget, rawset, rawequal, select, error
local setmetatable, ipairs, pairs, next = setmetatable, ipairs, pairs, next
local xpcall = xpcall            -- the kernel's: interrupts pass through it
local dgetmt, getinfo, getlocal, traceback = debug.getmetatable, debug.getinfo, debug.getlocal,
  debug.traceback
local pack = table.pack or function(...) return { n = select("#", ...), ... } end  -- LuaJIT
local unpack = table.unpack or unpack
local sformat = string.format
local mtype = math.type or function(x)    -- LuaJIT: doubles only; integral means integer
  return type(x) == "number" and (x == math.floor(x) and "integer" or "float") or nil
end

local Widget = { __name = "widget" }   -- the metatable of every proxy
local methods = {}                      -- Lua methods of every widget
-- model id -> proxy. Strong, as ipywidgets keeps every widget until it is
-- closed; reachable from a permanent table, so a snapshot saves it (as the
-- delta of that table) and a restored proxy is found again by its id.
local REGISTRY = {}
local run_captured, call   -- below

local function is_widget(v)
  return type(v) == "table" and rawequal(dgetmt(v), Widget)
end
M.is_widget = is_widget

local function check_widget(p, fname)
  if not is_widget(p) then
    error(sformat("bad self to '%s' (widget expected, got %s); call it with ':'", fname, type(p)), 3)
  end
end

---------------------------------------------------------------------------
-- Events: run the queue.
---------------------------------------------------------------------------
local function copy(list)
  local c = {}
  for i = 1, #list do c[i] = list[i] end
  return c
end

-- One event (a table made by Python): its observers or click handlers.
function M.run_event(ev)
  local p = ev.widget
  if ev.kind == "change" then
    local list = rawget(p, "_observers")
    if not list then return end
    local change = ev.change
    for _, o in ipairs(copy(list)) do
      if o.names == true or o.names[change.name] then o.fn(change) end
    end
  elseif ev.kind == "click" then
    local list = rawget(p, "_clicks")
    if not list then return end
    for _, fn in ipairs(copy(list)) do fn(p) end
  end
end

local function drain()
  local ev = host.take()
  while ev ~= nil do
    M.run_event(ev)
    ev = host.take()
  end
end

local function checked(ok, ...)
  if not ok then error((...), 3) end
  return ...
end

---------------------------------------------------------------------------
-- Proxies
---------------------------------------------------------------------------

-- The proxy of a model id: the registered one, or a new one for `ref`.
function M.proxy_for(id, ref, class)
  local p = REGISTRY[id]
  if p == nil then
    p = setmetatable({ _ref = ref, _class = class }, Widget)
    REGISTRY[id] = p
  end
  return p
end

function M.forget(id) REGISTRY[id] = nil end
function M.registered(id) return REGISTRY[id] end

function call(p, k, ...)
  local r = pack(host.call(p, k, ...))
  if not r[1] then error(r[2], 3) end
  drain()
  return unpack(r, 2, r.n)
end

Widget.__index = function(p, k)
  local m = methods[k]
  if m ~= nil then return m end
  local kind, v = host.get(p, k)
  if kind == "value" then return v end
  if kind == "method" then
    return function(self, ...)
      if rawequal(self, p) then return call(p, k, ...) end
      return call(p, k, self, ...)
    end
  end
  error(v, 2)
end

Widget.__newindex = function(p, k, v)
  checked(host.set(p, k, v))
  drain()
end

Widget.__tostring = function(p) return host.repr(p) end

-- Run fn(...) with its output going to the Output widget p.
function run_captured(p, fn, clear, wait, ...)
  kernel.flush()
  local previous = host.capture_begin(p)
  if clear then kernel.display.clear(wait) end
  local tb
  local r = pack(xpcall(fn, function(e)
    tb = traceback(nil, 2)
    return e
  end, ...))
  if not r[1] and not rawequal(r[2], kernel.INTERRUPTED) then
    kernel.flush()
    -- the kernel's xpcall is a C call through its upvalue: not the user's
    tb = kernel.clean_traceback(tb):gsub("\n%s*%[C%]: in upvalue 'real_xpcall'", "")
    host.show_error(kernel.message_of(r[2]), tb)
  end
  kernel.flush()
  host.capture_end(p, previous)
  if not r[1] then
    if rawequal(r[2], kernel.INTERRUPTED) then error(r[2], 0) end
    return
  end
  return unpack(r, 2, r.n)
end

---------------------------------------------------------------------------
-- Methods
---------------------------------------------------------------------------

-- w:observe(fn [, names]): fn(change) after each change of the named traits
-- (a name or a list of names; all traits when omitted); change.name,
-- change.old, change.new, change.owner (the widget), change.type.
function methods.observe(p, fn, names)
  check_widget(p, "observe")
  if type(fn) ~= "function" and not (dgetmt(fn) or {}).__call then
    error("bad argument #1 to 'observe' (function expected, got " .. type(fn) .. ")", 2)
  end
  local set = true
  if type(names) == "string" then
    set = { [names] = true }
  elseif type(names) == "table" then
    set = {}
    for _, n in ipairs(names) do set[n] = true end
  elseif names ~= nil then
    error("bad argument #2 to 'observe' (name or list of names expected, got " .. type(names) .. ")", 2)
  end
  local list = rawget(p, "_observers")
  if not list then
    list = {}
    rawset(p, "_observers", list)
  end
  list[#list + 1] = { fn = fn, names = set }
  host.observed(p)
end

-- w:unobserve(fn [, names]); w:unobserve() removes every observer.
function methods.unobserve(p, fn, names)
  check_widget(p, "unobserve")
  local list = rawget(p, "_observers")
  if not list then return end
  local kept = {}
  for _, o in ipairs(list) do
    local match = fn == nil or rawequal(o.fn, fn)
    if match and names ~= nil and o.names ~= true then
      local n = type(names) == "string" and { names } or names
      for _, name in ipairs(n) do o.names[name] = nil end
      match = next(o.names) == nil
    end
    if not match then kept[#kept + 1] = o end
  end
  rawset(p, "_observers", kept)
end

-- button:on_click(fn): fn(button) on each click; on_click(fn, true) removes it.
function methods.on_click(p, fn, remove)
  check_widget(p, "on_click")
  if rawget(p, "_class") ~= "Button" then
    error("on_click: only a Button has clicks (this is a " .. tostring(rawget(p, "_class")) .. ")", 2)
  end
  local list = rawget(p, "_clicks") or {}
  rawset(p, "_clicks", list)
  if remove then
    for i = #list, 1, -1 do
      if rawequal(list[i], fn) then table.remove(list, i) end
    end
    return
  end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'on_click' (function expected, got " .. type(fn) .. ")", 2)
  end
  list[#list + 1] = fn
  host.clicked(p)
end

local function check_output(p, fname)
  check_widget(p, fname)
  if rawget(p, "_class") ~= "Output" then
    error(fname .. ": only an Output widget captures output (this is a "
      .. tostring(rawget(p, "_class")) .. ")", 3)
  end
end

-- out:capture(fn [, {clear_output = true, wait = true}]) -> a function that
-- runs fn with everything it prints or displays (and its error, as a
-- traceback) going to `out`: ipywidgets' @out.capture(). Call the result
-- right away to capture now: out:capture(function() ... end)().
function methods.capture(p, fn, opts)
  check_output(p, "capture")
  if type(fn) ~= "function" then
    error("bad argument #1 to 'capture' (function expected, got " .. type(fn) .. ")", 2)
  end
  local clear = type(opts) == "table" and opts.clear_output and true or false
  local wait = type(opts) == "table" and opts.wait and true or false
  -- run_captured is a permanent, so the closure can be saved; not a tail
  -- call, so a traceback keeps the caller's line
  return function(...)
    local r = pack(run_captured(p, fn, clear, wait, ...))
    return unpack(r, 1, r.n)
  end
end

-- out:clear_output([wait]): clear what `out` shows.
function methods.clear_output(p, wait)
  check_output(p, "clear_output")
  methods.capture(p, function() kernel.display.clear(wait) end)()
  checked(host.set(p, "outputs", {}))
end

function methods.close(p)
  check_widget(p, "close")
  call(p, "close")
end

-- w:display(): the same as display(w)
function methods.display(p)
  check_widget(p, "display")
  kernel.display(p)
end

---------------------------------------------------------------------------
-- The module
---------------------------------------------------------------------------
local widgets = {}

local function new(class, opts)
  return checked(host.new(class, opts))
end

-- Every widget class of ipywidgets 8 (tests/test_widgets.py checks the list).
local CLASSES = {
  "Accordion", "AppLayout", "Audio", "BoundedFloatText", "BoundedIntText", "Box", "Button",
  "ButtonStyle", "Checkbox", "ColorPicker", "ColorsInput", "Combobox", "Controller",
  "DatePicker", "DatetimePicker", "Dropdown", "FileUpload", "FloatLogSlider", "FloatProgress",
  "FloatRangeSlider", "FloatSlider", "FloatText", "FloatsInput", "GridBox", "HBox", "HTML",
  "HTMLMath", "Image", "IntProgress", "IntRangeSlider", "IntSlider", "IntText", "IntsInput",
  "Label", "Layout", "NaiveDatetimePicker", "Output", "Password", "Play", "RadioButtons",
  "Select", "SelectMultiple", "SelectionRangeSlider", "SelectionSlider", "SliderStyle", "Stack",
  "Tab", "TagsInput", "Text", "Textarea", "TimePicker", "ToggleButton", "ToggleButtons",
  "ToggleButtonsStyle", "TwoByTwoLayout", "VBox", "Valid", "Video",
}
M.CLASSES = CLASSES
for _, class in ipairs(CLASSES) do
  local fname = "widgets." .. class
  widgets[class] = function(opts, ...)
    if rawequal(opts, widgets) then
      error("call " .. fname .. " with '.', not ':'", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error(sformat("bad argument #1 to '%s' (table of options expected, got %s)", fname, type(opts)), 2)
    end
    return checked(host.new(class, opts or {}))
  end
end

local FIXED = { __name = "widgets.fixed" }
-- widgets.fixed(v): an argument of interact that gets no control.
function widgets.fixed(v) return setmetatable({ value = v }, FIXED) end

local function all_numbers(t, n)
  for i = 1, n do
    if type(t[i]) ~= "number" then return false end
  end
  return true
end

-- A control for one parameter of interact, from its abbreviation, as
-- ipywidgets' interact reads them: {min, max [, step]} a slider (integers:
-- IntSlider, else FloatSlider), a number a slider around it, a string a Text,
-- a boolean a Checkbox, another list a Dropdown, a widget itself.
local function control_for(name, spec)
  if is_widget(spec) then return spec end
  local t = type(spec)
  if t == "boolean" then return new("Checkbox", { value = spec, description = name }) end
  if t == "string" then return new("Text", { value = spec, description = name }) end
  if t == "number" then
    local lo, hi
    if spec > 0 then lo, hi = -spec, 3 * spec elseif spec < 0 then lo, hi = 3 * spec, -spec
    else lo, hi = 0, 1 end
    local class = mtype(spec) == "integer" and "IntSlider" or "FloatSlider"
    return new(class, { value = spec, min = lo, max = hi, description = name })
  end
  if t == "table" then
    local n = #spec
    if (n == 2 or n == 3) and all_numbers(spec, n) then
      local lo, hi, step = spec[1], spec[2], spec[3]
      if mtype(lo) == "integer" and mtype(hi) == "integer" and (step == nil or mtype(step) == "integer") then
        step = step or 1
        local value = lo + math.floor((hi - lo) / (2 * step)) * step
        return new("IntSlider", { min = lo, max = hi, step = step, value = value, description = name })
      end
      step = step or (hi - lo) / 100
      return new("FloatSlider", { min = lo, max = hi, step = step, value = (lo + hi) / 2,
                                  description = name })
    end
    if n > 0 then return new("Dropdown", { options = spec, description = name }) end
  end
  error(sformat("interact: no control can be made for '%s' from %s", name, tostring(spec)), 3)
end

-- widgets.interactive(fn, {name = abbreviation, ...}) -> a VBox of controls
-- (one per parameter of fn that the table names, in parameter order) and an
-- Output at the end; fn runs now and again after each change, its output
-- replacing the last. widgets.interact(...) shows it.
function widgets.interactive(fn, spec)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'interactive' (function expected, got " .. type(fn) .. ")", 2)
  end
  spec = spec or {}
  if type(spec) ~= "table" then
    error("bad argument #2 to 'interactive' (table expected, got " .. type(spec) .. ")", 2)
  end
  local params, index = {}, {}
  local info = getinfo(fn, "u")
  for i = 1, info.nparams do
    params[i] = getlocal(fn, i)
    index[params[i]] = i
  end
  for k in pairs(spec) do
    if not index[k] then
      error(sformat("interact: the function has no parameter named %s", tostring(k)), 2)
    end
  end
  local controls, fixed, children = {}, {}, {}
  for i, name in ipairs(params) do
    local s = spec[name]
    if rawequal(dgetmt(s), FIXED) then
      fixed[i] = s
    elseif s ~= nil then
      local c = control_for(name, s)
      controls[i] = c
      children[#children + 1] = c
    end
  end
  local out = new("Output", {})
  children[#children + 1] = out
  local box = new("VBox", { children = children })
  local display = kernel.display   -- a permanent (_G.display): the closures can be saved
  local run = methods.capture(out, function()
    local args = {}
    for i = 1, #params do
      if fixed[i] then args[i] = fixed[i].value
      elseif controls[i] then args[i] = controls[i].value end
    end
    local r = pack(fn(unpack(args, 1, #params)))
    if r.n > 0 and r[1] ~= nil then display(unpack(r, 1, r.n)) end
  end, { clear_output = true, wait = true })
  for _, c in pairs(controls) do
    methods.observe(c, function() run() end, "value")
  end
  run()
  return box
end

function widgets.interact(fn, spec)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'interact' (function expected, got " .. type(fn) .. ")", 2)
  end
  kernel.display(widgets.interactive(fn, spec))
end

-- Hidden from `widgets.` completion, reachable for the serializer's
-- baseline, so they are permanents (saved by name): the proxies' metatable,
-- the registry (saved as its delta), and every function of this file that a
-- closure made at run time refers to (a saved closure's upvalues must be
-- user data or permanents).
setmetatable(widgets, {
  __name = "widgets",
  __tostring = function() return "builtin: widgets (ipywidgets from Lua)" end,
  proxy = Widget,
  registry = REGISTRY,
  fixed = FIXED,
  methods = methods,
  run_captured = run_captured,
  call = call,
})

_G.widgets = widgets
M.module = widgets
return M
