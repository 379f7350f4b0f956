"""Interactive widgets from Lua: ipywidgets models, Lua callbacks.

The Lua half (`lua/widgets.lua`) is the `widgets` module users see; this is
its host: it makes the ipywidgets objects, converts values both ways, and
queues what the frontend does (trait changes, clicks) for Lua to run.

    host = WidgetHost(session)       # once per Lua state (Session._start)
    host.run_events()                # after a frontend message: the callbacks
    host.bundle(value)               # a widget's MIME bundle, or None

Callbacks never run inside a Python call: a Python observer only queues,
and the Lua side, or the kernel through `Session.call`, runs the queue. So
every callback runs on the Lua thread, in order, one at a time, and is
interrupted like a cell.

Persistence: a widget held by Lua is a proxy table holding a `Ref`; a
snapshot pickles the Ref as the widget's class and state (its traits,
widgets among them as Refs), and a restored Ref makes a new model from them
the first time Lua touches the widget. The Lua callbacks live in the proxy
table and come back with it.

The kernel connects it to Jupyter: `install_comms(kernel)` gives ipywidgets
ipykernel's comms, and FRONTEND tells the message being answered (Output
capture) and shows a callback's error.
"""
from __future__ import annotations

import importlib
import inspect
import uuid
import weakref
from typing import Any, Callable

from .runtime import load_lua, lua_type, methods_table

# Classes whose list part of the options table is their children / options.
BOXES = {"Box", "HBox", "VBox", "GridBox", "Accordion", "Tab", "Stack"}
CHOICES = {"Dropdown", "RadioButtons", "Select", "SelectMultiple", "ToggleButtons",
           "SelectionSlider", "SelectionRangeSlider", "Combobox"}


class Frontend:
    """What the widgets need from the kernel; the defaults serve a Session
    without one (no capture, errors on the session's stderr)."""

    def __init__(self):
        self.parent: Callable[[], dict | None] = lambda: None
        self.show_error: Callable[[Any, Exception], None] = _print_error


def _print_error(session, error) -> None:
    session.stderr(f"{error}\n")


FRONTEND = Frontend()


def install_comms(kernel):
    """ipykernel's comm manager for our kernel, with the widget targets.
    ipywidgets makes its comms through the `comm` package, whose defaults
    do nothing outside IPython's kernel; ipywidgets is imported only when a
    frontend opens a widget comm or Lua makes a widget."""
    import comm
    from ipykernel.comm import CommManager
    from ipykernel.comm.comm import BaseComm

    manager = CommManager(kernel=kernel)
    comm.create_comm = BaseComm
    comm.get_comm_manager = lambda: manager

    def target(name):
        def opened(comm_, msg):
            from ipywidgets import Widget
            return getattr(Widget, name)(comm_, msg)
        return opened

    manager.register_target("jupyter.widget", target("handle_comm_opened"))
    manager.register_target("jupyter.widget.control", target("handle_control_comm_opened"))
    return manager


def _widget_class(name: str):
    import ipywidgets
    cls = getattr(ipywidgets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ipywidgets.Widget)):
        raise ValueError(f"ipywidgets has no widget class {name}")
    return cls


class Ref:
    """A widget as Lua holds it. Pickles as (id, class, state); unpickled it
    has no widget until `live` makes one."""

    def __init__(self, widget=None, spec=None, id: str | None = None):
        self.widget = widget
        self.spec = spec                 # (module, class name, state) of a restored one
        self.id = id or uuid.uuid4().hex
        self.proxy = None                # the Lua proxy table
        self.host: WidgetHost | None = None
        self.observed = False            # Lua observes it: queue its changes
        self.clicked = False             # Lua handles its clicks

    def __reduce__(self):
        if self.widget is None:
            return (_revive, (self.id, *self.spec))
        cls = type(self.widget)
        return (_revive, (self.id, cls.__module__, cls.__qualname__, _state_of(self.widget)))

    def live(self, host: WidgetHost):
        """The widget, made now if this Ref came from a snapshot."""
        if self.widget is None:
            module, name, state = self.spec
            cls = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
            widget = cls(**{k: _resolve(v, host) for k, v in state.items()})
            host.adopt(self, widget)
        elif self.host is not host:
            host.own(self)
        return self.widget

    def changed(self, change) -> None:
        if self.observed and self.host is not None:
            self.host.events.append(("change", self, change))

    def click(self, _button) -> None:
        if self.clicked and self.host is not None:
            self.host.events.append(("click", self, None))


