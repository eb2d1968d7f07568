"""Activation patching sweeps: batched and skipping runs equal the one-patch-at-a-time loop, the
identities hold, the layout is TransformerLens's, bad input and cancellation are handled."""

import pytest
import torch
from conftest import no_torch_hooks

import workbench.patch_engine as engine
from workbench import Bridge, InputError
from workbench.metrics import Metric, kl_to, logit_diff, normalized
from workbench.patch_engine import Cancelled, run_cells
from workbench.patch_sites import Cell
from workbench.patching import patch_sweep, prepare_patching
from workbench.toy import char_tokenizer, tiny_model

CLEAN = ["Mary&J", "Anna&B"]
CORRUPTED = ["John&J", "Bert&B"]
TOL = dict(atol=1e-5, rtol=0)
SUFFIX = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
          "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "z": "attn.hook_z", "q": "attn.hook_q",
          "k": "attn.hook_k", "v": "attn.hook_v", "result": "attn.hook_result",
          "pattern": "attn.hook_pattern"}
CASES = [(s, "pos") for s in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")] + [
    (s, i) for s in ("z", "q", "k", "v", "result", "pattern") for i in ("head", "head_pos")]


def sharpen(bridge):
    """Tiny random models barely respond to their input; scaled-up weights make every cell's
    patch effect large next to the tolerance. OLMo's ``clip_qkv`` scales with its projections,
    so the same entries stay clamped (else the clamp would flatten every attention pattern)."""
    with torch.no_grad():
        for p in bridge.model.parameters():
            if p.ndim >= 2:  # (3-D: stacked expert weights)
                p.mul_(4.0)
    if getattr(bridge.model.config, "clip_qkv", None) is not None:
        bridge.model.config.clip_qkv *= 4.0
    return bridge


def answer_metric(bridge):
    """Logit difference between the tokens the corruption moves most (up to 1 at clean)."""
    diff = (bridge(CLEAN)[:, -1] - bridge(CORRUPTED)[:, -1]).mean(0)
    return logit_diff(bridge, int(diff.argmax()), int(diff.argmin()))


@pytest.fixture(scope="module")
def sharp(saved):
    bridge = sharpen(Bridge.from_pretrained(str(saved[1])))
    return bridge, answer_metric(bridge)


def naive_sweep(bridge, site, index, metric, direction="denoise", pairs=None, clean=CLEAN,
                corrupted=CORRUPTED):
    """The reference: one full forward per cell, the cell written by a plain hook. Returns
    ``[*TL layout, batch]``."""
    clean_t, corrupted_t = bridge.to_tokens(clean), bridge.to_tokens(corrupted)
    base, source = (corrupted_t, clean_t) if direction == "denoise" else (clean_t, corrupted_t)
    if pairs is None:
        pairs = [(p, p) for p in range(base.shape[1])]
    if direction == "noise":
        pairs = [(d, c) for c, d in pairs]
    n_layers = bridge.cfg.n_layers
    names = [f"blocks.{L}.{SUFFIX[site]}" for L in range(n_layers)]
    _, cache = bridge.run_with_cache(source, names_filter=names)
    pattern = site == "pattern"
    n_heads = cache[names[0]].shape[1 if pattern else 2]

    def run(name, patch):
        def fn(act, hook):
            act = act.clone()
            patch(act, cache[name])
            return act
        return metric(bridge.run_with_hooks(base, fwd_hooks=[(name, fn)]))

    def at(src_pos, pos, head):
        def patch(act, src):
            if site not in SUFFIX or SUFFIX[site].startswith("hook_"):
                act[:, pos] = src[:, src_pos]
            elif pattern:
                act[:, head, pos] = src[:, head, src_pos]
            else:
                act[:, pos, head] = src[:, src_pos, head]
        return patch

    every = ([s for s, _ in pairs], [d for _, d in pairs])
    out = {}
    for L, name in enumerate(names):
        for h in range(n_heads if index != "pos" else 1):
            if index == "head":
                out[L, h] = run(name, at(every[0], every[1], h) if not pattern
                                else at(slice(None), slice(None), h))
                continue
            for i, (s, d) in enumerate(pairs):
                key = (L, i) if index == "pos" else (L, i, h) if not pattern else (L, h, i)
                out[key] = run(name, at(s, d, h))
    keys = sorted(out)
    shape = [max(k[j] for k in keys) + 1 for j in range(len(keys[0]))]
    return torch.stack([out[k] for k in keys]).reshape(*shape, -1)


