"""Attribution patching: exact where the metric is linear in the patched activation, the layout of
patch_sweep for every site and index kind, close to the exact sweep on the demo model's IOI
circuit, and no gradient, hook or requires_grad change left behind."""

import random
from collections import Counter

import pytest
import torch
from conftest import no_torch_hooks
from test_patching import CLEAN, CORRUPTED, answer_metric, sharpen

from workbench import InputError
from workbench.attribution_patching import AttributionResult, attribution_sweep
from workbench.demo_data import TRAIN_NAMES, ioi_prompts
from workbench.metrics import logit_diff, normalized
from workbench.patching import patch_sweep

CASES = [(s, "pos") for s in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")] + [
    (s, i) for s in ("z", "q", "k", "v", "result", "pattern") for i in ("head", "head_pos")]
# the last block's sites that reach the logits linearly once the final norm is the identity
# (mlp_out, resid_post) and once its MLP is zero too (the others; q and k go through the softmax)
OUTPUT_SITES = [("mlp_out", "pos"), ("resid_post", "pos")]
ATTENTION_SITES = [c for c in CASES if c[0] not in ("resid_pre", "q", "k", *dict(OUTPUT_SITES))]


def identity_final_norm(bridge):
    """The final norm replaced by the identity, and final soft-capping (Gemma 2) turned off: the
    logits are then linear in the last residual stream."""
    parent, _, attr = bridge.adapter.ln_final.rpartition(".")
    setattr(bridge.model.get_submodule(parent), attr, torch.nn.Identity())
    if getattr(bridge.model.config, "final_logit_softcapping", None) is not None:
        bridge.model.config.final_logit_softcapping = None
    return bridge


def zero_last_mlp(bridge):
    with torch.no_grad():
        last = bridge.model.get_submodule(bridge.adapter.blocks)[-1]
        for p in last.get_submodule(bridge.adapter.mlp).parameters():
            p.zero_()
    return bridge


def check_exact_at_last_layer(bridge, cases):
    metric = answer_metric(bridge)
    last = bridge.cfg.n_layers - 1
    for k, (site, index) in enumerate(cases):
        if site == "resid_mid" and bridge.cfg.parallel_attn_mlp:
            continue
        direction, m = (("denoise", metric), ("noise", normalized(metric)))[k % 2]
        r = attribution_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=m,
                              direction=direction, layers=[last], exact=True)
        scale = float(r.exact_values.abs().max())
        base = r.corrupted_value if direction == "denoise" else r.clean_value
        assert float((r.exact_values - base).abs().max()) > 1e-2 * scale, (site, index)  # it matters
        torch.testing.assert_close(r.values, r.exact_values, atol=1e-4 * scale, rtol=0,
                                   msg=lambda msg, s=site, i=index: f"{s} {i}: {msg}")
        if r.values.numel() > 1:  # (one cell has no correlation: NaN)
            assert r.correlation == pytest.approx(1.0, abs=1e-6)


def test_exact_where_the_metric_is_linear(bridge):
    """With an identity final norm the logits are linear in the last block's output; with its
    MLP zeroed too, in everything its attention writes: there the estimate is exact."""
    check_exact_at_last_layer(identity_final_norm(sharpen(bridge)), OUTPUT_SITES)
    # a norm after attention (Gemma 2) keeps the logits non-linear in attention's internals
    post_norm = bridge.adapter.attn_post_norm is not None
    check_exact_at_last_layer(zero_last_mlp(bridge), [c for c in ATTENTION_SITES if not post_norm
                                                      or c[0] in ("resid_mid", "attn_out")])
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def layout(bridge, clean=CLEAN, corrupted=CORRUPTED, **kw):
    """patch_sweep's result layout, cheaply: the sweep stops after its first cell."""
    return patch_sweep(bridge, clean, corrupted, batch_size=1, progress=lambda done, total: False, **kw)


