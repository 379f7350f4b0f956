"""Bodies written by older serializers still restore: the fixtures of
tests/data/formats/ (made by make.py there, which says how) hold every kind
of value, in format versions 1, 2 and 3, and each must come back with the
right values in a fresh session."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from lua_kernel.persist import new_session
from lua_kernel.persist import state

FORMATS = Path(__file__).resolve().parent / "data" / "formats"
_spec = importlib.util.spec_from_file_location("formats_make", FORMATS / "make.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)


def same(got, want) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return got == want and type(got) is type(want)


@pytest.mark.parametrize("name", sorted(make.SETUPS))
def test_old_format_body_restores_every_kind(name):
    body = (FORMATS / f"{name}.bin").read_bytes()
    assert body[8:12] == int(name[1:]).to_bytes(4, "little")
    Path(make.FILE_PATH).write_text(make.FILE_TEXT)
    s = new_session()
    assert state.apply(s, body) == []
    for code, want in make.CHECKS[name]:
        got = s.execute(code)
        assert len(got) == len(want) and all(map(same, got, want)), (code, got, want)


def test_the_fixtures_are_what_make_py_describes():
    """The checks are not vacuous: a body made now from the same setup passes them too."""
    Path(make.FILE_PATH).write_text(make.FILE_TEXT)
    s = new_session()
    assert state.apply(s, make.make("v3")) == []
    for code, want in make.CHECKS["v3"]:
        got = s.execute(code)
        assert len(got) == len(want) and all(map(same, got, want)), (code, got, want)


def test_a_malformed_object_is_named_in_the_error():
    """Restore errors say which object was being made: its number and kind."""
    import struct

    s = new_session()
    s.execute("function f() return 1 end")
    body, issues, _ = state.capture(s)
    assert issues == []
    head, secs = make.sections(body)
    h = secs[2]                                   # the headers: one chunk
    (count,) = struct.unpack_from("<q", h, 0)
    width = h[8]
    fmt = "<" + ("i" if width == 4 else "q") * count
    H = list(struct.unpack_from(fmt, h, 9))
    i = 0
    while H[i] != 4:                              # LFUNC proto: a string code...
        i += {1: 1, 2: 2, 3: 2, 5: 3, 6: 2, 7: 1, 8: 5, 9: 3, 10: 3}[H[i]]
    H[i + 1] = 7 * 8 + 3                          # ...made an integer
    secs[2] = h[:9] + struct.pack(fmt, *H)
    bad = head + b"".join(struct.pack("<q", len(x)) + x for x in secs)
    with pytest.raises(ValueError, match=r"string expected in header \(object \d+, Lua function\)"):
        state.apply(new_session(), bad)
