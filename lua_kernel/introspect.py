"""Completion, inspection and is-complete checks for a `Session`.

Pure functions behind the kernel's `do_complete`, `do_inspect` and
`do_is_complete`:

    complete(session, code, cursor_pos)          -> complete_reply content
    inspect(session, code, cursor_pos, level)    -> inspect_reply content
    is_complete(session, code)                   -> is_complete_reply content
    remember_source(session, chunkname, code)    keep a cell's text for `inspect`

Cursor positions are Unicode code points (Jupyter protocol 5.2+), which are
Python `str` indices.

Nothing here runs user code. Names are resolved in Lua (lua/introspect.lua)
with rawget; a metatable's `__index` is followed only when it is a table, and
no other metamethod is called (`__tostring` only through `session.text` when
showing a plain value). Chains are resolved from the globals: a local variable
of the cell that shadows a global is completed by name, but `x.` and `x:`
resolve the *global* `x` (the cell's locals have no values until it runs).
"""
from __future__ import annotations

import inspect as _pyinspect
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


from .runtime import KEYWORDS, get_runtime, is_python_object, load_lua, lua_type, to_bytes


SOURCE_LINES_BRIEF = 40     # detail_level 0 shows at most this many source lines
TABLE_KEYS_BRIEF = 50       # detail_level 0 lists at most this many table keys
TABLE_KEYS_FULL = 1000      # detail_level 1


# Each runtime's docs are stdlib.json (Lua 5.4) with that runtime's overlay
# laid over it: an overlay entry adds or replaces a name's docs, and null
# removes a name the runtime lacks (so it is never documented there).
OVERLAYS = {"5.4": None, "5.5": "stdlib-5.5.json", "luajit": "stdlib-luajit.json"}


def _read_json(name: str) -> dict:
    return json.loads(resources.files("lua_kernel").joinpath("data", name).read_text("utf-8"))


@lru_cache(maxsize=None)
def _docs_for(key: str) -> dict:
    docs = _read_json("stdlib.json")
    overlay = OVERLAYS[key]
    for name, entry in (_read_json(overlay) if overlay else {}).items():
        if entry is None:
            docs.pop(name, None)
        else:
            docs[name] = entry
    return docs


def stdlib_docs(runtime=None) -> dict:
    """Our docs for a runtime's standard library (Lua 5.4 by default):
    {"string.format": {"signature", "doc"}, ...}, from lua_kernel/data/
    stdlib.json and the runtime's overlay (OVERLAYS)."""
    return _docs_for(get_runtime(runtime).key)


def _lua(session):
    """The session's lua/introspect.lua module, loaded once per Lua runtime
    (Session.reset() makes a new runtime, which gets a new module)."""
    return session.companion("introspect", lambda s: load_lua(
        s.lua, "introspect.lua", s.globals, s.repr_lua))


def remember_source(session, chunkname: str, code: str) -> None:
    """Remember the text of a cell run as chunk `chunkname` (e.g. "In[3]"), so
    that `inspect` can show the source of functions it defines."""
    session.cell_sources[chunkname.removeprefix("=")] = code


# ---------------------------------------------------------------------------
# A small Lua lexer: enough to know where strings, comments and names are.
# ---------------------------------------------------------------------------

@dataclass
class Token:
    kind: str         # "name", "number", "string", "comment", "op"
    text: str
    start: int
    end: int          # exclusive
    closed: bool = True


def _long_bracket(code: str, start: int, m: re.Match, kind: str) -> Token:
    """The long string or comment whose opening bracket `[=*[` m matched."""
    close = "]" + m.group(1) + "]"
    j = code.find(close, m.end())
    if j < 0:
        return Token(kind, code[start:], start, len(code), closed=False)
    return Token(kind, code[start:j + len(close)], start, j + len(close))


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(
    r"0[xX](?:[0-9a-fA-F]*\.?[0-9a-fA-F]*)(?:[pP][+-]?[0-9]+)?"
    r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
)
_LONG_OPEN = re.compile(r"\[(=*)\[")
_OPS = ("...", "..", "::", "<=", ">=", "==", "~=", "<<", ">>", "//")
_SPACE = " \t\r\n\f\v"


