"""The saved program counters of a suspended coroutine's Lua frames.

The debug library shows everything about a suspended frame except where,
exactly, it will continue: `currentline` is a line, and a line may hold many
instructions. Lua keeps the exact place in the frame record,
`CallInfo.u.l.savedpc`, a pointer one past the instruction the frame is
waiting on (the call that led to `coroutine.yield`). We read it, and the
prototype it points into, from this process's memory through
/proc/self/mem (`native.MEMORY`), where a wrong address is an error and never
a crash, using the struct layout of the Lua (5.4.8 or 5.5.1) the session runs
(native.py; 5.5 differs in `CallInfo.callstatus` only, native.CALLSTATUS).

    pcs = saved_pcs(session, co)     # [FramePC(level, pc, line, method), ...]
    answer = saved_pcs_many(session, batch, tables)   # snapshots: bytes in, out
    tbc_slots(thread), ci_states(thread)   # frames.lua: pending to-be-closed
                                           # slots, CallInfo status and nres

A snapshot (persist/lua/frames.lua) asks only about the frames whose own
bytecode does not pin the pc down (see "inferred" below: when exactly one
instruction fits, reading could only confirm it), for all the coroutines it
has found so far in one call.

Nothing read is believed unless the debug library agrees with it. The walk
of the thread's CallInfo list must pair, level by level, with what
`debug.getinfo` reports (a Lua closure where it sees a Lua function, a C
function where it sees one, `coroutine.yield` at level 0, the list ending
where the levels end). Then, for each Lua frame:

* the closure in the frame's stack slot is the function `getinfo` reports;
* the pc lies inside the prototype's code;
* the line of the pending instruction, as `luaG_getfuncline` computes it
  (bytecode.lua's `line_of`, the package's one reader of line information,
  on the function's dump: the self-check holds it to the code in memory),
  is `getinfo`'s `currentline`;
* the pending instruction is what the called frame says it is: a call
  (`OP_CALL`, `OP_TAILCALL`) when the callee's `namewhat` names a variable,
  `OP_TFORCALL` for a "for iterator", something else for a "metamethod"
  (an empty `namewhat`, for a tail-called callee, allows any of these);
* for a call, the slots `debug.getlocal` shows are exactly the registers
  below the called function: A for `OP_CALL`/`OP_TAILCALL` (the callee sits
  in R[A]) and A + 4 for `OP_TFORCALL` (it copies the iterator to R[A+4]).
  (`luaG_findlocal` shows temporaries up to the next frame's function slot;
  a vararg Lua callee moved its slot up by 1 + nparams + #varargs when it
  started, `luaT_adjustvarargs`, which is subtracted first.)

A frame that fails any check is *inferred* instead, from the function's own
bytecode (`string.dump`, read by persist/lua/bytecode.lua): the call-like instructions on
`currentline` whose register shape matches. Exactly one → that one, method
"inferred"; none or several → FramePeekError naming the function and line.
Never a silent guess.

Self-check: at first use in a process, `self_check` suspends coroutines
whose pcs are known from their bytecode (1 to 3 Lua frames deep, one under
`pcall`, a `for ... in` iterator, a tail call) and requires the reader to
find exactly those pcs by reading, and the code it reads to equal what
`string.dump` says. If it does not, the reader is switched
off for the rest of the process and every pc is inferred.

Tests move `savedpc_offset` (the offset of `CallInfo.u.l.savedpc` the
reader uses) to prove that a reader reading wrong values refuses rather than
guesses; `reset_self_check()` forgets the cached self-check result, so the
next use checks again.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..native import (CALLSTATUS, CI_FUNC, CI_PREVIOUS, CI_SAVEDPC, CI_SIZE,
                      CI_U2, L_CI, L_STACK, L_TBCLIST, LCL_P, MAXDELTA, MEMORY, STACKVALUE_SIZE,
                      TBC_DELTA, P_CODE, P_HEADER, P_SIZEABSLINEINFO, P_SIZECODE,
                      P_SIZELINEINFO, TAG_CCL, TAG_LCF, TAG_LCL, library)
from ..runtime import load_lua, module_of, new_runtime, to_bytes

LUA_FILE = "persist/lua/framepeek.lua"
COMPANION = "persist.framepeek"   # the Lua half, as a Session companion
savedpc_offset = CI_SAVEDPC     # see the module's docstring

MAX_CODE = 1 << 26       # no real prototype is bigger; bounds every read
MAX_LEVELS = 1 << 20

def _opcodes(*names: str) -> tuple[int, ...]:
    """Opcode numbers from bytecode.lua's table (lopcodes.h's order, checked
    against lopnames.h by the tests): the package's one list of them."""
    ops = load_lua(new_runtime(), "persist/lua/bytecode.lua").OP
    return tuple(int(ops[name]) for name in names)


