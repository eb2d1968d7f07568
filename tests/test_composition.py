"""Composition scores equal a dense brute-force loop and TransformerLens, are scale invariant, and
find the previous-token -> induction K-composition of the demo model."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_transformer_lens

from workbench import Bridge, InputError
from workbench.composition import (
    CompositionScores,
    composition_scores,
    composition_scores_from_weights,
    random_baseline,
)
from workbench.head_scores import induction_scores, previous_token_scores, repeated_random_tokens
from workbench.toy import char_tokenizer, tiny_model

TOL = 1e-4


def dense_circuits(W_Q, W_K, W_V, W_O, kind, l1, h1, l2, h2):
    """``(W_A, W_B)`` as dense ``[d_model, d_model]`` matrices."""
    ov = lambda layer, h: W_V[layer, h] @ W_O[layer, h]  # noqa: E731
    qk = lambda layer, h: W_Q[layer, h] @ W_K[layer, h].T  # noqa: E731
    return ov(l1, h1), {"q": qk(l2, h2), "k": qk(l2, h2).T, "v": ov(l2, h2)}[kind]


def brute(W_Q, W_K, W_V, W_O, kind):
    n_layers, n_heads = W_Q.shape[:2]
    out = torch.zeros(n_layers, n_heads, n_layers, n_heads)
    norm = torch.linalg.matrix_norm
    for l1 in range(n_layers):
        for h1 in range(n_heads):
            for l2 in range(l1 + 1, n_layers):
                for h2 in range(n_heads):
                    a, b = dense_circuits(W_Q, W_K, W_V, W_O, kind, l1, h1, l2, h2)
                    out[l1, h1, l2, h2] = norm(a @ b) / (norm(a) * norm(b))
    return out


def weights(bridge):
    return bridge.W_Q, bridge.W_K, bridge.W_V, bridge.W_O


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_matches_dense_brute_force(bridge, kind):
    res = composition_scores(bridge, kind)
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    assert isinstance(res, CompositionScores) and res.kind == kind and res.baseline is None
    assert res.scores.shape == res.valid.shape == (n_layers, n_heads, n_layers, n_heads)
    assert res.scores.dtype == torch.float32 and res.valid.dtype == torch.bool
    torch.testing.assert_close(res.scores, brute(*weights(bridge), kind), atol=1e-6, rtol=1e-5)
    layer = torch.arange(n_layers)
    assert torch.equal(res.valid, (layer[:, None, None, None] < layer[None, None, :, None])
                       .expand(n_layers, n_heads, n_layers, n_heads))
    assert (res.scores[~res.valid] == 0).all() and (res.scores[res.valid] > 0).all()


def test_three_layer_gqa_brute_force_and_helpers():
    br = Bridge.from_hf(tiny_model("llama", n_layers=3, n_kv_heads=2), char_tokenizer())
    for kind in "qkv":
        res = composition_scores(br, kind)
        torch.testing.assert_close(res.scores, brute(*weights(br), kind), atol=1e-6, rtol=1e-5)
    n = 3 * br.cfg.n_heads
    assert res.labels[:2] == ["L0H0", "L0H1"] and len(res.labels) == n
    assert res.matrix().shape == (n, n) and res.matrix()[1, n - 1] == res.scores[0, 1, 2, -1]
    top = res.top(5)
    assert [s for *_, s in top] == sorted((s for *_, s in top), reverse=True)
    assert top[0][2] == pytest.approx(res.scores[res.valid].max().item())
    assert len(res.top(10_000)) == int(res.valid.sum())
    for sender, receiver, _ in res.top(10_000):
        assert int(sender[1:sender.index("H")]) < int(receiver[1:receiver.index("H")])
    df = res.to_dataframe()
    assert list(df.columns) == ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "score"]
    assert len(df) == int(res.valid.sum()) and (df.sender_layer < df.receiver_layer).all()
    row = df.iloc[-1]
    assert row.score == pytest.approx(res.scores[int(row.sender_layer), int(row.sender_head),
                                                 int(row.receiver_layer), int(row.receiver_head)].item())


def test_invariant_to_scaling_and_refactoring_a_head(bridge):
    W_Q, W_K, W_V, W_O = (w.clone() for w in weights(bridge))
    before = {k: composition_scores_from_weights(W_Q, W_K, W_V, W_O, k).scores for k in "qkv"}
    W_O[0, 1] *= 3.0  # scale one head's OV circuit
    g = torch.randn(W_Q.shape[-1], W_Q.shape[-1], generator=torch.Generator().manual_seed(0))
    g = g + 3 * torch.eye(g.shape[0])  # well conditioned
    W_Q[1, 2] = W_Q[1, 2] @ g  # re-split QK of one later head: W_Q G (W_K G^-T)^T == W_Q W_K^T
    W_K[1, 2] = W_K[1, 2] @ torch.linalg.inv(g).T
    for k in "qkv":
        torch.testing.assert_close(composition_scores_from_weights(W_Q, W_K, W_V, W_O, k).scores,
                                   before[k], atol=1e-5, rtol=1e-4)


def test_low_precision_weights_compute_in_float32(bridge):
    ws = [w.to(torch.bfloat16) for w in weights(bridge)]
    res = composition_scores_from_weights(*ws, "k")
    assert res.scores.dtype == torch.float32
    ref = brute(*(w.float() for w in ws), "k")
    torch.testing.assert_close(res.scores, ref, atol=1e-5, rtol=1e-4)


def test_matches_transformer_lens(saved):
    folder = saved[1]
    tl = boot_transformer_lens(*saved)
    ours = Bridge.from_pretrained(str(folder))
    for kind in "qkv":
        theirs = tl.all_composition_scores(kind.upper()).scores
        mine = composition_scores(ours, kind).scores
        assert theirs.shape == mine.shape
        assert (theirs - mine).abs().max().item() < TOL, (saved[0], kind)


def test_baseline(bridge):
    d_model, d_head = bridge.cfg.d_model, bridge.cfg.d_head
    raw = composition_scores(bridge, "k")
    cor = composition_scores(bridge, "k", baseline=True, n_baseline=32, seed=3)
    base = random_baseline(d_model, d_head, n=32, seed=3)
    assert cor.baseline == base > 0
    torch.testing.assert_close(cor.scores[cor.valid], raw.scores[raw.valid] - base)
    assert (cor.scores[~cor.valid] == 0).all() and torch.equal(cor.valid, raw.valid)
    # deterministic for a seed (bypassing the cache), different for another seed
    assert random_baseline.__wrapped__(d_model, d_head, n=32, seed=3) == base
    assert random_baseline.__wrapped__(d_model, d_head, n=32, seed=4) != base
    # close to an independent dense Monte-Carlo estimate of random Gaussian circuits
    gen, norm = torch.Generator().manual_seed(123), torch.linalg.matrix_norm
    a1, a2 = torch.randn(2, 200, d_model, d_head, generator=gen, dtype=torch.float64)
    b1, b2 = torch.randn(2, 200, d_head, d_model, generator=gen, dtype=torch.float64)
    wa, wb = a1 @ b1, a2 @ b2
    dense = (norm(wa @ wb) / (norm(wa) * norm(wb))).mean().item()
    assert base == pytest.approx(dense, rel=0.05)
    with pytest.raises(InputError):
        random_baseline(d_model, d_head, n=0)


@pytest.fixture(scope="module")
def tiny():
    return Bridge.from_hf(tiny_model("gpt2", n_layers=2, n_heads=4), char_tokenizer())


@pytest.mark.parametrize("kind", ["x", "qk", "", None, 1])
def test_bad_kind(tiny, kind):
    with pytest.raises(InputError, match="expected kind in"):
        composition_scores(tiny, kind)


def test_uppercase_kind_like_transformer_lens(tiny):
    assert composition_scores(tiny, "K").kind == "k"


def test_rank_deficient_and_zero_heads(tiny):
    W_Q, W_K, W_V, W_O = (w.clone() for w in weights(tiny))
    W_V[0, 1, :, ::2] = 0  # rank-deficient: singular Gram, eigendecomposition fallback
    W_K[1, 3, :, 1:] = 0  # rank-one keys
    for kind in "qkv":
        res = composition_scores_from_weights(W_Q, W_K, W_V, W_O, kind).scores
        torch.testing.assert_close(res, brute(W_Q, W_K, W_V, W_O, kind), atol=1e-6, rtol=1e-5)
    W_O[0, 2] = 0  # a head with no output: its scores are 0/0, NaN, and top() skips them
    res = composition_scores_from_weights(W_Q, W_K, W_V, W_O, "k")
    assert res.scores[0, 2, 1].isnan().all() and not res.scores[0, :2].isnan().any()
    assert len(res.top(100)) == 12 and all(s == s and snd != "L0H2" for snd, _, s in res.top(100))


def test_demo_previous_token_head_k_composes_into_induction_head(demo):
    tokens = repeated_random_tokens(demo, n=50, batch=8, seed=0)
    prev, ind = previous_token_scores(demo, tokens), induction_scores(demo, tokens)
    n_heads = demo.cfg.n_heads
    p, i = divmod(int(prev.argmax()), n_heads), divmod(int(ind.argmax()), n_heads)
    assert p[0] < i[0]  # the previous-token head sits in an earlier layer
    k, q, v = (composition_scores(demo, kind) for kind in "kqv")
    pi = k.scores[p[0], p[1], i[0], i[1]]
    # Among the induction head's K-composition scores over all earlier heads, the previous-token
    # head's is in the top 2 (the other previous-token head of its layer is a close rival) ...
    into_i = k.scores[:, :, i[0], i[1]][k.valid[:, :, i[0], i[1]]]
    assert (into_i > pi).sum() <= 1
    # ... above the 90th percentile and twice the median of all valid K scores ...
    allk = k.scores[k.valid]
    assert pi > allk.quantile(0.9) and pi > 2 * allk.median()
    # ... and K-composition is this pair's strongest kind, as the induction mechanism predicts.
    assert pi > q.scores[p[0], p[1], i[0], i[1]] and pi > v.scores[p[0], p[1], i[0], i[1]]
    # Above chance after baseline correction, and far above the typical corrected pair.
    kb = composition_scores(demo, "k", baseline=True)
    assert kb.scores[p[0], p[1], i[0], i[1]] > 5 * kb.scores[kb.valid].median().clamp_min(1e-3)
