"""Parameters for papermill: `papermill nb.ipynb out.ipynb -k lua -p n 5`.

papermill writes a cell of Lua globals (locals would end with the cell)
with this translator. papermill 2.7 has entry points for engines and I/O
handlers but not for translators, and it loads every engine entry point
when it starts: our `papermill.engine` entry point (pyproject.toml) names
papermill_engine.LuaEngine, and loading that module registers this
translator for the `lua` kernel and language. This module imports nothing
from papermill at load time (papermill imports it while it starts), so it
answers papermill's translator calls itself: translate, codify, inspect.

Values keep their types: integers stay integers, floats stay floats (also
inf, -inf and NaN), strings become quoted Lua literals that hold any
character or byte, None is nil, lists and dicts become tables.
"""
from __future__ import annotations

import math
import re

from .runtime import KEYWORDS

INT64 = (-(1 << 63), (1 << 63) - 1)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_]\w*)\s*=\s*(.*?)\s*(?:--\s*(.*))?$")


class LuaTranslator:
    @classmethod
    def translate(cls, val) -> str:
        if val is None:
            return "nil"
        if isinstance(val, bool):
            return cls.translate_bool(val)
        if isinstance(val, int):
            return cls.translate_int(val)
        if isinstance(val, float):
            return cls.translate_float(val)
        if isinstance(val, dict):
            return cls.translate_dict(val)
        if isinstance(val, (list, tuple)):
            return cls.translate_list(val)
        return cls.translate_str(str(val))

    @classmethod
    def codify(cls, parameters: dict, comment: str = "Parameters") -> str:
        lines = [cls.comment(comment)]
        lines += [f"{name} = {cls.translate(value)}" for name, value in parameters.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def translate_none(cls, val):
        return "nil"

    @classmethod
    def translate_bool(cls, val):
        return "true" if val else "false"

    @classmethod
    def translate_int(cls, val):
        if val == INT64[0]:
            return "math.mininteger"        # 9223372036854775808 alone is a float
        if INT64[0] < val <= INT64[1]:
            return str(val)
        return cls.translate_float(float(val))   # beyond Lua's integers

    @classmethod
    def translate_float(cls, val):
        if math.isnan(val):
            return "(0/0)"
        if math.isinf(val):
            return "math.huge" if val > 0 else "-math.huge"
        return repr(val)                     # round-trips exactly, and reads as a float

    @classmethod
    def translate_str(cls, val):
        out = []
        for ch in val:
            code = ord(ch)
            if ch in _ESCAPES:
                out.append(_ESCAPES[ch])
            elif 0xDC80 <= code <= 0xDCFF:      # a byte that is not UTF-8 (surrogateescape)
                out.append(f"\\{code - 0xDC00:03d}")
            elif code < 32 or code == 127:
                out.append(f"\\{code:03d}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    @classmethod
    def translate_list(cls, val):
        return "{" + ", ".join(cls.translate(v) for v in val) + "}"

    @classmethod
    def translate_dict(cls, val):
        return "{" + ", ".join(f"{cls._key(k)} = {cls.translate(v)}" for k, v in val.items()) + "}"

    @classmethod
    def _key(cls, key) -> str:
        if isinstance(key, str) and _NAME.match(key) and key not in KEYWORDS:
            return key
        return f"[{cls.translate(key)}]"

    @classmethod
    def comment(cls, cmt_str):
        return f"-- {cmt_str}".strip()

    @classmethod
    def inspect(cls, parameters_cell):
        """The globals a parameters cell assigns, one per line
        (`name = value -- help`)."""
        from papermill.models import Parameter

        params = []
        for line in parameters_cell["source"].splitlines():
            found = _ASSIGNMENT.match(line)
            if found and found.group(1) not in KEYWORDS:
                name, value, help_ = found.groups()
                params.append(Parameter(name=name, inferred_type_name=_type_of(value),
                                        default=value, help=help_ or ""))
        return params


def _type_of(text: str) -> str:
    if text == "nil":
        return "NoneType"
    if text in ("true", "false"):
        return "boolean"
    if re.fullmatch(r"-?\d+", text):
        return "integer"
    if re.fullmatch(r"-?[\d.]+(?:[eE][-+]?\d+)?|-?math\.huge|\(0/0\)", text):
        return "float"
    if text[:1] in "\"'[":
        return "string"
    if text.startswith("{"):
        return "table"
    return "None"

