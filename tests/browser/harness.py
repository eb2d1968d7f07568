"""A throw-away JupyterLab server for browser tests and screenshots (127.0.0.1, random token,
isolated config, settings and runtime folders; stopped by PID with its kernels).

Adapted for this repo from the recipe in the project's shared browser-testing notes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat

PROOF = Path(os.environ.get("BROWSER_PROOF_DIR", Path(tempfile.gettempdir()) / "browser-proof"))
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PANELS = ("hooks", "attention", "logit_lens", "composition", "patching", "generation", "markup", "solo_hooks",
          "long_lens")

SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    # every cell attached to the DOM (no virtualised notebook) and no "Select Kernel" dialog
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"windowingMode": "none", "autoStartDefaultKernel": True},
}


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    proc: subprocess.Popen
    log: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(base: Path, timeout: float = 90.0) -> Lab:
    """Start ``jupyter lab`` serving ``base / "root"`` and wait until it answers."""
    root = base / "root"
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in SETTINGS.items():
        (base / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "settings" / rel).write_text(json.dumps(content))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(base / "ws"),
               IPYTHONDIR=str(base / "ipython"), JUPYTER_PLATFORM_DIRS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    token, port = secrets.token_hex(16), _free_port()
    log = base / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           f"--ServerApp.token={token}", f"--port={port}", "--port-retries=0", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--ServerApp.shutdown_no_activity_timeout=900", "--MappingKernelManager.cull_idle_timeout=900"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return Lab(url, token, root, proc, log)
        except OSError:
            time.sleep(0.25)
    stop(Lab(url, token, root, proc, log))
    raise TimeoutError(f"jupyter lab did not answer within {timeout:.0f} s; see {log}")


def stop(lab: Lab) -> None:
    """Ask the server to shut down (kernels too), then kill its process group if it lingers."""
    try:
        req = urllib.request.Request(f"{lab.url}/api/shutdown?token={lab.token}", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        lab.proc.wait(timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if lab.proc.poll() is None:
        os.killpg(lab.proc.pid, signal.SIGKILL)
        lab.proc.wait(timeout=5)


# -- page helpers ------------------------------------------------------------------------------------
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking"]
KERNEL_IDLE_TEXT = r"^Python 3 \(ipykernel\) \| Idle$"


def watch(page) -> None:
    """Collect console errors, uncaught exceptions and any dialog (dismissed; an ``alert`` from
    injected markup would land there) in ``page.errors``."""
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))

    def dialog(d):
        page.errors.append(f"dialog: {d.message}")
        d.dismiss()
    page.on("dialog", dialog)


def open_and_run(page, lab: Lab, name: str, n_cells: int, n_panels: int) -> None:
    """Open notebook ``name`` of ``lab`` in ``page``, run all its cells as a user would (the
    Run menu) and wait until ``n_cells`` have run, ``n_panels`` panels show and the kernel idles."""
    import re

    from playwright.sync_api import expect

    page.add_locator_handler(page.locator(".jp-Dialog").filter(has_text="Select Kernel"),
                             lambda d: d.get_by_role("button", name="Select Kernel").click())
    page.goto(lab.notebook_url(name), timeout=60_000)
    status = page.locator("#jp-main-statusbar").get_by_text(re.compile(KERNEL_IDLE_TEXT))
    expect(status).to_be_visible(timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    expect(page.locator(".jp-CodeCell .jp-InputPrompt")).to_have_text(
        [f"[{i}]:" for i in range(1, n_cells + 1)], timeout=180_000)
    expect(page.locator(".wb-panel")).to_have_count(n_panels, timeout=60_000)
    expect(status).to_be_visible(timeout=120_000)


def panel(page, name: str):
    return page.locator(".wb-panel").nth(PANELS.index(name))


def grid_click(page, canvas, row: int, col: int, action: str = "click") -> None:
    """Click (or hover) the centre of heatmap cell (row, col), placed by the canvas's grid data."""
    g = json.loads(canvas.get_attribute("data-grid"))
    assert 0 <= row < g["rows"] and 0 <= col < g["cols"], (row, col, g)
    pos = {"x": g["x0"] + (col + 0.5) * g["cw"], "y": g["y0"] + (row + 0.5) * g["ch"]}
    canvas.scroll_into_view_if_needed()
    getattr(canvas, action)(position=pos)


def shoot(locator, name: str) -> None:
    """A screenshot in the proof folder (and in docs/img when asked for)."""
    locator.scroll_into_view_if_needed()
    path = PROOF / f"panel_{name}.png"
    locator.screenshot(path=str(path))
    if os.environ.get("WORKBENCH_DOC_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS_IMG / path.name)
