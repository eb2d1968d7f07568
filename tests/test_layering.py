"""The core never imports UI code (DESIGN: data flows one way)."""

import ast
import pathlib

FORBIDDEN = {"widgets", "ipywidgets", "anywidget", "plotly", "IPython"}


def test_workbench_imports_no_ui():
    root = pathlib.Path(__file__).resolve().parents[1] / "workbench"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path} imports {name}"
