"""Hostile prompts and tokens stay text, in every panel and every export, in a real JupyterLab
and Chromium.

What is proven, on a notebook of its own (``injection.ipynb``, own browser, the session's server):

- Two models. The demo model, whose byte-level tokenizer splits the payloads into small tokens,
  with a prompt holding every payload (HTML, SVG, ``</script>``, ``javascript:`` URLs, entities,
  template strings, bidi and zero-width characters). And a tiny random model whose tokenizer has
  each whole payload as ONE token: its prompts, answer/wrong tokens, logit-lens top-k tokens and
  target token are payloads.
- Every panel of a Workbench on each (hook picker, attention, logit lens, composition, patching)
  and a logit lens with a payload target: the panel's DOM holds only the elements the panels
  build themselves (no ``img``, ``script``, ``svg``, ``a``, ``b``, ``iframe``, ``style``, ...), no
  event-handler or URL attribute, and the payloads are there as text (token strip, tokenization
  rows, cell details, tooltips, notes, "copy as code", form values).
- Bidi controls and zero-width characters never reach the page raw (they would reorder or hide
  the text around them): tokens show them as visible escapes (``⟨U+202E⟩``), Python messages as
  ``repr`` escapes.
- Hovering tokens and cells and clicking cells runs nothing; error messages that quote a payload
  (a multi-token answer, a bad target, an unknown hook name) show it as text.
- Exports: each panel's standalone HTML (``to_html``) parses to the page template alone (no
  payload closes the ``<script>``), and opened in Chromium it renders the payloads as text with
  nothing injected; ``save_png`` writes a PNG through the front end; circuitsvis's HTML of the
  attention panel renders the tokens as text.
- Throughout: no dialog (``alert``) opened and the global ``__pwned``, which the script payloads
  set, stays undefined, in the notebook and in every exported page.

The checks were seen to fail: with the token strip drawn through ``innerHTML`` (a scratch copy of
the panels) the ``<img>`` element, ``__pwned`` and the raw bidi characters are reported; before
the circuitsvis export escaped its tokens, its page ran ``__pwned=11`` and an ``alert``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from html.parser import HTMLParser

import pytest
from playwright.sync_api import expect

from . import harness
from .conftest import CHROMIUM, KERNEL_IDLE
from .harness import grid_click

pytestmark = pytest.mark.browser
T = 30_000  # ms for one round trip to the kernel and back

# -- payloads ------------------------------------------------------------------------------------
# the demo model: short payloads (its tokenizer splits them; all must fit its 256-token context)
DEMO = ['<img src=x onerror=__pwned=1>', '<img/src="x"/onerror=__pwned=11>',
        '<svg onload=__pwned=2><script>__pwned=3</script></svg>', '</script><script>alert(4)</script>',
        '<a href="javascript:alert(5)">x</a>', 'javascript:alert(6)',
        '&lt;b&gt;', '<b>bold</b>', '{{7*7}}', '${alert(8)}', '\u202eevil\u2066', 'z\u200bw\u200d']
DEMO_CLEAN = "When Nora and Felix went to " + " ".join(DEMO) + ", Felix gave a drink to"
DEMO_CORRUPTED = DEMO_CLEAN.replace(", Felix gave", ", Nora gave")
# the hostile model: each of these is one token
WORDS = ['<img src=x onerror="window.__pwned=1;alert(1)">',
         ' <img src=x onerror="window.__pwned=11;alert(11)">',  # a leading space, as in GPT-2's tokens
         '<svg onload="window.__pwned=2;alert(2)"><script>window.__pwned=3;alert(3)</script></svg>',
         '</script><script>window.__pwned=4;alert(4)</script>',
         '<a href="javascript:window.__pwned=5;alert(5)">x</a>',
         'javascript:window.__pwned=6',
         '&lt;b&gt;',
         '<b>bold</b>',
         '<details open ontoggle="window.__pwned=7">',
         '<iframe srcdoc="<script>parent.__pwned=9</script>"></iframe>',
         '<!--<script>window.__pwned=10</script>-->',
         '<style>*{display:none}</style>',
         '{{7*7}}',
         '${window.__pwned=8}',
         'abc\u202edef',  # right-to-left override: raw, it would show "abcfed"
         '\u2066\u05d0\u2069x',  # an isolate around a Hebrew letter
         'zero\u200bwidth\u200djoin',
         '\u200b']  # a token that is nothing but a zero-width space (keep these four last)
SPECIALS = ["<bos>", "<pad>", "<unk>"]
EVIL_CLEAN = "".join(WORDS)
EVIL_CORRUPTED = "".join(WORDS[1:] + WORDS[:1])  # as many tokens, rotated
EVIL_TOKENS = ["<bos>", *WORDS]
BIDI = len(EVIL_TOKENS) - 4  # the position of the first bidi token
ASCII_DEMO = [p for p in DEMO if p.isascii()]
ASCII_WORDS = [w for w in WORDS if w.isascii()]

# what common.js's tokenText shows for invisible and direction-changing characters (the same
# pattern works in Python's re and in JavaScript)
INVISIBLE = (r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f"
             r"\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]")


def shown(token: str) -> str:
    """A token as the panels show it (common.js tokenText)."""
    text = token.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "\u240d")
    return re.sub(INVISIBLE, lambda m: f"\u27e8U+{ord(m.group()):04X}\u27e9", text)


CELLS = [
    "import torch\ntorch.set_num_threads(1)\n"
    "from tokenizers import Tokenizer\nfrom tokenizers.models import WordLevel\n"
    "from transformers import PreTrainedTokenizerFast\n"
    "from workbench import Bridge\nfrom workbench.toy import tiny_model\n"
    "from widgets import LogitLensPanel, Workbench\n"
    "bridge = Bridge.from_pretrained('workbench-demo')\n"
    f"WORDS = {WORDS!r}\n"
    f"vocab = {{t: i for i, t in enumerate({SPECIALS!r} + WORDS)}}\n"
    "tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token='<unk>')),\n"
    "                              bos_token='<bos>', pad_token='<pad>', unk_token='<unk>')\n"
    "tok.add_tokens(WORDS)  # every payload is one whole token\n"
    "hostile = Bridge.from_hf(tiny_model('gpt2', n_layers=2, n_heads=4, vocab=len(tok)), tok)\n"
    f"assert hostile.to_str_tokens({EVIL_CLEAN!r}) == ['<bos>'] + WORDS\n"
    "def tag(wb, prefix):\n"
    "    for name, p in wb.panels.items():\n"
    "        p.add_class(f'inj-{prefix}-{name}')",
    f"demo = Workbench(bridge, prompt={DEMO_CLEAN!r}, corrupted={DEMO_CORRUPTED!r}, answer='<', wrong='>')\n"
    "tag(demo, 'demo')\ndemo.patching.wait(timeout=120)\n"
    "demo.generation.max_new_tokens = 4\ndemo.generation.generate()\ndemo.generation.wait(120)\n"
    "demo.generation.pick(0)\ndemo",
    f"evil = Workbench(hostile, prompt={EVIL_CLEAN!r}, corrupted={EVIL_CORRUPTED!r},\n"
    "                answer=WORDS[0], wrong=WORDS[2])\n"
    "tag(evil, 'evil')\nevil.patching.wait(timeout=120)\n"
    "evil.generation.max_new_tokens = 6\nevil.generation.generate()\nevil.generation.wait(120)\n"
    "evil.generation.pick(0)\n"
    "evil.hooks.hooks = [WORDS[0]]  # not a hook: the error message quotes it\nevil",
    f"lens = LogitLensPanel(hostile, {EVIL_CLEAN!r}, target=WORDS[3], k=8)\n"
    "lens.add_class('inj-evil-lens')\nlens",
    "PANELS = {f'{w}-{n}': p for w, wb in (('demo', demo), ('evil', evil)) for n, p in wb.panels.items()}\n"
    "PANELS['evil-lens'] = lens\n"
    "def export_all():\n"
    "    for name, p in PANELS.items():\n"
    "        p.to_html(f'export-{name}.html')\n"
    "        if not name.endswith('hooks'):  # the hook picker is text: no PNG\n"
    "            p.save_png(f'export-{name}.png')\n"
    "    demo.attention.to_circuitsvis('export-demo-circuitsvis.html')\n"
    "    evil.attention.to_circuitsvis('export-evil-circuitsvis.html')",
]
KINDS = ("hooks", "attention", "logit_lens", "composition", "patching", "generation")
PANELS = [f"{w}-{k}" for w in ("demo", "evil") for k in KINDS] + ["evil-lens"]
PNG_PANELS = [p for p in PANELS if not p.endswith("hooks")]

# the elements the panels build (common.js h() and the panel files); anything else is injected
BUILT = ["div", "span", "button", "canvas", "input", "select", "option", "label", "details", "summary",
         "pre", "textarea", "datalist", "progress", "table", "tbody", "tr", "td"]
SCAN = """([root, built, invisible]) => {
  const ok = new Set(built), re = new RegExp(invisible), out = [];
  for (const top of document.querySelectorAll(root)) {
    for (const e of top.querySelectorAll("*")) {
      if (!ok.has(e.localName)) out.push("element <" + e.localName + ">");
      for (const a of e.attributes)
        if (/^on|^(href|src|srcdoc|action|formaction|xlink:href)$/i.test(a.name))
          out.push("attribute " + a.name);
    }
    const walk = document.createTreeWalker(top, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode())
      if (re.test(n.data)) out.push("raw invisible/bidi character in text " + JSON.stringify(n.data));
  }
  return out;
}"""
# anywhere in a notebook output (not only inside the panels): elements a payload could make
INJECTED = ("img, script, svg, iframe, frame, object, embed, style, a, details[ontoggle], "
            "[onerror], [onload], [ontoggle], [href], [src], [srcdoc]")


def scan(pg, root: str = ".wb-panel") -> list[str]:
    return pg.evaluate(SCAN, [root, BUILT, INVISIBLE])


def nothing_ran(pg) -> None:
    assert pg.evaluate("typeof window.__pwned") == "undefined"
    assert not [e for e in pg.errors if e.startswith("dialog")], pg.errors


def _stop_kernels(lab, name: str) -> None:
    """Shut down this notebook's kernel (the other browser tests share the server)."""
    url = f"{lab.url}/api/sessions?token={lab.token}"
    with urllib.request.urlopen(url, timeout=5) as r:
        sessions = json.load(r)
    for s in sessions:
        if s.get("path", "").endswith(name):
            req = f"{lab.url}/api/sessions/{s['id']}?token={lab.token}"
            urllib.request.urlopen(urllib.request.Request(req, method="DELETE"), timeout=10).close()


