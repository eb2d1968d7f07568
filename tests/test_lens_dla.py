"""Logit lens and direct logit attribution: identities against the model's own logits."""

import pytest
import torch
from conftest import finish_logits, norm_affine, unfinish_logits

from workbench import InputError
from workbench.adapters import norm_weight
from workbench.attribution import direct_logit_attribution
from workbench.lens import logit_lens

PROMPT = "When Mary and John went to the store, John gave a drink to"


def randomise_norms(bridge, seed=0):
    """Tiny random models have norm weight 1 / bias 0; make them non-trivial so the final-norm
    handling can fail if wrong (OLMo's LayerNorm has neither)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in bridge.model.modules():
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None:
                m.weight.mul_(1 + 0.3 * torch.randn_like(m.weight))
                if getattr(m, "bias", None) is not None:
                    m.bias.add_(0.2 * torch.randn_like(m.bias))


def test_lens_last_layer_equals_logits(bridge):
    randomise_norms(bridge)
    logits = bridge(PROMPT)[0].float()  # [pos, d_vocab]
    target = int(logits[-1].argmax())
    lens = logit_lens(bridge, PROMPT, sites="all", k=3, target=target)
    last = lens.rows.index(f"{bridge.cfg.n_layers - 1}_post")
    probs = logits.softmax(-1)
    top = probs.topk(3, -1)
    assert torch.equal(lens.top_tokens[last], top.indices)
    torch.testing.assert_close(lens.top_probs[last], top.values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lens.target_prob[last], probs[:, target], rtol=1e-5, atol=1e-6)
    ranks = (logits > logits[:, target:target + 1]).sum(-1)
    assert torch.equal(lens.target_rank[last], ranks) and lens.target_rank[last, -1] == 0
    ent = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(lens.entropy[last], ent, rtol=1e-4, atol=1e-5)
    # every layer's resid_pre(L+1) is resid_post(L): same lens
    if "1_pre" in lens.rows:
        pre1, post0 = lens.rows.index("1_pre"), lens.rows.index("0_post")
        assert torch.equal(lens.top_tokens[pre1], lens.top_tokens[post0])
    n_sites = 2 if bridge.cfg.parallel_attn_mlp else 3
    assert len(lens.rows) == n_sites * bridge.cfg.n_layers
    assert lens.top_tokens.shape == (len(lens.rows), len(lens.str_tokens), 3)
    df = lens.to_dataframe()
    assert len(df) == len(lens.rows) * len(lens.positions) and "target_rank" in df


def test_lens_brute_force_middle_layer(bridge):
    """A middle layer's lens equals final norm + unembedding applied by hand to the cached
    residual (norm recomputed from that residual)."""
    randomise_norms(bridge, seed=1)
    _, cache = bridge.run_with_cache(PROMPT)
    resid = cache["resid_mid" if not bridge.cfg.parallel_attn_mlp else "resid_post", 0][0]
    ln = bridge.model.get_submodule(bridge.adapter.ln_final)
    eps = getattr(ln, "variance_epsilon", getattr(ln, "eps", bridge.cfg.eps))
    x = resid.float()
    if bridge.cfg.normalization_type == "LN":
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    x = norm_affine(bridge, ln, x)
    logits = x @ bridge.W_U + bridge.b_U
    logits = finish_logits(bridge, logits)  # Gemma 2's soft-cap, Cohere's multiplier
    site = "resid_post" if bridge.cfg.parallel_attn_mlp else "resid_mid"
    lens = logit_lens(bridge, PROMPT, sites=site, layers=[0], positions=[-1, 2], k=4)
    expected = logits[[resid.shape[0] - 1, 2]].softmax(-1).topk(4, -1)
    assert torch.equal(lens.top_tokens[0], expected.indices)
    torch.testing.assert_close(lens.top_probs[0], expected.values, rtol=1e-4, atol=1e-6)
    assert lens.positions == [resid.shape[0] - 1, 2]


def test_lens_bad_input(bridge):
    with pytest.raises(InputError, match="one prompt"):
        logit_lens(bridge, [PROMPT, PROMPT])
    with pytest.raises(InputError, match="sites"):
        logit_lens(bridge, PROMPT, sites="resid_end")
    with pytest.raises(InputError, match="sites is empty"):
        logit_lens(bridge, PROMPT, sites=())
    if bridge.cfg.parallel_attn_mlp:
        with pytest.raises(InputError, match="no resid_mid"):
            logit_lens(bridge, PROMPT, sites="resid_mid")
    with pytest.raises(InputError, match="layers"):
        logit_lens(bridge, PROMPT, layers=[99])
    with pytest.raises(InputError, match="k must be"):
        logit_lens(bridge, PROMPT, k=0)


@pytest.mark.parametrize("wrong", [False, True])
def test_dla_sums_to_logit_difference(bridge, wrong):
    randomise_norms(bridge, seed=2)
    prompts = [PROMPT, "When Mary and John went"]  # right-padded batch: last real token differs
    answer, other = ["M", "J"], ["J", "M"]
    res = direct_logit_attribution(bridge, prompts, answer, other if wrong else None)
    # the model's own logits at each prompt's last real token, before what the model does after
    # the unembedding (Gemma 2's soft-cap is not linear; Cohere multiplies)
    for i, p in enumerate(prompts):
        logits = unfinish_logits(bridge, bridge(p)[0, -1].float())
        a, b = bridge.to_single_token(answer[i]), bridge.to_single_token(other[i])
        expected = logits[a] - (logits[b] if wrong else 0)
        torch.testing.assert_close(res.logit_diff[i], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.values.sum(0) + res.bias_term, res.logit_diff, rtol=1e-4, atol=1e-4)
    c = bridge.cfg
    assert res.values.shape == (len(res.labels), 2)
    assert res.by_head().shape == (c.n_layers, c.n_heads)
    parts = res.by_layer()
    torch.testing.assert_close(parts["embed"] + parts["attn"].sum() + parts["mlp"].sum(), res.mean.sum())
    ln_bias = getattr(bridge.model.get_submodule(bridge.adapter.ln_final), "bias", None)  # OLMo: none
    if ln_bias is not None and not wrong:  # LN bias then contributes to a single logit
        assert res.bias_term.abs().max() > 0
    assert len(res.to_dataframe()) == len(res.labels)
    assert res.top(3)[0][1] == pytest.approx(float(res.mean[res.mean.abs().argmax()]))


def test_dla_heads_match_ablation_direct_path(bridge):
    """A head's DLA equals the change in the logit difference when that head's output is removed
    from the final residual stream only (final norm scale frozen), computed by hand."""
    res = direct_logit_attribution(bridge, PROMPT, "M", "J")
    _, cache = bridge.run_with_cache(PROMPT)
    L, h = bridge.cfg.n_layers - 1, 0
    head_out = cache["z", L][0, -1, h] @ bridge.W_O[L, h]
    x = head_out.float()
    if bridge.adapter.attn_post_norm is not None:  # Gemma 2: through the post-attention norm
        post = bridge.model.get_submodule(f"{bridge.adapter.blocks}.{L}.{bridge.adapter.attn_post_norm}")
        x = x / cache[f"blocks.{L}.ln1_post.hook_scale"][0, -1] * norm_weight(bridge.adapter, post)
    x = x * bridge.cfg.residual_multiplier  # Granite scales what attention writes
    if bridge.cfg.normalization_type == "LN":
        x = x - x.mean()
    ln = bridge.model.get_submodule(bridge.adapter.ln_final)
    d = bridge.W_U[:, bridge.to_single_token("M")] - bridge.W_U[:, bridge.to_single_token("J")]
    weight = norm_weight(bridge.adapter, ln)  # OLMo's final LayerNorm has none; Gemma's is 1 + w
    expected = (x / cache["ln_final.hook_scale"][0, -1] * (1 if weight is None else weight)) @ d
    torch.testing.assert_close(res.values[res.labels.index(f"L{L}H{h}"), 0], expected, rtol=1e-4, atol=1e-5)


def test_dla_bad_input(bridge):
    with pytest.raises(InputError, match="one per prompt"):
        direct_logit_attribution(bridge, [PROMPT, PROMPT], ["M", "J", "M"])
    with pytest.raises(InputError, match="position"):
        direct_logit_attribution(bridge, PROMPT, "M", position=500)
    with pytest.raises(InputError, match="token ids"):
        direct_logit_attribution(bridge, PROMPT, 10**9)
