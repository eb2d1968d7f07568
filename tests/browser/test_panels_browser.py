"""Every panel and the Workbench in a real JupyterLab + Chromium, on the demo model: it renders,
a real click or hover reaches Python and comes back into the view, an error in a callback is
shown in the panel, and tokens that look like markup stay text.

The Python side is checked through what only Python writes: the Workbench's selection line, a
panel's "copy as code" text, cached shapes, the patching result's label.
"""

import json
import re

from playwright.sync_api import expect

from .harness import PANELS, PROOF, grid_click, panel, shoot

T = 30_000  # ms for one round trip to the kernel and back


def where(page):
    """The Workbench's selection line (an ipywidgets Label that Python rewrites)."""
    return page.locator(".widget-label", has_text="selected: layer")


def test_every_panel_renders(page):
    outputs = page.locator(".jp-OutputArea-output")
    expect(outputs.filter(has_text="Error displaying widget")).to_have_count(0)
    expect(outputs.filter(has_text="Loading widget")).to_have_count(0)
    for name in PANELS:
        p = panel(page, name)
        expect(p.locator(".wb-error")).to_be_hidden()
        expect(p.locator(".wb-busy")).to_be_hidden()
    for name in ("attention", "logit_lens", "composition", "patching"):
        expect(panel(page, name).locator("canvas").first).to_be_visible()
    expect(where(page)).to_contain_text("15 tokens")
    assert page.errors == []


def test_hook_picker_click_caches(page):
    p = panel(page, "hooks")
    search = p.get_by_placeholder(re.compile("search hooks"))
    search.fill("*.hook_pattern")  # searching opens every group
    expect(p.locator("label.wb-hook-row")).to_have_count(5)  # one per layer of the demo model
    search.fill("1.hook_resid_po")
    expect(p.locator("label.wb-hook-row")).to_have_count(1)
    p.locator("label.wb-hook-row input[type=checkbox]").check()
    expect(p).to_contain_text("blocks.1.hook_resid_post  [1, 15, 128]", timeout=T)  # shape from the cache
    expect(p.locator(".wb-code")).to_contain_text("names_filter=['blocks.1.hook_resid_post']")
    summary = r"1 hook\(s\) picked, 7\.5 KiB for this prompt \(batch 1\) · [\d.]+ GiB free on cpu"
    expect(p).to_contain_text(re.compile(summary))  # the estimate beside the memory free now
    shoot(p, "hooks")


def test_attention_thumbnail_click_and_hover(page):
    p = panel(page, "attention")
    p.locator("[data-head='3']").first.click()
    expect(p.locator(".wb-code")).to_contain_text("patterns.head(0, 3)", timeout=T)
    expect(where(page)).to_contain_text("head 3", timeout=T)
    strip = p.locator(".wb-tok[data-i='11']")
    strip.hover()
    expect(p).to_contain_text("relative to its largest", timeout=T)
    shoot(p, "attention")


def test_logit_lens_hover_click_and_error(page):
    p = panel(page, "logit_lens")
    canvas = p.locator("canvas.wb-heatmap")
    grid_click(page, canvas, 4, 14, "hover")  # the last layer's output at the last position
    expect(p.locator(".wb-tip")).to_be_visible()
    expect(p.locator(".wb-tip")).to_contain_text("Nora")  # the model's answer is in the top-k
    grid_click(page, canvas, 2, 10)
    expect(where(page)).to_contain_text("layer 2", timeout=T)
    expect(where(page)).to_contain_text("position 10 ' Felix'", timeout=T)
    target = p.get_by_placeholder("target token")
    target.fill("zq xv qq")
    target.press("Enter")
    error = p.locator(".wb-error")
    expect(error).to_be_visible(timeout=T)
    expect(error).to_contain_text("exactly one token")
    shoot(p, "logit_lens_error")
    error.get_by_role("button", name="dismiss").click()
    expect(error).to_be_hidden(timeout=T)
    target.fill("")
    target.press("Enter")
    shoot(p, "logit_lens")


