"""MkDocs hooks for the documentation site (registered in mkdocs.yml), and the support table CLI.

What the hooks do while ``mkdocs build`` runs:

- **Tutorials.** Every ``notebooks/*.ipynb`` becomes a page ``notebooks/<name>/`` (rendered by
  mkdocs-jupyter, never executed) and fills the ``Tutorials`` section of the nav, sorted by file
  name; ``<!-- tutorials -->`` in a page becomes a list of links to them; a link to
  ``../notebooks/<name>.ipynb`` in a page (right on GitHub) is pointed at the rendered page, and
  a notebook's links to another notebook or into ``docs/`` at the site's copies.
- **Support table.** ``<!-- support-table -->`` in ``support.md`` becomes the tables that
  :func:`support_table` derives from the test suite: the variants in ``tests/conftest.py``
  (``VARIANTS``), the adapters in ``workbench/adapters/``, and the test modules whose tests take
  the fixture parametrized over those variants.
- **API coverage.** Every name in ``__all__`` of ``workbench`` and ``widgets`` must have a
  ``::: ...`` block in its API page, and a ``::: package.Name`` block must name something in
  ``__all__`` (blocks for submodules, ``::: workbench.metrics``, are fine); otherwise a warning
  fails ``mkdocs build --strict``.

Run as a script to print the support table: ``.venv/bin/python scripts/docs_hooks.py``.
"""

from __future__ import annotations

import ast
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
NOTEBOOKS = ROOT / "notebooks"
TUTORIALS_DIR = "notebooks"  # where the notebooks appear in the site (as in the repository)
NAV_SECTION = "Tutorials"
SUPPORT_MARKER = "<!-- support-table -->"
TUTORIALS_MARKER = "<!-- tutorials -->"
# API page (in docs/) -> the package whose __all__ it documents
API_PAGES = {"api.md": "workbench", "api_widgets.md": "widgets"}

log = logging.getLogger("mkdocs.hooks.workbench")


# --------------------------------------------------------------------------------------------
# Tutorials: notebooks/*.ipynb as pages


def notebooks() -> list[Path]:
    """The tutorial notebooks, sorted by file name (their numeric prefixes give the order)."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def notebook_title(path: Path) -> str:
    """The first ``# `` heading of the notebook's first markdown cells, else the file stem."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        src = cell.get("source", "")
        for line in ("".join(src) if isinstance(src, list) else src).splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem


def _tutorial_uri(path: Path) -> str:
    return f"{TUTORIALS_DIR}/{path.name}"


def _absolute_griffe_extensions(config) -> None:
    """Griffe resolves an extension's file path against the working directory: make the ones
    given relative to mkdocs.yml absolute."""
    plugin = config.plugins.get("mkdocstrings")
    options = (plugin.config.handlers.get("python") or {}).get("options") or {} if plugin else {}
    exts = options.get("extensions") or []
    for i, ext in enumerate(exts):
        if isinstance(ext, str) and ".py" in ext:
            path, _, cls = ext.partition(":")
            full = Path(config.config_file_path).parent / path
            if full.is_file():
                exts[i] = f"{full}:{cls}" if cls else str(full)


def on_config(config):
    """Fill the nav's ``Tutorials`` section with every notebook (the section may be ``[]``);
    make the griffe extension paths absolute."""
    _absolute_griffe_extensions(config)
    pages = [_tutorial_uri(p) for p in notebooks()]
    if not pages:
        log.warning("no notebooks found in %s: the Tutorials section stays empty", NOTEBOOKS)
    for item in config.nav or []:
        if isinstance(item, dict) and NAV_SECTION in item:
            item[NAV_SECTION] = pages
            break
    else:
        log.warning("mkdocs.yml: the nav has no %r section to put the notebooks in", NAV_SECTION)
    return config