OP_CALL, OP_TAILCALL, OP_TFORCALL = _opcodes("CALL", "TAILCALL", "TFORCALL")
CALLS = (OP_CALL, OP_TAILCALL)


def opcode(inst: int) -> int:
    return inst & 0x7F


def arg_a(inst: int) -> int:
    return (inst >> 7) & 0xFF


@dataclass
class FramePC:
    """Where one suspended Lua frame continues.

    level   the frame's level for debug.getinfo(co, level) (level 0 is
            coroutine.yield, 1 the frame that called it, ...; C frames such
            as pcall have levels too, but no FramePC)
    pc      the 0-based index, in the prototype's code, of the next
            instruction to run: savedpc - code, in instructions. The pending
            instruction (the call in progress) is code[pc - 1], and
            pc - 1 is what Lua's ldebug.c calls `currentpc`.
    line    the line of the pending instruction, code[pc - 1]
            (= debug.getinfo(co, level, "l").currentline)
    method  "read" (from the frame record, every check passed) or
            "inferred" (from the line and register layout)
    """

    level: int
    pc: int
    line: int
    method: str


class FramePeekError(Exception):
    """The pcs of this coroutine cannot be known for certain."""


# -- prototypes: code from memory or from a dump; lines from bytecode.lua --------

def dumped_code(helper, func) -> list[int]:
    """func's instructions as `string.dump` gives them, read by bytecode.lua;
    ValueError if they cannot be had."""
    p, err = _pair(helper.proto(func))
    if p is None:
        raise ValueError(str(err or "no bytecode"))
    return [p.code[i] for i in range(1, len(p.code) + 1)]


def line_of(helper, func, pc: int) -> int | None:
    """The line of func's instruction pc (1-based), as luaG_getfuncline
    computes it: bytecode.lua's line_of, through framepeek.lua (-1 when func
    has no line information, as `currentline`); None if unknown."""
    line = helper.line_of(func, pc)
    return None if line is None else int(line)


def _int(data: bytes, offset: int) -> int:
    return struct.unpack_from("<i", data, offset)[0]


def _ptr(data: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]


def read_code(addr: int) -> tuple[list[int], int] | None:
    """(instructions, address of the first) of the Proto at addr, read from
    memory; None when they cannot be read or it does not look like a Proto."""
    head = MEMORY.read(addr, P_HEADER)
    if head is None:
        return None
    sizecode, sizeli = _int(head, P_SIZECODE), _int(head, P_SIZELINEINFO)
    sizeabs = _int(head, P_SIZEABSLINEINFO)
    code_at = _ptr(head, P_CODE)
    if not (0 < sizecode <= MAX_CODE and sizeli in (0, sizecode) and 0 <= sizeabs <= sizecode):
        return None
    raw = MEMORY.read(code_at, 4 * sizecode)
    if raw is None:
        return None
    return list(struct.unpack(f"<{sizecode}I", raw)), code_at


# -- what each pending instruction must look like -------------------------------

CALL_LIKE = CALLS + (OP_TFORCALL,)
NOT_CALLS = ("metamethod", "hook")


def _call_kinds(callee_namewhat: str) -> tuple[int, ...]:
    """The call-like opcodes the pending instruction may have, from how the
    debug library names the frame it called."""
    if callee_namewhat == "for iterator":
        return (OP_TFORCALL,)
    if callee_namewhat in NOT_CALLS:
        return ()
    if callee_namewhat:
        return CALLS
    return CALL_LIKE    # "": a tail call, or a callee the debug library cannot name


