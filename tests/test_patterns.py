"""attention_patterns equals the cached hook_pattern and HF eager attention; rows are
distributions, causal, per query head on grouped-query models; max_pool keeps peaks."""

from __future__ import annotations

import pytest
import torch

from workbench import AttentionPatterns, Bridge, InputError, attention_patterns
from workbench.head_scores import previous_token_scores, repeated_random_tokens
from workbench.patterns import max_pool
from workbench.toy import char_tokenizer, tiny_model

PROMPT = "the cat sat on the mat, the cat"


def test_equals_cache_and_hf_eager(bridge, hf_eager):
    pats = attention_patterns(bridge, PROMPT)
    n = len(PROMPT) + 1  # one character per token, plus BOS
    assert isinstance(pats, AttentionPatterns)
    assert pats.pattern.shape == (bridge.cfg.n_layers, bridge.cfg.n_heads, n, n)
    assert pats.pattern.dtype == torch.float32 and pats.pattern.device.type == "cpu"
    assert pats.layers == list(range(bridge.cfg.n_layers))
    assert pats.str_tokens == bridge.to_str_tokens(PROMPT) and len(pats.str_tokens) == n
    assert (pats.n_heads, pats.n_kv_heads) == (bridge.cfg.n_heads, bridge.cfg.n_kv_heads)
    toks = bridge.to_tokens(PROMPT)
    _, cache = bridge.run_with_cache(toks, names_filter=lambda name: name.endswith("hook_pattern"))
    with torch.no_grad():
        hf = hf_eager(toks, output_attentions=True).attentions
    for i, layer in enumerate(pats.layers):
        assert torch.equal(pats.pattern[i], cache[f"blocks.{layer}.attn.hook_pattern"][0].float())
        assert torch.allclose(pats.pattern[i], hf[layer][0].float(), atol=1e-6)


def test_rows_sum_to_one_and_causal(bridge):
    pat = attention_patterns(bridge, PROMPT, layers=[-1]).pattern
    assert torch.allclose(pat.sum(-1), torch.ones(pat.shape[:-1]), atol=1e-5)
    n = pat.shape[-1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    assert (pat[..., upper] == 0).all() and (pat >= 0).all()


def test_layer_selection_and_head_lookup(bridge):
    last = bridge.cfg.n_layers - 1
    pats = attention_patterns(bridge, PROMPT, layers=[last, 0])
    assert pats.layers == [last, 0] and pats.pattern.shape[0] == 2
    full = attention_patterns(bridge, PROMPT)
    assert torch.equal(pats.head(0, 1), full.pattern[0, 1])
    assert torch.equal(pats.head(last, 2), full.pattern[last, 2])  # the early stop changes nothing
    assert attention_patterns(bridge, PROMPT, layers=-1).layers == [last]
    with pytest.raises(InputError, match=r"layers=\[1\]"):
        attention_patterns(bridge, PROMPT, layers=[0]).head(1, 0)


def test_grouped_query_shows_every_query_head():
    bridge = Bridge.from_hf(tiny_model("llama", n_heads=4, n_kv_heads=1), char_tokenizer())
    pats = attention_patterns(bridge, PROMPT, layers=[0])
    assert pats.pattern.shape[1] == 4 and (pats.n_heads, pats.n_kv_heads) == (4, 1)
    assert not torch.allclose(pats.pattern[0, 0], pats.pattern[0, 1])  # same K, different queries


def test_token_tensor_input(bridge):
    toks = bridge.to_tokens(PROMPT)
    from_text = attention_patterns(bridge, PROMPT).pattern
    assert torch.equal(attention_patterns(bridge, toks[0]).pattern, from_text)


def test_bad_input_says_what_and_how(bridge):
    n = bridge.cfg.n_layers
    with pytest.raises(InputError, match=rf"Layer 7 does not exist: this model has layers 0\.\.{n - 1}"):
        attention_patterns(bridge, PROMPT, layers=[7])
    with pytest.raises(InputError, match="layers is empty"):
        attention_patterns(bridge, PROMPT, layers=[])
    with pytest.raises(InputError, match="one prompt; got a batch of 2.*single string"):
        attention_patterns(bridge, ["ab", "cd"])
    with pytest.raises(InputError, match="empty string"):
        attention_patterns(bridge, "")


def test_to_dataframe_lists_the_lower_triangle(bridge):
    pats = attention_patterns(bridge, "abcd", layers=[0, 1])
    df = pats.to_dataframe()
    n, heads = 5, bridge.cfg.n_heads
    assert len(df) == 2 * heads * n * (n + 1) // 2
    row = df[(df.layer == 1) & (df["head"] == 2) & (df["query"] == 3) & (df["key"] == 1)].iloc[0]
    assert row.query_token == "c" and row.key_token == "a"
    assert row.weight == pytest.approx(float(pats.pattern[1, 2, 3, 1]))
    assert df.groupby(["layer", "head", "query"]).weight.sum().sub(1).abs().max() < 1e-5


def test_demo_model_agrees_with_head_scores(demo):
    tokens = repeated_random_tokens(demo, n=30, batch=1, seed=3)  # [1, 61]
    pats = attention_patterns(demo, tokens)
    q = torch.arange(2, tokens.shape[1])
    prev = pats.pattern[:, :, q, q - 1].mean(-1)  # [layers, heads]
    assert torch.allclose(prev, previous_token_scores(demo, tokens), atol=1e-6)
    assert prev.max() > 0.5, prev  # the demo model has previous-token heads (docs/demo_model.md)
    assert pats.str_tokens == demo.to_str_tokens(tokens[0])


def test_max_pool_keeps_peaks():
    x = torch.zeros(2, 130, 130)
    x[1, 129, 128] = 0.75  # a single sharp cell in the last, partial block
    pooled, block = max_pool(x, 64)
    assert block == 3 and pooled.shape == (2, 44, 44)
    assert pooled[1, 43, 42] == 0.75 and pooled.sum() == 0.75
    same, one = max_pool(x[:, :64, :64], 64)
    assert one == 1 and same.shape == (2, 64, 64)
    with pytest.raises(InputError, match="square"):
        max_pool(torch.zeros(3, 4), 2)
