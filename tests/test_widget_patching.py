"""The patching panel without a browser: the front end is played through the recording comm
(tests/widget_comm.py); every number the panel shows is checked against the analysis function
called directly on the same inputs."""

import base64
import json
import threading

import pytest
import torch
from widget_comm import front_end_sends, front_end_sets, hold_first_report, reply

from widgets._base import _key
from widgets._patching_job import BackgroundJob
from widgets._selection import Selection
from widgets._transport import from_bytes
from widgets.patching import PatchingPanel
from workbench import Bridge, attribution_sweep, patch_cell, patch_sweep
from workbench.metrics import logit_diff
from workbench.toy import char_tokenizer, tiny_model

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
TWO_TOKEN_NAME = CORRUPTED.replace("Mary gave", "Maryse gave")  # " Mary" + "se": one token more
NODE = "/usr/bin/node"
FP16 = dict(rtol=1e-3, atol=2e-2)  # the grid travels as float16
N_POS = 15  # CLEAN's tokens, BOS included


def n_cells(demo) -> int:
    """The resid_pre sweep's cells on the demo model: layers x positions."""
    return demo.cfg.n_layers * N_POS


@pytest.fixture
def ioi(demo, comm):
    return PatchingPanel(demo, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")


def metric(bridge):
    return logit_diff(bridge, " Mary", " John")


def action(panel, name, **args):
    front_end_sends(panel, {"type": "action", "name": name, "args": args})


def run(panel):
    action(panel, "run")
    return panel.wait(timeout=120)


def grid(panel, which="exact"):
    """The grid as the browser decodes it: the float16 buffer of the current version."""
    version = getattr(panel, f"{which}_meta")["version"]
    meta, buffers = reply(panel, {"kind": "values", "which": which, "version": version})
    assert "error" not in meta and meta["dtype"] == "float16" and meta["version"] == version
    return torch.from_numpy(from_bytes(buffers[0], "float16", (meta["rows"], meta["cols"])).astype("float32"))


def test_sweep_from_the_front_end_equals_patch_sweep(ioi, demo):
    threads = []
    ioi.observe(lambda c: threads.append(threading.current_thread()), names="progress")
    result = run(ioi)
    expected = patch_sweep(demo, CLEAN, CORRUPTED, site="resid_pre", metric=metric(demo))
    assert ioi.error == "" and not ioi.running and not ioi.busy and ioi.status == ""
    torch.testing.assert_close(result.values, expected.values, rtol=0, atol=1e-5)
    torch.testing.assert_close(grid(ioi), expected.values, **FP16)
    assert ioi.progress == [n_cells(demo)] * 2 and ioi.exact_meta["source"] == "sweep"
    assert not ioi.exact_meta["partial"] and ioi.exact_meta["col_labels"][10] == "10:␣John/␣Mary"
    assert any(t is not threading.main_thread() for t in threads)  # the sweep ran in the background
    assert "patch_sweep(bridge, clean, corrupted, site='resid_pre', metric=logit_diff(bridge, ' Mary', " \
           "' John'))" in ioi.code
    namespace = {"bridge": demo}
    exec(ioi.code, namespace)  # the code reproduces the view
    torch.testing.assert_close(namespace["result"].values, result.values, rtol=0, atol=1e-5)
    assert "cells in" in ioi.cost and "MB" in ioi.cost


@pytest.mark.parametrize(("site", "index", "fold"), [
    ("z", "", lambda v: v),
    ("z", "head_pos", lambda v: v.permute(0, 2, 1).reshape(-1, N_POS)),  # (layer, head) rows
    ("pattern", "head_pos", lambda v: v.reshape(-1, N_POS)),
])
def test_head_sites_fold_into_the_grid(ioi, demo, site, index, fold):
    front_end_sets(ioi, site=site, index=index)
    run(ioi)
    expected = patch_sweep(demo, CLEAN, CORRUPTED, site=site, index=index or None, metric=metric(demo))
    torch.testing.assert_close(grid(ioi), fold(expected.values), **FP16)
    meta = ioi.exact_meta
    if index:
        H = demo.cfg.n_heads  # rows are (layer, head), head fastest
        assert meta["row_labels"][H + 1] == "L1H1" and meta["kind"] == "layerhead_pos"
        assert f"index='{index}'" in ioi.code
    else:
        assert meta["col_labels"] == [f"H{h}" for h in range(demo.cfg.n_heads)] and "index=" not in ioi.code


def test_cancel_mid_sweep_shows_the_partial_result(ioi, demo):
    front_end_sets(ioi, batch_size=8)
    first, go = hold_first_report(ioi)
    action(ioi, "run")  # returns at once: the sweep runs in a thread
    assert first.wait(60) and ioi.running and ioi.busy
    with pytest.raises(TimeoutError, match="still running"):
        ioi.wait(timeout=0.01)
    action(ioi, "click", row=1, col=10)  # the kernel is free, but the model is busy: refused
    assert "A sweep is running" in ioi.error
    action(ioi, "cancel")  # arrives while the sweep runs
    go.set()
    result = ioi.wait(timeout=60)
    n = result.n_done  # the first report: the cells that change nothing (before S2), or one pass
    cells = n_cells(ioi.bridge)
    assert result.partial and 0 < n < cells and ioi.progress == [n, cells]
    assert ioi.exact_meta["partial"] and ioi.exact_meta["n_done"] == n and ioi.exact_meta["n_cells"] == cells
    values = grid(ioi)
    done = values.isfinite()
    assert int(done.sum()) == n
    full = patch_sweep(demo, CLEAN, CORRUPTED, site="resid_pre", metric=metric(demo))
    torch.testing.assert_close(values[done], full.values[done], **FP16)
    assert not ioi.running and not ioi.busy
    assert not any(t.name == "workbench-patching" for t in threading.enumerate())


def test_inputs_changed_during_a_sweep_drop_its_result(ioi):
    first, go = hold_first_report(ioi)
    front_end_sets(ioi, batch_size=8)
    action(ioi, "run")
    assert first.wait(60)
    front_end_sets(ioi, direction="noise")  # cancels the running sweep; its result would be stale
    assert ioi.cost == "cost: estimated when the running sweep stops"
    go.set()
    assert ioi.wait(timeout=60) is None
    assert ioi.exact_meta["source"] == "none" and ioi.exact_meta["n_done"] == 0
    assert "cells in" in ioi.cost and ioi.error == ""
    assert "direction='noise'" in ioi.code


def test_click_equals_patch_cell_and_moves_the_selection(demo, comm):
    sel = Selection()
    p = PatchingPanel(demo, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John", selection=sel)
    action(p, "click", row=1, col=10)
    ref = patch_cell(demo, CLEAN, CORRUPTED, site="resid_pre", layer=1, position=10, metric=metric(demo))
    cell = p.cell
    assert cell["value"] == pytest.approx(ref.value, abs=1e-5) and cell["label"] == ref.label
    assert cell["change"] == pytest.approx(ref.value - ref.corrupted_value, abs=1e-5)
    assert [r["token"] for r in cell["rose"]] == list(ref.rose.tokens)
    assert [r["token"] for r in cell["fell"]] == list(ref.fell.tokens)
    assert cell["rose"][0]["delta"] == pytest.approx(float(ref.rose.delta[0]), abs=1e-5)
    assert (sel.layer, sel.position) == (1, 10) and (cell["row"], cell["col"]) == (1, 10)
    # before any sweep, clicked cells fill in the grid
    values = grid(p)
    assert p.exact_meta["source"] == "clicks" and p.exact_meta["n_done"] == 1
    assert values[1, 10] == pytest.approx(ref.value, abs=2e-2) and int(values.isfinite().sum()) == 1
    patcher = p._patcher
    action(p, "click", layer=2, position=14)  # by layer and position; the patcher is reused
    assert p._patcher is patcher and (sel.layer, sel.position) == (2, 14)
    assert "patch_cell(bridge, clean, corrupted, site='resid_pre', layer=2, position=14" in p.code
    front_end_sets(p, site="z")  # a head site: the click moves layer and head
    action(p, "click", row=3, col=2)
    ref = patch_cell(demo, CLEAN, CORRUPTED, site="z", layer=3, head=2, metric=metric(demo))
    assert p.cell["value"] == pytest.approx(ref.value, abs=1e-5) and (sel.layer, sel.head) == (3, 2)
    assert p._patcher is patcher  # one patcher across sites
    front_end_sets(p, wrong=" the")  # a new metric: results and the patcher go
    assert p._patcher is None and p.cell == {} and p.last_cell is None
    action(p, "click", row=9, col=0)
    assert f"outside the {demo.cfg.n_layers} x {demo.cfg.n_heads} grid" in p.error


def test_prompts_of_different_lengths_show_the_alignment(demo, comm):
    p = PatchingPanel(demo, CLEAN, corrupted=TWO_TOKEN_NAME, answer=" Mary", wrong=" John")
    assert "different lengths (15 vs 16 tokens;" in p.alignment and "positions=" in p.alignment
    assert p.corrupted_tokens[10:12] == [" Mary", "se"]
    assert p.clean_differs == [10] and p.corrupted_differs == [10, 11]
    assert p.exact_meta == {} and p.cost == ""
    action(p, "run")
    assert "different lengths" in p.error and not p.running
    action(p, "align")  # the fix offered: patch the matching start and end only
    positions = {c: d for c, d in p.positions}
    assert positions[9] == 9 and positions[11] == 12 and 10 not in positions and p.alignment == ""
    run(p)
    expected = patch_sweep(demo, CLEAN, TWO_TOKEN_NAME, site="resid_pre", metric=metric(demo),
                           positions=positions)
    torch.testing.assert_close(grid(p), expected.values, **FP16)
    assert "positions={0: 0, 1: 1" in p.code
    front_end_sets(p, corrupted=CORRUPTED)  # new prompts: the old alignment goes
    assert p.positions == [] and p.alignment == "" and p.clean_differs == p.corrupted_differs == [10]


def test_tokens_are_asked_for_and_checked(demo, comm):
    p = PatchingPanel(demo, CLEAN, corrupted=CORRUPTED)
    assert "Pick the answer token" in p.metric_note and p.error == ""
    action(p, "run")
    assert "Pick the answer token" in p.error
    front_end_sets(p, error="", error_detail="")
    front_end_sets(p, answer=" Maryse", wrong=" John")
    assert p.error.startswith("TokenizerError: The answer token must be a single token")
    assert "' Maryse' is 2 tokens" in p.error and "leading space" in p.error
    assert p.metric_note in p.error
    front_end_sets(p, answer=" Mary")  # fixed: the error it caused goes
    assert p.error == "" and p.metric_note == ""
    front_end_sets(p, wrong=" Mary")
    assert "same" in p.error and "Pick two different tokens" in p.error


def test_attribution_beside_exact_patching(ioi, demo):
    front_end_sets(ioi, attribution=True)  # computed at once, in the background
    ioi.wait(timeout=60)
    expected = attribution_sweep(demo, CLEAN, CORRUPTED, site="resid_pre", metric=metric(demo), exact=True)
    torch.testing.assert_close(grid(ioi, "attribution"), expected.values, **FP16)
    assert ioi.compare == ""  # no exact values yet
    run(ioi)
    assert f"{expected.correlation:.3f} ({n_cells(demo)} cells)" in ioi.compare
    assert "estimate = attribution_sweep(bridge, clean, corrupted, site='resid_pre'" in ioi.code


def test_selection_links_the_prompt(demo, comm):
    sel = Selection(prompt=CLEAN)
    p = PatchingPanel(demo, corrupted=CORRUPTED, selection=sel)
    assert p.prompt == CLEAN and len(p.clean_tokens) == 15
    sel.prompt = TWO_TOKEN_NAME
    assert p.clean_tokens[11] == "se" and "(16 vs 15 tokens;" in p.alignment
    front_end_sets(p, prompt=CLEAN)
    assert sel.prompt == CLEAN


def test_html_export_embeds_the_result(ioi, tmp_path):
    run(ioi)
    page = ioi.to_html(tmp_path / "patching.html")
    meta, buffers = reply(ioi, {"kind": "values", "which": "exact", "version": ioi.exact_meta["version"]})
    assert json.dumps(_key({"kind": "values", "which": "exact", "version": meta["version"]})) in page
    assert base64.b64encode(bytes(buffers[0])).decode() in page
    assert "http://" not in page and "https://" not in page


def _number_lists(value):
    """Every list of numbers inside a JSON-like value."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _number_lists(v)]
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [value]
        return [x for v in value for x in _number_lists(v)]
    return []


def test_values_travel_as_float16_buffers_not_json(ioi):
    ioi.comm.clear()
    front_end_sets(ioi, attribution=True)
    run(ioi)
    action(ioi, "click", row=1, col=10)
    grid(ioi), grid(ioi, "attribution")
    sent = ioi.comm.updates() + [c for c, _ in ioi.comm.custom()]
    lists = [x for s in sent for x in _number_lists(s)]
    assert all(isinstance(v, int) for x in lists for v in x)  # never floats in a list
    assert max(map(len, lists)) < n_cells(ioi.bridge)  # small labels (positions), never a grid's worth
    answers = [(c, b) for c, b in ioi.comm.custom() if c.get("type") == "data"]
    assert answers and all(len(b) == 1 and len(memoryview(b[0]).cast("B")) == n_cells(ioi.bridge) * 2
                           for _, b in answers)


def test_an_error_in_the_thread_is_shown_and_the_thread_ends(ioi, monkeypatch):
    import widgets.patching as module

    def boom(*args, **kwargs):
        raise RuntimeError("the model fell over")
    monkeypatch.setattr(module, "patch_sweep", boom)
    run(ioi)
    assert ioi.error == "RuntimeError: the model fell over" and "boom" in ioi.error_detail
    assert not ioi.running and not ioi.busy and ioi.result is None
    assert not any(t.name == "workbench-patching" for t in threading.enumerate())
    monkeypatch.undo()
    assert run(ioi) is not None  # the panel still works


def test_progress_reports_are_throttled():
    seen, done = [], []
    job = BackgroundJob(on_progress=lambda d, t: seen.append(d), on_error=done.append,
                        on_done=lambda: done.append("done"), hz=20)
    assert all(job.tick(i, 500) for i in range(1, 501))
    assert seen[0] == 1 and seen[-1] == 500 and len(seen) <= 3
    job.cancel()
    assert job.tick(1, 500) is False


@pytest.fixture
def gqa(comm):
    return Bridge.from_hf(tiny_model("llama", n_heads=4, n_kv_heads=2), char_tokenizer())


def test_grouped_query_keys_by_key_value_head(gqa):
    p = PatchingPanel(gqa, "Mary&J", corrupted="John&J", answer="M", wrong="J", site="k")
    assert "resid_mid" in p.site_options and p.site_options["z"] == ["head", "head_pos"]
    run(p)
    m = logit_diff(gqa, "M", "J")
    expected = patch_sweep(gqa, "Mary&J", "John&J", site="k", metric=m)
    assert expected.values.shape == (2, 2) and p.exact_meta["col_labels"] == ["H0", "H1"]
    torch.testing.assert_close(grid(p), expected.values, **FP16)
    action(p, "click", row=1, col=1)
    ref = patch_cell(gqa, "Mary&J", "John&J", site="k", layer=1, head=1, metric=m)
    assert p.cell["value"] == pytest.approx(ref.value, abs=1e-5)


def test_parallel_models_offer_no_resid_mid(comm):
    bridge = Bridge.from_hf(tiny_model("gpt_neox"), char_tokenizer())
    p = PatchingPanel(bridge, "ab", corrupted="cb", site="resid_mid")
    assert "resid_mid" not in p.site_options and "no resid_mid" in p.error
