"""The bridge equals HF eager: logits, every residual, attention weights; padding equivalence."""

import torch
from conftest import assert_equals_hf_eager, assert_padding_equivalent, no_torch_hooks, norm_affine
from conftest import rel_close as close

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_logits_and_residuals_equal_hf_eager(bridge, hf_eager):
    ref, cache = assert_equals_hf_eager(bridge, hf_eager, bridge.to_tokens(PROMPT))
    # HF's last hidden state is after the final norm (OLMo's LayerNorm has no weight, no bias)
    ln_final = bridge.model.get_submodule(bridge.adapter.ln_final)
    close(norm_affine(bridge, ln_final, cache["ln_final.hook_normalized"]),
          ref.hidden_states[bridge.cfg.n_layers])


def test_residual_identities(bridge):
    _, cache = bridge.run_with_cache(PROMPT)
    for layer in range(bridge.cfg.n_layers):
        pre, post = cache["resid_pre", layer], cache["resid_post", layer]
        attn, mlp = cache["attn_out", layer], cache["mlp_out", layer]
        close(pre + attn + mlp, post, 1e-5)
        if not bridge.cfg.parallel_attn_mlp:
            close(pre + attn, cache["resid_mid", layer], 1e-5)
        if layer + 1 < bridge.cfg.n_layers:
            assert torch.equal(post, cache["resid_pre", layer + 1])
    # per-head result sums to attn_out (with the bias)
    bridge.use_attn_result = True
    _, cache = bridge.run_with_cache(PROMPT, names_filter=lambda n: "blocks.0." in n)
    bias = bridge.model.get_submodule(f"{bridge.adapter.blocks}.0.{bridge.adapter.attn_out_proj}").bias
    total = cache["result", 0].sum(-2) + (bias if bias is not None else 0)
    if bridge.adapter.attn_post_norm is not None:  # Gemma 2: a norm between W_O and the residual
        post_norm = f"{bridge.adapter.blocks}.0.{bridge.adapter.attn_post_norm}"
        total = bridge.model.get_submodule(post_norm)(total)
    close(total * bridge.cfg.residual_multiplier, cache["attn_out", 0], 1e-5)  # Granite scales it
    pattern = cache["pattern", 0]
    close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)), 1e-6)
    assert torch.isneginf(cache["attn_scores", 0][0, 0, 0, 1])  # masked future key


def test_padding_equivalence_left_and_right(bridge):
    assert_padding_equivalent(bridge, ["The cat sat", "When Mary and John went home"])


def test_loss_matches_manual_cross_entropy(bridge):
    tokens = bridge.to_tokens(PROMPT)
    logits = bridge(tokens)
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    close(bridge(tokens, return_type="loss"), ref, 1e-6)
    out = bridge(tokens, return_type="both")
    close(out.loss, ref, 1e-6)
    assert bridge(tokens, return_type="loss", loss_per_token=True).shape == (1, tokens.shape[1] - 1)


def test_generation_with_cache_equals_hf_eager(bridge, hf_eager):
    """Greedy decoding with HF's key-value cache through the wrapped model, with a hook forcing
    the bridge's hooked attention path on every step, gives HF eager's tokens."""
    tokens = bridge.to_tokens(PROMPT[:24])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        ref = hf_eager.generate(tokens, **kw)
        queries = []
        with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern",
                                      lambda t, hook: queries.append(t.shape[-2]))]):
            out = bridge.model.generate(tokens, **kw)
    assert torch.equal(out, ref)
    assert queries[0] == tokens.shape[1] and set(queries[1:]) == {1}  # then one query per step
    assert no_torch_hooks(bridge.model)


def test_stop_at_layer_returns_residual(bridge):
    _, cache = bridge.run_with_cache(PROMPT)  # eager attention; the plain run uses SDPA
    close(bridge(PROMPT, stop_at_layer=1), cache["resid_pre", 1], 1e-5)
    assert torch.equal(bridge(PROMPT, stop_at_layer=0), cache["resid_pre", 0])
    final = bridge(PROMPT, stop_at_layer=bridge.cfg.n_layers)
    close(final, cache["resid_post", -1], 1e-5)
    assert no_torch_hooks(bridge.model)
