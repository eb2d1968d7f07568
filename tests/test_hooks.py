"""Hooks read and write, names are checked, and nothing leaks."""

import pytest
import torch
from conftest import no_torch_hooks, norm_affine

from workbench import HookNameError, HookShapeError, InputError, UnsupportedModelError

PROMPT = "When Mary and John went to the store"


def test_hook_names_follow_the_grammar(bridge):
    names = bridge.hook_names()
    assert "blocks.0.attn.hook_pattern" in names and "ln_final.hook_scale" in names
    assert ("blocks.0.hook_resid_mid" in names) == (not bridge.cfg.parallel_attn_mlp)
    assert ("hook_pos_embed" in names) == (bridge.cfg.positional_embedding_type == "standard")
    sparse = "blocks.0.mlp.hook_router_logits" in names  # a mixture of experts: no per-expert hooks
    assert ("blocks.0.mlp.hook_pre_linear" in names) == (bridge.cfg.gated_mlp and not sparse)
    info = bridge.hook_info("blocks.0.attn.hook_q")
    assert info.shape == ("batch", "pos", "n_heads", "d_head")
    assert info.bytes_per_token == bridge.cfg.n_heads * bridge.cfg.d_head * 4


def test_unknown_and_absent_names_explain(bridge):
    with pytest.raises(HookNameError, match="blocks.0.attn.hook_pattern"):
        bridge.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.attn.hook_patern", lambda t, hook: t)])
    if bridge.cfg.parallel_attn_mlp:
        with pytest.raises(HookNameError, match="parallel"):
            bridge.add_hook("blocks.0.hook_resid_mid", lambda t, hook: t)
    with pytest.raises(HookNameError, match="out of range"):
        bridge.add_hook("blocks.99.hook_resid_pre", lambda t, hook: t)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_hook_sees_names_and_layers(bridge):
    seen = []
    bridge.run_with_hooks(PROMPT, fwd_hooks=[(lambda n: n.endswith("hook_z"),
                                               lambda t, hook: seen.append((hook.name, hook.layer())))])
    assert seen == [(f"blocks.{i}.attn.hook_z", i) for i in range(bridge.cfg.n_layers)]