@pytest.mark.parametrize(("site", "index"), CASES, ids=[f"{s}-{i}" for s, i in CASES])
def test_batched_equals_one_at_a_time(sharp, site, index):
    bridge, metric = sharp
    if site == "resid_mid" and bridge.cfg.parallel_attn_mlp:
        pytest.skip("parallel blocks have no resid_mid")
    for direction in ("denoise", "noise"):
        ref = naive_sweep(bridge, site, index, metric, direction)
        assert ref.std() > 1e-2  # the patches matter
        for kw in (dict(), dict(batch_size=3), dict(batch_size=1),
                   dict(batch_size=5, skip_blocks=False, reuse_prefix=False)):
            r = patch_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric,
                            direction=direction, **kw)
            torch.testing.assert_close(r.per_prompt, ref, **TOL, msg=lambda m, kw=kw: f"{kw}: {m}")
            torch.testing.assert_close(r.values, ref.mean(-1), **TOL)
            assert not r.partial and r.n_done == ref[..., 0].numel()
        assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_skipping_happens_and_stays_exact(sharp, monkeypatch):
    """Chunks start after layer 0 and after position 0 (blocks and prefix skipped)."""
    bridge, metric = sharp
    starts = []
    original = engine.chunk_start

    def record(plan, chunk):
        starts.append(original(plan, chunk))
        return starts[-1]
    monkeypatch.setattr(engine, "chunk_start", record)
    for site, index in (("resid_pre", "pos"), ("k", "head_pos"), ("pattern", "head_pos")):
        r = patch_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric, batch_size=4)
        ref = naive_sweep(bridge, site, index, metric)
        torch.testing.assert_close(r.per_prompt, ref, **TOL)
    assert any(L0 > 0 for L0, _ in starts)
    if getattr(bridge.model.config, "sliding_window", None):  # HF keeps only the window's keys:
        assert all(P0 == 0 for _, P0 in starts)  # no full-length prefix to reuse, so no position skip
    else:
        assert any(P0 > 0 for _, P0 in starts) and any(L0 > 0 and P0 > 0 for L0, P0 in starts)
    assert len(bridge.model.get_submodule(bridge.adapter.blocks)) == bridge.cfg.n_layers


def test_rows_join_at_their_own_layer(sharp):
    """In one pass holding cells of every layer, block L runs only the rows of cells patched at
    layers <= L (the others would compute the base run there), and the values stay exact."""
    bridge, metric = sharp
    n_layers, batch = bridge.cfg.n_layers, len(CLEAN)
    blocks = bridge.model.get_submodule(bridge.adapter.blocks)
    rows: dict[int, list[int]] = {}
    handles = [b.register_forward_pre_hook(
        lambda mod, args, kwargs, L=L: rows.setdefault(L, []).append(
            (args[0] if args else kwargs["hidden_states"]).shape[0]), with_kwargs=True)
        for L, b in enumerate(blocks)]
    try:
        for site, index in (("resid_pre", "pos"), ("z", "head_pos")):
            rows.clear()
            r = patch_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric,
                            batch_size=10_000, reuse_prefix=False, skip_unchanged=False)
            per_layer = r.values[0].numel()  # cells at one layer
            assert r.n_forward == 1
            # the two unpatched runs (clean, corrupted) see `batch` rows; the pass sees the rest
            passes = {L: [n for n in got if n != batch] for L, got in rows.items()}
            assert passes == {L: [(L + 1) * per_layer * batch] for L in range(n_layers)}, passes
            torch.testing.assert_close(r.per_prompt, naive_sweep(bridge, site, index, metric), **TOL)
    finally:
        for h in handles:
            h.remove()
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


@pytest.mark.parametrize(("family", "kw"), [("gpt2", {}), ("llama", {"n_kv_heads": 2}), ("gpt_neox", {})],
                         ids=["gpt2", "llama_gqa", "neox"])