# OP_TFORCALL calls R[A + this]: 5.4 copies the iterator to R[A+4], 5.5
# (whose loop has one slot less) to R[A+3]
TFORCALL_FN = {"5.4": 4, "5.5": 3}


def version_of(helper) -> str:
    """The Lua of the state the helper (framepeek.lua) was loaded in."""
    return "5.5" if int(helper.VERSION) == 0x55 else "5.4"


def _call_fits(inst: int, nslots: int, tfor_fn: int = 4) -> bool:
    """The frame is making this call: the visible slots end where the
    callee's function slot begins (`nslots` net of the callee's shift)."""
    op = opcode(inst)
    if op in CALLS:
        return nslots == arg_a(inst)
    if op == OP_TFORCALL:
        return nslots == arg_a(inst) + tfor_fn
    return False


def _nslots(rec, level: int) -> int:
    """The registers of frame `level` below the function slot of the call it
    is making: the visible slots, less the callee's vararg shift."""
    return rec[level].nslots - rec[level - 1].shift


# -- reading the frame records --------------------------------------------------

def _thread_address(address: int) -> int:
    """The lua_State* of the record (tests replace this)."""
    return address


def _savedpc_offset() -> int:
    return savedpc_offset


def _walk(rec, cs=CALLSTATUS["5.4"]) -> list[tuple[int, bytes]] | None:
    """(address, bytes) of the CallInfo of each level 0 .. n-1, if the list
    in memory pairs with what the debug library reports; None otherwise."""
    n = rec.n
    if not 0 < n <= MAX_LEVELS:
        return None
    ci = MEMORY.pointer(_thread_address(rec.thread) + L_CI)
    out = []
    for level in range(n):
        data = MEMORY.read(ci, CI_SIZE) if ci else None
        if data is None:
            return None
        slot = MEMORY.tvalue(_ptr(data, CI_FUNC))
        if slot is None:
            return None
        value, tag = slot
        is_c = bool(cs.read(data) & cs.cist_c)
        if is_c != (rec[level].what == "C"):
            return None
        if tag not in ((TAG_LCF, TAG_CCL) if is_c else (TAG_LCL,)):
            return None
        if level == 0 and not (tag == TAG_LCF and value == rec.yield_):
            return None
        if tag == TAG_LCL and value != rec[level].fp:
            return None     # the closure in the slot is the function getinfo reports
        out.append((ci, data))
        ci = _ptr(data, CI_PREVIOUS)
    # below level n-1 is only the thread's base CallInfo, which has no previous
    if not ci or MEMORY.pointer(ci + CI_PREVIOUS) != 0:
        return None
    return out


class _Cache:
    """What one batch of reads can share (the collector is stopped while a
    snapshot is taken, so addresses are stable): code read from memory by
    closure address, and the outcome of the checks, which depend
    only on the closure, the saved pc and what the debug library reports."""

    def __init__(self, helper):
        self.helper = helper
        self._by_closure: dict[int, tuple[list[int], int] | None] = {}
        self.checked: dict[tuple, FramePC | None] = {}
        self.savedpc_at = _savedpc_offset()
        self.version = version_of(helper)
        self.tfor_fn = TFORCALL_FN[self.version]

    def code(self, closure: int) -> tuple[list[int], int] | None:
        if closure not in self._by_closure:
            proto_at = MEMORY.pointer(closure + LCL_P)
            self._by_closure[closure] = read_code(proto_at) if proto_at else None
        return self._by_closure[closure]


def _read_frame(walked: tuple[int, bytes], rec, level: int, cache: _Cache) -> FramePC | None:
    """The frame's pc as its record says, if every check passes."""
    frame = rec[level]
    savedpc = _ptr(walked[1], cache.savedpc_at)
    key = (frame.fp, savedpc, frame.line, rec[level - 1].namewhat, _nslots(rec, level))
    if key not in cache.checked:
        got = _check_frame(cache, rec, level, cache.code(frame.fp), savedpc)
        cache.checked[key] = got and got.pc
    pc = cache.checked[key]
    return FramePC(level, pc, frame.line, "read") if pc is not None else None