def _revive(id: str, module: str, name: str, state: dict) -> Ref:
    return Ref(spec=(module, name, state), id=id)


# id(widget) -> its Ref. The widget keeps its Ref alive (the Ref observes
# it), so an entry lives exactly as long as its widget.
_REFS: weakref.WeakValueDictionary[int, Ref] = weakref.WeakValueDictionary()


def _tie(ref: Ref, widget) -> None:
    _REFS[id(widget)] = ref
    widget.observe(ref.changed)


def _ref_of(widget) -> Ref:
    ref = _REFS.get(id(widget))
    if ref is None or ref.widget is not widget:
        ref = Ref(widget)
        _tie(ref, widget)
    return ref


def _saved(value):
    """A trait's value as it is pickled: widgets as their Refs."""
    from ipywidgets import Widget
    if isinstance(value, Widget):
        return _ref_of(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_saved(v) for v in value)
    return value


_NO_DEFAULT = object()
_DEFAULTS: dict[tuple[type, str], Any] = {}


def _default(widget, key: str):
    """The class's default of a trait (cached), or _NO_DEFAULT."""
    cache = (type(widget), key)
    if cache not in _DEFAULTS:
        try:
            _DEFAULTS[cache] = widget.trait_defaults(key)
        except Exception:  # noqa: BLE001 - no usable default: the value is always saved
            _DEFAULTS[cache] = _NO_DEFAULT
    return _DEFAULTS[cache]


def _differs(value, default) -> bool:
    if default is _NO_DEFAULT:
        return True
    try:
        return bool(value != default)
    except Exception:  # noqa: BLE001 - values that do not compare are saved
        return True


def _state_of(widget) -> dict:
    """What recreates the widget: its synced traits that differ from the
    class's defaults (not the model's bookkeeping, not an Output's capture
    id); a selection's options and index stand for its value and label.
    Widget-valued traits (layout, style, children) are always kept."""
    from ipywidgets import Widget
    from ipywidgets.widgets.widget_selection import _MultipleSelection, _Selection
    keys = [k for k in widget.keys
            if (not k.startswith("_") or k == "_dom_classes") and k != "msg_id"]
    if isinstance(widget, (_Selection, _MultipleSelection)):
        keys = [k for k in keys if k not in ("value", "label")] + ["options"]
    state = {}
    for k in keys:
        value = getattr(widget, k)
        if isinstance(value, Widget) or _differs(value, _default(widget, k)):
            state[k] = _saved(value)
    return state


def _resolve(value, host):
    if isinstance(value, Ref):
        return value.live(host)
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, host) for v in value)
    return value