def tokenize(code: str) -> list[Token]:
    """Tokens of `code`; an unfinished string or comment is the last token,
    with closed=False. Unknown characters become one-character "op" tokens."""
    toks: list[Token] = []
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if c in _SPACE:
            i += 1
            continue
        if code.startswith("--", i):
            m = _LONG_OPEN.match(code, i + 2)
            if m:
                toks.append(_long_bracket(code, i, m, "comment"))
                if not toks[-1].closed:
                    return toks
                i = toks[-1].end
                continue
            j = code.find("\n", i)
            if j < 0:
                toks.append(Token("comment", code[i:], i, n, closed=False))
                return toks
            toks.append(Token("comment", code[i:j], i, j))
            i = j
            continue
        if c in "\"'":
            j = i + 1
            closed = False
            while j < n:
                d = code[j]
                if d == "\\":
                    j += 2
                    continue
                if d == c:
                    j += 1
                    closed = True
                    break
                if d == "\n":
                    break
                j += 1
            j = min(j, n)
            toks.append(Token("string", code[i:j], i, j, closed=closed))
            if not closed and j >= n:
                return toks
            i = j
            continue
        if c == "[":
            m = _LONG_OPEN.match(code, i)
            if m:
                toks.append(_long_bracket(code, i, m, "string"))
                if not toks[-1].closed:
                    return toks
                i = toks[-1].end
                continue
        if c.isascii() and (c.isalpha() or c == "_"):
            m = _NAME.match(code, i)
            toks.append(Token("name", m.group(), i, m.end()))
            i = m.end()
            continue
        if c.isascii() and (c.isdigit() or (c == "." and i + 1 < n and code[i + 1].isdigit())):
            m = _NUMBER.match(code, i)
            j = m.end()
            while j < n and code[j].isascii() and (code[j].isalnum() or code[j] in "._"):
                j += 1     # Lua reads a malformed numeral as one token too
            toks.append(Token("number", code[i:j], i, j))
            i = j
            continue
        for op in _OPS:
            if code.startswith(op, i):
                toks.append(Token("op", op, i, i + len(op)))
                i += len(op)
                break
        else:
            toks.append(Token("op", c, i, i + 1))
            i += 1
    return toks


def _is_name(tok: Token | None) -> bool:
    return tok is not None and tok.kind == "name" and tok.text not in KEYWORDS


def _code_tokens(code: str) -> tuple[list[Token], Token | None]:
    """Tokens without comments, and the unfinished string/comment at the end."""
    toks = tokenize(code)
    last = toks[-1] if toks and not toks[-1].closed else None
    if last is not None:
        toks = toks[:-1]
    return [t for t in toks if t.kind != "comment"], last


# ---------------------------------------------------------------------------
# Chains: `a.b["c"][1]`, `("abc")`, with an optional final `:name`
# ---------------------------------------------------------------------------

@dataclass
class Chain:
    base: str | None        # None: start at the globals; else a string value
    keys: list              # str or number keys
    text: str               # how to show it: 'a.b["c"]'
    method: bool = False    # the last key was reached with ':'


def _key_text(key) -> str:
    if isinstance(key, str) and _NAME.fullmatch(key) and key not in KEYWORDS:
        return "." + key
    if isinstance(key, str):
        return "[" + json.dumps(key, ensure_ascii=False) + "]"
    return f"[{key}]"


def _literal(L, tok: Token):
    """The value of a closed string or number token (Lua reads it)."""
    if tok.kind == "number" or (tok.kind == "string" and tok.closed):
        return L.literal(tok.text)
    return None


def _chain_ending_at(L, toks: list[Token], j: int) -> Chain | None:
    """The chain of plain indexing whose last token is toks[j], or None."""
    keys: list = []
    while j >= 0:
        t = toks[j]
        if _is_name(t):
            keys.append(t.text)
            if j >= 1 and toks[j - 1].text == ".":
                j -= 2
                continue
            if j >= 1 and toks[j - 1].text == ":":
                return None
            keys.reverse()
            return Chain(None, keys, keys[0] + "".join(_key_text(k) for k in keys[1:]))
        if t.text == "]":
            if j >= 3 and toks[j - 2].text == "[" and toks[j - 1].kind in ("string", "number"):
                key = _literal(L, toks[j - 1])
                if key is None:
                    return None
                keys.append(key)
                j -= 3
                continue
            return None
        if t.text == ")":
            # ("literal"): a parenthesised string, not a call's argument
            if j >= 2 and toks[j - 1].kind == "string" and toks[j - 2].text == "(":
                prev = toks[j - 3] if j >= 3 else None
                if prev is not None and (_is_name(prev) or prev.kind == "string"
                                         or prev.text in (")", "]", "}")):
                    return None
                value = _literal(L, toks[j - 1])
                if value is None:
                    return None
                keys.reverse()
                text = "(" + toks[j - 1].text + ")" + "".join(_key_text(k) for k in keys)
                return Chain(value, keys, text)
            return None
        return None
    return None


