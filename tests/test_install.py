"""`pip install` alone makes the kernels available (issue 13): the wheel
carries the kernelspecs (lua, lua55, luajit: issue 10), as ipykernel's
carries python3's."""
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
    import sys
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=60)
    try:
        msg_id = kc.execute("return 6 * 7, _VERSION")
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
KERNELS = {"lua": ("Lua 5.4", "Lua 5.4"), "lua55": ("Lua 5.5", "Lua 5.5"),
           "luajit": ("LuaJIT 2.1", "Lua 5.1")}     # display name, _VERSION


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
    specs = json.loads(listed.stdout)["kernelspecs"]
    for name, (display, version) in KERNELS.items():
        spec = specs[name]
        assert spec["resource_dir"] == str(venv / "share" / "jupyter" / "kernels" / name)
        assert spec["spec"]["display_name"] == display
        assert {"logo-32x32.png", "logo-64x64.png"} <= set(os.listdir(spec["resource_dir"]))
        ran = subprocess.run([str(python), "-c", RUN_A_CELL, name], capture_output=True,
                             text=True, env=env, timeout=180)
        assert ran.stdout.strip() == f"42\t{version!r}".replace("'", '"'), ran.stderr[-3000:]


def test_install_command_still_installs_for_a_prefix(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lua_kernel", "install", "--prefix",
                           str(tmp_path)], capture_output=True, text=True, check=True)
    for name in KERNELS:
        folder = tmp_path / "share" / "jupyter" / "kernels" / name
        assert str(folder) in done.stdout
        spec = json.loads((folder / "kernel.json").read_text())
        assert spec["argv"][0] == sys.executable and spec["argv"][1:3] == ["-m", "lua_kernel"]
        assert (folder / "logo-64x64.png").is_file()
