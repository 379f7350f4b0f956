"""Python objects held by Lua (lupa wrappers, Python callables) through dill.

The Lua serializer calls `pickle_many` once per snapshot with every Python
object it found, so references shared between them stay shared; an object
that cannot be pickled is reported by its index and left out (it is restored
as nil), without sinking the others. Nothing here raises: failures come back
as reasons, e.g. "socket object cannot be pickled: TypeError: cannot pickle
'socket' object".
"""
from __future__ import annotations

import dill

PROTOCOL = dill.HIGHEST_PROTOCOL


def _reason(obj, e: BaseException) -> str:
    return f"{type(obj).__name__} object cannot be pickled: {type(e).__name__}: {e}"


def pickle(obj) -> tuple[bool, bytes | str]:
    """(True, bytes) or (False, reason)."""
    try:
        return True, dill.dumps(obj, protocol=PROTOCOL, recurse=True)
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False, _reason(obj, e)


def unpickle(data: bytes) -> tuple[bool, object]:
    """(True, object) or (False, reason)."""
    try:
        return True, dill.loads(data)
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return False, f"cannot be unpickled: {type(e).__name__}: {e}"


def pickle_many(objs: list) -> tuple[bytes, dict[int, str]]:
    """One pickle of the list (None where an object cannot be pickled) and
    {index: reason} for those. Pickled together, objects that share parts
    keep sharing them."""
    ok, data = pickle(list(objs))
    if ok:
        return data, {}
    failures: dict[int, str] = {}
    kept = []
    for i, obj in enumerate(objs):
        ok, reason = pickle(obj)
        if ok:
            kept.append(obj)
        else:
            failures[i] = reason
            kept.append(None)
    ok, data = pickle(kept)
    if not ok:   # fine one by one, not together: keep none rather than guess
        failures = {i: failures.get(i, f"cannot be pickled with the others: {data}")
                    for i in range(len(objs))}
        data = pickle([None] * len(objs))[1]
    return data, failures


def unpickle_many(data: bytes) -> tuple[bool, list | str]:
    """(True, list) or (False, reason)."""
    ok, objs = unpickle(data)
    if ok and not isinstance(objs, list):
        return False, "the Python objects record is not a list"
    return ok, objs
