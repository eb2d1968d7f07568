"""HookPicker without a browser: the tree, shapes and memory, picking runs and caches, errors."""


import torch
from widget_comm import front_end_sends, front_end_sets

from widgets import HookPicker, Selection
from widgets.hook_picker import hook_tree


def test_tree_lists_every_hook_with_shape_and_memory(bridge):
    n = 7
    tree = hook_tree(bridge, n)
    flat = {x["name"]: x for g in tree for c in g["children"] for x in c["hooks"]}
    assert sorted(flat) == sorted(bridge.hook_names())
    assert [g["name"] for g in tree][:2] == ["model", "blocks.0"]
    cfg = bridge.cfg
    _, cache = bridge.run_with_cache("x" * (n - 1), names_filter=list(flat))  # BOS + 6 chars
    for name, tensor in cache.items():
        assert flat[name]["bytes"] == tensor.numel() * tensor.element_size(), name
    want = f"batch × pos × n_heads={cfg.n_heads} × d_head={cfg.d_head}"
    assert flat["blocks.0.attn.hook_q"]["shape"] == want


def test_picking_runs_and_caches(comm, bridge):
    sel = Selection()
    picker = HookPicker(bridge, "abcab", selection=sel)
    assert picker.n_tokens == bridge.to_tokens("abcab").shape[-1] and picker.cache is None
    front_end_sets(picker, hooks=["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"])
    assert picker.error == "" and sel.hooks == picker.names_filter
    _, ref = bridge.run_with_cache("abcab", names_filter=picker.names_filter)
    for name in picker.names_filter:
        torch.testing.assert_close(picker.cache[name], ref[name])
    assert {c["name"]: c["shape"] for c in picker.cached} == {k: list(v.shape) for k, v in ref.items()}
    assert "names_filter=['blocks.1.hook_resid_post', 'blocks.0.attn.hook_pattern']" in picker.code
    front_end_sets(picker, prompt="abcabcabc")  # a new prompt re-runs and re-sizes
    assert picker.cache["blocks.1.hook_resid_post"].shape[1] == picker.n_tokens == 10


def test_manual_run_and_errors(comm, bridge):
    picker = HookPicker(bridge, auto_run=False)
    front_end_sets(picker, hooks=["blocks.0.hook_resid_pre"])
    assert picker.cache is None  # auto_run off: nothing ran
    front_end_sends(picker, {"type": "action", "name": "run"})
    assert "no prompt" in picker.error
    front_end_sets(picker, error="", prompt="ab")
    front_end_sends(picker, {"type": "action", "name": "run"})
    assert picker.error == "" and picker.cache["blocks.0.hook_resid_pre"].shape[1] == 3
    front_end_sets(picker, hooks=["blocks.0.hook_resid_pre", "blocks.0.hook_nope"])
    assert "unknown hook names ['blocks.0.hook_nope']" in picker.error
    assert picker.hooks == ["blocks.0.hook_resid_pre"]


def test_html_export(comm, bridge, tmp_path):
    picker = HookPicker(bridge, "ab", hooks=["hook_embed"])
    page = picker.to_html(tmp_path / "p.html")
    assert "blocks.0.attn.hook_pattern" in page and '"_static": true' in page


def test_a_pick_that_would_not_fit_in_free_memory_is_refused(comm, bridge, monkeypatch):
    """By default the picker sizes the cache before running and refuses, naming the sizes, one
    larger than the memory free now (here: free memory made to look 1 byte short)."""
    from workbench import memory

    picker = HookPicker(bridge, "abcab", hooks=["blocks.0.hook_resid_pre"])
    assert picker.error == "" and picker.cache is not None
    assert picker.free_where == "cpu" and picker.free_bytes > 0  # shown beside the estimate
    need = bridge.cache_bytes("abcab", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"])
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    front_end_sets(picker, prompt="abcab ")
    front_end_sets(picker, prompt="abcab")
    assert picker.free_bytes == need - 1
    front_end_sets(picker, hooks=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"])
    assert "would hold" in picker.error and "cpu has free" in picker.error
    assert picker.cache is None and picker.cached == []  # never the previous pick's cache
    monkeypatch.setattr(memory, "available_bytes", lambda device: need)
    front_end_sets(picker, error="")  # (as the front end clears it)
    front_end_sends(picker, {"type": "action", "name": "run"})
    assert picker.error == "" and len(picker.cache) == 2