@pytest.fixture(scope="module")
def nb(lab):
    """``injection.ipynb`` opened in a browser of its own and run to the end."""
    from playwright.sync_api import sync_playwright

    harness.write_notebook(lab.root / "injection.ipynb", CELLS)
    harness.PROOF.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=harness.CHROMIUM_ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1400, "height": 2400}).new_page()
            harness.watch(pg)
            harness.open_and_run(pg, lab, "injection.ipynb", len(CELLS), len(PANELS))
            yield pg
        finally:
            browser.close()
            with contextlib.suppress(OSError):
                _stop_kernels(lab, "injection.ipynb")


def panel(pg, name: str):
    return pg.locator(f".wb-panel.inj-{name}")


def texts(locator) -> list[str]:
    return locator.evaluate_all("(els) => els.map((e) => e.textContent)")


def run_cell(pg, code: str) -> None:
    """Add a cell at the end, put ``code`` in it and run it; wait until it has run."""
    cells = pg.locator(".jp-Notebook .jp-Cell")
    n = cells.count()
    cells.last.locator(".jp-InputPrompt").click()
    pg.keyboard.press("Escape")
    pg.keyboard.press("b")
    expect(cells).to_have_count(n + 1)
    cell = cells.nth(n)
    cell.locator(".cm-content").fill(code)
    pg.keyboard.press("Control+Enter")  # run it and stay (Shift+Enter would add another cell)
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=T)


