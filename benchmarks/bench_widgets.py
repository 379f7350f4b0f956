"""Widget callback latency (issue 11), against ipykernel's python3 kernel in
the same run.

    python benchmarks/bench_widgets.py            # 200 updates per kernel
    python benchmarks/bench_widgets.py -n 50

Each kernel makes an IntSlider whose observer prints the new value (Lua:
`w:observe(function(c) print(c.new) end, "value")`, Python:
`w.observe(lambda c: print(c["new"]), "value")`). jupyter_client, acting
as the frontend, sends `update` comm messages as JupyterLab's widget
manager does when the slider moves, one at a time; a time runs from sending
the comm_msg until the callback's whole line ("<value>\n") has arrived on
iopub (ipykernel's python3 kernel sometimes sends it in two stream
messages). The request's idle status is awaited afterwards, untimed, so
updates never overlap. 20 warm-up updates each; the kernels alternate in
rounds. Reports median, p90 and min in ms, and lua / python3.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import queue
import statistics
import sys
import time

from jupyter_client.manager import start_new_kernel

perf = time.perf_counter

SETUP = {
    "lua": 'w = widgets.IntSlider{max = 1000000}\n'
           'w:observe(function(c) print(c.new) end, "value")',
    "python3": 'import ipywidgets\n'
               'w = ipywidgets.IntSlider(max=1000000)\n'
               'w.observe(lambda c: print(c["new"]), "value")',
}


def drain_until(kc, msg_id, test, timeout=30.0):
    """Read iopub until a message of request msg_id passes test()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id and test(msg):
            return msg
    raise TimeoutError(f"no answer to {msg_id}")


def idle(msg) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def setup(kc, code: str) -> str:
    """Run the set-up cell; the slider's comm id."""
    msg_id = kc.execute(code)
    comm_id = None
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "comm_open" and \
                msg["content"]["data"]["state"]["_model_name"] == "IntSliderModel":
            comm_id = msg["content"]["comm_id"]
        if msg["msg_type"] == "error":
            raise RuntimeError("\n".join(msg["content"]["traceback"]))
        if idle(msg):
            break
    kc.get_shell_msg(timeout=60)
    if comm_id is None:
        raise RuntimeError("the set-up cell opened no slider comm")
    return comm_id


def one_update(kc, comm_id: str, value: int) -> float:
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
        "method": "update", "state": {"value": value}, "buffer_paths": []}})
    t0 = perf()
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    text = f"{value}\n"
    printed = []

    def whole_line(m) -> bool:
        if m["msg_type"] == "stream":
            printed.append(m["content"]["text"])
        return text in "".join(printed)

    drain_until(kc, msg_id, whole_line)
    took = perf() - t0
    drain_until(kc, msg_id, idle)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=200, help="timed updates per kernel")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    started = perf()
    kernels = {}
    try:
        for name in ("lua", "python3"):
            km, kc = start_new_kernel(kernel_name=name, startup_timeout=60)
            kernels[name] = (km, kc, setup(kc, SETUP[name]))
        times = {name: [] for name in kernels}
        value = 0
        for round_ in range(args.warmup + args.n):
            order = list(kernels) if round_ % 2 == 0 else list(reversed(kernels))
            for name in order:
                _, kc, comm_id = kernels[name]
                value += 1
                try:
                    took = one_update(kc, comm_id, value)
                except TimeoutError as e:
                    raise TimeoutError(f"{name}: {e}") from None
                if round_ >= args.warmup:
                    times[name].append(took)
    finally:
        for km, kc, *_ in kernels.values():
            kc.stop_channels()
            km.shutdown_kernel(now=True)

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    lua, py = times["lua"], times["python3"]
    print(f"Widget update -> callback output on iopub, {args.n} updates per kernel "
          f"({perf() - started:.1f} s in all); {datetime.date.today()}, {platform.node()}, "
          f"Python {platform.python_version()}")
    print(f"{'':24}{'lua':>10}{'python3':>10}{'ratio':>8}")
    for label, fn in (("median (ms)", statistics.median), ("p90 (ms)", lambda xs: q(xs, 0.9)),
                      ("min (ms)", min)):
        a, b = fn(lua) * 1000, fn(py) * 1000
        print(f"{label:24}{a:10.2f}{b:10.2f}{a / b:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
