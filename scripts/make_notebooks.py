"""Write the tutorial notebooks in notebooks/ from the cell lists in scripts/notebook_cells/.

Each notebook is executed headless (offline, on the embedded demo model) to check it, then stored
WITHOUT outputs, so the repository stays small and the notebooks never show stale results;
tests/test_notebooks.py executes them again in `make test`.

    .venv/bin/python scripts/make_notebooks.py                 # all of them
    .venv/bin/python scripts/make_notebooks.py 02 04           # the ones whose name starts so
    .venv/bin/python scripts/make_notebooks.py --no-execute    # write without running them

The notebooks hold no logic of their own: edit the cell lists, not the .ipynb files (a test
checks that the stored notebooks are what these lists generate).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from notebook_cells import NOTEBOOKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
TIMEOUT = 300  # seconds per cell


def notebook(stem: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """An unexecuted notebook from ``cells`` (("md" | "code", source) pairs), with cell ids
    derived from ``stem`` and the position, so regenerating it gives the same file."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    for i, cell in enumerate(nb.cells):
        cell.id = f"{stem.split('_')[0]}-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = TIMEOUT) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh python3 kernel started in ``cwd``; returns the executed
    notebook (``nb`` is executed in place). A failing cell raises nbclient's CellExecutionError."""
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def build(path: Path, cells: list[tuple[str, str]], run: bool = True) -> float:
    """Write ``cells`` to ``path`` without outputs, after executing a copy when ``run`` (nothing
    is written if a cell fails). Returns the seconds the execution took."""
    nb = notebook(path.stem, cells)
    start = time.perf_counter()
    if run:
        execute(copy.deepcopy(nb), path.parent)
    seconds = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="build only notebooks whose name starts with one of these")
    parser.add_argument("--no-execute", action="store_true", help="write them without running them")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the kernels inherit it: check the offline path
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    chosen = {stem: cells for stem, cells in NOTEBOOKS.items()
              if not args.names or any(stem.startswith(n) for n in args.names)}
    if not chosen:
        parser.error(f"no notebook matches {args.names}; the notebooks are {list(NOTEBOOKS)}")
    for stem, cells in chosen.items():
        seconds = build(NOTEBOOK_DIR / f"{stem}.ipynb", cells, run=not args.no_execute)
        print(f"notebooks/{stem}.ipynb" + ("" if args.no_execute else f"  (executed in {seconds:.1f} s)"))


if __name__ == "__main__":
    main()
