"""Test set-up: every test talks to the kernel as installed, in isolation.

The kernelspec is installed (with `python -m lua_kernel install --prefix`)
into a temporary prefix that JUPYTER_PATH points at, and Jupyter's data and
runtime directories are temporary too, so tests never see or touch the
user's own kernels and state.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_ROOT = Path(tempfile.mkdtemp(prefix="lua_kernel_tests_"))
os.environ["JUPYTER_PATH"] = str(_ROOT / "share" / "jupyter")
os.environ["JUPYTER_DATA_DIR"] = str(_ROOT / "data")
os.environ["JUPYTER_RUNTIME_DIR"] = str(_ROOT / "runtime")
os.environ.pop("JPY_SESSION_NAME", None)

subprocess.run([sys.executable, "-m", "lua_kernel", "install", "--prefix", str(_ROOT)],
               check=True, capture_output=True)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def session():
    from lua_kernel import Session

    out: list[tuple[str, str]] = []
    s = Session(stdout=lambda t: out.append(("stdout", t)),
                stderr=lambda t: out.append(("stderr", t)))
    s.output = out
    return s
