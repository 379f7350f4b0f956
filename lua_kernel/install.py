"""Installing the kernelspecs where `pip install` did not put them.

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

from .runtime import RUNTIMES

KERNEL_NAMES = [r.kernel_name for r in RUNTIMES.values()]    # lua, lua55, luajit


def spec_dir(name: str = "lua") -> Path:
    """A kernelspec folder: in a source checkout (editable installs), else
    where pip put the wheel's data files."""
    in_share = Path("share") / "jupyter" / "kernels" / name
    here = Path(__file__).resolve().parent.parent / "kernelspec" / name
    candidates = [here, Path(sys.prefix) / in_share, Path(site.USER_BASE or "") / in_share]
    for folder in candidates:
        if (folder / "kernel.json").is_file():
            return folder
    raise FileNotFoundError(f"the {name} kernelspec is not where pip installs it: "
                            + ", ".join(str(c) for c in candidates))


def kernel_json(name: str = "lua") -> dict:
    spec = json.loads((spec_dir(name) / "kernel.json").read_text(encoding="utf-8"))
    spec["argv"][0] = sys.executable
    return spec


def install(user: bool = False, prefix: str | None = None) -> list[str]:
    """Install the kernelspecs (lua, lua55, luajit); returns the directories
    they went to."""
    done = []
    for name in KERNEL_NAMES:
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / name
            shutil.copytree(spec_dir(name), spec)
            (spec / "kernel.json").write_text(json.dumps(kernel_json(name), indent=2))
            done.append(KernelSpecManager().install_kernel_spec(
                str(spec), name, user=user, prefix=prefix))
    return done
