"""The weights in TL shapes reproduce the activations the model computed (every family/variant)."""

import pytest
import torch
from conftest import finish_logits, norm_affine

from workbench import FactoredMatrix, InputError

PROMPT = "When Mary and John went to the store, John gave a drink to"


def norm_out(bridge, cache, name: str, layer: int | None) -> torch.Tensor:
    """The norm module's real output, ``hook_normalized * w + b``: ``[batch, pos, d_model]``."""
    path = (f"{bridge.adapter.blocks}.{layer}.{getattr(bridge.adapter, name)}" if layer is not None
            else bridge.adapter.ln_final)
    mod = bridge.model.get_submodule(path)
    hook = f"blocks.{layer}.{name}.hook_normalized" if layer is not None else "ln_final.hook_normalized"
    return norm_affine(bridge, mod, cache[hook])


def between_projection_and_rotary(bridge, layer: int, key: str, t: torch.Tensor) -> torch.Tensor:
    """What the model applies to a projection's output ``[b, p, heads, d_head]`` before rotary:
    OLMo's ``clip_qkv`` clamp (Q, K, V), Qwen3's per-head ``q_norm``/``k_norm`` (Q, K)."""
    clip = bridge.cfg.clip_qkv
    if clip is not None:
        t = t.clamp(-clip, clip)
    norms = bridge.adapter.attn_qk_norms
    if norms is not None and key in "qk":
        block = bridge.model.get_submodule(f"{bridge.adapter.blocks}.{layer}")
        path = norms["qk".index(key)]
        if any(name == path for name, _ in block.named_modules()):  # a config may turn them off
            norm = block.get_submodule(path)
            b, p, heads, d = t.shape
            n_own = bridge.cfg.n_heads if key == "q" else bridge.cfg.n_kv_heads
            g = heads // n_own  # t has one K per query head; the norm sees the K heads
            t = t[:, :, ::g]
            w = getattr(norm, "weight", None)
            if w is None:  # StableLM: one LayerNorm module per head (norm.norms)
                t = torch.stack([n(t[:, :, h]) for h, n in enumerate(norm.norms)], dim=2)
            elif w.ndim == 1 and w.numel() != d:  # OLMo 2: one norm over all heads together
                t = norm(t.reshape(b, p, -1)).reshape(b, p, n_own, d)
            else:  # per head (Qwen3 [d_head]; Cohere a weight per head [heads, d_head])
                t = norm(t)
            t = t.repeat_interleave(g, dim=2)
    return t


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_shapes(bridge):
    c = bridge.cfg
    L, H, D, dh = c.n_layers, c.n_heads, c.d_model, c.d_head
    assert bridge.W_E.shape == (c.d_vocab, D) and bridge.W_U.shape == (D, c.d_vocab)
    for name in ("W_Q", "W_K", "W_V"):
        assert getattr(bridge, name).shape == (L, H, D, dh), name
    for name in ("b_Q", "b_K", "b_V"):
        assert getattr(bridge, name).shape == (L, H, dh), name
    assert bridge.W_O.shape == (L, H, dh, D) and bridge.b_O.shape == (L, D)
    if c.n_experts:  # one matrix per layer does not exist: the error names the expert weights
        for name in ("W_in", "W_out", "b_in", "b_out"):
            with pytest.raises(InputError, match="mixtures of .* experts"):
                getattr(bridge, name)
    else:
        assert bridge.W_in.shape == (L, D, c.d_mlp) and bridge.W_out.shape == (L, c.d_mlp, D)
        assert bridge.b_in.shape == (L, c.d_mlp) and bridge.b_out.shape == (L, D)
    assert bridge.b_U.shape == (c.d_vocab,)
    qk, ov = bridge.QK, bridge.OV
    assert isinstance(qk, FactoredMatrix) and qk.shape == (L, H, D, D) and ov.shape == (L, H, D, D)