def selection_line(pg, wb: str):
    """The Workbench's selection line (an ipywidgets Label that Python writes)."""
    out = pg.locator(".jp-OutputArea-output").filter(has=pg.locator(f".inj-{wb}-attention"))
    return out.locator(".widget-label", has_text="selected: layer")


# -- the live panels -----------------------------------------------------------------------------
def _payload_text(pg, name: str) -> None:
    p = panel(pg, name)
    wb, kind = name.split("-")
    if name == "demo-attention":
        strip = "".join(texts(p.locator(".wb-tok")))
        assert all(d in strip for d in ASCII_DEMO), strip
        expect(p.locator("textarea")).to_have_value(DEMO_CLEAN)
    elif name == "evil-attention":
        assert texts(p.locator(".wb-tok")) == [shown(t) for t in EVIL_TOKENS]
        expect(p.locator("textarea")).to_have_value(EVIL_CLEAN)
    elif kind == "patching":
        clean, corrupted = (DEMO_CLEAN, DEMO_CORRUPTED) if wb == "demo" else (EVIL_CLEAN, EVIL_CORRUPTED)
        toks = texts(p.locator(".wb-tok"))
        if wb == "evil":  # the clean row, then the corrupted row
            n = len(EVIL_TOKENS)
            assert toks[:2 * n] == [shown(t) for t in EVIL_TOKENS + ["<bos>", *WORDS[1:], WORDS[0]]]
        else:
            assert all(d in "".join(toks) for d in ASCII_DEMO)
        expect(p.locator("input[type=text]").nth(0)).to_have_value(clean)
        expect(p.locator("input[type=text]").nth(1)).to_have_value(corrupted)
        answer, wrong = ("<", ">") if wb == "demo" else (WORDS[0], WORDS[2])
        expect(p.get_by_placeholder(re.compile("answer token"))).to_have_value(answer)
        expect(p.get_by_placeholder(re.compile("wrong token"))).to_have_value(wrong)
    elif kind == "generation":  # the prompt's tokens, then the generated ones; a step's lens
        prompt_toks = texts(p.locator(".wb-gen-prompt-tok"))
        if wb == "evil":
            assert prompt_toks == [shown(t) for t in EVIL_TOKENS]
        else:
            assert all(d in "".join(prompt_toks) for d in ASCII_DEMO)
        expect(p.locator(".wb-gen-tok")).not_to_have_count(0)
        expect(p.locator(".wb-gen-lens-table tr")).not_to_have_count(0)
        prompt = p.get_by_placeholder("prompt", exact=True)
        expect(prompt).to_have_value(DEMO_CLEAN if wb == "demo" else EVIL_CLEAN)
    elif kind == "hooks":
        prompt = p.get_by_placeholder("prompt", exact=True)
        expect(prompt).to_have_value(DEMO_CLEAN if wb == "demo" else EVIL_CLEAN)
    elif name == "evil-lens":
        expect(p.locator(".wb-lens-note")).to_contain_text(f"target '{shown(WORDS[3])}'")
        expect(p.get_by_placeholder("target token")).to_have_value(WORDS[3])
    if kind in ("hooks", "logit_lens", "lens"):  # the prompt, in the Python call ("copy as code")
        code = p.locator(".wb-code").text_content()
        assert all(w in code for w in (ASCII_DEMO if wb == "demo" else ASCII_WORDS)), code
    if kind != "hooks":
        expect(p.locator("canvas").first).to_be_visible()