def test_rows_joining_deep_models_with_prefix(tmp_path, family, kw):
    """Four layers (so blocks after a join still receive the model's per-row arguments: the
    causal mask of a prefix-reusing pass, position ids), batches of 2 and 3 prompts: every
    chunking equals the one-at-a-time loop."""
    model = tiny_model(family, n_layers=4, **kw)
    model.save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    bridge = sharpen(Bridge.from_pretrained(str(tmp_path)))
    three = (["Mary&J", "Anna&B", "Carl&D"], ["John&J", "Bert&B", "Dave&D"])
    for clean, corrupted in ((CLEAN, CORRUPTED), three):
        diff = (bridge(clean)[:, -1] - bridge(corrupted)[:, -1]).mean(0)
        metric = logit_diff(bridge, int(diff.argmax()), int(diff.argmin()))
        for site, index in (("resid_pre", "pos"), ("z", "head_pos"), ("k", "head_pos")):
            ref = naive_sweep(bridge, site, index, metric, clean=clean, corrupted=corrupted)
            for size in (None, 3, 5):
                r = patch_sweep(bridge, clean, corrupted, site=site, index=index, metric=metric,
                                batch_size=size)
                torch.testing.assert_close(r.per_prompt, ref, **TOL, msg=lambda m, s=size: f"{s}: {m}")
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_clean_into_clean_changes_nothing(sharp):
    bridge, metric = sharp
    for site, index in (("resid_pre", "pos"), ("z", "head_pos"), ("k", "head"), ("pattern", "head_pos")):
        for direction in ("denoise", "noise"):
            r = patch_sweep(bridge, CLEAN, CLEAN, site=site, index=index, metric=metric,
                            direction=direction, batch_size=5)
            assert r.clean_value == pytest.approx(r.corrupted_value, abs=1e-6)
            torch.testing.assert_close(r.values, torch.full_like(r.values, r.clean_value), **TOL)


def test_resid_pre_all_positions_at_layer_0_is_the_clean_run(sharp):
    bridge, _ = sharp
    clean_logits = bridge(CLEAN)
    gap = Metric(lambda lg: (lg - clean_logits).abs().amax((1, 2)), positions=None, name="gap")
    prep = prepare_patching(bridge, CLEAN, CORRUPTED, "resid_pre", gap)
    assert prep.corrupted_per.min() > 0.1
    values, done, n_forward = run_cells(prep.plan, [Cell(0, -1, -1, 0)], size=1)
    assert done == 1 and n_forward == 1 and values.abs().max() < 1e-5
    # the engine also packs cells of different kinds (all positions, one position) together
    mixed = [Cell(0, -1, -1, 0), Cell(1, -1, 3, 1), Cell(1, -1, -1, 2)]
    together, _, n_forward = run_cells(prep.plan, mixed, size=3)
    alone, _, _ = run_cells(prep.plan, mixed, size=1)
    assert n_forward == 1 and together[[0, 2]].abs().max() < 1e-5 and together[1].min() > 0.1
    torch.testing.assert_close(together, alone, **TOL)


def test_last_layer_last_position_recovers_clean_kl(sharp):
    """resid_post of the last layer at the read position gives the clean logits there: KL 0,
    normalised metric 1."""
    bridge, metric = sharp
    r = patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_post", metric=kl_to(), batch_size=4)
    assert r.corrupted_value > 1e-3 and abs(r.clean_value) < 1e-6
    assert abs(r.values[-1, -1]) < 1e-5
    n = patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_post", metric=normalized(metric))
    assert n.values[-1, -1] == pytest.approx(1.0, abs=1e-5)
    assert (n.clean_value, n.corrupted_value) == pytest.approx((1.0, 0.0), abs=1e-5)
    raw = patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_post", metric=metric)
    torch.testing.assert_close(raw.normalized(), n.values, **TOL)


