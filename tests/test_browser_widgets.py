"""End to end in a real browser (issue 11): JupyterLab with our kernel, a
notebook whose slider's observe callback prints into an Output widget,
driven by Playwright with Debian's Chromium (`apt-get install chromium`;
.ci/run installs it). Moving the slider must put the callback's text on the
page. Skipped where Chromium or Playwright is missing, except under CI=true,
where that is a failure."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

pytestmark = pytest.mark.kernel

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("LUA_KERNEL_WIDGETS_SCREENSHOT")   # a path: keep one

CELL = """\
out = widgets.Output{}
s = widgets.IntSlider{min = 0, max = 10, value = 2, description = "n"}
s:observe(out:capture(function(c)
  print("square of " .. c.new .. " is " .. c.new * c.new)
end), "value")
widgets.VBox{s, out}"""


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "lua", "display_name": "Lua", "language": "lua"}
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    nbformat.write(nb, root / "widgets.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "LUA_KERNEL_SNAPSHOTS": "off"}
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("jupyter lab did not start:\n"
                                       + (tmp_path / "lab.log").read_text()) from None
                time.sleep(0.2)
        yield f"{url}/lab/tree/widgets.ipynb?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_slider_callback_prints_into_an_output_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(lab)
            editor = page.locator(".jp-Notebook .jp-Cell .cm-content").first
            editor.wait_for(timeout=30_000)
            # the kernel must be connected and idle before the cell is sent
            expect(page.locator(".jp-StatusBar-Widget", has_text="Lua 5.4 | Idle")
                   ).to_have_count(1, timeout=30_000)
            handle = page.locator(".widget-slider .noUi-handle").first
            for _ in range(3):      # a run sent while the session settles can be lost
                editor.click()
                page.keyboard.press("Shift+Enter")
                try:
                    handle.wait_for(timeout=10_000)
                    break
                except PlaywrightTimeout:
                    page.screenshot(path=str(tmp_path / "not-run.png"))
            handle.wait_for(timeout=1000)
            expect(page.locator(".widget-readout").first).to_have_text("2")
            handle.focus()
            page.keyboard.press("ArrowRight")           # the slider moves one step: 3
            output = page.locator(".widget-output")
            expect(output).to_contain_text("square of 3 is 9", timeout=20_000)
            handle.focus()
            page.keyboard.press("ArrowRight")
            expect(output).to_contain_text("square of 4 is 16", timeout=20_000)
            expect(page.locator(".jp-StatusBar-Widget", has_text="Lua 5.4 | Idle")
                   ).to_have_count(1, timeout=10_000)
            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT)
        finally:
            browser.close()