@pytest.mark.parametrize("name", PANELS)
def test_panel_shows_payloads_as_text(nb, name):
    p = panel(nb, name)
    expect(p).to_have_count(1)
    expect(p.locator(".wb-busy")).to_be_hidden(timeout=T)
    if name != "evil-hooks":  # that one shows an error on purpose (test_errors_quote_payloads_as_text)
        expect(p.locator(".wb-error")).to_be_hidden()
    _payload_text(nb, name)
    assert scan(nb, f".wb-panel.inj-{name}") == []
    nothing_ran(nb)


def test_outputs_hold_nothing_injected(nb):
    outputs = nb.locator(".jp-OutputArea-output")
    expect(outputs.filter(has_text="Error displaying widget")).to_have_count(0)
    expect(outputs.locator(INJECTED)).to_have_count(0)
    # the only bold text is each Workbench's own header
    assert texts(outputs.locator("b")) == ["Workbench", "Workbench"]
    for wb in ("demo", "evil"):
        expect(selection_line(nb, wb)).to_be_visible()
    nothing_ran(nb)


def test_bidi_and_zero_width_show_as_escapes(nb):
    strip = panel(nb, "evil-attention").locator(".wb-tok")
    expect(strip.nth(BIDI)).to_have_text("abc\u27e8U+202E\u27e9def")
    expect(strip.nth(BIDI + 1)).to_have_text("\u27e8U+2066\u27e9\u05d0\u27e8U+2069\u27e9x")
    expect(strip.nth(BIDI + 2)).to_have_text("zero\u27e8U+200B\u27e9width\u27e8U+200D\u27e9join")
    expect(strip.nth(BIDI + 3)).to_have_text("\u27e8U+200B\u27e9")
    box = strip.nth(BIDI + 3).bounding_box()
    assert box["width"] > 20, box  # the zero-width token takes visible room
    # the demo tokenizer cuts these characters into bytes: shown as replacement characters
    demo = "".join(texts(panel(nb, "demo-attention").locator(".wb-tok")))
    assert "\u202e" not in demo and "\ufffd" in demo
    assert scan(nb) == []


