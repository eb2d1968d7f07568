"""The documentation site builds with ``mkdocs build --strict`` (a broken link or anchor, a page
missing from the nav, an API entry griffe cannot render, a public name without an entry all fail),
its generated parts are there, and every relative link in docs/*.md and README.md resolves."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
for _mod in ("mkdocs", "mkdocstrings_handlers.python", "mkdocs_jupyter", "material"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed: the docs tests need the dev extra "
                                     "(.venv/bin/pip install -e '.[dev]', which make test does)")

sys.path.insert(0, str(ROOT / "scripts"))
import docs_hooks  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once with --strict into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean",
                          "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - start
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    print(f"mkdocs build --strict: {took:.1f} s")
    return out


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_site_builds_with_every_page(site):
    assert (site / "index.html").is_file()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "index.md":
            assert (site / page.stem / "index.html").is_file(), f"{page.name} has no page"
    for img in (ROOT / "docs" / "img").glob("panel_*.png"):
        assert (site / "img" / img.name).is_file()


def test_tutorials_are_rendered_without_running(site):
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    home = _text(site / "index.html")
    for nb in notebooks:
        page = site / "notebooks" / nb.stem / "index.html"
        assert page.is_file(), f"{nb.name} has no page"
        assert (page.parent / nb.name).is_file()  # downloadable beside its page
        assert f'href="notebooks/{nb.stem}/"' in home  # nav and the list on the home page


def test_support_table_comes_from_the_tests(site):
    html = _text(site / "support" / "index.html")
    assert "<!-- support-table -->" not in html
    for variant in VARIANTS:
        assert f"<code>{variant}</code>" in html
    for module in docs_hooks.variant_test_modules():
        assert f"tests/{module.name}" in html
    # the fixture-graph reading sees the tests the suite parametrizes over the variants
    names = {m.name for m in docs_hooks.variant_test_modules()}
    assert {"test_parity.py", "test_hooks.py", "test_transformer_lens_oracle.py"} <= names


def test_api_reference_covers_all(site):
    for page, package in docs_hooks.API_PAGES.items():
        html = _text(site / page.removesuffix(".md") / "index.html")
        for name in docs_hooks.public_names(package):
            assert re.search(rf'id="{package}\.(\w+\.)*{name}"', html), f"{package}.{name} not in {page}"
        assert not re.search(r":(class|func|meth|mod):<code>", html), "a Sphinx role was not rewritten"


def test_site_loads_nothing_from_the_network(site):
    for page in site.rglob("*.html"):
        tags = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(https?:)?//[^"]*"', _text(page))
        assert not tags, f"{page.relative_to(site)} loads from the network"


def test_every_link_in_the_site_resolves(site):
    """Beyond what --strict checks in Markdown: links inside the rendered notebooks and the theme."""
    broken = []
    for page in site.rglob("*.html"):
        for target in re.findall(r'\b(?:href|src)="([^"#?]*)', _text(page)):
            if not target or re.match(r"^([a-z][a-z0-9+.-]*:|//)", target, flags=re.I):
                continue
            path = (site / target.lstrip("/")) if target.startswith("/") else (page.parent / target)
            if not (path.is_file() or (path / "index.html").is_file()):
                broken.append(f"{page.relative_to(site)} -> {target}")
    assert not broken, "\n".join(broken)


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def _relative_links(md: str) -> list[str]:
    md = re.sub(r"^(```|~~~).*?^\1", "", md, flags=re.M | re.S)  # fenced code
    md = re.sub(r"`[^`\n]*`", "", md)  # inline code
    targets = [a or b for a, b in LINK.findall(md)]
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", t, flags=re.I)]


@pytest.mark.parametrize("path", [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = [t for t in _relative_links(_text(path))
              if not (path.parent / t.split("#")[0]).exists()]
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files {broken}"


def test_link_finder():
    md = ("[a](b.md) ![i](img/x.png \"t\") [web](https://x.org) [s](#sec) `[c](nope.md)`\n"
          "```\n[d](nope.md)\n```\n[ref]: other.md#part\n")
    assert _relative_links(md) == ["b.md", "img/x.png", "other.md#part"]