def _target_ending_at(L, toks: list[Token], j: int) -> Chain | None:
    """Like _chain_ending_at, but the last name may follow a ':'."""
    if j < 0:
        return None
    if _is_name(toks[j]) and j >= 1 and toks[j - 1].text == ":":
        base = _chain_ending_at(L, toks, j - 2)
        if base is None:
            return None
        name = toks[j].text
        return Chain(base.base, base.keys + [name], base.text + ":" + name, method=True)
    return _chain_ending_at(L, toks, j)


# ---------------------------------------------------------------------------
# Resolving values
# ---------------------------------------------------------------------------

_MISSING = object()


def _py_getattr(obj, key):
    """An attribute without running Python code (no properties, __getattr__)."""
    if not isinstance(key, str):
        return _MISSING
    try:
        return _pyinspect.getattr_static(obj, key)
    except AttributeError:
        return _MISSING


def _resolve(L, base, keys: list):
    """The value the chain names, or _MISSING."""
    result = L.resolve(base, *keys)
    if not isinstance(result, tuple):
        result = (result,)
    status = result[0]
    if status == "ok":
        return result[1]
    if status == "python":
        obj, used = result[1], result[2]
        for key in keys[used:]:
            obj = _py_getattr(obj, key)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def _lua_type(value) -> str:
    t = lua_type(value)
    if t is not None:
        return t
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, (str, bytes)):
        return "string"
    return "python"


def _python_names(obj) -> list[str]:
    names = set()
    try:
        if isinstance(obj, type) or _pyinspect.ismodule(obj):
            names.update(dir(obj))
        else:
            names.update(dir(type(obj)))
            d = _py_getattr(obj, "__dict__")
            if isinstance(d, dict):
                names.update(k for k in d if isinstance(k, str))
    except Exception:  # noqa: BLE001 - a broken __dir__ just gives nothing
        pass
    return [n for n in names if _NAME.fullmatch(n) and n not in KEYWORDS]


# ---------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------

def _cell_locals(toks: list[Token]) -> set[str]:
    """Names declared in the tokens: locals, function names and parameters,
    loop variables. Block scopes are not tracked."""
    names: set[str] = set()
    n = len(toks)

    def name_list(j: int, attribs: bool) -> int:
        while j < n and _is_name(toks[j]):
            names.add(toks[j].text)
            j += 1
            if attribs and j + 2 < n and toks[j].text == "<" and toks[j + 2].text == ">":
                j += 3
            if j < n and toks[j].text == ",":
                j += 1
            else:
                break
        return j

    def params(j: int) -> None:      # toks[j] is "("
        j += 1
        while j < n:
            t = toks[j]
            if _is_name(t):
                names.add(t.text)
            elif t.text not in (",", "..."):
                break
            j += 1

    for i, t in enumerate(toks):
        if t.kind != "name":
            continue
        if t.text == "local":
            if i + 1 < n and toks[i + 1].text == "function":
                if i + 2 < n and _is_name(toks[i + 2]):
                    names.add(toks[i + 2].text)
            else:
                name_list(i + 1, True)
        elif t.text == "function":
            j = i + 1
            if j < n and _is_name(toks[j]):
                if i == 0 or toks[i - 1].text != "local":
                    names.add(toks[j].text)
                j += 1
                while j + 1 < n and toks[j].text in (".", ":") and _is_name(toks[j + 1]):
                    if toks[j].text == ":":
                        names.add("self")
                    j += 2
            if j < n and toks[j].text == "(":
                params(j)
        elif t.text == "for":
            name_list(i + 1, False)
    return names


def complete(session, code: str, cursor_pos: int | None = None) -> dict:
    """complete_reply content for the text before `cursor_pos`."""
    if cursor_pos is None:
        cursor_pos = len(code)
    cursor_pos = max(0, min(cursor_pos, len(code)))
    reply = {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos,
             "metadata": {}, "status": "ok"}
    toks, unfinished = _code_tokens(code[:cursor_pos])
    if unfinished is not None:        # inside a string or a comment
        return reply
    if toks and toks[-1].kind == "number" and toks[-1].end == cursor_pos:
        return reply
    L = _lua(session)
    prefix, start, rest = "", cursor_pos, toks
    if toks and toks[-1].kind == "name" and toks[-1].end == cursor_pos:
        prefix, start, rest = toks[-1].text, toks[-1].start, toks[:-1]

    if rest and rest[-1].text in (".", ":"):
        chain = _chain_ending_at(L, rest, len(rest) - 2)
        if chain is None:
            return reply
        value = _resolve(L, chain.base, chain.keys)
        if value is _MISSING:
            return reply
        if _lua_type(value) == "python":
            candidates = set(_python_names(value))
            if not prefix.startswith("_"):     # Python's private names too
                candidates = {c for c in candidates if not c.startswith("_")}
        else:
            text = L.names(value, rest[-1].text == ":")
            candidates = set(text.split("\n")) if text else set()
    else:
        text = L.names(None, False)
        candidates = set(text.split("\n")) if text else set()
        candidates |= session.runtime.keywords
        candidates |= _cell_locals(rest)

    if not prefix.startswith("_"):
        # metamethods and other dunder keys only when asked for with "_"
        candidates = {c for c in candidates if not c.startswith("__")}
    reply["matches"] = sorted(c for c in candidates if c.startswith(prefix))
    reply["cursor_start"] = start
    return reply


