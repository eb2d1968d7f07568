"""Path patching: equal to a brute-force three-run reference, the identities of a linear read-out,
the batched sweep equal to single path patches, sparse sender -> logits effects on the demo
model's IOI circuit, bad input and cleanup."""

import pytest
import torch
from conftest import no_torch_hooks
from test_attribution_patching import (
    CLEAN,
    CORRUPTED,
    answer_metric,
    identity_final_norm,
    ioi_abc,
    sharpen,
    zero_last_mlp,
)

from workbench import InputError
from workbench.metrics import logit_diff, normalized
from workbench.patching import patch_sweep
from workbench.path_patching import PathPatchResult, path_patch, path_patch_sweep

TOL = dict(atol=1e-5, rtol=0, equal_nan=True)


@torch.no_grad()
def brute_force(bridge, sender, receiver, x, metric, direction="denoise"):
    """The algorithm spelled out, one path at a time: run source and base; run base with the
    sender's z from the source and every other z of every layer frozen to the base run, keeping
    the receiver's hook_x; run base with only that receiver input patched. ``[batch]``."""
    clean, corrupted = bridge.to_tokens(CLEAN), bridge.to_tokens(CORRUPTED)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    zs = [f"blocks.{L}.attn.hook_z" for L in range(bridge.cfg.n_layers)]
    _, src = bridge.run_with_cache(source, names_filter=zs)
    _, frozen = bridge.run_with_cache(base, names_filter=zs)

    def freeze(act, hook):
        out = frozen[hook.name].clone()
        if hook.layer() == sender[0]:
            out[:, :, sender[1]] = src[hook.name][:, :, sender[1]]
        return out
    if receiver is None:
        return metric(bridge.run_with_hooks(base, fwd_hooks=[(z, freeze) for z in zs]))
    name = f"blocks.{receiver[0]}.attn.hook_{x}"
    kept = {}

    def keep(act, hook):
        kept["act"] = act[:, :, receiver[1]].clone()

    def put(act, hook):
        act = act.clone()
        act[:, :, receiver[1]] = kept["act"]
        return act
    grouped = bridge.ungroup_grouped_query_attention
    bridge.ungroup_grouped_query_attention = True  # a receiver's own keys/values, not its group's
    try:
        bridge.run_with_hooks(base, fwd_hooks=[(z, freeze) for z in zs] + [(name, keep)])
        return metric(bridge.run_with_hooks(base, fwd_hooks=[(name, put)]))
    finally:
        bridge.ungroup_grouped_query_attention = grouped


def test_equals_brute_force(bridge):
    sharpen(bridge)
    metric = answer_metric(bridge)
    h = bridge.cfg.n_heads
    for k, (x, direction) in enumerate((("q", "denoise"), ("k", "noise"), ("v", "denoise"))):
        sender, receiver = (0, k % h), (1, (k + 1) % h)
        ref = brute_force(bridge, sender, receiver, x, metric, direction)
        r = path_patch(bridge, CLEAN, CORRUPTED, senders=[sender], receivers=[receiver],
                       receiver_input=x, metric=metric, direction=direction)
        torch.testing.assert_close(r.per_prompt, ref, **TOL)
        assert r.value == pytest.approx(float(ref.mean()), abs=1e-5)
        sweep = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=[receiver], receiver_input=x,
                                 metric=metric, direction=direction, batch_size=3)
        torch.testing.assert_close(sweep.per_prompt[sender], ref, **TOL)
        assert sweep.values[1:].isnan().all() and not sweep.values[0].isnan().any()
    ref = brute_force(bridge, (0, 1), None, None, metric)
    r = path_patch(bridge, CLEAN, CORRUPTED, senders=[(0, 1)], receivers=None, metric=metric)
    torch.testing.assert_close(r.per_prompt, ref, **TOL)
    assert r.receiver_input == "logits" and r.receivers is None
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)
    assert not bridge.ungroup_grouped_query_attention


def test_identities(bridge):
    """(1) A last-layer sender -> logits is the activation patch of its z (nothing after it to
    freeze). (2) With the logits linear in the last block's output (identity final norm, its
    MLP zeroed), a sender's activation-patch effect is the sum of its path effects through every
    last-layer head's q, k and v and directly to the logits."""
    sharpen(bridge)
    last = bridge.cfg.n_layers - 1
    metric = answer_metric(bridge)
    for direction in ("denoise", "noise"):
        act = patch_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=metric, direction=direction)
        direct = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=None, metric=metric,
                                  direction=direction)
        torch.testing.assert_close(direct.per_prompt[last], act.per_prompt[last], **TOL)
    zero_last_mlp(identity_final_norm(bridge))
    metric = answer_metric(bridge)
    heads = [(last, h) for h in range(bridge.cfg.n_heads)]
    act = patch_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=metric, layers=[last - 1])
    via_heads = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=heads, receiver_input="qkv",
                                 metric=metric)
    direct = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=None, metric=metric)
    base = float(act.corrupted_value)
    effect = act.values[0] - base
    assert effect.abs().max() > 1e-2
    torch.testing.assert_close(via_heads.values[last - 1] - base + direct.values[last - 1] - base,
                               effect, atol=1e-4, rtol=0)
    assert (via_heads.values[last - 1] - base).abs().max() > 1e-3  # both paths carry something
    one = path_patch(bridge, CLEAN, CORRUPTED, senders=[(last - 1, 2)], receivers=heads,
                     receiver_input=["v", "q", "k"], metric=metric)
    assert one.receiver_input == "qkv"
    torch.testing.assert_close(one.per_prompt, via_heads.per_prompt[last - 1, 2], **TOL)