def test_hover_and_click_run_nothing(nb):
    att = panel(nb, "evil-attention")
    strip = att.locator(".wb-tok")
    tip = att.locator(".wb-tip")
    for i in range(len(EVIL_TOKENS)):  # every token as a query: the tooltip names it, as text
        strip.nth(i).hover()
        expect(tip).to_contain_text(f"query {i}  {shown(EVIL_TOKENS[i])}", timeout=T)
    strip.nth(1).click()
    expect(selection_line(nb, "evil")).to_contain_text(f"position 1 {WORDS[0]!r}", timeout=T)
    strip.nth(BIDI).click()  # Python's repr escapes the override in the selection line
    expect(selection_line(nb, "evil")).to_contain_text(f"position {BIDI} 'abc\\u202edef'", timeout=T)

    lens = panel(nb, "evil-logit_lens")
    canvas = lens.locator("canvas.wb-heatmap")
    for col in (1, 3, BIDI):
        grid_click(nb, canvas, 1, col, "hover")
        expect(lens.locator(".wb-tip")).to_contain_text(f"pos {col}  '{shown(EVIL_TOKENS[col])}'")
    tops = texts(lens.locator(".wb-tip div"))[1:6]  # the top-5: tokens of the hostile vocabulary
    assert all(re.fullmatch(r"\d\. '.*'  \S+", t) for t in tops), tops
    assert any(shown(w) in t for w in WORDS for t in tops), tops
    grid_click(nb, canvas, 1, 2)
    expect(selection_line(nb, "evil")).to_contain_text(f"position 2 {WORDS[1]!r}", timeout=T)

    patch = panel(nb, "evil-patching")
    grid_click(nb, patch.locator("canvas.wb-heatmap").first, 1, 3)
    expect(patch).to_contain_text("resid_pre L1 @ 3", timeout=T)
    moved = texts(patch.locator(".wb-col .wb-row .wb-tok"))  # tokens that rose and fell, quoted
    assert moved and all(json.loads(t) in [shown(w) for w in [*SPECIALS, *WORDS]] for t in moved), moved
    grid_click(nb, panel(nb, "evil-composition").locator("canvas.wb-heatmap"), 1, 5)
    expect(selection_line(nb, "evil")).to_contain_text("heads L0H1, L1H1", timeout=T)

    demo = panel(nb, "demo-attention").locator(".wb-tok")
    first = texts(demo).index("<")  # the demo prompt's first payload, '<img ...', cut into tokens
    for i in range(first, first + 12):
        demo.nth(i).hover()
    grid_click(nb, panel(nb, "demo-logit_lens").locator("canvas.wb-heatmap"), 4, first, "hover")
    expect(panel(nb, "demo-logit_lens").locator(".wb-tip")).to_contain_text(f"pos {first}  '<'")
    grid_click(nb, panel(nb, "demo-patching").locator("canvas.wb-heatmap").first, 2, first + 1)
    expect(panel(nb, "demo-patching")).to_contain_text(f"resid_pre L2 @ {first + 1}", timeout=T)
    expect(selection_line(nb, "demo")).to_contain_text(f"position {first + 1} 'im'", timeout=T)

    idle = nb.locator("#jp-main-statusbar").get_by_text(KERNEL_IDLE)
    expect(idle).to_be_visible(timeout=T)
    assert scan(nb) == []
    expect(nb.locator(".jp-OutputArea-output").locator(INJECTED)).to_have_count(0)
    nothing_ran(nb)