def _check_frame(cache: _Cache, rec, level: int, got, savedpc: int) -> FramePC | None:
    helper, frame = cache.helper, rec[level]
    if got is None:
        return None
    code, code_at = got
    offset = savedpc - code_at
    if offset % 4:
        return None
    pc = offset // 4
    if not 0 < pc <= len(code):
        return None
    line = line_of(helper, rec.func(level), pc)
    if line is None or line != frame.line:
        return None
    inst = code[pc - 1]
    namewhat = rec[level - 1].namewhat
    if opcode(inst) in CALL_LIKE:
        if (opcode(inst) not in _call_kinds(namewhat)
                or not _call_fits(inst, _nslots(rec, level), cache.tfor_fn)):
            return None
    elif namewhat not in NOT_CALLS + ("",):
        return None     # a metamethod or the like, but the callee says it was called
    return FramePC(level, pc, line, "read")


# -- inferring ------------------------------------------------------------------

def _infer(helper, rec, level: int) -> FramePC:
    frame = rec[level]
    where = f"function {rec.src(level)}:{frame.linedefined}, line {frame.line}"
    func = rec.func(level)
    try:
        code = dumped_code(helper, func)
    except ValueError as e:
        raise FramePeekError(f"cannot read the bytecode of {where}: {e}") from None
    kinds = _call_kinds(rec[level - 1].namewhat)
    if not kinds:
        raise FramePeekError(
            f"cannot locate the suspended instruction in {where}: it is waiting "
            f"on a {rec[level - 1].namewhat}, which only the frame record shows")
    nslots, tfor_fn = _nslots(rec, level), TFORCALL_FN[version_of(helper)]
    found = [i + 1 for i, inst in enumerate(code)
             if opcode(inst) in kinds and _call_fits(inst, nslots, tfor_fn)
             and line_of(helper, func, i + 1) == frame.line]
    if len(found) != 1:
        what = "no call" if not found else f"{len(found)} calls"
        raise FramePeekError(
            f"cannot locate the suspended call in {where}: {what} on that line "
            f"fit the frame's registers ({nslots} below the callee)")
    return FramePC(level, found[0], frame.line, "inferred")


# -- the interface --------------------------------------------------------------

def _helper(session):
    """The Lua half, made by persist/state.py's attach with the serializer's
    permanents (the original standard functions) and the finisher's
    prototypes: the reader works on sessions persistence follows."""
    try:
        return session.companion(COMPANION)
    except LookupError:
        raise FramePeekError("the saved-pc reader needs a session made by "
                             "lua_kernel.persist.new_session()") from None


@dataclass
class _Level:
    what: str
    fp: int           # the function's address ("%p")
    line: int
    linedefined: int
    namewhat: str
    nslots: int
    shift: int


NAMEWHATS = ("", "global", "local", "method", "field", "upvalue", "constant",
             "metamethod", "for iterator", "hook")    # framepeek.lua's framepeek.pack codes
WHATS = ("Lua", "C", "main")
HEAD = struct.Struct("<qqI")
LEVEL = struct.Struct("<BqiiBii")


class _Record:
    """A suspended coroutine's levels, from the bytes of framepeek.lua's
    framepeek.pack; `table` is the Lua record (for the functions and
    sources, when inferring)."""

    def __init__(self, data: bytes, table):
        self._table = table
        self.thread, self.yield_, self.n = HEAD.unpack_from(data, 0)
        if len(data) != HEAD.size + self.n * LEVEL.size:
            raise FramePeekError("malformed frame record")
        self.levels = [_Level(WHATS[what], fp, line, ld, NAMEWHATS[nw], nslots, shift)
                       for what, fp, line, ld, nw, nslots, shift
                       in LEVEL.iter_unpack(data[HEAD.size:])]

    def __getitem__(self, level: int) -> _Level:
        return self.levels[level]

    def func(self, level: int):
        return self._table[level].func

    def src(self, level: int) -> str:
        return str(self._table[level].src)