def test_layout_equals_patch_sweep(bridge):
    """Same values shape, axes, labels, positions and baselines as patch_sweep, for every site
    and index kind (and for subsets, explicit alignments and clean into clean)."""
    metric = answer_metric(sharpen(bridge))
    n = bridge.cfg.n_layers
    for site, index in CASES:
        if site == "resid_mid" and bridge.cfg.parallel_attn_mlp:
            continue
        r = attribution_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric)
        ref = layout(bridge, site=site, index=index, metric=metric)
        assert isinstance(r, AttributionResult) and r.estimate_of == "patch_sweep"
        assert r.values.shape == ref.values.shape and r.per_prompt.shape == ref.per_prompt.shape
        assert (r.axes, r.labels, r.positions, r.site, r.index) == (
            ref.axes, ref.labels, ref.positions, ref.site, ref.index)
        assert r.clean_value == pytest.approx(ref.clean_value, abs=1e-5)
        assert r.corrupted_value == pytest.approx(ref.corrupted_value, abs=1e-5)
        assert r.exact_values is None and r.correlation is None and torch.isfinite(r.values).all()
    sub = dict(site="v", index="head_pos", metric=metric, layers=[-1], heads=[0])
    r, ref = attribution_sweep(bridge, CLEAN, CORRUPTED, **sub), layout(bridge, **sub)
    assert r.values.shape == ref.values.shape == (1, 7, 1) and r.labels == ref.labels
    assert r.labels[0] == (n - 1,)
    full = attribution_sweep(bridge, CLEAN, CORRUPTED, site="v", index="head_pos", metric=metric)
    torch.testing.assert_close(r.values, full.values[-1:, :, [0]])
    align = {0: 0, 4: 2, 5: 3, 6: 4}
    r = attribution_sweep(bridge, ["Mary&J"], ["Jo&J"], site="z", index="head_pos", metric=metric,
                          positions=align, direction="noise")
    ref = layout(bridge, ["Mary&J"], ["Jo&J"], site="z", index="head_pos", metric=metric,
                 positions=align, direction="noise")
    assert r.values.shape == ref.values.shape == (n, 4, bridge.cfg.n_heads) and r.labels == ref.labels
    same = attribution_sweep(bridge, CLEAN, CLEAN, site="pattern", index="head_pos", metric=metric)
    torch.testing.assert_close(same.values, torch.full_like(same.values, same.clean_value))
    df = attribution_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=metric, exact=True).to_dataframe()
    assert list(df.columns) == ["layer", "head", "value", "exact"]
    assert len(df) == n * bridge.cfg.n_heads


def test_no_gradient_leaks(bridge):
    """Hooks detached, no .grad on parameters, requires_grad as it was, also under
    inference_mode, with a user hook attached, and when the metric raises."""
    metric = answer_metric(bridge)
    params = list(bridge.model.parameters())
    params[0].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    assert any(flags)
    with torch.inference_mode():
        a = attribution_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=metric)
    b = attribution_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=metric)
    torch.testing.assert_close(a.values, b.values)
    entries = bridge.add_hook("blocks.0.hook_mlp_out", lambda act, hook: act * 0.5)
    try:
        attribution_sweep(bridge, CLEAN, CORRUPTED, site="result", metric=metric)
    finally:
        bridge.remove_hooks(entries)

    def broken(logits):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        attribution_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=broken)
    assert [p.requires_grad for p in params] == flags
    assert all(p.grad is None for p in params)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_bad_input(bridge):
    metric = answer_metric(bridge)

    def sweep(**kw):
        return attribution_sweep(bridge, CLEAN, CORRUPTED, **(dict(site="z", metric=metric) | kw))
    with pytest.raises(InputError, match="Unknown patching site 'zz'. Valid sites: resid_pre"):
        sweep(site="zz")
    with pytest.raises(InputError, match="direction"):
        sweep(direction="sideways")
    with pytest.raises(InputError, match="index 'pos' is not valid for site 'z'"):
        sweep(index="pos")
    with pytest.raises(InputError, match="Layer 9 does not exist"):
        sweep(layers=[9])
    with pytest.raises(InputError, match=r"returned shape \(\); expected \[2\]"):
        sweep(metric=lambda logits: logits[:, -1, 0].mean())
    with pytest.raises(InputError, match="different lengths"):
        attribution_sweep(bridge, "Mary&J", "Jo&J", site="z", metric=metric)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def ioi_abc(bridge, n, seed=0):
    """``n`` training-split IOI prompts of one token length, and their "ABC" corruption (the
    second mention of the subject replaced by a third name), with the IO and S tokens."""
    prompts = ioi_prompts(4 * n, split="train", seed=seed)
    length = Counter(len(bridge.to_tokens(p.text)[0]) for p in prompts).most_common(1)[0][0]
    prompts = [p for p in prompts if len(bridge.to_tokens(p.text)[0]) == length][:n]
    rng = random.Random(seed)
    corrupted = []
    for p in prompts:
        head, _, tail = p.text.rpartition(p.s)
        corrupted.append(f"{head} {rng.choice([x for x in TRAIN_NAMES if ' ' + x not in (p.io, p.s)])}{tail}")
    return [p.text for p in prompts], corrupted, [p.io for p in prompts], [p.s for p in prompts]


def test_demo_ioi_close_to_exact(demo):
    """On the demo model's IOI circuit the estimate ranks heads as the exact sweep does:
    correlation over (layer, head) cells 1.000 for z, 0.99+ for resid_pre by position."""
    clean, corrupted, io, s = ioi_abc(demo, 12)
    metric = normalized(logit_diff(demo, io, s))
    z = attribution_sweep(demo, clean, corrupted, site="z", metric=metric, exact=True)
    resid = attribution_sweep(demo, clean, corrupted, site="resid_pre", metric=metric, exact=True)
    print(f"\ncorrelation with exact: z by head {z.correlation:.4f}, resid_pre by pos "
          f"{resid.correlation:.4f}")
    assert z.correlation > 0.95 and resid.correlation > 0.9
    assert int(z.values.argmax()) == int(z.exact_values.argmax())  # the same head leads
    assert "correlation with exact" in repr(z)
