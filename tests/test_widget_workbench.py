"""The Workbench: all panels over one prompt, linked through one Selection (no browser)."""

import pytest
import torch
from widget_comm import front_end_sends, front_end_sets, hold_first_report

from widgets import Workbench

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture
def wb(comm, demo):
    return Workbench(demo, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")


def test_every_panel_is_built_on_the_prompt(wb, demo):
    assert set(wb.panels) == {"hooks", "attention", "logit_lens", "composition", "patching", "generation"}
    assert all(p.selection is wb.selection for p in wb.panels.values())
    assert [p.error for p in wb.panels.values()] == [""] * 6
    assert wb.generation.prompt == CLEAN and wb.generation.generated == []  # it generates on request
    assert wb.selection.tokens == demo.to_str_tokens(CLEAN)
    assert wb.attention.tokens == wb.selection.tokens
    assert wb.logit_lens.result.str_tokens == wb.selection.tokens
    assert "patch" in wb.patching.code or "cost" in wb.patching.cost.lower() or wb.patching.cost


def test_composition_click_opens_both_heads_in_attention(wb):
    res = wb.composition.result
    n = res.n_layers * res.n_heads
    valid = torch.nonzero(res.valid.reshape(n, n))
    sender, receiver = (int(i) for i in valid[-1])
    front_end_sends(wb.composition, {"type": "action", "name": "select",
                                     "args": {"sender": sender, "receiver": receiver}})
    h = wb.bridge.cfg.n_heads
    want = [(sender // h, sender % h), (receiver // h, receiver % h)]
    assert wb.composition.error == ""
    assert [tuple(p) for p in wb.attention.heads] == want
    assert (wb.attention.layer, wb.attention.head) == want[1]
    assert want[0] in wb.attention.views() and want[1] in wb.attention.views()
    assert "L" in wb._where.value and f"L{want[0][0]}H{want[0][1]}" in wb._where.value


def test_lens_click_moves_patching_and_attention(wb):
    rows = wb.logit_lens.result.rows
    click = {"type": "action", "name": "select", "args": {"row": len(rows) - 2, "col": 9}}
    front_end_sends(wb.logit_lens, click)
    layer = wb.logit_lens.result.layers[len(rows) - 2]
    assert (wb.selection.layer, wb.selection.position) == (layer, 9)
    assert (wb.patching.layer, wb.patching.position) == (layer, 9)
    assert (wb.attention.layer, wb.attention.position) == (layer, 9)
    assert repr(wb.selection.tokens[9]) in wb._where.value


def test_patching_click_moves_the_others(wb):
    front_end_sends(wb.patching, {"type": "action", "name": "click", "args": {"layer": 2, "position": 5}})
    assert wb.patching.error == ""
    assert (wb.selection.layer, wb.selection.position) == (2, 5)
    assert wb.logit_lens.layer == 2 and wb.attention.position == 5


def test_a_new_prompt_reaches_every_panel(wb, demo):
    prompt = "When Nora and Felix went to the garden, Felix gave a drink to"
    wb._prompt.value = prompt  # the header's text box
    assert wb.selection.tokens == demo.to_str_tokens(prompt)
    assert wb.attention.tokens == wb.selection.tokens
    assert wb.logit_lens.result.str_tokens == wb.selection.tokens
    assert wb.patching.prompt == prompt and wb.hooks.prompt == prompt
    front_end_sets(wb.attention, prompt=CLEAN)  # typed into one panel: all follow
    assert wb.logit_lens.prompt == CLEAN and wb._prompt.value == CLEAN


def test_panel_subset_and_errors(comm, demo):
    wb = Workbench(demo, CLEAN, panels=("attention", "logit_lens"))
    assert list(wb.panels) == ["attention", "logit_lens"] and not hasattr(wb, "patching")
    with pytest.raises(ValueError, match="non-empty subset"):
        Workbench(demo, CLEAN, panels=("attention", "nope"))


def test_other_panels_wait_for_a_running_sweep(wb):
    """A sweep attaches hooks and swaps blocks on the shared model in its thread: meanwhile the
    other panels refuse to run the model (and say why) instead of reading a half-patched one."""
    first, go = hold_first_report(wb.patching)
    front_end_sends(wb.patching, {"type": "action", "name": "run"})
    assert first.wait(60)
    wb.logit_lens.model_wait_s = 0.2  # panels wait a while for the model, then refuse
    front_end_sets(wb.logit_lens, sites=["resid_pre", "resid_post"])
    assert "busy with a background job, a patching sweep or a generation (still after 0.2 s)" in (
        wb.logit_lens.error)
    go.set()
    assert wb.patching.wait(timeout=60) is not None
    front_end_sets(wb.logit_lens, error="", sites=["resid_mid"])
    assert wb.logit_lens.error == "" and wb.logit_lens.result.sites == ["resid_mid"] * wb.bridge.cfg.n_layers


def test_every_panel_works_on_a_bfloat16_model(comm):
    """A half-precision model (as GPU users load theirs): every panel builds, answers its
    browser's requests, sweeps, generates and explains a step, with no error shown."""
    from widget_comm import reply

    from workbench import Bridge

    half = Bridge.from_pretrained("workbench-demo", dtype=torch.bfloat16)
    wb = Workbench(half, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")
    wb.patching.wait(timeout=120)  # the attribution estimate, in the background
    front_end_sends(wb.patching, {"type": "action", "name": "run", "args": {}})
    result = wb.patching.wait(timeout=120)
    assert result is not None and torch.isfinite(result.values).all()
    assert result.values.shape[0] == half.cfg.n_layers and result.values.abs().max() > 0
    for panel, request in ((wb.attention, {"kind": "head", "layer": 1, "head": 2}),
                           (wb.attention, {"kind": "thumbs", "layer": 0}),
                           (wb.logit_lens, {"kind": "lens", "version": wb.logit_lens.version}),
                           (wb.composition, {"kind": "scores", "version": wb.composition.version})):
        meta, buffers = reply(panel, request)
        assert "error" not in meta and buffers, (type(panel).__name__, meta)
    front_end_sets(wb.hooks, hooks=["blocks.1.attn.hook_pattern", "blocks.2.hook_resid_post"])
    assert wb.hooks.cache["blocks.1.attn.hook_pattern"].dtype == torch.bfloat16
    front_end_sends(wb.generation, {"type": "action", "name": "generate", "args": {}})
    assert wb.generation.wait(timeout=120) and wb.generation.generated
    front_end_sets(wb.generation, picked=1, layer=2)  # a click on the second token
    view = wb.generation.step_view
    assert [r["layer"] for r in view["lens"]] == list(range(half.cfg.n_layers))
    meta, buffers = reply(wb.generation, {"kind": "step_attention", "index": 1, "layer": 2,
                                          "run": view["run"]})
    assert "error" not in meta and buffers
    assert [p.error for p in wb.panels.values()] == [""] * 6