# ---------------------------------------------------------------------------
# Inspection
# ---------------------------------------------------------------------------

def _callee(L, toks: list[Token]) -> Chain | None:
    """The function of the innermost unclosed call `f(` in the tokens."""
    stack: list[int] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for j, t in enumerate(toks):
        if t.kind != "op":
            continue
        if t.text in "([{":
            stack.append(j)
        elif t.text in pairs:
            if stack and toks[stack[-1]].text == pairs[t.text]:
                stack.pop()
    for j in reversed(stack):
        if toks[j].text == "(":
            chain = _target_ending_at(L, toks, j - 1)
            if chain is not None:
                return chain
    return None


def _inspect_target(L, code: str, pos: int) -> Chain | None:
    """The chain to inspect: the name the cursor is in or right after (all of
    it), else the function whose argument list the cursor is in."""
    pos = max(0, min(pos, len(code)))

    def ident(ch: str) -> bool:
        return ch.isascii() and (ch.isalnum() or ch == "_")

    def name_end(i: int) -> int:
        while i < len(code) and ident(code[i]):
            i += 1
        return i

    # in or right after a name: the whole name; else a name starting at the
    # cursor, unless the cursor is right after "(" (then the callee)
    end = pos
    if pos > 0 and ident(code[pos - 1]):
        end = name_end(pos)
    toks, unfinished = _code_tokens(code[:end])
    if unfinished is not None:
        # inside a string argument: the function called; in a comment: nothing
        return None if unfinished.kind == "comment" else _callee(L, toks)
    if end > pos or (toks and toks[-1].end == pos and toks[-1].kind == "name"):
        if toks and _is_name(toks[-1]) and toks[-1].end == end:
            return _target_ending_at(L, toks, len(toks) - 1)
        return _callee(L, toks)
    if toks and toks[-1].text == "(":
        return _callee(L, toks)
    if pos < len(code) and ident(code[pos]) and not code[pos].isdigit():
        end = name_end(pos)
        more, _ = _code_tokens(code[:end])
        if more and _is_name(more[-1]) and more[-1].end == end:
            return _target_ending_at(L, more, len(more) - 1)
    return _callee(L, toks)


def _doc_text(entry: dict) -> str:
    return entry["signature"] + "\n\n" + entry["doc"]


def _stdlib_key(L, docs: dict, chain: Chain, value) -> str | None:
    """The entry of `docs` (the runtime's stdlib docs) documenting `value`,
    reached through `chain`."""
    kind = _lua_type(value)
    if kind in ("function", "table", "userdata"):
        name = L.builtin_name(value)
        if name in docs:
            return name
        return None
    if kind in ("number", "string", "boolean") and chain.base is None and not chain.method:
        path = ".".join(k for k in chain.keys if isinstance(k, str))
        if len(chain.keys) <= 2 and all(isinstance(k, str) for k in chain.keys) and path in docs:
            return path
    return None


