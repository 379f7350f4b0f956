"""Widgets from Lua (issue 11) through a real kernel process, with
jupyter_client acting as the frontend: it reads the comm messages ipywidgets
sends and answers as JupyterLab's widget manager does (`update` and
`custom` click messages on the widget's comm)."""
from __future__ import annotations

import queue
import time

import pytest

from tests.kernel_client import execute, running_kernel, stdout_of

pytestmark = pytest.mark.kernel

VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    log = tmp_path_factory.mktemp("kernel") / "kernel.log"
    with open(log, "w") as stderr, running_kernel(stderr=stderr) as (km, kc):
        kc.log_path = log
        yield km, kc


def comm_opens(messages, model=None):
    return [m for m in messages if m["msg_type"] == "comm_open"
            and (model is None or m["content"]["data"]["state"]["_model_name"] == model)]


def updates(messages, comm_id):
    return [m["content"]["data"]["state"] for m in messages
            if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id
            and m["content"]["data"].get("method") == "update"]


def send_comm(kc, comm_id, data, timeout=30, wait=True):
    """Send a comm_msg as a widget manager does; return (msg_id, the iopub
    messages it caused, up to idle)."""
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    if not wait:
        return msg_id, None
    return msg_id, collect(kc, msg_id, timeout)


def collect(kc, msg_id, timeout=30):
    """The iopub messages of a request, up to its idle status."""
    return collect_until(kc, [msg_id], lambda got, idle: msg_id in idle, timeout)[msg_id]


def collect_until(kc, msg_ids, done, timeout=30):
    """The iopub messages of each request until done(messages, idle ids).
    (ipykernel 7 dispatches a comm message that arrives while another shell
    request runs at once, without busy/idle status: the kernel queues its
    work behind the running one in the Lua thread.)"""
    messages = {i: [] for i in msg_ids}
    idle = set()
    deadline = time.monotonic() + timeout
    while not done(messages, idle):
        if time.monotonic() > deadline:
            log = getattr(kc, "log_path", None)
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log else ""
            raise TimeoutError(f"gave up waiting; got {messages}; the kernel's log ends:\n{tail}")
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        parent = msg["parent_header"].get("msg_id")
        if parent not in messages:
            continue
        if msg["msg_type"] == "status":
            if msg["content"]["execution_state"] == "idle":
                idle.add(parent)
        else:
            messages[parent].append(msg)
    return messages


def streams(messages):
    return [m for m in messages if m["msg_type"] == "stream"]


def update(kc, comm_id, **state):
    return send_comm(kc, comm_id, {"method": "update", "state": state, "buffer_paths": []})


def run_ok(kc, code):
    reply, messages = execute(kc, code)
    assert reply["content"]["status"] == "ok", reply["content"]
    return reply, messages


def make(kc, code, model):
    """Run a cell that makes a widget; its comm id and the cell's messages."""
    _, messages = run_ok(kc, code)
    [opened] = comm_opens(messages, model)
    return opened["content"]["comm_id"], messages


def test_slider_opens_a_comm_and_shows_a_view(kernel):
    _, kc = kernel
    _, messages = run_ok(kc, 'w = widgets.IntSlider{min = 0, max = 10, value = 3, '
                             'description = "n"}\ndisplay(w)')
    [opened] = comm_opens(messages, "IntSliderModel")
    content = opened["content"]
    assert content["target_name"] == "jupyter.widget"
    state = content["data"]["state"]
    assert (state["value"], state["min"], state["max"], state["description"]) == (3, 0, 10, "n")
    assert opened["metadata"]["version"].startswith("2.")
    [shown] = [m for m in messages if m["msg_type"] == "display_data"]
    assert shown["content"]["data"][VIEW]["model_id"] == content["comm_id"]
    # a widget as the cell's value shows its view too
    _, messages = execute(kc, "w")
    [result] = [m for m in messages if m["msg_type"] == "execute_result"]
    assert result["content"]["data"][VIEW]["model_id"] == content["comm_id"]
    # comm_info lists it
    kc.comm_info(target_name="jupyter.widget")
    info = kc.get_shell_msg(timeout=10)
    assert content["comm_id"] in info["content"]["comms"]


