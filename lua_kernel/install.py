"""Installing the kernelspec, the way bash_kernel does it."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "lua"


def kernel_json() -> dict:
    return {
        "argv": [sys.executable, "-m", "lua_kernel", "kernel", "-f", "{connection_file}"],
        "display_name": "Lua 5.4",
        "language": "lua",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False},
    }


def install(user: bool = False, prefix: str | None = None) -> str:
    """Install the `lua` kernelspec; returns the directory it went to."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / KERNEL_NAME
        spec.mkdir()
        (spec / "kernel.json").write_text(json.dumps(kernel_json(), indent=2))
        logos = resources.files("lua_kernel").joinpath("resources")
        for name in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
            with resources.as_file(logos.joinpath(name)) as path:
                shutil.copy(path, spec / name)
        return KernelSpecManager().install_kernel_spec(
            str(spec), KERNEL_NAME, user=user, prefix=prefix)