class WidgetHost:
    """The Python half of one Lua state's `widgets` module."""

    def __init__(self, session):
        self._session = weakref.ref(session)   # the session owns this host
        self.lua = session.lua
        self.events: list[tuple[str, Ref, Any]] = []
        self._refs: weakref.WeakSet[Ref] = weakref.WeakSet()
        weakref.finalize(session, self.release)
        host = methods_table(self.lua, self, {
            name: "_" + name for name in ("new", "get", "set", "call", "observed", "clicked",
                                          "take", "repr", "capture_begin", "capture_end",
                                          "show_error")})
        self.lua_side = load_lua(self.lua, "widgets.lua", host, session.lua_side)
        self._rawget = self.lua.eval("rawget")

    @property
    def session(self):
        return self._session()

    # -- for the kernel and the session ------------------------------------

    def run_events(self) -> None:
        """Run the Lua callbacks of what the frontend did, each as a cell
        runs (Session.call: interruptible, output flushed). An error is
        shown and the next callback runs; an interrupt drops the rest."""
        from .session import LuaError, LuaInterrupt
        while self.events:
            event = self.events.pop(0)
            try:
                self.session.call(self.lua_side.run_event, self._event(event))
            except LuaInterrupt as e:
                self.events.clear()
                FRONTEND.show_error(self.session, e)
            except LuaError as e:
                FRONTEND.show_error(self.session, e)

    def is_widget(self, value) -> bool:
        return lua_type(value) == "table" and bool(self.lua_side.is_widget(value))

    def bundle(self, value) -> tuple[dict, dict] | None:
        """The MIME bundle showing a widget (a widget view), or None."""
        if not self.is_widget(value):
            return None
        widget = self._live(value)
        data = widget._repr_mimebundle_()
        if isinstance(data, tuple):
            return data[0], data[1] or {}
        return data, {}

    def adopt(self, ref: Ref, widget) -> None:
        """Tie a widget to its Ref and this host: its changes and clicks are
        queued once Lua asks for them."""
        ref.widget, ref.spec = widget, None
        self.own(ref)
        _tie(ref, widget)
        if hasattr(widget, "on_click"):
            widget.on_click(ref.click)
        if ref.proxy is None:       # restored: its proxy (and callbacks) may be in Lua
            p = self.lua_side.registered(ref.id)
            if p is not None:
                self._bind(ref, p)

    def own(self, ref: Ref) -> None:
        """This host now answers for the Ref (its events come here)."""
        ref.host = self
        self._refs.add(ref)

    def release(self) -> None:
        """The session or its Lua state is gone: the Refs this host answers
        for, which ipywidgets keeps as long as their widgets (its registry,
        observers), let go of this host and of their Lua proxies, and this
        host of its Lua state, so that nothing keeps the state alive. The
        widgets stay as they are on the page, their events go nowhere."""
        for ref in list(self._refs):
            if ref.host is self:
                ref.host = ref.proxy = None
        self._refs.clear()
        self.lua = self.lua_side = self._rawget = None

    def _bind(self, ref: Ref, p) -> None:
        ref.proxy = p
        self.own(ref)
        ref.observed = ref.observed or self._rawget(p, "_observers") is not None
        ref.clicked = ref.clicked or self._rawget(p, "_clicks") is not None

    # -- values both ways --------------------------------------------------

    def to_lua(self, value):
        from ipywidgets import Widget
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        if isinstance(value, Widget):
            return self._proxy(_ref_of(value))
        if isinstance(value, (list, tuple)):
            return self.lua.table_from([self.to_lua(v) for v in value])
        if isinstance(value, dict):
            return self.lua.table_from({k: self.to_lua(v) for k, v in value.items()})
        return value

    def from_lua(self, value):
        if lua_type(value) != "table":
            return value
        if self.lua_side.is_widget(value):
            return self._live(value)
        items = list(value.items())
        n = len(items)
        if all(type(k) is int for k, _ in items) and {k for k, _ in items} == set(range(1, n + 1)):
            return [self.from_lua(value[i]) for i in range(1, n + 1)]
        return {k: self.from_lua(v) for k, v in items}

    def _proxy(self, ref: Ref):
        if ref.proxy is None:
            self._bind(ref, self.lua_side.proxy_for(ref.id, ref, type(ref.widget).__name__))
        return ref.proxy

    def _live(self, p):
        ref = self._rawget(p, "_ref")
        if ref.widget is None:
            ref.proxy = None
            ref.live(self)          # restored: a new model now
        if ref.proxy is None or ref.host is not self:
            self._bind(ref, p)
        return ref.widget

    def _options(self, class_name: str, opts) -> dict:
        positional, named = [], {}
        for k, v in opts.items():
            if type(k) is int:
                positional.append((k, v))
            else:
                named[str(k)] = v
        kwargs = {k: self.from_lua(v) for k, v in named.items()}
        if positional:
            items = [self.from_lua(v) for _, v in sorted(positional)]
            field = "children" if class_name in BOXES else "options" if class_name in CHOICES \
                else None
            if field is None:
                raise ValueError(f"widgets.{class_name} takes a table of named options "
                                 f"({{min = 0, max = 10, ...}})")
            if field in kwargs:
                raise ValueError(f"widgets.{class_name}: give {field} as the list part or "
                                 f"as '{field} = ...', not both")
            kwargs[field] = items
        if "options" in kwargs:
            kwargs["options"] = _choices(kwargs["options"])
        if "children" in kwargs and isinstance(kwargs["children"], dict):
            raise ValueError(f"widgets.{class_name}: children must be a list of widgets")
        return kwargs

    # -- the host functions Lua calls --------------------------------------

    def _new(self, class_name: str, opts):
        try:
            cls = _widget_class(class_name)
            widget = cls(**self._options(class_name, opts))
        except Exception as e:  # noqa: BLE001 - becomes the Lua error of the constructor
            return False, f"widgets.{class_name}: {_message(e)}"
        ref = Ref(widget)
        self.adopt(ref, widget)
        return True, self._proxy(ref)

    def _get(self, p, name):
        widget = self._live(p)
        name = str(name)
        if name.startswith("__"):
            return False, f"{type(widget).__name__} has no field '{name}'"
        try:
            value = getattr(widget, name)
        except AttributeError:
            return False, f"{type(widget).__name__} has no field '{name}'"
        except Exception as e:  # noqa: BLE001 - a property that fails: a Lua error
            return False, _message(e)
        if inspect.ismethod(value) or inspect.isbuiltin(value):
            return "method", None
        return "value", self.to_lua(value)

    def _set(self, p, name, value):
        widget = self._live(p)
        name = str(name)
        if not widget.has_trait(name):
            return False, f"{type(widget).__name__} has no field '{name}'"
        try:
            value = self.from_lua(value)
            if name == "options":
                value = _choices(value)
            elif name == "children" and isinstance(value, list):
                value = tuple(value)
            setattr(widget, name, value)
        except Exception as e:  # noqa: BLE001 - a value the trait refuses: a Lua error
            return False, _message(e)
        return (True,)

    def _call(self, p, name, *args):
        widget = self._live(p)
        try:
            result = getattr(widget, str(name))(*[self.from_lua(a) for a in args])
        except Exception as e:  # noqa: BLE001 - the method's error becomes a Lua error
            return False, f"{name}: {_message(e)}"
        if name == "close":
            self.lua_side.forget(_ref_of(widget).id)
        return True, self.to_lua(result)

    def _observed(self, p) -> None:
        self._live(p)
        self._rawget(p, "_ref").observed = True

    def _clicked(self, p) -> None:
        self._live(p)
        self._rawget(p, "_ref").clicked = True

    def _event(self, event):
        kind, ref, change = event
        table = {"kind": kind, "widget": self._proxy(ref)}
        if change is not None:
            table["change"] = self.lua.table_from({
                "name": change["name"], "old": self.to_lua(change["old"]),
                "new": self.to_lua(change["new"]), "owner": table["widget"],
                "type": change["type"]})
        return self.lua.table_from(table)

    def _take(self):
        if not self.events:
            return None
        return self._event(self.events.pop(0))

    def _repr(self, p) -> str:
        return repr(self._live(p))

    def _capture_begin(self, p) -> str:
        widget = self._live(p)
        previous = widget.msg_id
        parent = FRONTEND.parent()
        if parent and parent.get("header"):
            widget.msg_id = parent["header"]["msg_id"]
        return previous

    def _capture_end(self, p, previous) -> None:
        self._live(p).msg_id = previous or ""

    def _show_error(self, message, traceback) -> None:
        from .session import LuaError
        FRONTEND.show_error(self.session, LuaError(str(message), str(traceback or "")))


def _choices(options):
    """Options as ipywidgets takes them: a list of values or of (label,
    value) pairs; a Lua table of label = value becomes pairs by label."""
    if isinstance(options, dict):
        return [(str(k), v) for k, v in sorted(options.items(), key=lambda kv: str(kv[0]))]
    if isinstance(options, list):
        return [tuple(o) if isinstance(o, list) and len(o) == 2 else o for o in options]
    return options


def _message(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
