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
import uuid
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


# -- an S3 store, against a moto server on this machine ------------------------------

@pytest.fixture(scope="module")
def s3_url():
    """An S3 bucket on a moto server on this machine (the environment points
    fsspec, and kernels started meanwhile, at it)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bucket = f"lua-sessions-{uuid.uuid4().hex[:12]}"   # moto's state is per process
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}/team"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
