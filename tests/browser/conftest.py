"""Browser tier: a real JupyterLab and Debian's Chromium driven by Playwright (never
``playwright install``). One server and one page for the module: the notebook below is opened
and run once, then each test drives one panel.

Screenshots go to ``$BROWSER_PROOF_DIR`` (default: a ``browser-proof`` folder in the temp dir);
with ``WORKBENCH_DOC_SCREENSHOTS=1`` the panel pictures also replace those in ``docs/img``.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from . import harness

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
PROOF = harness.PROOF
KERNEL_IDLE = re.compile(harness.KERNEL_IDLE_TEXT)
CLEAN = "When Nora and Felix went to the garden, Felix gave a drink to"
CORRUPTED = "When Nora and Felix went to the garden, Nora gave a drink to"
MARKUP = 'Mary said <img src=x onerror=alert(1)> and </script><b>bold</b> to'
CELLS = [
    "import torch\ntorch.set_num_threads(1)\n"
    "from workbench import Bridge\nfrom widgets import AttentionPanel, Workbench\n"
    "bridge = Bridge.from_pretrained('workbench-demo')",
    # the patching panel's attribution estimate runs in the background and holds the model;
    # panels made meanwhile wait for it (up to Panel.model_wait_s)
    f"wb = Workbench(bridge, prompt={CLEAN!r}, corrupted={CORRUPTED!r}, answer=' Nora', wrong=' Felix')\n"
    "wb.patching.wait(timeout=120)\nwb",
    f"markup = AttentionPanel(bridge, {MARKUP!r}, layer=1)\nmarkup",
    "from widgets import HookPicker\nsolo = HookPicker(bridge)  # no prompt yet\nsolo",
    # a long prompt (8 x 15 tokens): the lens scrolls sideways instead of shrinking its cells
    "from widgets import LogitLensPanel\n"
    f"long_lens = LogitLensPanel(bridge, {' '.join([CLEAN] * 8)!r})\nlong_lens",
]
PANELS = harness.PANELS


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make test installs it as root with apt-get; "
                    "otherwise: apt-get install -y chromium)")
    base = tmp_path_factory.mktemp("lab")
    server = harness.start(base)
    harness.write_notebook(server.root / "panels.ipynb", CELLS)
    try:
        yield server
    finally:
        harness.stop(server)


@pytest.fixture(scope="session")
def page(lab):
    """The notebook, opened in Chromium and run to the end; ``page.errors`` collects console
    errors, uncaught exceptions and any dialog (an ``alert`` from injected markup would land
    there)."""
    from playwright.sync_api import sync_playwright

    PROOF.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=harness.CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 2400})
        harness.watch(pg)
        harness.open_and_run(pg, lab, "panels.ipynb", len(CELLS), len(PANELS))
        yield pg
        browser.close()
