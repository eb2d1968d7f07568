"""Falcon's ALiBi layout (the RW checkpoints: multi-head Q/K/V interleaved per head, sequential
blocks, biases). Not a ``VARIANTS`` entry: transformers' eager Falcon code adds the ALiBi bias
twice (once before the scaling and once through the mask), so HF eager is no reference here.
The model's own run is SDPA, which adds it once, as Falcon was trained; the bridge equals that
run, and its pattern equals ALiBi attention written out from the cached queries and keys."""

import math

import pytest
import torch
from conftest import assert_padding_equivalent, rel_close
from transformers import AutoModelForCausalLM

from workbench import Bridge
from workbench.toy import tiny_model, tiny_tokenizer

PROMPT = "When Mary and John went to the store, John gave"


def close(a, b, tol=1e-5):
    rel_close(a, b, tol)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("falcon_alibi")
    model = tiny_model("falcon", alibi=True, multi_query=False, parallel_attn=False, bias=True)
    model.save_pretrained(path)
    tiny_tokenizer("falcon").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(folder):
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # SDPA
    return Bridge.from_pretrained(str(folder)), hf


def test_logits_and_residuals_equal_the_models_own_run(pair):
    bridge, hf = pair
    assert bridge.cfg.positional_embedding_type == "alibi" and not bridge.cfg.parallel_attn_mlp
    assert hf.config._attn_implementation == "sdpa"
    tokens = bridge.to_tokens(PROMPT)
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True)
        plain = bridge(tokens)
        logits, cache = bridge.run_with_cache(tokens)  # hooked attention path on every layer
    close(plain, ref.logits)
    close(logits, ref.logits)
    for layer in range(bridge.cfg.n_layers):
        close(cache["resid_pre", layer], ref.hidden_states[layer])
        close(cache["resid_pre", layer] + cache["attn_out", layer], cache["resid_mid", layer])


def test_pattern_is_alibi_attention_from_the_cached_queries_and_keys(pair):
    bridge, _ = pair
    _, cache = bridge.run_with_cache(PROMPT)
    n_heads, d_head = bridge.cfg.n_heads, bridge.cfg.d_head
    # ALiBi's slopes for a power-of-two head count: 2 ** (-8 (h + 1) / n_heads)
    slopes = torch.tensor([2 ** (-8 * (h + 1) / n_heads) for h in range(n_heads)])
    n = cache["q", 0].shape[1]
    keys = torch.arange(n, dtype=torch.float32)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    for layer in range(bridge.cfg.n_layers):
        q, k = cache["q", layer][0], cache["k", layer][0]  # [pos, heads, d_head]
        scores = (torch.einsum("qhd,khd->hqk", q, k) + slopes[:, None, None] * keys) / math.sqrt(d_head)
        ours = cache["attn_scores", layer][0]  # [heads, q, k], the bias inside, -inf masked
        assert torch.equal(torch.isneginf(ours), future.expand_as(ours))
        close(ours[:, ~future], scores[:, ~future])
        close(cache["pattern", layer][0], scores.masked_fill(future, float("-inf")).softmax(-1))


def test_padding_generation_and_writes(pair):
    bridge, hf = pair
    assert_padding_equivalent(bridge, ["The cat sat", "When Mary and John went home"])
    tokens = bridge.to_tokens(PROMPT[:20])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        ref = hf.generate(tokens, **kw)
        with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: None)]):
            assert torch.equal(bridge.model.generate(tokens, **kw), ref)
    base = bridge(PROMPT)
    uniform = bridge.run_with_hooks(PROMPT, fwd_hooks=[(
        "blocks.1.attn.hook_pattern",
        lambda t, hook: torch.ones_like(t).tril() / torch.ones_like(t).tril().sum(-1, keepdim=True))])
    assert (uniform - base).abs().max() > 1e-3