def test_a_long_prompt_scrolls_instead_of_shrinking_the_lens(page):
    """Over a hundred positions: the lens keeps its cells wide enough for their top-1 token and
    scrolls sideways; the last position, scrolled to, answers a hover with its own top-k."""
    p = panel(page, "long_lens")
    canvas = p.locator("canvas.wb-heatmap")
    expect(canvas).to_be_visible(timeout=T)
    g = json.loads(canvas.get_attribute("data-grid"))
    assert g["cols"] > 100 and g["cw"] >= 28 and g["ch"] >= 14, g
    wrap = p.locator(".wb-heatmap-wrap")
    assert wrap.evaluate("e => e.scrollWidth > e.clientWidth + 1000")
    wrap.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    last = {"x": g["x0"] + (g["cols"] - 0.5) * g["cw"], "y": g["y0"] + (g["rows"] - 0.5) * g["ch"]}
    canvas.hover(position=last)
    expect(p.locator(".wb-tip")).to_contain_text(f"pos {g['cols'] - 1}  ' to'", timeout=T)
    # the row labels stay pinned at the frame's left edge, over the scrolled cells
    pinned, frame = p.locator("canvas.wb-heatmap-pinned"), wrap.bounding_box()
    expect(pinned).to_be_visible()
    box = pinned.bounding_box()
    assert abs(box["x"] - frame["x"]) < 1 and abs(box["width"] - g["x0"]) < 1, (box, frame, g)
    shoot(p, "logit_lens_long")


def test_composition_click_opens_both_heads(page):
    p, att = panel(page, "composition"), panel(page, "attention")
    # the previous-token head L1H3 -> the induction head L2H5 (8 heads a layer: 11 -> 21)
    grid_click(page, p.locator("canvas.wb-heatmap"), 11, 21)
    expect(where(page)).to_contain_text("heads L1H3, L2H5", timeout=T)
    expect(att).to_contain_text("L1H3", timeout=T)
    expect(att).to_contain_text("L2H5", timeout=T)
    shoot(p, "composition")


def test_patching_sweep_and_cell_click(page):
    p = panel(page, "patching")
    p.get_by_role("button", name="run sweep").click()
    expect(p).to_contain_text("75/75 cells", timeout=60_000)  # 5 layers x 15 positions
    expect(p.locator(".wb-busy")).to_be_hidden(timeout=T)
    grid_click(page, p.locator("canvas.wb-heatmap").first, 1, 10)
    expect(p).to_contain_text("resid_pre L1 @ 10", timeout=T)
    expect(p).to_contain_text("rose most")
    expect(where(page)).to_contain_text("position 10", timeout=T)
    expect(p.locator(".wb-code")).to_contain_text("patch_sweep(bridge")
    shoot(p, "patching")


def test_fifty_rapid_clicks_end_on_the_last(page):
    """50 clicks on different cells, as fast as Playwright clicks (no wait between them): when the
    kernel is idle again the panel and the selection show the last click's cell."""
    p = panel(page, "patching")
    canvas = p.locator("canvas.wb-heatmap").first
    cells = [(layer, pos) for pos in range(5, 15) for layer in range(5)]
    for row, col in cells:
        grid_click(page, canvas, row, col)
    layer, pos = cells[-1]
    idle = page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Idle$"))
    expect(idle).to_be_visible(timeout=T)
    expect(p).to_contain_text(f"resid_pre L{layer} @ {pos}", timeout=T)
    expect(where(page)).to_contain_text(f"layer {layer}", timeout=T)
    expect(where(page)).to_contain_text(f"position {pos}", timeout=T)
    page.wait_for_timeout(500)  # nothing older arrives after it
    expect(p).to_contain_text(f"resid_pre L{layer} @ {pos}")
    expect(p.locator(".wb-error")).to_be_hidden()


TOWARDS = ("When Mary and John went to the store, John gave a drink to | "
           "Then Mary and John walked home, and John gave a gift to")
AWAY = ("When John and Mary went to the store, Mary gave a drink to | "
        "Then John and Mary walked home, and Mary gave a gift to")


