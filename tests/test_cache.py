"""ActivationCache: indexing without the model, and the decomposition identities."""

import pytest
import torch
from conftest import unfinish_logits

from workbench import HookNameError, InputError
from workbench.adapters import norm_weight

PROMPT = "When Mary and John went to the store, John gave a drink to"


def close(a, b, tol=1e-5):
    assert ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() < tol


@pytest.fixture
def run(bridge):
    bridge.use_attn_result = True
    logits, cache = bridge.run_with_cache(PROMPT)
    bridge.use_attn_result = False
    return bridge, logits, cache


def test_indexing(run):
    bridge, _, cache = run
    n = bridge.cfg.n_layers
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_pre", -1] is cache[f"blocks.{n - 1}.hook_resid_pre"]
    if "blocks.1.ln2.hook_scale" in bridge.hook_names():  # Phi: one norm feeds both, hooked as ln1
        assert cache["scale", 1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert ("z", 0) in cache and ("z", 99) not in cache
    with pytest.raises(HookNameError, match="names_filter"):
        cache["blocks.99.hook_resid_pre"]
    single = cache.remove_batch_dim()
    assert single["resid_post", 0].shape == cache["resid_post", 0].shape[1:]
    assert cache.stack_activation("resid_post").shape[0] == n
    assert cache.to("cpu")["pattern", 0].device.type == "cpu"


def test_no_tensor_stored_twice(run):
    bridge, _, cache = run
    # resid_post of a layer IS resid_pre of the next (one tensor, two names), not a copy
    assert cache["resid_post", 0].untyped_storage().data_ptr() == \
        cache["resid_pre", 1].untyped_storage().data_ptr()
    shown = sum(t.numel() * t.element_size() for t in cache.values())
    assert cache.nbytes() <= shown


def test_decompositions_sum_to_the_residual(run):
    bridge, _, cache = run
    final = cache["resid_post", -1]
    close(cache.decompose_resid().sum(0), final)
    acc, labels = cache.accumulated_resid(return_labels=True)
    assert labels[-1] == "final_post" and torch.equal(acc[-1], final)
    close(cache.decompose_resid(layer=1).sum(0), cache["resid_pre", 1])
    heads, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert labels[0] == "L0H0" and heads.shape[0] == bridge.cfg.n_layers * bridge.cfg.n_heads + 1
    close(heads.sum(0), final)
    # from z and W_O when hook_result was not cached
    # (and the post-attention norm's scale, where the family has one: Gemma 2)
    _, z_only = bridge.run_with_cache(
        PROMPT, names_filter=lambda n: n.endswith(("hook_z", "ln1_post.hook_scale")))
    bridge_heads = z_only.stack_head_results(layer=1)
    close(bridge_heads, cache.stack_head_results(layer=1))


def test_ln_applied_stack_sums_to_normalized_and_logit_attrs(bridge):
    # a trained-looking final norm: weight far from 1 and a bias (random init has 1 and 0)
    ln = bridge.model.get_submodule(bridge.adapter.ln_final)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if getattr(ln, "weight", None) is not None:  # OLMo's final LayerNorm has no weight, no bias
            ln.weight.copy_(torch.rand(ln.weight.shape, generator=g) * 3)
        if getattr(ln, "bias", None) is not None:
            ln.bias.copy_(torch.randn(ln.bias.shape, generator=g))
    logits, cache = bridge.run_with_cache(PROMPT)
    normalized = cache["ln_final.hook_normalized"]
    close(cache.decompose_resid(apply_ln=True).sum(0), normalized)
    t_good, t_bad = 5, 7
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), t_good, t_bad, pos_slice=-1)
    # the components sum to the logit difference minus the final norm's bias term
    W_U = bridge.model.get_submodule(bridge.adapter.unembed).weight.T
    direction = W_U[:, t_good] - W_U[:, t_bad]
    logits = unfinish_logits(bridge, logits)  # attribution is of the unembedding's output
    diff = logits[0, -1, t_good] - logits[0, -1, t_bad]
    bias = getattr(ln, "bias", None)
    const = (bias @ direction) if bias is not None else 0.0
    close(attrs.sum(0)[0], diff - const, 1e-4)
    # and per component it is the normalized component times the norm's weight, unembedded
    per = cache.decompose_resid(pos_slice=-1, apply_ln=True)
    w = norm_weight(bridge.adapter, ln)  # Gemma scales by 1 + weight
    per = per * w if w is not None else per
    close(attrs[:, 0], (per @ direction)[:, 0], 1e-4)


def test_views_are_kept_only_when_they_cover_their_buffer(run):
    """GPT-2's q/k/v are slices of one fused projection output: cached together they stay views of
    that buffer (no copies); cached alone, a slice is copied so it does not pin the whole buffer."""
    bridge = run[0]
    if bridge.adapter.qkv_layout == "split":
        pytest.skip("separate Q/K/V projections: no shared buffer")
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v"]
    _, both = bridge.run_with_cache(PROMPT, names_filter=names)
    _, alone = bridge.run_with_cache(PROMPT, names_filter=names[:1])
    q_alone = alone[names[0]]
    assert q_alone.untyped_storage().nbytes() == q_alone.numel() * q_alone.element_size()
    torch.testing.assert_close(q_alone, both[names[0]])
    if bridge.cfg.positional_embedding_type == "standard":  # rotary q/k are new tensors
        ptrs = {both[n].untyped_storage().data_ptr() for n in names}
        assert len(ptrs) == 1 and both.nbytes() == sum(both[n].numel() * 4 for n in names)


def test_cache_bytes_estimates_the_cache(bridge):
    """The estimate before running is within 10% of what the cache holds (it counts a tensor
    shared by two names, e.g. a block's output and the next block's input, twice), and the
    memory budget refuses before running, naming the sizes."""
    prompts = ["When Mary and John went to the store", "The cat sat"]
    for names in (None, lambda n: "attn" in n, ["blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post"]):
        if names is not None and not callable(names) and bridge.cfg.n_experts:
            continue  # MoE layers have no mlp.hook_post
        estimate = bridge.cache_bytes(prompts, names)
        _, cache = bridge.run_with_cache(prompts, names_filter=names)
        assert cache.nbytes() <= estimate <= 1.1 * cache.nbytes(), (names, estimate, cache.nbytes())
    shape = tuple(bridge.to_tokens(prompts).shape)
    assert bridge.cache_bytes(shape) == bridge.cache_bytes(prompts)
    assert bridge.cache_bytes(shape, incl_bwd=True) == 2 * bridge.cache_bytes(shape)
    with pytest.raises(InputError, match=r"would hold .* memory budget"):
        bridge.run_with_cache(prompts, memory_budget=bridge.cache_bytes(prompts) - 1)
    _, cache = bridge.run_with_cache(prompts, memory_budget=bridge.cache_bytes(prompts))
    assert len(cache) > 0