def post_norm(bridge, layer: int, path: str | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the block's norm at ``path`` (Gemma 2's norms after attention and the MLP);
    unchanged where the family has none."""
    return x if path is None else bridge.model.get_submodule(f"{bridge.adapter.blocks}.{layer}.{path}")(x)


def test_weights_reproduce_activations(bridge):
    c = bridge.cfg
    logits, cache = bridge.run_with_cache(PROMPT)
    tokens = bridge.to_tokens(PROMPT)
    embedded = bridge.W_E[tokens]
    if bridge.adapter.embed_norm is not None:  # BLOOM: hook_embed is its embedding norm's output
        embedded = bridge.model.get_submodule(bridge.adapter.embed_norm)(embedded)
    close(cache["hook_embed"], embedded)
    if c.positional_embedding_type == "standard":
        close(cache["hook_pos_embed"][0], bridge.W_pos[: tokens.shape[1]])
    else:
        with pytest.raises(InputError, match="no W_pos"):
            _ = bridge.W_pos
    g = c.n_heads // c.n_kv_heads
    for layer in range(c.n_layers):
        # [b, p, D]; OLMo 2's attention reads the residual stream directly
        x = norm_out(bridge, cache, "ln1", layer) if bridge.adapter.ln1 else cache["resid_pre", layer]
        q, k, v = (between_projection_and_rotary(
            bridge, layer, key, torch.einsum("bpd,hde->bphe", x, getattr(bridge, f"W_{key.upper()}")[layer])
            + getattr(bridge, f"b_{key.upper()}")[layer]) for key in "qkv")
        close(v[:, :, ::g], cache["v", layer])  # hook_v is per kv head
        if c.positional_embedding_type != "rotary":
            close(q, cache["q", layer])
            close(k[:, :, ::g], cache["k", layer])
        else:  # rotary leaves position 0 unrotated, and the unrotated part of each head
            close(q[:, 0], cache["q", layer][:, 0])
            close(k[:, 0, ::g], cache["k", layer][:, 0])
            r = c.rotary_dim
            close(q[..., r:], cache["q", layer][..., r:])
        attn_out = torch.einsum("bphe,hed->bpd", cache["z", layer], bridge.W_O[layer]) + bridge.b_O[layer]
        r = c.residual_multiplier  # Granite scales what attention and the MLP write
        close(r * post_norm(bridge, layer, bridge.adapter.attn_post_norm, attn_out), cache["attn_out", layer])
        # Phi, parallel StableLM: one norm feeds both, hooked as ln1
        ln2 = "ln2" if f"blocks.{layer}.ln2.hook_scale" in bridge.hook_names() else "ln1"
        x2 = cache["resid_mid", layer] if bridge.adapter.ln2 is None else norm_out(bridge, cache, ln2, layer)
        if f"blocks.{layer}.mlp.hook_router_logits" in cache:  # a mixture of experts
            a = bridge.adapter
            router = bridge.model.get_submodule(f"{a.blocks}.{layer}.{a.moe_router}")
            router_logits = x2 @ router.weight.T
            close(router_logits, cache["router_logits", layer])
            chosen = router_logits.softmax(-1).topk(c.experts_per_token, dim=-1).indices
            assert torch.equal(chosen.sort(-1).values, cache["expert_indices", layer].sort(-1).values)
            weights = cache["expert_weights", layer]  # [b, p, n_experts], 0 where not chosen
            assert torch.equal(weights != 0, torch.zeros_like(weights, dtype=torch.bool).scatter(
                -1, chosen, True))
            continue
        if c.n_experts:  # a dense layer of a mixed model (Qwen-MoE): W_in has no [L, ...] stack
            continue
        if c.gated_mlp:
            close(x2 @ bridge.W_gate[layer], cache["pre", layer])
            close(x2 @ bridge.W_in[layer], cache["pre_linear", layer])
        else:
            close(x2 @ bridge.W_in[layer] + bridge.b_in[layer], cache["pre", layer])
            with pytest.raises(InputError, match="gated"):
                _ = bridge.W_gate
        mlp_out = cache["post", layer] @ bridge.W_out[layer] + bridge.b_out[layer]
        close(r * post_norm(bridge, layer, bridge.adapter.mlp_post_norm, mlp_out), cache["mlp_out", layer])
    unembedded = norm_out(bridge, cache, "ln_final", None) @ bridge.W_U + bridge.b_U
    close(finish_logits(bridge, unembedded), logits)


def test_qk_and_ov_circuits(bridge):
    qk, ov = bridge.QK, bridge.OV
    layer, head = bridge.cfg.n_layers - 1, bridge.cfg.n_heads - 1
    close(qk[layer, head].AB, bridge.W_Q[layer, head] @ bridge.W_K[layer, head].T)
    close(ov[layer, head].AB, bridge.W_V[layer, head] @ bridge.W_O[layer, head])
