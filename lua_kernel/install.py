"""Installing the kernelspec where `pip install` did not put it.

`pip install lua_kernel` installs the kernelspec with the package: the wheel
carries the top-level `kernelspec/lua/` folder as data files in
`share/jupyter/kernels/lua/` of the installing environment (as ipykernel
does), with an argv that starts "python", which Jupyter resolves to its own
interpreter. `python -m lua_kernel install [--user | --prefix DIR]` copies
the same folder elsewhere, with this interpreter's full path in argv.
"""
from __future__ import annotations

import json
import shutil
import site
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "lua"
_IN_SHARE = Path("share") / "jupyter" / "kernels" / KERNEL_NAME


def spec_dir() -> Path:
    """The kernelspec folder: in a source checkout (editable installs), else
    where pip put the wheel's data files."""
    here = Path(__file__).resolve().parent.parent / "kernelspec" / KERNEL_NAME
    candidates = [here, Path(sys.prefix) / _IN_SHARE, Path(site.USER_BASE or "") / _IN_SHARE]
    for folder in candidates:
        if (folder / "kernel.json").is_file():
            return folder
    raise FileNotFoundError("the lua kernelspec is not where pip installs it: "
                            + ", ".join(str(c) for c in candidates))


def kernel_json() -> dict:
    spec = json.loads((spec_dir() / "kernel.json").read_text())
    spec["argv"][0] = sys.executable
    return spec


def install(user: bool = False, prefix: str | None = None) -> str:
    """Install the `lua` kernelspec; returns the directory it went to."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / KERNEL_NAME
        shutil.copytree(spec_dir(), spec)
        (spec / "kernel.json").write_text(json.dumps(kernel_json(), indent=2))
        return KernelSpecManager().install_kernel_spec(
            str(spec), KERNEL_NAME, user=user, prefix=prefix)