def _frame_pcs(helper, rec: _Record, read: bool, cache: _Cache,
               wanted=None) -> list[FramePC]:
    """The pcs of the record's Lua levels (those in `wanted`, default all)."""
    walked = _walk(rec, CALLSTATUS[cache.version]) if read and MEMORY.available else None
    out = []
    for level in range(1, rec.n):
        if rec[level].what == "C" or (wanted is not None and level not in wanted):
            continue
        got = _read_frame(walked[level], rec, level, cache) if walked else None
        out.append(got or _infer(helper, rec, level))
    return out


def _record(helper, co, collect: bool = False):
    table, reason = _pair(helper.frames(co, collect))
    if table is None:
        raise FramePeekError(str(reason))
    return _Record(to_bytes(helper.pack(table)), table), table


def _pair(result):
    if isinstance(result, tuple):
        return (result + (None, None))[:2]
    return result, None


def saved_pcs(session, co) -> list[FramePC]:
    """The pcs of the Lua frames of `co`, a suspended coroutine (a Lua thread
    from `session`, or a `coroutine.wrap` function), outermost last.
    FramePeekError when it is not suspended in `coroutine.yield` (not
    started, dead, running) or when a frame's pc cannot be known for sure."""
    helper = _helper(session)
    rec, _ = _record(helper, co)
    return _frame_pcs(helper, rec, self_check(session), _Cache(helper))


U32 = struct.Struct("<I")


def saved_pcs_many(session, batch: bytes, tables) -> bytes:
    """For snapshots: the pcs of many coroutines at once, in and out as
    bytes (one crossing each way). `batch` holds, per coroutine: I4 size and
    framepeek.lua's framepeek.pack of its record (tables[i + 1] is that record),
    I4 k and k i4 levels whose pcs are needed. The answer holds, per
    coroutine: B 0, I4 k and k pairs (i4 level, i4 pc); or B 1 and s4 the
    reason the pcs cannot be known."""
    helper = _helper(session)
    read = self_check(session)
    cache = _Cache(helper)
    out = []
    pos, i = 0, 0
    while pos < len(batch):
        (size,) = U32.unpack_from(batch, pos)
        data = batch[pos + 4:pos + 4 + size]
        pos += 4 + size
        (k,) = U32.unpack_from(batch, pos)
        wanted = set(struct.unpack_from(f"<{k}i", batch, pos + 4))
        pos += 4 + 4 * k
        i += 1
        try:
            pcs = _frame_pcs(helper, _Record(data, tables[i]), read, cache, wanted)
        except FramePeekError as e:
            text = str(e).encode("utf-8", "surrogateescape")
            out.append(struct.pack("<BI", 1, len(text)) + text)
            continue
        out.append(struct.pack(f"<BI{2 * len(pcs)}i", 0, len(pcs),
                               *[x for f in pcs for x in (f.level, f.pc)]))
    return b"".join(out)


def ci_states(thread: int, cs=CALLSTATUS["5.4"]) -> bytes | None:
    """Per level of a thread, innermost first, the low 16 bits of its
    CallInfo's `callstatus` (H: CIST_RECST, bits 10-12 in 5.4, 12-14 in
    5.5, is the error a pcall is recovering from while it closes
    variables) and `u2` (i4: nres while a Lua frame closes variables in
    OP_RETURN), as bytes; None if the memory cannot be read. `cs`: the
    Lua's CallStatus (native.CALLSTATUS)."""
    ci = MEMORY.pointer(thread + L_CI)
    out = []
    while ci:
        previous = MEMORY.pointer(ci + CI_PREVIOUS)
        data = MEMORY.read(ci + CI_U2, cs.offset + cs.size - CI_U2)
        if previous is None or data is None or len(out) > MAX_LEVELS:
            return None
        if previous == 0:             # base_ci: not a level
            break
        (u2,) = struct.unpack_from("<i", data, 0)
        out.append(struct.pack("<Hi", cs.read(data, CI_U2) & 0xFFFF, u2))
        ci = previous
    return b"".join(out)


def readers(session):
    """frames.lua's readers of a thread for the session's Lua: tbc_slots
    (the same in 5.4 and 5.5), ci_states, and in 5.5, where a coroutine can
    die by an error at its base level (closing itself), which the debug
    library cannot see, the runtime's errored and copy_error
    (native.LuaLibrary)."""
    version = version_of(_helper(session))
    cs = CALLSTATUS[version]
    api = library(module_of(session.lua))
    if version == "5.4":
        return tbc_slots, lambda thread: ci_states(thread, cs), None, None
    return tbc_slots, lambda thread: ci_states(thread, cs), api.errored, api.copy_error