def _add_notebook_files(files, config):
    from mkdocs.structure.files import File

    # A real file under the repository root, not File.generated: mkdocs-jupyter's page wrapper
    # finds a generated file's source path as None.
    for path in notebooks():
        files.append(File(_tutorial_uri(path), src_dir=str(ROOT), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    return files


def _rewrite_notebook_links(markdown: str, page_uri: str) -> str:
    """``](../notebooks/x.ipynb)`` (right in the repository) -> the rendered page of x."""
    page_dir = posixpath.dirname(page_uri)
    nb_dir = posixpath.relpath("notebooks", posixpath.join("docs", page_dir))  # as seen on disk

    def fix(m: re.Match) -> str:
        target = posixpath.relpath(f"{TUTORIALS_DIR}/{m.group(1)}", page_dir or ".")
        return f"]({target}{m.group(2) or ''})"

    return re.sub(r"\]\(" + re.escape(nb_dir) + r"/([\w.-]+\.ipynb)(#[^)\s]*)?\)", fix, markdown)


_HTML_LINK = re.compile(r'\b(href|src)="([^"#?]*)([#?][^"]*)?"')


def _rewrite_notebook_html(html: str, page, files) -> str:
    """Links in a rendered notebook are relative to notebooks/ in the repository: point the ones
    to another notebook, or to a page or image in docs/, at the site's copy. Any other relative
    link would be broken in the site, and is reported (a warning fails --strict)."""
    from mkdocs.utils import get_relative_url

    def fix(m: re.Match) -> str:
        attr, target, rest = m.group(1), m.group(2), m.group(3) or ""
        if not target or re.match(r"^([a-z][a-z0-9+.-]*:|/)", target, flags=re.I):
            return m.group(0)
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), target))
        if repo_path.startswith(f"{TUTORIALS_DIR}/"):
            site_file = files.get_file_from_path(repo_path)
        elif repo_path.startswith("docs/"):
            site_file = files.get_file_from_path(repo_path[len("docs/"):])
        else:
            site_file = None
        if site_file is None:
            log.warning("%s links to %r (%s), which is not part of the site", page.file.src_uri, target,
                        repo_path)
            return m.group(0)
        return f'{attr}="{get_relative_url(site_file.url, page.url)}{rest}"'

    return _HTML_LINK.sub(fix, html)


def tutorials_list(page_dir: str = "") -> str:
    """A markdown list of the tutorials, links relative to a page in ``page_dir``."""
    lines = []
    for path in notebooks():
        target = posixpath.relpath(_tutorial_uri(path), page_dir or ".")
        lines.append(f"- [{notebook_title(path)}]({target})")
    return "\n".join(lines) or "(no tutorial notebooks found)"


# --------------------------------------------------------------------------------------------
# The support table, derived from the test suite


@dataclass(frozen=True)
class TestModule:
    name: str  # e.g. "test_parity.py"
    summary: str  # first line of the module docstring
    tests: tuple[str, ...]  # test functions that take a variant-parametrized fixture