def test_ungrouped_kv_heads(bridge):
    """With K/V shown per query head, k/v cells are per query head and still exact."""
    if not bridge.cfg.grouped_query:
        pytest.skip("needs grouped-query attention")
    sharpen(bridge)
    metric = answer_metric(bridge)
    grouped = patch_sweep(bridge, CLEAN, CORRUPTED, site="v", metric=metric)
    assert grouped.values.shape == (bridge.cfg.n_layers, bridge.cfg.n_kv_heads)
    bridge.ungroup_grouped_query_attention = True
    r = patch_sweep(bridge, CLEAN, CORRUPTED, site="k", index="head_pos", metric=metric, batch_size=5)
    assert r.values.shape == (bridge.cfg.n_layers, 7, bridge.cfg.n_heads)
    torch.testing.assert_close(r.per_prompt, naive_sweep(bridge, "k", "head_pos", metric), **TOL)


def test_position_alignment(sharp):
    """Different lengths need an explicit alignment; aligned sweeps equal the naive loop."""
    bridge, metric = sharp
    clean, corrupted = ["Mary&J"], ["Jo&J"]
    with pytest.raises(InputError, match=r"different lengths \(7 vs 5 tokens\)") as err:
        patch_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric)
    assert "'M', 'a', 'r', 'y'" in str(err.value) and "'J', 'o', '&'" in str(err.value)
    align = {0: 0, 4: 2, 5: 3, 6: 4}
    for direction in ("denoise", "noise"):
        for site, index in (("resid_pre", "pos"), ("z", "head")):
            r = patch_sweep(bridge, clean, corrupted, site=site, index=index, metric=metric,
                            positions=align, direction=direction, batch_size=3)
            ref = naive_sweep(bridge, site, index, metric, direction, sorted(align.items()), clean,
                              corrupted)
            torch.testing.assert_close(r.per_prompt, ref, **TOL)
    assert r.positions == ((0, 0), (4, 2), (5, 3), (6, 4))
    with pytest.raises(InputError, match="same length"):
        patch_sweep(bridge, clean, corrupted, site="pattern", metric=metric, positions=align)
    with pytest.raises(InputError, match="out of range"):
        patch_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric, positions={9: 0})


def test_labels_and_dataframe(sharp):
    bridge, metric = sharp
    r = patch_sweep(bridge, "Mary&J", "John&J", site="z", index="head_pos", metric=metric)
    assert r.axes == ("layer", "pos", "head") and r.index == "head_pos" and r.site == "z"
    assert r.labels[0] == tuple(range(bridge.cfg.n_layers))
    assert r.labels[1][:3] == ("0:<bos>", "1:M/J", "2:a/o") and r.labels[1][-2:] == ("5:&", "6:J")
    assert r.labels[2] == tuple(range(bridge.cfg.n_heads))
    df = r.to_dataframe()
    assert list(df.columns) == ["layer", "pos", "token", "head", "value"]
    assert len(df) == r.values.numel()
    row = df[(df["layer"] == 1) & (df["pos"] == 3) & (df["head"] == 2)].iloc[0]
    assert row.value == pytest.approx(float(r.values[1, 3, 2])) and row.token == "3:r/h"
    assert "z by head_pos" in repr(r) and r.direction == "denoise"
    spaced = patch_sweep(bridge, "a b", "a c", site="resid_pre", metric=metric, layers=[1])
    assert spaced.labels == ((1,), ("0:<bos>", "1:a", "2:␣", "3:b/c"))
    assert spaced.values.shape == (1, 4)


def test_layers_heads_subsets_equal_full(sharp):
    bridge, metric = sharp
    full = patch_sweep(bridge, CLEAN, CORRUPTED, site="q", index="head_pos", metric=metric)
    sub = patch_sweep(bridge, CLEAN, CORRUPTED, site="q", index="head_pos", metric=metric,
                      layers=[-1], heads=[2, 0], batch_size=3)
    torch.testing.assert_close(sub.values, full.values[-1:, :, [2, 0]], **TOL)
    assert sub.labels[0] == (bridge.cfg.n_layers - 1,) and sub.labels[2] == (2, 0)