def tbc_slots(thread: int) -> bytes | None:
    """Where the pending to-be-closed variables of a thread are, outermost
    first, as i4 pairs (level, n) for `debug.getlocal(co, level, n)`; None if
    the memory cannot be read. The list is lua_State.tbclist: the innermost
    variable's slot, each slot's `delta` back to the one before it, dummy
    nodes (delta 0) bridging gaps of MAXDELTA (lfunc.c, luaF_newtbcupval and
    poptbclist); a slot belongs to the innermost frame whose function slot
    is below it, and is that frame's local n = slot - func. The caller
    checks every answer with the debug library."""
    stack = MEMORY.pointer(thread + L_STACK)
    tbc = MEMORY.pointer(thread + L_TBCLIST)
    ci = MEMORY.pointer(thread + L_CI)
    if stack is None or tbc is None or ci is None:
        return None
    funcs = []                        # function slot of each level, innermost first
    while ci:
        previous = MEMORY.pointer(ci + CI_PREVIOUS)
        if previous is None:
            return None
        if previous == 0:             # base_ci: not a level
            break
        func = MEMORY.pointer(ci + CI_FUNC)
        if func is None or len(funcs) > MAX_LEVELS:
            return None
        funcs.append(func)
        ci = previous
    slots = []
    while tbc > stack:
        if len(slots) > MAX_LEVELS:
            return None
        data = MEMORY.read(tbc + TBC_DELTA, 2)
        if data is None:
            return None
        (delta,) = struct.unpack("<H", data)
        if delta == 0:                # a dummy node
            tbc -= MAXDELTA * STACKVALUE_SIZE
            continue
        level = next((i for i, f in enumerate(funcs) if f < tbc), None)
        if level is None:
            return None
        slots.append((level, (tbc - funcs[level]) // STACKVALUE_SIZE))
        tbc -= delta * STACKVALUE_SIZE
    slots.reverse()
    return struct.pack(f"<{2 * len(slots)}i", *[x for s in slots for x in s])


_self_check_result: dict[str, bool] | None = None    # by Lua version


def reset_self_check() -> None:
    """Forget the self-check's results (tests)."""
    global _self_check_result
    _self_check_result = None


def self_check(session) -> bool:
    """True when the reader finds the known pcs of sample coroutines by
    reading; computed once per process and Lua version."""
    global _self_check_result
    if _self_check_result is None:
        _self_check_result = {}
    version = version_of(_helper(session))
    if version not in _self_check_result:
        _self_check_result[version] = _run_self_check(session)
    return _self_check_result[version]


def _run_self_check(session) -> bool:
    if not MEMORY.available:
        return False
    helper = _helper(session)
    try:
        samples = helper.samples()
        for i in range(1, len(samples) + 1):
            try:
                rec, _ = _record(helper, samples[i])
            except FramePeekError:
                return False
            cache = _Cache(helper)
            walked = _walk(rec, CALLSTATUS[cache.version])
            if walked is None:
                return False
            for level in range(1, rec.n):
                if rec[level].what == "C":
                    continue
                got = _read_frame(walked[level], rec, level, cache)
                expected = _expected_pc(helper, rec.func(level))
                if got is None or expected is None or got.pc != expected:
                    return False
                # the code read from memory is the one Lua dumps
                closure = MEMORY.tvalue(_ptr(walked[level][1], CI_FUNC))[0]
                mem = read_code(MEMORY.pointer(closure + LCL_P))
                if mem is None or mem[0] != dumped_code(helper, rec.func(level)):
                    return False
    except (ValueError, TypeError, struct.error, AttributeError):
        return False
    return True


def _expected_pc(helper, func) -> int | None:
    """The pc after the only call-like instruction of func."""
    try:
        code = dumped_code(helper, func)
    except ValueError:
        return None
    calls = [i for i, inst in enumerate(code) if opcode(inst) in CALL_LIKE]
    return calls[0] + 1 if len(calls) == 1 else None