def test_demo_ioi_sender_to_logits_is_sparse(demo):
    """On the demo model's IOI prompts (ABC corruption) the sender -> logits effects are carried
    by a few heads: the top 5 hold most of the total absolute effect, the first a tenth of the
    clean - corrupted gap or more."""
    clean, corrupted, io, s = ioi_abc(demo, 8)
    metric = logit_diff(demo, io, s)
    r = path_patch_sweep(demo, clean, corrupted, receivers=None, metric=metric)
    effect = (r.values - r.corrupted_value).flatten()
    order = effect.abs().argsort(descending=True)
    share = float(effect.abs()[order[:5]].sum() / effect.abs().sum())
    n_heads = demo.cfg.n_heads
    top = [(int(i) // n_heads, int(i) % n_heads, round(float(effect[i]), 3)) for i in order[:5]]
    print(f"\ntop-5 sender -> logits heads {top}, share of total |effect| {share:.4f}, "
          f"gap {r.clean_value - r.corrupted_value:.3f}")
    assert share >= 0.6 and abs(top[0][2]) > 0.1 * abs(r.clean_value - r.corrupted_value)
    lead = top[0][:2]
    single = path_patch(demo, clean, corrupted, senders=[lead], receivers="logits",
                        metric=normalized(metric))
    assert single.value == pytest.approx(float(r.normalized()[lead]), abs=1e-4)
    assert single.value > 0.3  # the leading head's direct path restores much of the logit difference
    df = r.to_dataframe()
    assert list(df.columns) == ["layer", "head", "value"] and len(df) == demo.cfg.n_layers * n_heads
    assert f"L{lead[0]}H{lead[1]}" in repr(single) and "logits" in repr(r)


def test_batched_sweep_and_cancel(bridge):
    metric = answer_metric(sharpen(bridge))
    receivers = [(1, 0), (1, 3)]
    one = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=receivers, receiver_input="k",
                           metric=metric, batch_size=1)
    many = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=receivers, receiver_input="k",
                            metric=metric)
    assert one.n_forward == 2 * bridge.cfg.n_heads and many.n_forward == 2
    torch.testing.assert_close(one.per_prompt, many.per_prompt, **TOL)
    seen = []
    r = path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=None, metric=metric, batch_size=3,
                         progress=lambda done, total: seen.append((done, total)) or len(seen) < 2)
    n = bridge.cfg.n_layers * bridge.cfg.n_heads
    assert seen == [(3, n), (6, n)] and r.partial and r.n_done == 6
    assert int(r.values.isnan().sum()) == n - 6
    # positions restrict where the senders are patched: every position is the default, and
    # only the shared first token (BOS) changes nothing
    kw = dict(senders=[(0, 1), (0, 2)], receivers=receivers, receiver_input="qv", metric=metric)
    everywhere = path_patch(bridge, CLEAN, CORRUPTED, **kw)
    torch.testing.assert_close(path_patch(bridge, CLEAN, CORRUPTED, positions={p: p for p in range(7)},
                                          **kw).per_prompt, everywhere.per_prompt, **TOL)
    bos = path_patch(bridge, ["Mary&J"], ["Jo&J"], positions={0: 0}, **kw)
    assert bos.value == pytest.approx(bos.corrupted_value, abs=1e-5) and bos.positions == ((0, 0),)
    assert abs(everywhere.value - everywhere.corrupted_value) > 1e-3
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_bad_input(bridge):
    metric = answer_metric(bridge)
    n, h = bridge.cfg.n_layers, bridge.cfg.n_heads

    def pp(**kw):
        args = dict(senders=[(0, 0)], receivers=[(1, 0)], metric=metric) | kw
        return path_patch(bridge, CLEAN, CORRUPTED, **args)
    with pytest.raises(InputError, match=r"Receivers must come after every sender .* layer 1\): "
                                         r"L1H0 do not. Valid receivers are in no layer"):
        pp(senders=[(0, 0), (1, 2)])
    with pytest.raises(InputError, match=r"L0H1 do not. Valid receivers are in layers 1..1"):
        pp(receivers=[(0, 1)])
    with pytest.raises(InputError, match=rf"senders: \(0, {h}\) is not a head of this model; give "
                                         rf"\(layer, head\) with layers 0..{n - 1} and heads 0..{h - 1}"):
        pp(senders=[(0, h)])
    with pytest.raises(InputError, match="receivers: 'L1H0' is not a head"):
        pp(receivers=["L1H0"])
    with pytest.raises(InputError, match="senders must be a non-empty list"):
        pp(senders=[])
    with pytest.raises(InputError, match="receiver_input must be 'q', 'k', 'v' or a combination"):
        pp(receiver_input="z")
    with pytest.raises(InputError, match="direction"):
        pp(direction="sideways")
    with pytest.raises(InputError, match=r"L0H1 do not. Valid receivers are in layers 1..1"):
        path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=[(0, 1)], metric=metric)
    with pytest.raises(InputError, match="batch_size"):
        path_patch_sweep(bridge, CLEAN, CORRUPTED, receivers=None, metric=metric, batch_size=0)
    assert isinstance(pp(senders=(0, 0)), PathPatchResult)  # one head without the list
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)
