# Two commands from a fresh clone: `make demo` and `make test` (both create .venv if needed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

PYTEST_ARGS ?=
DEMO_ARGS ?=
# JupyterLab refuses to start as root unless told to (containers, CI machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help venv test demo docs lint bench clean distclean

help:
	@echo "make demo   - set up .venv if needed, open notebooks/00_tour.ipynb in JupyterLab (DEMO_ARGS=...)"
	@echo "make test   - set up .venv (and chromium) if needed, run every test tier offline (PYTEST_ARGS=...)"
	@echo "make venv   - create/update .venv (scripts/setup_env.sh)"
	@echo "make docs   - build the documentation site into site/ (mkdocs build --strict)"
	@echo "make lint   - ruff check"
	@echo "make bench  - hook overhead benchmark"
	@echo "make clean  - remove caches and build outputs (distclean also removes .venv)"

venv:
	bash scripts/setup_env.sh

# the browser tier needs Debian's chromium: set up with it (installed as root with apt-get if missing)
test:
	WORKBENCH_BROWSER_TESTS=1 bash scripts/setup_env.sh
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/jupyter lab $(ROOT_FLAG) $(DEMO_ARGS) notebooks/00_tour.ipynb

# the same strict build tests/test_docs.py runs; open site/index.html, or serve it with
# `.venv/bin/mkdocs serve`
docs: venv
	NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) benchmarks/bench_overhead.py

clean:
	rm -rf build dist site *.egg-info .pytest_cache .ruff_cache
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 \
		| xargs -0 -r rm -rf

distclean: clean
	rm -rf $(VENV)