def test_frontend_update_runs_the_observer(kernel):
    _, kc = kernel
    comm_id, _ = make(kc, 'w = widgets.IntSlider{max = 100}\n'
                          'w:observe(function(c) print("value", c.old, "->", c.new, w.value) end, "value")',
                      "IntSliderModel")
    msg_id, messages = update(kc, comm_id, value=42)
    assert stdout_of(messages) == "value\t0\t->\t42\t42\n"
    reply, messages = execute(kc, "w.value")
    assert [m["content"]["data"]["text/plain"] for m in messages
            if m["msg_type"] == "execute_result"] == ["42"]
    # several updates run in order, one at a time
    ids = [send_comm(kc, comm_id, {"method": "update", "state": {"value": v},
                                   "buffer_paths": []}, wait=False)[0] for v in (1, 2, 3)]
    got = collect_until(kc, ids, lambda got, idle: all(streams(got[i]) for i in ids))
    texts = [stdout_of(got[i]) for i in ids]
    assert texts == ["value\t42\t->\t1\t1\n", "value\t1\t->\t2\t2\n", "value\t2\t->\t3\t3\n"]


def test_lua_assignment_sends_an_update(kernel):
    _, kc = kernel
    comm_id, _ = make(kc, "w2 = widgets.IntSlider{}", "IntSliderModel")
    reply, messages = execute(kc, "w2.value = 9")
    assert {"value": 9} in updates(messages, comm_id)
    reply, messages = execute(kc, "w2.description = 'nine'")
    assert {"description": "nine"} in updates(messages, comm_id)


def test_button_click_runs_on_click(kernel):
    _, kc = kernel
    comm_id, _ = make(kc, 'b = widgets.Button{description = "go"}\nclicks = 0\n'
                          'b:on_click(function(btn) clicks = clicks + 1 print("click", clicks, btn == b) end)',
                      "ButtonModel")
    for n in (1, 2):
        _, messages = send_comm(kc, comm_id, {"method": "custom", "content": {"event": "click"}})
        assert stdout_of(messages) == f"click\t{n}\ttrue\n"


def test_interact_reruns_with_the_new_values(kernel):
    _, kc = kernel
    reply, messages = run_ok(kc, 'widgets.interact(function(n, name) print(name .. " has " .. n) end, '
                                 '{n = {0, 10}, name = "Ada"})')
    [slider] = comm_opens(messages, "IntSliderModel")
    [text] = comm_opens(messages, "TextModel")
    [out] = comm_opens(messages, "OutputModel")
    [box] = comm_opens(messages, "VBoxModel")
    cell_id = reply["parent_header"]["msg_id"]
    out_id = out["content"]["comm_id"]
    # the first run is captured into the Output: msg_id set, printed, reset
    assert {"msg_id": cell_id} in updates(messages, out_id)
    assert stdout_of(messages) == "Ada has 5\n"
    assert updates(messages, out_id)[-1] == {"msg_id": ""}
    assert any(m["msg_type"] == "display_data"
               and m["content"]["data"][VIEW]["model_id"] == box["content"]["comm_id"]
               for m in messages)
    msg_id, messages = update(kc, slider["content"]["comm_id"], value=8)
    assert stdout_of(messages) == "Ada has 8\n"
    assert {"msg_id": msg_id} in updates(messages, out_id)        # captured by the Output
    assert any(m["msg_type"] == "clear_output" for m in messages)  # replacing the last run
    _, messages = update(kc, text["content"]["comm_id"], value="Grace")
    assert stdout_of(messages) == "Grace has 8\n"