def shows_error(p, text: str) -> None:
    error = p.locator(".wb-error")
    expect(error).to_be_visible(timeout=T)
    expect(error.locator(".wb-error-msg")).to_contain_text(text)


def test_errors_quote_payloads_as_text(nb):
    hooks = panel(nb, "evil-hooks")  # an unknown hook name, set from Python
    shows_error(hooks, f"unknown hook names [{WORDS[0]!r}]")
    hooks.get_by_role("button", name="dismiss").click()
    expect(hooks.locator(".wb-error")).to_be_hidden(timeout=T)

    patch = panel(nb, "demo-patching")  # an answer that is many tokens of the demo model
    answer = patch.get_by_placeholder(re.compile("answer token"))
    answer.fill(DEMO[0])
    answer.press("Enter")
    shows_error(patch, repr(DEMO[0]))
    answer.fill("<")
    answer.press("Enter")
    expect(patch.locator(".wb-error")).to_be_hidden(timeout=T)

    lens = panel(nb, "demo-logit_lens")  # a target with markup and a bidi override
    target = lens.get_by_placeholder("target token")
    bad = "<svg onload=__pwned=12>\u202e"
    target.fill(bad)
    target.press("Enter")
    shows_error(lens, "got '<svg onload=__pwned=12>\\u202e'")
    assert scan(nb) == []  # the message and its traceback hold the override escaped
    lens.locator(".wb-error").get_by_role("button", name="dismiss").click()
    target.fill("")
    target.press("Enter")
    expect(lens.locator(".wb-error")).to_be_hidden(timeout=T)
    expect(nb.locator(".jp-OutputArea-output").locator(INJECTED)).to_have_count(0)
    nothing_ran(nb)


# -- exports -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(nb, lab):
    """Every panel's HTML and PNG export and circuitsvis's pages, written from the notebook."""
    for old in lab.root.glob("export-*"):
        old.unlink()
    run_cell(nb, "export_all()")
    pngs = [lab.root / f"export-{name}.png" for name in PNG_PANELS]
    deadline = time.monotonic() + 30  # the PNGs come back from the front end after the cell
    while not all(p.exists() for p in pngs) and time.monotonic() < deadline:
        nb.wait_for_timeout(100)
    return lab.root


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_html_exports_parse_to_the_template(exported):
    for name in PANELS:
        page = (exported / f"export-{name}.html").read_text(encoding="utf-8")
        parser = _Tags()
        parser.feed(page)
        assert parser.tags == ["html", "head", "meta", "title", "style", "body", "p", "div", "script"], name
        assert page.lower().count("</script") == 1 and "<!--" not in page, name
        assert not re.search(INVISIBLE, page), name  # JSON escapes: the page source holds none raw


def open_static(nb, path):
    pg = nb.context.new_page()
    harness.watch(pg)
    pg.goto(path.as_uri())
    return pg


