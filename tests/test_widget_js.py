"""The panels' front ends: each ES module (common.js + the panel's file, as the panel ships it)
parses, exports ``render``, sets text only as text, and loads nothing from the network."""

import re
import shutil
import subprocess

import pytest

import widgets
from widgets._base import JS_DIR

PANELS = [getattr(widgets, name) for name in widgets.__all__ if name not in ("Selection", "Workbench")]


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p.__name__)
def test_module_is_safe_and_self_contained(panel):
    source = panel._esm
    assert source.startswith((JS_DIR / "common.js").read_text())
    assert source.rstrip().endswith("export default { render };")
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", source)
    assert not re.search(r"\bimport\b\s*[({\"'*]|https?://|fetch\(", source), "no imports or network"


@pytest.mark.parametrize("panel", PANELS, ids=lambda p: p.__name__)
def test_module_parses(panel, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    module = tmp_path / f"{panel.__name__}.mjs"
    module.write_text(panel._esm)
    run = subprocess.run([node, "--check", str(module)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