def test_callback_errors_are_shown_and_the_kernel_lives(kernel):
    _, kc = kernel
    comm_id, _ = make(kc, 'bad = widgets.IntSlider{}\n'
                          'bad:observe(function(c) local t = nil\n  return t.x end, "value")\n'
                          'bad:observe(function(c) print("second observer ran") end, "value")',
                      "IntSliderModel")
    msg_id, messages = update(kc, comm_id, value=5)
    [err] = [m for m in messages if m["msg_type"] == "error"]
    assert "attempt to index a nil value (local 't')" in err["content"]["evalue"]
    assert any("In[" in line and ":3:" in line for line in err["content"]["traceback"])
    reply, messages = execute(kc, "1 + 1")
    assert reply["content"]["status"] == "ok"
    # an error inside an Output's capture is shown in that Output
    comm_id, messages = make(kc, 'out = widgets.Output{}\nb2 = widgets.Button{}\n'
                                 'b2:on_click(out:capture(function() print("before") error("in the output") end))',
                             "ButtonModel")
    [out] = comm_opens(messages, "OutputModel")
    msg_id, messages = send_comm(kc, comm_id, {"method": "custom", "content": {"event": "click"}})
    assert {"msg_id": msg_id} in updates(messages, out["content"]["comm_id"])
    [err] = [m for m in messages if m["msg_type"] == "error"]
    assert err["parent_header"]["msg_id"] == msg_id
    assert "in the output" in err["content"]["evalue"]
    assert not [line for line in err["content"]["traceback"]
                if "real_xpcall" in line or "lua_kernel/" in line or "tail calls" in line]
    kinds = [m["msg_type"] for m in messages if m["msg_type"] in ("stream", "error", "comm_msg")]
    assert kinds.index("stream") < kinds.index("error")
    assert updates(messages, out["content"]["comm_id"])[-1] == {"msg_id": ""}


def test_ctrl_c_interrupts_a_long_callback(kernel):
    km, kc = kernel
    comm_id, _ = make(kc, 'slow = widgets.IntSlider{}\n'
                          'slow:observe(function() print("looping") io.stdout:flush() while true do end end, "value")',
                      "IntSliderModel")
    msg_id, _ = send_comm(kc, comm_id, {"method": "update", "state": {"value": 1},
                                        "buffer_paths": []}, wait=False)
    collect_until(kc, [msg_id], lambda got, idle: streams(got[msg_id]))
    km.interrupt_kernel()
    messages = collect(kc, msg_id, timeout=20)
    [err] = [m for m in messages if m["msg_type"] == "error"]
    assert err["content"]["ename"] == "KeyboardInterrupt"
    reply, messages = execute(kc, "slow.value")
    assert reply["content"]["status"] == "ok"
    # a callback that waited behind a cell is interrupted too
    cell = kc.execute("local t = os.clock() while os.clock() - t < 0.3 do end")
    msg_id, _ = send_comm(kc, comm_id, {"method": "update", "state": {"value": 2},
                                        "buffer_paths": []}, wait=False)
    collect_until(kc, [cell, msg_id], lambda got, idle: cell in idle and streams(got[msg_id]))
    interrupted(km, kc, msg_id)


def interrupted(km, kc, msg_id):
    """Ctrl-C the callback that msg_id started: it ends in KeyboardInterrupt
    and the kernel goes on."""
    km.interrupt_kernel()
    got = collect_until(kc, [msg_id], lambda got, idle: any(
        m["msg_type"] == "error" for m in got[msg_id]), timeout=20)
    [err] = [m for m in got[msg_id] if m["msg_type"] == "error"]
    assert err["content"]["ename"] == "KeyboardInterrupt"
    run_ok(kc, "1")


def test_callbacks_never_run_beside_a_cell(kernel):
    _, kc = kernel
    comm_id, _ = make(kc, 'busy = false\nside = widgets.IntSlider{}\n'
                          'side:observe(function(c) print("cell running:", busy) end, "value")',
                      "IntSliderModel")
    cell = kc.execute("busy = true\nlocal t = os.clock()\nwhile os.clock() - t < 0.5 do end\n"
                      "busy = false")
    msg_id, _ = send_comm(kc, comm_id, {"method": "update", "state": {"value": 3},
                                        "buffer_paths": []}, wait=False)
    got = collect_until(kc, [cell, msg_id], lambda got, idle: cell in idle and streams(got[msg_id]))
    assert stdout_of(got[msg_id]) == "cell running:\tfalse\n"


def test_save_and_restore_bring_widgets_back(kernel):
    _, kc = kernel
    execute(kc, "%session widgets-test")
    make(kc, 'keep = widgets.FloatSlider{min = 0, max = 2, value = 1.25}\n'
             'keep:observe(function(c) print("restored observer", c.new) end, "value")',
         "FloatSliderModel")
    reply, _ = execute(kc, "%save widgets-saved")
    assert reply["content"]["status"] == "ok"
    execute(kc, "keep = nil")
    reply, messages = execute(kc, "%restore widgets-saved")
    assert reply["content"]["status"] == "ok", reply["content"]
    reply, messages = execute(kc, "display(keep)")
    [opened] = comm_opens(messages, "FloatSliderModel")
    assert opened["content"]["data"]["state"]["value"] == 1.25
    _, messages = update(kc, opened["content"]["comm_id"], value=1.5)
    assert stdout_of(messages) == "restored observer\t1.5\n"


