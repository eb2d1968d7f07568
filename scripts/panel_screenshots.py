"""Screenshots of every panel on the demo model, taken in a real JupyterLab by headless Chromium.

Starts an isolated ``jupyter lab`` (random token, loopback, temporary config dirs) on a notebook
that shows the Workbench on the demo model, opens it in Debian's Chromium through Playwright
(``executable_path=shutil.which("chromium")``; never ``playwright install``), runs all cells,
exercises the panels as a user would (a thumbnail click, a composition pair, a patching sweep
and a cell click), and writes ``docs/img/panel_<name>.png``. Fails on any browser console error
or error shown in a panel.

    .venv/bin/python scripts/panel_screenshots.py            # needs: apt-get install chromium
    .venv/bin/python scripts/panel_screenshots.py --out /tmp/shots
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
PANELS = ("hooks", "attention", "logit_lens", "composition", "patching")
SETUP = """\
from workbench import Bridge
from widgets import Workbench

bridge = Bridge.from_pretrained("workbench-demo")
wb = Workbench(bridge,
               prompt="When Nora and Felix went to the garden, Felix gave a drink to",
               corrupted="When Nora and Felix went to the garden, Nora gave a drink to",
               answer=" Nora", wrong=" Felix")
wb.hooks.hooks = ["blocks.0.attn.hook_pattern", "blocks.3.hook_resid_post"]
wb
"""
KERNEL_IDLE = re.compile(r"^Python 3 \(ipykernel\) \| Idle$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(base: Path) -> tuple[subprocess.Popen, str, str]:
    root = base / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "panels.ipynb")
    settings = base / "settings"
    for rel, content in {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
            {"windowingMode": "none", "autoStartDefaultKernel": True},
    }.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(content))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
               JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(base / "ws"),
               IPYTHONDIR=str(base / "ipython"), JUPYTER_PLATFORM_DIRS="1", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    token, port = secrets.token_hex(16), free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           f"--ServerApp.token={token}", f"--port={port}", "--port-retries=0", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=open(base / "lab.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return proc, url, token
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise TimeoutError(f"jupyter lab did not start; see {base / 'lab.log'}")


def stop_lab(proc: subprocess.Popen, url: str, token: str) -> None:
    try:
        req = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        proc.wait(timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def shoot(url: str, token: str, out: Path) -> list[str]:
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.add_locator_handler(page.locator(".jp-Dialog").filter(has_text="Select Kernel"),
                                 lambda d: d.get_by_role("button", name="Select Kernel").click())
        page.goto(f"{url}/lab/tree/panels.ipynb?token={token}&reset", timeout=60_000)
        expect(page.locator("#jp-main-statusbar").get_by_text(KERNEL_IDLE)).to_be_visible(timeout=90_000)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        panels = page.locator(".wb-panel")
        expect(panels).to_have_count(len(PANELS), timeout=120_000)
        expect(page.locator("#jp-main-statusbar").get_by_text(KERNEL_IDLE)).to_be_visible(timeout=120_000)
        page.wait_for_timeout(1500)
        # a user's clicks: a thumbnail, a composition pair, run the sweep, click a patching cell
        att, comp, patch = panels.nth(1), panels.nth(3), panels.nth(4)
        thumbs = att.locator("canvas").nth(1)
        thumbs.click(position={"x": 10, "y": 10})
        comp.locator("canvas.wb-heatmap").click(position={"x": 300, "y": 200})
        patch.get_by_role("button", name=re.compile("run", re.I)).first.click()
        page.wait_for_timeout(4000)
        patch.locator("canvas.wb-heatmap").first.click(position={"x": 200, "y": 120})
        page.wait_for_timeout(1500)
        for i, name in enumerate(PANELS):
            panel = panels.nth(i)
            panel.scroll_into_view_if_needed()
            panel.screenshot(path=str(out / f"panel_{name}.png"))
            shown = panel.locator(".wb-error-msg").inner_text()
            if shown.strip():
                errors.append(f"{name} panel shows an error: {shown}")
        browser.close()
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = ap.parse_args()
    if shutil.which("chromium") is None:
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="panels_lab_"))
    proc, url, token = start_lab(base)
    try:
        errors = shoot(url, token, out)
    finally:
        stop_lab(proc, url, token)
    print("\n".join(f"wrote {out / f'panel_{n}.png'}" for n in PANELS))
    if errors:
        raise SystemExit("errors in the browser:\n" + "\n".join(errors))


if __name__ == "__main__":
    main()