def _literal_assignment(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id == name and node.value is not None:
            return ast.literal_eval(node.value)
    raise LookupError(f"no literal assignment to {name!r}")


def load_variants(conftest: Path = TESTS / "conftest.py", name: str = "VARIANTS"):
    """``VARIANTS`` of the test suite, read from the source (nothing imported): id -> (family, kw);
    with ``name="ENCODER_VARIANTS"``, the encoder test ids: id -> family."""
    return _literal_assignment(ast.parse(conftest.read_text(encoding="utf-8")), name)


def _is_fixture(dec: ast.expr) -> bool:
    node = dec.func if isinstance(dec, ast.Call) else dec
    return (isinstance(node, ast.Attribute) and node.attr == "fixture") or \
        (isinstance(node, ast.Name) and node.id == "fixture")


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _usefixtures(decorators: list[ast.expr]) -> list[str]:
    out = []
    for dec in decorators:
        if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) \
                and dec.func.attr == "usefixtures":
            out += [a.value for a in dec.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def _requests(fn: ast.FunctionDef) -> list[str]:
    """The fixtures a function requests: its arguments and ``usefixtures`` marks."""
    return [a.arg for a in fn.args.args if a.arg not in ("self", "request")] \
        + _usefixtures(fn.decorator_list)


def _functions(tree: ast.Module):
    """Module-level functions and methods of ``Test*`` classes."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            yield node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            yield from (n for n in node.body if isinstance(n, ast.FunctionDef))


def _fixtures(tree: ast.Module) -> tuple[dict[str, list[str]], set[str]]:
    """Fixture name -> the fixtures it requests; and the fixtures parametrized over VARIANTS."""
    deps, over_variants = {}, set()
    for fn in _functions(tree):
        for dec in fn.decorator_list:
            if _is_fixture(dec):
                deps[fn.name] = _requests(fn)
                if isinstance(dec, ast.Call) and any(k.arg == "params" and "VARIANTS" in _names(k.value)
                                                     for k in dec.keywords):
                    over_variants.add(fn.name)
    return deps, over_variants


def _uses(name: str, roots: set[str], deps: dict[str, list[str]], seen: frozenset = frozenset()) -> bool:
    """Whether fixture ``name`` is, or requests (transitively), one of the ``roots`` fixtures."""
    if name in roots:
        return True
    return name not in seen and any(_uses(d, roots, deps, seen | {name}) for d in deps.get(name, ()))


def variant_test_modules(tests_dir: Path = TESTS) -> list[TestModule]:
    """Test modules with tests that run once per variant (they request, directly or through other
    fixtures, a fixture whose ``params`` are the ``VARIANTS``). Fixtures of a module override the
    ones of the conftest.py files above it, as in pytest."""
    out = []
    for path in sorted(tests_dir.rglob("test_*.py")):
        deps, roots = {}, set()
        conftests = [d / "conftest.py" for d in reversed(path.relative_to(tests_dir).parents)]
        for conftest in [tests_dir / c for c in conftests] + [path]:
            if conftest.is_file():
                d, r = _fixtures(ast.parse(conftest.read_text(encoding="utf-8")))
                roots = (roots - d.keys()) | r
                deps.update(d)
        tree = ast.parse(path.read_text(encoding="utf-8"))

        tests = tuple(fn.name for fn in _functions(tree) if fn.name.startswith("test")
                      and any(_uses(name, roots, deps) for name in _requests(fn)))
        if tests:
            doc = (ast.get_docstring(tree) or "").strip().split("\n\n")[0]
            out.append(TestModule(str(path.relative_to(tests_dir)), " ".join(doc.split()), tests))
    return out


_NORM = {"LN": "LayerNorm", "RMS": "RMSNorm"}
_QKV = {"fused": "fused QKV", "split": "separate Q, K, V",
        "per_head": "fused QKV, interleaved per head (per K/V group when grouped)"}
_LINEAR = {"conv1d": "Conv1D `[in, out]`", "linear": "Linear `[out, in]`"}


def _attention(adapter, cfg: dict, config) -> str:
    h, kv = cfg["n_heads"], cfg["n_kv_heads"]
    kind = "MHA" if kv == h else "MQA" if kv == 1 else "GQA"
    extras = []
    if cfg["d_head"] * h != cfg["d_model"]:
        extras.append(f"d_head {cfg['d_head']}")
    if adapter.attn_qk_norms is not None:
        extras.append("per-head Q/K RMSNorm")
    if cfg.get("clip_qkv") is not None:
        extras.append(f"Q/K/V clamped to ±{cfg['clip_qkv']}")
    window = getattr(config, "sliding_window", None)
    if window is not None:
        kinds = getattr(config, "layer_types", None)
        sliding = [str(i) for i, k in enumerate(kinds or ()) if k == "sliding_attention"]
        where = "" if kinds is None or len(sliding) == len(kinds) else \
            f" on layer{'s' * (len(sliding) > 1)} {', '.join(sliding)}"
        extras.append(f"sliding window {window}{where}")
    return ", ".join([f"{kind}, {h} query / {kv} K/V heads", *extras])


_POSITIONS = {"standard": "learned absolute", "rotary": "rotary", "alibi": "ALiBi"}


def _positions(adapter, cfg: dict) -> str:
    if adapter.positional != "rotary":
        return _POSITIONS[adapter.positional]
    return f"rotary ({cfg['rotary_dim']} of {cfg['d_head']} dims)"


SUPPORT_RESULTS = ROOT / "docs" / "support_results.json"
ENCODER_TESTS = "test_encoder.py"  # runs the encoder families (ENCODER_VARIANTS in conftest.py)


def _cell(outcomes: list[set[str]], note: str = "") -> str:
    """One family's cell from its variants' outcome sets: ✓ when every variant passed (skips
    allowed), ✗ when one failed, "skipped" when none ran."""
    if not outcomes:
        return "not run yet"
    every = set().union(*outcomes)
    mark = "✗" if "failed" in every else "✓" if "passed" in every else "skipped"
    return f"{mark} {note}".strip()


def results_table(results: dict, by_family: dict[str, list[str]], facts: dict[str, dict]) -> list[str]:
    """The support table: one row per family, one column per group of tests (see
    ``SUPPORT_COLUMNS`` in tests/conftest.py), from a full test run's outcomes."""
    cols = ["parity", "bf16 / fp16", "attention internals", "grouped-query", "hook_result", "MLP hooks",
            "weight processing", "generation", "TransformerLens"]
    rows = ["| family | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for family, vids in by_family.items():
        def outcomes(col, vs=vids):
            return [set(results[col][v]) for v in vs if v in results.get(col, {})]
        kinds = sorted({facts[v]["attention"] for v in vids if facts[v]["attention"] != "MHA"})
        gqa_vids = [v for v in vids if facts[v]["attention"] != "MHA"]
        mlp = ("experts" if any(facts[v]["experts"] for v in vids)
               else "gated" if all(facts[v]["gated"] for v in vids) else "")
        encoder = any(facts[v].get("encoder") for v in vids)
        cells = [
            _cell(outcomes("parity")),
            "n/a (encoder)" if encoder else _cell(outcomes("bf16 / fp16")),
            _cell(outcomes("attention internals")),
            _cell(outcomes("parity", gqa_vids), "/".join(kinds)) if gqa_vids else "MHA only",
            _cell(outcomes("hook_result")),
            _cell(outcomes("MLP hooks"), mlp),
            "n/a (encoder)" if encoder else _cell(outcomes("weight processing")),
            "n/a (encoder)" if encoder else _cell(outcomes("generation")),
            _cell(outcomes("TransformerLens")),
        ]
        rows.append(f"| `{family}` | " + " | ".join(cells) + " |")
    return rows


def support_table() -> str:
    """The support page's tables (markdown), derived from the tests and the adapters."""
    from workbench.adapters import ADAPTERS, adapter_for, for_model
    from workbench.toy import tiny_config

    variants = load_variants()
    modules = variant_test_modules()
    by_family: dict[str, list[str]] = {}
    facts: dict[str, dict] = {}
    resolved_by_family: dict[str, list] = {}
    rows = []
    for vid, (family, kw) in variants.items():
        config = tiny_config(family, **kw)
        adapter = for_model(adapter_for(config.model_type), config)  # Falcon's layout varies
        cfg = adapter.read_config(config)
        by_family.setdefault(adapter.family, []).append(vid)
        resolved_by_family.setdefault(adapter.family, []).append(adapter)
        kv, h = cfg["n_kv_heads"], cfg["n_heads"]
        facts[vid] = {"attention": "MHA" if kv == h else "MQA" if kv == 1 else "GQA",
                      "gated": cfg["gated_mlp"], "experts": bool(cfg.get("n_experts"))}
        rows.append(
            f"| `{vid}` | `{adapter.family}` | {_attention(adapter, cfg, config)} | "
            f"{_positions(adapter, cfg)} | "
            f"{'parallel' if cfg['parallel_attn_mlp'] else 'sequential'} | {_NORM[adapter.normalization]} | "
            f"{'gated ' if cfg['gated_mlp'] else ''}{cfg['act_fn']} |"
        )
    encoders = load_variants(name="ENCODER_VARIANTS")
    for vid, family in encoders.items():
        by_family.setdefault(family, []).append(vid)
        facts[vid] = {"attention": "MHA", "gated": False, "experts": False, "encoder": True}
    fam_rows = []
    for a in ADAPTERS:
        covered = ", ".join(f"`{v}`" for v in by_family.get(a.family, []))
        if a.encoder:  # not a causal LM: its own tests (the decoder variants' do not apply)
            covered = ", ".join(f"`{v}` (`tests/{ENCODER_TESTS}`)" for v in by_family.get(a.family, []))
        if not covered:
            log.warning("adapter family %r has no variant in tests/conftest.py VARIANTS: it is not "
                        "tested, so the docs do not list it as supported (add a variant)", a.family)
            continue
        # a family whose layout varies with the config (Falcon): what its variants resolve to
        resolved = resolved_by_family.get(a.family, [a])
        qkv = " or ".join(dict.fromkeys(_QKV[r.qkv_layout] for r in resolved))
        positions = " or ".join(dict.fromkeys(_POSITIONS[r.positional] for r in resolved))
        by_config = " (set by the config)" if a.for_config is not None else ""
        fam_rows.append(
            f"| `{a.family}` | {', '.join(f'`{t}`' for t in a.model_types)} | {covered} | "
            f"{_LINEAR[a.linear_layout]}, {qkv}{by_config} | {positions}{by_config} |"
        )
    n_tests = sum(len(m.tests) for m in modules)
    mod_rows = [f"| `tests/{m.name}` | {len(m.tests)} | {m.summary} |" for m in modules]
    if SUPPORT_RESULTS.exists():
        results = json.loads(SUPPORT_RESULTS.read_text())["results"]
        support = ["### Support", "",
                   "From the last full test run (`make test` writes `docs/support_results.json`): "
                   "✓ every variant of the family passed those tests, ✗ one failed, *skipped* "
                   "none ran (TransformerLens not installed, or without this family).", "",
                   *results_table(results, by_family, facts), ""]
    else:
        log.warning("%s is missing: run `make test` once to generate the support table",
                    SUPPORT_RESULTS.name)
        support = ["### Support", "", "Run `make test` once: it writes the results this table "
                   "is made from.", ""]
    return "\n".join([
        *support,
        "### Families",
        "",
        "| family | `config.model_type` | test variants | weight layout | positions |",
        "| --- | --- | --- | --- | --- |",
        *fam_rows,
        "",
        "### Variants",
        "",
        "| variant | family | attention | positions | attention and MLP | norm | MLP |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "### Tests that run on every variant",
        "",
        f"{n_tests} test functions in {len(modules)} modules take the variant fixture, so each runs "
        f"{len(variants)} times, once per variant:",
        "",
        "| module | tests | what it checks |",
        "| --- | --- | --- |",
        *mod_rows,
    ])


# --------------------------------------------------------------------------------------------
# API pages cover __all__


def public_names(package: str) -> list[str]:
    """``__all__`` of a top-level package, read from its ``__init__.py`` (nothing imported)."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))
    return list(_literal_assignment(tree, "__all__"))


def _check_api_page(markdown: str, page: str) -> None:
    package = API_PAGES[page]
    documented = {}
    for ident in re.findall(r"^:::\s+([\w.]+)", markdown, flags=re.M):
        documented[ident.rsplit(".", 1)[-1]] = ident
    wanted = public_names(package)
    for name in wanted:
        if name not in documented:
            log.warning("%s: %s.%s is in %s.__all__ but has no '::: ...' block", page, package, name,
                        package)
    for name, ident in documented.items():  # a stale or misspelt top-level name (submodules are fine)
        submodule = (ROOT / package / f"{name}.py").is_file() or (ROOT / package / name).is_dir()
        if ident.count(".") == 1 and name not in wanted and not submodule:
            log.warning("%s: '::: %s' documents a name outside %s.__all__", page, ident, package)


# --------------------------------------------------------------------------------------------
# Hook entry points (MkDocs calls the on_* functions of this module)


def _event_priority(priority: int):
    try:
        from mkdocs.plugins import event_priority
    except ImportError:  # used as a script without mkdocs
        return lambda f: f
    return event_priority(priority)


@_event_priority(100)  # before mkdocs-jupyter wraps the .ipynb files into pages
def on_files(files, config):
    return _add_notebook_files(files, config)


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    page_dir = posixpath.dirname(uri)
    if uri in API_PAGES:
        _check_api_page(markdown, uri)
    if TUTORIALS_MARKER in markdown:
        markdown = markdown.replace(TUTORIALS_MARKER, tutorials_list(page_dir))
    if SUPPORT_MARKER in markdown:
        markdown = markdown.replace(SUPPORT_MARKER, support_table())
    elif uri == "support.md":
        log.warning("support.md lost its %s marker: the generated table has nowhere to go", SUPPORT_MARKER)
    return _rewrite_notebook_links(markdown, uri)


def on_page_content(html, page, config, files):
    if page.file.src_uri.startswith(f"{TUTORIALS_DIR}/") and page.file.src_uri.endswith(".ipynb"):
        return _rewrite_notebook_html(html, page, files)
    return html


if __name__ == "__main__":
    print(support_table())