def _source_lines(session, source: str, first: int, last: int) -> list[str] | None:
    if first <= 0 or last < first:
        return None
    if source.startswith("="):
        text = session.cell_sources.get(source[1:])
    elif source.startswith("@"):
        try:
            with open(source[1:], encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = None
    else:
        text = source                       # load()ed from a string
    if text is None:
        return None
    lines = text.split("\n")
    if last > len(lines):
        return None
    return lines[first - 1:last]


def _describe_function(session, L, chain: Chain, value, detail_level: int) -> str:
    info = L.func_info(value)
    if not isinstance(info, tuple) or info[0] is None:
        return f"{chain.text}: function\n{session.text(value)}"
    what, source, short_src, first, last, params = info
    if what == "C":
        return f"{chain.text}: builtin function\n{session.text(value)}"
    if what == "main":
        return f"{chain.text}: main chunk of {short_src}"
    head = chain.text
    if chain.method:
        plist = params.split(", ") if params else []
        if plist and plist[0] == "self":
            params = ", ".join(plist[1:])
        else:
            head = chain.text.rsplit(":", 1)[0] + "." + chain.keys[-1]
    lines = [f"function {head}({params})", f"defined at {short_src}:{first}"]
    src = _source_lines(session, to_bytes(source).decode("utf-8", "replace"), first, last)
    if src:
        if detail_level < 1 and len(src) > SOURCE_LINES_BRIEF:
            more = len(src) - SOURCE_LINES_BRIEF
            src = src[:SOURCE_LINES_BRIEF] + [f"-- ... ({more} more lines; inspect again for all)"]
        lines += ["", *src]
    return "\n".join(lines)


def _describe_python(chain: Chain, obj) -> str:
    cls = type(obj)
    lines = [f"{chain.text}: Python object, {cls.__module__}.{cls.__qualname__}"]
    try:
        lines.append(repr(obj))
    except Exception as e:  # noqa: BLE001 - a broken repr should not fail inspect
        lines.append(f"<repr failed: {e!r}>")
    doc = _pyinspect.getdoc(obj)
    if doc:
        lines += ["", doc]
    return "\n".join(lines)


def inspect(session, code: str, cursor_pos: int | None = None, detail_level: int = 0) -> dict:
    """inspect_reply content for the name at or before `cursor_pos` (or the
    function being called when the cursor is inside its argument list)."""
    if cursor_pos is None:
        cursor_pos = len(code)
    reply = {"status": "ok", "found": False, "data": {}, "metadata": {}}
    L = _lua(session)
    chain = _inspect_target(L, code, cursor_pos)
    if chain is None:
        return reply
    value = _resolve(L, chain.base, chain.keys)
    if value is _MISSING or value is None:
        return reply
    text = describe(session, chain, value, detail_level)
    reply["found"] = True
    reply["data"] = {"text/plain": text}
    return reply


def describe(session, chain: Chain, value, detail_level: int = 0) -> str:
    """text/plain for `value`, which `chain` names. detail_level 0 shows at
    most SOURCE_LINES_BRIEF source lines and TABLE_KEYS_BRIEF table keys."""
    L = _lua(session)
    kind = _lua_type(value)
    if kind == "python" or is_python_object(value):
        return _describe_python(chain, value)
    limit = TABLE_KEYS_FULL if detail_level >= 1 else TABLE_KEYS_BRIEF
    docs = stdlib_docs(session.runtime)
    key = _stdlib_key(L, docs, chain, value)
    if key is not None:
        parts = [_doc_text(docs[key])]
        if kind in ("number", "string", "boolean"):
            parts.append(f"{chain.text} = {session.text(value)}")
        elif kind == "table" and "." not in key and ":" not in key:
            parts.append(f"{chain.text}: " + L.table_info(value, limit))
        return "\n\n".join(parts)
    if kind == "function":
        return _describe_function(session, L, chain, value, detail_level)
    if kind == "table":
        return f"{chain.text}: table, " + L.table_info(value, limit)
    if kind == "string":
        n = len(to_bytes(value))
        return f"{chain.text}: string ({n} bytes)\n{session.text(value)}"
    return f"{chain.text}: {kind}\n{session.text(value)}"


# ---------------------------------------------------------------------------
# Is the cell complete?
# ---------------------------------------------------------------------------

_OPENERS = {"function", "do", "then", "repeat", "{", "("}
_CLOSERS = {"end", "until", "elseif", "}", ")"}


def _depth(toks: list[Token]) -> int:
    depth = 0
    for t in toks:
        if t.kind not in ("name", "op"):
            continue
        if t.text in _OPENERS:
            depth += 1
        elif t.text in _CLOSERS:
            depth -= 1
    return max(depth, 0)


def is_complete(session, code: str) -> dict:
    """is_complete_reply content: "complete", "incomplete" (with an indent for
    the next line) or "invalid", as the kernel would compile the cell."""
    stripped = code.strip()
    if not stripped or stripped.startswith("%"):
        return {"status": "complete"}
    compiled = session.compile(code, "cell")
    fn, err = compiled if isinstance(compiled, tuple) else (compiled, None)
    if fn is not None:
        return {"status": "complete"}
    message = str(err or "").rstrip()
    if message.endswith("<eof>") or message.endswith("'<eof>'"):
        toks, unfinished = _code_tokens(code)
        indent = "" if unfinished is not None else "  " * _depth(toks)
        return {"status": "incomplete", "indent": indent}
    return {"status": "invalid"}