def test_batch_size_and_forward_count(sharp):
    bridge, metric = sharp
    n_cells = bridge.cfg.n_layers * 7
    one = patch_sweep(bridge, CLEAN, CORRUPTED, site="mlp_out", metric=metric, memory_budget=1,
                      skip_unchanged=False)
    assert one.n_forward == n_cells
    many = patch_sweep(bridge, CLEAN, CORRUPTED, site="mlp_out", metric=metric)
    assert many.n_forward == 1
    torch.testing.assert_close(one.values, many.values, **TOL)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputError, match="batch_size"):
            patch_sweep(bridge, CLEAN, CORRUPTED, site="mlp_out", metric=metric, batch_size=bad)


def test_cancel_returns_partial_and_detaches(sharp):
    bridge, metric = sharp
    seen = []

    def stop_after_two(done, total):
        seen.append((done, total))
        return len(seen) < 2
    r = patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=metric, batch_size=3,
                    progress=stop_after_two, skip_unchanged=False)  # every cell takes a pass
    n_cells = bridge.cfg.n_layers * 7
    assert seen == [(3, n_cells), (6, n_cells)]
    assert r.partial and r.n_done == 6 and r.n_forward == 2
    assert int(r.values.isnan().sum()) == n_cells - 6
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)

    def raise_cancel(done, total):
        raise Cancelled("user pressed cancel")
    r = patch_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=metric, batch_size=2, progress=raise_cancel,
                    skip_unchanged=False)
    assert r.partial and r.n_done == 2 and r.values.isnan().sum() == r.values.numel() - 2
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)
    full = patch_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=metric, progress=True)
    assert not full.partial and not full.values.isnan().any()


def test_errors_inside_a_run_leave_nothing_attached(sharp):
    bridge, _ = sharp
    calls = []

    def flaky(logits):
        calls.append(1)
        if len(calls) > 3:  # the two baselines pass, then a patched run fails
            raise RuntimeError("boom")
        return logits[:, -1, 0]
    with pytest.raises(RuntimeError, match="boom"):
        patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=flaky, batch_size=3)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)
    assert len(bridge.model.get_submodule(bridge.adapter.blocks)) == bridge.cfg.n_layers


def test_bad_input(sharp):
    bridge, metric = sharp
    n, h = bridge.cfg.n_layers, bridge.cfg.n_heads

    def sweep(**kw):
        args = dict(site="resid_pre", metric=metric) | kw
        return patch_sweep(bridge, CLEAN, CORRUPTED, **args)
    with pytest.raises(InputError, match="Unknown patching site 'resid'. Valid sites: resid_pre"):
        sweep(site="resid")
    with pytest.raises(InputError, match="index 'head' is not valid for site 'resid_pre'; valid: pos"):
        sweep(index="head")
    with pytest.raises(InputError, match=rf"Layer {n} does not exist: this model has layers 0..{n - 1}"):
        sweep(layers=[0, n])
    with pytest.raises(InputError, match=rf"Head {h} does not exist at site 'z': valid heads are 0..{h - 1}"):
        sweep(site="z", heads=[h])
    with pytest.raises(InputError, match="has no heads"):
        sweep(heads=[0])
    with pytest.raises(InputError, match=r"returned shape \(\); expected \[2\]"):
        sweep(metric=lambda logits: logits[:, -1, 0].mean())
    with pytest.raises(InputError, match="direction"):
        sweep(direction="sideways")
    with pytest.raises(InputError, match="padding"):
        patch_sweep(bridge, ["Mary&J", "Ann"], CORRUPTED, site="resid_pre", metric=metric)
    with pytest.raises(InputError, match="2 prompts and corrupted 1"):
        patch_sweep(bridge, CLEAN, CORRUPTED[:1], site="resid_pre", metric=metric)
    with pytest.raises(InputError, match="progress"):
        sweep(progress="yes")
    if bridge.cfg.parallel_attn_mlp:
        with pytest.raises(InputError, match="no resid_mid"):
            sweep(site="resid_mid")
    assert sweep(site="hook_resid_post", layers=0).site == "resid_post"
    assert sweep(site="attn.hook_z").values.shape == (n, h)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_layout_matches_transformer_lens(tmp_path):
    """Same weights through TransformerLens's own patching functions: same values, same layout."""
    pytest.importorskip("transformer_lens")
    import transformer_lens.patching as tlp
    from transformer_lens.model_bridge import TransformerBridge

    from workbench.toy import char_tokenizer, tiny_model

    model = tiny_model("gpt2")
    sharpen(Bridge.from_hf(model, char_tokenizer()))
    model.save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    tl = TransformerBridge.boot_transformers(str(tmp_path), device="cpu", dtype=torch.float32)
    tl.eval()
    ours = Bridge.from_pretrained(str(tmp_path))
    metric = answer_metric(ours)
    clean, corrupted = ours.to_tokens(CLEAN), ours.to_tokens(CORRUPTED)
    with torch.no_grad():
        _, clean_cache = tl.run_with_cache(clean)
    for fn, site, index in ((tlp.get_act_patch_resid_pre, "resid_pre", None),
                            (tlp.get_act_patch_attn_head_out_by_pos, "z", "head_pos"),
                            (tlp.get_act_patch_attn_head_pattern_by_pos, "pattern", "head_pos"),
                            (tlp.get_act_patch_attn_head_v_all_pos, "v", "head")):
        ref = fn(tl, corrupted, clean_cache, lambda logits: metric(logits).mean())
        r = patch_sweep(ours, clean, corrupted, site=site, index=index, metric=metric)
        assert r.values.shape == ref.shape, site
        torch.testing.assert_close(r.values, ref.float().cpu(), atol=1e-4, rtol=0)