@pytest.mark.parametrize("name", PANELS)
def test_html_export_in_chromium(nb, exported, name):
    pg = open_static(nb, exported / f"export-{name}.html")
    try:
        p = pg.locator(".wb-panel")
        expect(p).to_have_count(1)
        wb, kind = name.split("-")
        if kind == "attention":
            strip = p.locator(".wb-tok")
            expect(strip.first).to_be_visible()
            if wb == "evil":
                assert texts(strip) == [shown(t) for t in EVIL_TOKENS]
            else:
                assert all(d in "".join(texts(strip)) for d in ASCII_DEMO)
            for i in range(1, 6):  # hover works in the export
                strip.nth(i).hover()
            expect(p.locator(".wb-tip")).to_be_visible()
        elif kind == "patching":
            expect(p.locator(".wb-tok").first).to_be_visible()
            toks = "".join(texts(p.locator(".wb-tok")))
            assert all(w in toks for w in (ASCII_DEMO if wb == "demo" else ASCII_WORDS)), toks
        elif kind in ("logit_lens", "lens"):
            canvas = p.locator("canvas.wb-heatmap")
            expect(canvas).to_be_visible()
            grid_click(pg, canvas, 1, 1, "hover")
            first = "" if wb == "demo" else shown(WORDS[0])
            expect(p.locator(".wb-tip")).to_contain_text(f"pos 1  '{first}")
            if kind == "lens":
                expect(p.locator(".wb-lens-note")).to_contain_text(f"target '{shown(WORDS[3])}'")
        elif kind == "composition":
            expect(p.locator("canvas.wb-heatmap")).to_be_visible()
        if kind in ("hooks", "logit_lens", "lens"):
            code = p.locator(".wb-code").text_content()
            assert all(w in code for w in (ASCII_DEMO if wb == "demo" else ASCII_WORDS)), code
        assert pg.title().endswith(" (workbench export)"), pg.title()
        assert scan(pg) == []
        expect(pg.locator(INJECTED.replace("script, ", "").replace("style, ", ""))).to_have_count(0)
        expect(pg.locator("body script")).to_have_count(1)  # the page's own module
        expect(pg.locator("body style")).to_have_count(0)  # (its own style is in the head)
        nothing_ran(pg)
        assert pg.errors == []
    finally:
        pg.close()


def test_png_exports(nb, exported):
    for name in PNG_PANELS:
        path = exported / f"export-{name}.png"
        assert path.exists(), (f"{name}: no PNG came back from the front end",
                               texts(nb.locator(".wb-error-msg")))
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
        expect(panel(nb, name).locator(".wb-error")).to_be_hidden()
    nothing_ran(nb)


def test_circuitsvis_export_in_chromium(nb, exported):
    """circuitsvis sets each token as HTML (a button's innerHTML): the export escapes them."""
    demo = (exported / "export-demo-circuitsvis.html").read_text(encoding="utf-8")
    # the demo prompt's pieces, escaped (its view of 239 tokens takes half a minute to draw in
    # Chromium, so only the hostile model's page is opened)
    assert '"&lt;|endoftext|&gt;", "When"' in demo and '"&lt;", "im"' in demo
    path = exported / "export-evil-circuitsvis.html"
    scripts = path.read_text(encoding="utf-8").lower().count("<script")
    pg = open_static(nb, path)
    try:
        buttons = pg.locator("button")  # one per token
        expect(buttons).to_have_count(len(EVIL_TOKENS), timeout=T)
        toks = texts(buttons)  # it shows the first space of a token as nbsp
        assert toks == [shown(t).replace(" ", "\xa0", 1) for t in EVIL_TOKENS], toks
        assert pg.locator("script").count() <= scripts  # its renderer replaces its own script
        expect(pg.locator("script").filter(has_text="__pwned")).to_have_count(0)
        expect(pg.locator("button *")).to_have_count(0)  # the tokens are text only
        expect(pg.locator("img, iframe, object, embed, [onerror], [onload], [ontoggle], [srcdoc], "
                          "a[href^='javascript' i], details[ontoggle]")).to_have_count(0)
        expect(pg.locator("b", has_text="bold")).to_have_count(0)
        buttons.nth(2).click()  # focus a token: nothing runs
        nothing_ran(pg)
    finally:
        pg.close()


def test_nothing_ran_and_no_console_errors(nb):
    nb.screenshot(path=str(harness.PROOF / "injection_notebook.png"))
    nothing_ran(nb)
    assert nb.errors == []