def test_generation_streams_explains_a_token_and_steers(page):
    p = panel(page, "generation")
    n = p.locator(".wb-gen-n")
    n.fill("5")
    n.press("Enter")
    p.get_by_role("button", name="generate", exact=True).click()
    expect(p.locator(".wb-gen-finish")).to_contain_text("stopped: end of text", timeout=T)
    toks = p.locator(".wb-gen-tok")
    expect(toks).to_have_text([" Nora", ".", "<|endoftext|>"])  # streamed: the demo's IOI answer
    toks.first.click()  # why ' Nora'? the step's logit lens and attention
    expect(p.locator(".wb-gen-step-head")).to_contain_text("token 0: ' Nora'", timeout=T)
    rows = p.locator(".wb-gen-lens-table tr")
    expect(rows).to_have_count(5)  # one per layer
    expect(rows.last.locator(".wb-gen-cand.wb-on")).to_contain_text("Nora")  # the last layer chose it
    expect(p.locator(".wb-gen-attn canvas")).to_be_visible(timeout=T)
    # steer towards ' Mary': layer 4, two prompt sets, the slider at 4
    p.locator(".wb-gen-steer-layer").select_option("4")
    for cls, text in ((".wb-gen-pos", TOWARDS), (".wb-gen-neg", AWAY)):
        box = p.locator(cls)
        box.fill(text)
        box.press("Enter")
    p.locator(".wb-gen-scale").evaluate("(el) => { el.value = '4'; el.dispatchEvent(new Event('change')); }")
    expect(p.locator(".wb-code")).to_contain_text("scale=4.0", timeout=T)  # Python has the setting
    p.get_by_role("button", name="generate", exact=True).click()
    expect(p.locator(".wb-gen-finish")).to_contain_text("5 new tokens · stopped: length", timeout=T)
    expect(toks.first).to_have_text(" Mary")
    toks.first.click()  # the steered step: the last layer now puts ' Mary' first
    expect(p.locator(".wb-gen-step-head")).to_contain_text("token 0: ' Mary'", timeout=T)
    expect(rows.last.locator(".wb-gen-cand").first).to_contain_text("Mary")
    expect(p.locator(".wb-error")).to_be_hidden()
    shoot(p, "generation")


def test_markup_tokens_stay_text(page):
    p = panel(page, "markup")
    strip = p.locator(".wb-tok")
    text = "".join(strip.all_text_contents())
    assert "<img src=x onerror=alert(1)>" in text and "</script><b>bold</b>" in text
    expect(page.locator(".wb-panel img")).to_have_count(0)
    expect(page.locator(".wb-panel b")).to_have_count(0)
    for i in range(3, 8):  # hovering re-colours the strip of markup-like tokens
        strip.nth(i).hover()
    assert not [e for e in page.errors if e.startswith("dialog")]
    shoot(p, "markup")


def run_cell(page, code: str) -> None:
    """Add a cell below the last one, type ``code`` and run it (as a user would, by keyboard)."""
    last = page.locator(".jp-Notebook .jp-Cell").last
    last.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    editor = page.locator(".jp-Notebook .jp-Cell").last.locator(".cm-content")
    editor.click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    expect(page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\| Idle$"))).to_be_visible(timeout=T)


def shows_error(p, text: str) -> None:
    """The panel's error area shows ``text``; dismissing it hides it."""
    error = p.locator(".wb-error")
    expect(error).to_be_visible(timeout=T)
    expect(error).to_contain_text(text)
    error.get_by_role("button", name="dismiss").click()
    expect(error).to_be_hidden(timeout=T)


def test_errors_in_callbacks_are_shown(page):
    solo = panel(page, "solo_hooks")  # hook picker: caching without a prompt
    solo.get_by_role("button", name="cache now").click()
    shows_error(solo, "no prompt")
    comp = panel(page, "composition")  # blank cells are not pairs: a click there does nothing,
    grid_click(page, comp.locator("canvas.wb-heatmap"), 12, 1)  # so set a bad kind from code
    expect(comp.locator(".wb-error")).to_be_hidden()
    run_cell(page, "wb.composition.kind = 'w'")
    shows_error(comp, "'w'")
    run_cell(page, "wb.composition.kind = 'k'")
    patch = panel(page, "patching")  # an answer that is not one token
    answer = patch.get_by_placeholder(re.compile("answer token"))
    answer.fill("zq xv")
    answer.press("Enter")
    shows_error(patch, "zq xv")
    answer.fill(" Nora")
    answer.press("Enter")
    expect(patch.locator(".wb-error")).to_be_hidden(timeout=T)
    att = panel(page, "markup")  # a prompt longer than the model's context (256 tokens)
    box = att.locator("textarea")
    box.fill("the cat sat " * 120)
    att.get_by_role("button", name="run").click()
    shows_error(att, "256")


def test_markup_in_the_patching_prompts_stays_text(page):
    patch = panel(page, "patching")
    corrupted = patch.locator("input[type=text]").nth(1)
    corrupted.fill("When <b>x</b> and <img src=y onerror=alert(2)> went, Nora gave a drink to")
    corrupted.press("Enter")
    expect(patch).to_contain_text("onerror", timeout=T)  # the tokenization row, as text
    expect(page.locator(".wb-panel img")).to_have_count(0)
    expect(page.locator(".wb-panel b")).to_have_count(0)
    assert not [e for e in page.errors if e.startswith("dialog")]


def test_no_console_errors(page):
    page.screenshot(path=str(PROOF / "notebook.png"))
    assert page.errors == []