def test_user_hooks_stay_active(sharp):
    """A hook the user attached takes part in every run (skipping is then off)."""
    bridge, metric = sharp

    def halve(act, hook):
        return act * 0.5
    plain = patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=metric)
    entries = bridge.add_hook("blocks.0.hook_mlp_out", halve)
    try:
        r = patch_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=metric, batch_size=3)
        ref = naive_sweep(bridge, "resid_pre", "pos", metric)
    finally:
        bridge.remove_hooks(entries)
    torch.testing.assert_close(r.per_prompt, ref, **TOL)
    assert (r.values - plain.values).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_equals_one_at_a_time_on_cuda(saved):
    bridge = sharpen(Bridge.from_pretrained(str(saved[1]), device="cuda"))
    metric = answer_metric(bridge)
    for site, index in (("resid_pre", "pos"), ("k", "head_pos"), ("pattern", "head")):
        ref = naive_sweep(bridge, site, index, metric).cpu()
        for kw in (dict(), dict(batch_size=3)):
            r = patch_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric, **kw)
            torch.testing.assert_close(r.per_prompt, ref, atol=1e-4, rtol=0)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


@pytest.mark.parametrize("site,index", [("resid_pre", None), ("z", "head_pos"), ("pattern", "head_pos"),
                                        ("k", "head_pos"), ("z", "head")])
def test_cells_that_change_nothing_are_not_run(sharp, site, index):
    """Clean and corrupted share a suffix only ("&J"/"&B" after the names) and the BOS: patching
    BOS changes nothing, so those cells get the corrupted run's metric without a pass, and the
    sweep still equals the plain one-at-a-time loop with every skip off."""
    bridge, metric = sharp
    kw = dict(site=site, index=index, metric=metric)
    fast = patch_sweep(bridge, CLEAN, CORRUPTED, memory_budget=1, **kw)
    plain = patch_sweep(bridge, CLEAN, CORRUPTED, batch_size=1, skip_blocks=False, reuse_prefix=False,
                        skip_unchanged=False, **kw)
    torch.testing.assert_close(fast.values, plain.values, **TOL)
    n_cells = plain.n_forward
    if index == "head":  # every head's cells span all positions, and names differ: nothing skipped
        assert fast.n_forward == n_cells
        return
    pos_axis = fast.axes.index("pos")
    heads = fast.values.shape[fast.axes.index("head")] if "head" in fast.axes else 1
    # at least BOS (position 0) at every layer and head is skipped (layer 0 may skip more: its
    # resid_pre and keys at the shared suffix are the same embeddings)
    assert fast.n_forward <= n_cells - bridge.cfg.n_layers * heads
    at_bos = fast.values.select(pos_axis, 0)
    assert torch.equal(at_bos, torch.full_like(at_bos, fast.corrupted_value))
