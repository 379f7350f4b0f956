"""`pip install` alone makes the `lua` kernel available (issue 13): the wheel
carries the kernelspec, as ipykernel's carries python3's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parent.parent

RUN_A_CELL = textwrap.dedent("""
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="lua", startup_timeout=60)
    try:
        msg_id = kc.execute("return 6 * 7")
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id \\
                    and msg["msg_type"] == "execute_result":
                print(msg["content"]["data"]["text/plain"])
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
""")


def test_pip_install_alone_registers_the_kernel(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", str(REPO)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # a clean environment: none of the test suite's Jupyter paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(HOME=str(tmp_path / "home"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    listed = subprocess.run([str(venv / "bin" / "jupyter"), "kernelspec", "list", "--json"],
                            capture_output=True, text=True, env=env, check=True)
    spec = json.loads(listed.stdout)["kernelspecs"]["lua"]
    assert spec["resource_dir"] == str(venv / "share" / "jupyter" / "kernels" / "lua")
    assert spec["spec"]["display_name"] == "Lua 5.4"
    assert {"logo-32x32.png", "logo-64x64.png"} <= set(os.listdir(spec["resource_dir"]))
    ran = subprocess.run([str(python), "-c", RUN_A_CELL], capture_output=True, text=True,
                         env=env, timeout=180)
    assert ran.stdout.strip() == "42", ran.stderr[-3000:]


def test_install_command_still_installs_for_a_prefix(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lua_kernel", "install", "--prefix",
                           str(tmp_path)], capture_output=True, text=True, check=True)
    folder = tmp_path / "share" / "jupyter" / "kernels" / "lua"
    assert str(folder) in done.stdout
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["argv"][1:3] == ["-m", "lua_kernel"]
    assert (folder / "logo-64x64.png").is_file()