def test_control_comm_answers_request_states(kernel):
    """What JupyterLab does when it (re)connects to a kernel: open the
    jupyter.widget.control comm and ask for every widget's state."""
    _, kc = kernel
    comm_id, _ = make(kc, "ctl_probe = widgets.Checkbox{value = true, description = 'probe'}",
                      "CheckboxModel")
    control = "control-" + comm_id
    opened = kc.session.msg("comm_open", {"comm_id": control, "target_name": "jupyter.widget.control",
                                          "data": {}})
    opened["metadata"]["version"] = "1.0.0"
    kc.shell_channel.send(opened)
    msg_id, _ = send_comm(kc, control, {"method": "request_states"}, wait=False)
    # The comm_msg may arrive while the comm_open is still being handled;
    # ipykernel 7 then runs it concurrently, without busy/idle status, and
    # the answer may go out under either request's parent header. So the
    # answer itself (and the open's idle) is what we wait for, under both.
    opened_id = opened["header"]["msg_id"]

    def states(got):
        return [m for ms in got.values() for m in ms if m["msg_type"] == "comm_msg"
                and m["content"]["data"].get("method") == "update_states"]

    got = collect_until(kc, [opened_id, msg_id],
                        lambda got, idle: opened_id in idle and states(got))
    [reply] = states(got)
    messages = got[opened_id] + got[msg_id]
    states = reply["content"]["data"]["states"]
    assert states[comm_id]["state"]["description"] == "probe"
    assert not [m for m in messages if m["msg_type"] == "stream"]


def test_callbacks_sent_on_a_subshell_run_and_are_interrupted(kernel):
    """JupyterLab 4 sends widget comms on a kernel subshell (its own thread
    in ipykernel 7); they still run in the Lua thread, and Ctrl-C still
    reaches them."""
    km, kc = kernel
    request = kc.session.msg("create_subshell_request", {})
    kc.control_channel.send(request)
    reply = kc.get_control_msg(timeout=10)
    assert reply["content"]["status"] == "ok", reply["content"]
    subshell = reply["content"]["subshell_id"]
    comm_id, _ = make(kc, 'sub = widgets.IntSlider{}\n'
                          'sub:observe(function(c) print("on the subshell", c.new) io.stdout:flush()\n'
                          '  if c.new == 2 then while true do end end end, "value")', "IntSliderModel")

    def send(value):
        msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {
            "method": "update", "state": {"value": value}, "buffer_paths": []}})
        msg["header"]["subshell_id"] = subshell
        kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    first = send(1)
    got = collect_until(kc, [first], lambda got, idle: streams(got[first]))
    assert stdout_of(got[first]) == "on the subshell\t1\n"
    looping = send(2)
    collect_until(kc, [looping], lambda got, idle: streams(got[looping]))
    interrupted(km, kc, looping)


def test_a_callback_queued_behind_a_cell_keeps_its_output(kernel):
    """Cell A runs; a slider moves (its comm waits behind A in the Lua
    thread); cell B is sent and set up as soon as A ends, while the callback
    runs: every line goes out under its own request."""
    _, kc = kernel
    comm_id, _ = make(kc, 'slow3 = widgets.IntSlider{}\n'
                          'slow3:observe(function(c) print("callback 1") io.stdout:flush()\n'
                          '  local t = os.clock() while os.clock() - t < 0.4 do end\n'
                          '  print("callback 2") end, "value")', "IntSliderModel")
    a = kc.execute('local t = os.clock() while os.clock() - t < 0.4 do end print("cell A")')
    callback, _ = send_comm(kc, comm_id, {"method": "update", "state": {"value": 1},
                                          "buffer_paths": []}, wait=False)
    b = kc.execute('print("cell B")')
    got = collect_until(kc, [a, callback, b], lambda got, idle: {a, b} <= idle
                        and "callback 2" in stdout_of(got[callback]))
    assert stdout_of(got[a]) == "cell A\n"
    assert stdout_of(got[callback]) == "callback 1\ncallback 2\n"
    assert stdout_of(got[b]) == "cell B\n"
