"""Mixture-of-experts MLPs (Mixtral, Qwen2-MoE): the routing hook points against a by-hand
evaluation of the experts, writes that remove an expert, and the read-only points refusing
writes."""

import pytest
import torch

from workbench import Bridge, InputError
from workbench.toy import char_tokenizer, tiny_model

PROMPT = "When Mary and John went to the store, John gave a drink to"


def by_hand(block, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The experts' mix for ``x [n, d]`` with dense routing ``weights [n, E]`` (0 = not run),
    computed one expert at a time from the stacked parameters."""
    experts = block.mlp.experts
    out = torch.zeros_like(x)
    for e in range(weights.shape[-1]):
        gate, up = (x @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
        out += weights[:, e:e + 1] * ((experts.act_fn(gate) * up) @ experts.down_proj[e].T)
    return out


@pytest.fixture(params=["mixtral", "qwen2_moe"])
def moe(request):
    kw = {"mlp_only_layers": [0]} if request.param == "qwen2_moe" else {}
    return Bridge.from_hf(tiny_model(request.param, n_kv_heads=2, num_experts_per_tok=2, seed=3, **kw),
                          char_tokenizer())


@torch.no_grad()
def test_mlp_out_is_the_routed_mix_of_experts(moe):
    tokens = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    _, cache = moe.run_with_cache(tokens)
    L = moe.cfg.n_layers - 1
    block = moe.model.get_submodule(moe.adapter.blocks)[L]
    x = block.post_attention_layernorm(cache["resid_mid", L]).reshape(-1, moe.cfg.d_model)
    weights = cache["expert_weights", L].reshape(-1, moe.cfg.n_experts)
    assert torch.equal((weights != 0).sum(-1), torch.full((18,), 2))  # two experts per token
    expected = by_hand(block, x, weights)
    if hasattr(block.mlp, "shared_expert"):  # Qwen2-MoE: a gated shared expert on every token
        expected += torch.sigmoid(block.mlp.shared_expert_gate(x)) * block.mlp.shared_expert(x)
    torch.testing.assert_close(cache["mlp_out", L].reshape(-1, moe.cfg.d_model), expected,
                               rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_zeroing_an_experts_weight_removes_its_output(moe):
    L = moe.cfg.n_layers - 1
    _, clean = moe.run_with_cache(PROMPT)
    chosen = clean["expert_indices", L][0, -1]  # the last token's experts
    gone = int(chosen[0])

    def drop(w, hook):
        w = w.clone()
        w[..., gone] = 0.0
        return w
    with moe.hooks(fwd_hooks=[(f"blocks.{L}.mlp.hook_expert_weights", drop)]):
        _, cache = moe.run_with_cache(PROMPT, names_filter=lambda n: n.endswith("hook_mlp_out"))
    block = moe.model.get_submodule(moe.adapter.blocks)[L]
    x = block.post_attention_layernorm(clean["resid_mid", L][0, -1:])
    removed = torch.zeros(1, moe.cfg.n_experts)
    removed[0, gone] = clean["expert_weights", L][0, -1, gone]
    change = clean["mlp_out", L][0, -1] - cache["mlp_out", L][0, -1]
    torch.testing.assert_close(change, by_hand(block, x, removed)[0], rtol=1e-4, atol=1e-6)
    assert change.abs().max() > 1e-4


def test_read_only_points_and_unchosen_experts_refuse_writes(moe):
    L = moe.cfg.n_layers - 1  # sparse on both families (Qwen2-MoE's layer 0 is dense here)
    with pytest.raises(InputError, match="read-only"):
        moe.run_with_hooks(PROMPT, fwd_hooks=[(f"blocks.{L}.mlp.hook_router_logits", lambda t, hook: t + 1)])
    with pytest.raises(InputError, match="did not choose"):
        moe.run_with_hooks(PROMPT, fwd_hooks=[(f"blocks.{L}.mlp.hook_expert_weights",
                                               lambda t, hook: torch.ones_like(t))])
    assert moe.attached_hooks() == []
    with pytest.raises(InputError, match="experts"):
        _ = moe.W_in