def test_writes_change_downstream(bridge):
    clean, cache = bridge.run_with_cache(PROMPT)
    last = bridge.cfg.n_layers - 1

    def zero(t, hook):
        return torch.zeros_like(t)

    # pattern write: uniform attention changes z and the output
    def uniform(p, hook):
        mask = p > 0
        return mask / mask.sum(-1, keepdim=True)
    with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)]):
        out, c2 = bridge.run_with_cache(PROMPT)
    assert not torch.allclose(out, clean)
    v = cache["v", 0]
    groups = bridge.cfg.n_heads // v.shape[2]
    v = v.repeat_interleave(groups, dim=2)
    weights = uniform(cache["pattern", 0], None)  # [b, h, q, k]: every key the mask lets through
    expected_z = torch.einsum("bhqk,bkhd->bqhd", weights, v)  # (a sliding window lets fewer)
    torch.testing.assert_close(c2["z", 0], expected_z, rtol=1e-4, atol=1e-5)

    # z write changes attn_out: zero z -> attn_out equals the output bias
    with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_z", zero)]):
        _, c3 = bridge.run_with_cache(PROMPT)
    bias = bridge.model.get_submodule(f"{bridge.adapter.blocks}.0.{bridge.adapter.attn_out_proj}").bias
    torch.testing.assert_close(c3["attn_out", 0], torch.zeros_like(c3["attn_out", 0]) +
                               (bias if bias is not None else 0))

    # resid_mid write reaches resid_post and the logits
    if not bridge.cfg.parallel_attn_mlp:
        with bridge.hooks(fwd_hooks=[(f"blocks.{last}.hook_resid_mid", zero)]):
            out, c4 = bridge.run_with_cache(PROMPT)
        torch.testing.assert_close(c4["resid_post", last], c4["mlp_out", last])
        assert not torch.allclose(out, clean)

    # resid_post write of the last layer sets what the final norm sees
    with bridge.hooks(fwd_hooks=[(f"blocks.{last}.hook_resid_post", zero)]):
        out = bridge(PROMPT)
    assert torch.allclose(out, out[:, :1].expand_as(out))  # every position identical
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_norm_writes_rebuild_the_norm_output(bridge):
    """Doubling ``hook_scale`` halves the normalized vector; the norm's output is rebuilt from the
    written value as ``normalized * w + b`` (checked by recomputing by hand)."""
    a = bridge.adapter
    if a.ln1 is not None:
        ln, prefix, source = bridge.model.get_submodule(f"{a.blocks}.0.{a.ln1}"), "blocks.0.ln1", "resid_pre"
    else:  # OLMo 2 has no norm before attention: its final norm then
        source = f"blocks.{bridge.cfg.n_layers - 1}.hook_resid_post"
        ln, prefix = bridge.model.get_submodule(a.ln_final), "ln_final"
    _, clean = bridge.run_with_cache(PROMPT)
    x = (clean["resid_pre", 0] if source == "resid_pre" else clean[source]).float()
    if bridge.cfg.normalization_type.startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    seen = {}

    def grab(t, hook):
        seen["out"] = t
    with bridge.hooks(fwd_hooks=[(f"{prefix}.hook_scale", lambda t, hook: 2 * t)]):
        _, c = bridge.run_with_cache(PROMPT, names_filter=lambda n: n.startswith(prefix))
        handle = ln.register_forward_hook(lambda m, a, o: grab(o, None))
        try:
            bridge(PROMPT)
        finally:
            handle.remove()
    torch.testing.assert_close(c[f"{prefix}.hook_normalized"],
                               x / (2 * clean[f"{prefix}.hook_scale"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["out"], norm_affine(bridge, ln, c[f"{prefix}.hook_normalized"]))


def test_wrong_shape_and_exceptions_leave_nothing_attached(bridge):
    bridge.add_hook("blocks.0.hook_resid_pre", lambda t, hook: None, is_permanent=True)
    with pytest.raises(HookShapeError, match=r"blocks.0.attn.hook_q.*expected"):
        bridge.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.attn.hook_q", lambda t, hook: t[:, :1])])

    def boom(t, hook):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        bridge.run_with_hooks(
            PROMPT, fwd_hooks=[("blocks.1.hook_mlp_out", boom), ("hook_embed", lambda t, hook: t)])
    with pytest.raises(RuntimeError):
        with bridge.hooks(fwd_hooks=[("ln_final.hook_scale", lambda t, hook: t)]):
            raise RuntimeError("user code failed")
    attached = bridge.attached_hooks()
    assert [(a.name, a.permanent) for a in attached] == [("blocks.0.hook_resid_pre", True)]
    bridge.reset_hooks()
    assert len(bridge.attached_hooks()) == 1
    bridge.reset_hooks(including_permanent=True)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_bad_input_is_explained(bridge):
    with pytest.raises(InputError, match="empty"):
        bridge("")
    with pytest.raises(InputError, match="empty list"):
        bridge([])
    with pytest.raises(InputError, match="non-empty"):
        bridge(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(InputError, match="vocabulary"):
        bridge(torch.tensor([[1, 2, bridge.cfg.d_vocab]]))
    with pytest.raises(InputError, match="context"):
        bridge("x" * (bridge.cfg.n_ctx + 5))
    assert no_torch_hooks(bridge.model)


def test_backward_hooks_and_incl_bwd(bridge):
    grads = {}
    loss, cache = bridge.run_with_cache(PROMPT, names_filter=["blocks.0.hook_resid_pre"],
                                        incl_bwd=True, return_type="loss")
    assert cache["blocks.0.hook_resid_pre_grad"].shape == cache["resid_pre", 0].shape
    assert cache["blocks.0.hook_resid_pre_grad"].abs().sum() > 0
    assert all(p.grad is None for p in bridge.model.parameters())  # only activations differentiated
    kept = {}

    def retain(x, hook):
        x.retain_grad()
        kept["x"] = x
    with bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", retain)]):
        bridge(PROMPT, return_type="loss").backward()  # the plain way: equal gradients
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre_grad"], kept["x"].grad, rtol=0, atol=0)
    bridge.model.zero_grad(set_to_none=True)
    with bridge.hooks(bwd_hooks=[("hook_embed", lambda g, hook: grads.setdefault("g", g))]):
        bridge(PROMPT, return_type="loss").backward()
    assert grads["g"].shape[-1] == bridge.cfg.d_model


def test_every_point_takes_backward_functions(bridge):
    """A backward function on any hook point fires with a gradient shaped as the activation
    (special taps included: norms, multipliers, fused halves, flattened rows, routers). The
    router's logits and chosen indices are read-only outputs that nothing downstream uses."""
    no_grad = ("hook_router_logits", "hook_expert_indices")
    names = [n for n in bridge.hook_names() if not n.endswith(no_grad)]
    _, cache = bridge.run_with_cache(PROMPT, names_filter=names, incl_bwd=True, return_type="loss")
    missing = [n for n in names if f"{n}_grad" not in cache]
    assert not missing, missing
    for n in names:
        assert cache[f"{n}_grad"].shape == cache[n].shape, n
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_unsupported_model_lists_supported(tmp_path):
    from transformers import T5Config  # an encoder-decoder
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=50).save_pretrained(tmp_path)
    from workbench import Bridge
    from workbench.adapters import supported_model_types
    with pytest.raises(UnsupportedModelError, match="'t5' is not supported") as err:
        Bridge.from_pretrained(str(tmp_path))
    assert ", ".join(supported_model_types()) in str(err.value)


def test_tokens_roundtrip(bridge):
    assert bridge.to_str_tokens("ab") == ["<bos>", "a", "b"]
    assert bridge.to_string(bridge.to_tokens("hello", prepend_bos=False)[0]) == "hello"
    assert bridge.get_token_position("o", "hello world", mode="last") == 8
    with pytest.raises(Exception, match="not one"):
        bridge.to_single_token("ab")


# block 1 and the final norm offloaded to disk, the rest in memory
OFFLOAD_MAPS = {
    "llama": {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.norm": "disk", "lm_head": "cpu"},
    "gpt2": {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
             "transformer.h.0": "cpu", "transformer.h.1": "disk", "transformer.ln_f": "disk",
             "lm_head": "cpu"},
}


@pytest.mark.parametrize("family", list(OFFLOAD_MAPS))
def test_writes_on_offloaded_modules(tmp_path, family):
    """Taps that rebuild a module's output from its weights (hook_result, a norm's points) read
    them when accelerate has offloaded that module (its weights are on "meta" again by the time
    a forward hook runs): writes give the in-memory model's logits."""
    from workbench import Bridge
    from workbench.toy import tiny_model, tiny_tokenizer

    folder, offload = tmp_path / "model", tmp_path / "offload"
    tiny_model(family, n_layers=2, **({"tie_word_embeddings": False} if family == "gpt2" else {})
               ).save_pretrained(folder)
    tiny_tokenizer(family).save_pretrained(folder)
    whole = Bridge.from_pretrained(str(folder))
    spread = Bridge.from_pretrained(str(folder), device_map=OFFLOAD_MAPS[family],
                                    offload_folder=str(offload))
    hooks = [("blocks.1.attn.hook_result", lambda act, hook: act * 0.5),
             ("ln_final.hook_normalized", lambda act, hook: act * 1.5),
             ("blocks.1.ln1.hook_scale", lambda act, hook: act * 2.0)]
    with torch.no_grad():
        got, want = (b.run_with_hooks(PROMPT, fwd_hooks=hooks) for b in (spread, whole))
        assert not torch.equal(want, whole(PROMPT))  # the writes change the logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
