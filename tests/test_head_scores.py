"""Head scores equal a brute-force loop, and read 1 on planted ideal patterns."""

from __future__ import annotations

import pytest
import torch

from workbench import Bridge, InputError
from workbench.head_scores import (
    KINDS,
    duplicate_token_scores,
    first_token_scores,
    head_scores,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from workbench.toy import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tiny():
    return Bridge.from_hf(tiny_model("gpt2", n_layers=2, n_heads=4), char_tokenizer())


def brute(bridge, tokens, pairs):
    """Mean over batch and (q, k) in ``pairs`` of pattern[b, h, q, k], per layer and head."""
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    out = torch.zeros(bridge.cfg.n_layers, bridge.cfg.n_heads)
    for layer in range(bridge.cfg.n_layers):
        for h in range(bridge.cfg.n_heads):
            vals = [cache["pattern", layer][b, h, q, k] for b in range(tokens.shape[0]) for q, k in pairs]
            out[layer, h] = torch.stack(vals).mean()
    return out


def test_scores_match_brute_force(tiny):
    rep = repeated_random_tokens(tiny, n=10, batch=3, seed=1)
    n = 10
    assert torch.equal(rep[:, 1:n + 1], rep[:, n + 1:]) and (rep[:, 0] == tiny.tokenizer.bos_token_id).all()
    ind = induction_scores(tiny, rep)
    assert torch.allclose(ind, brute(tiny, rep, [(q, q - n + 1) for q in range(n + 1, 2 * n + 1)]), atol=1e-6)
    prev = previous_token_scores(tiny, rep)
    assert torch.allclose(prev, brute(tiny, rep, [(q, q - 1) for q in range(2, 2 * n + 1)]), atol=1e-6)
    dup = duplicate_token_scores(tiny, rep)
    assert torch.allclose(dup, brute(tiny, rep, [(q, q - n) for q in range(n + 1, 2 * n + 1)]), atol=1e-6)


def test_planted_patterns_score_one(tiny):
    rep = repeated_random_tokens(tiny, n=8, batch=2, seed=2)
    n, T = 8, rep.shape[1]

    def plant(pattern, hook):  # head 1: previous token; head 2: induction (first token of a repeat)
        pattern[:, 1] = 0
        pattern[:, 1, 0, 0] = 1
        pattern[:, 1, torch.arange(1, T), torch.arange(0, T - 1)] = 1
        pattern[:, 2] = 0
        pattern[:, 2, :, 0] = 1
        q = torch.arange(n + 1, T)
        pattern[:, 2, :, 0][:, q] = 0
        pattern[:, 2, q, q - n + 1] = 1
        return pattern

    with tiny.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", plant)]):
        prev = previous_token_scores(tiny, rep)
        ind = induction_scores(tiny, rep)
    assert prev[1, 1] == pytest.approx(1.0) and ind[1, 2] == pytest.approx(1.0)
    assert prev[1, 2] < 0.2 and ind[1, 1] < 0.2


def test_bad_input_names_the_fix(tiny):
    with pytest.raises(InputError, match="repeated_random_tokens"):
        induction_scores(tiny, torch.randint(3, 50, (2, 21)))
    with pytest.raises(InputError, match="duplicate_token_scores expects"):
        duplicate_token_scores(tiny, torch.randint(3, 50, (2, 20)))
    with pytest.raises(InputError, match="pos >= 3"):
        previous_token_scores(tiny, torch.randint(3, 50, (2,)))


def test_head_scores_bundle_matches_the_single_scores(tiny):
    res = head_scores(tiny, n=10, batch=3, seed=4)
    rep = repeated_random_tokens(tiny, n=10, batch=3, seed=4)
    singles = {"previous_token": previous_token_scores, "induction": induction_scores,
               "duplicate_token": duplicate_token_scores, "first_token": first_token_scores}
    assert set(res.scores) == set(KINDS)
    for kind, fn in singles.items():
        torch.testing.assert_close(res[kind], fn(tiny, rep), atol=1e-6, rtol=0)
    first = brute(tiny, rep, [(q, 0) for q in range(1, rep.shape[1])])
    torch.testing.assert_close(res["first_token"], first, atol=1e-6, rtol=0)
    top = res.top("induction", 2)
    flat = res["induction"].flatten()
    assert top[0][1] == pytest.approx(float(flat.max())) and top[0][1] >= top[1][1]
    df = res.to_dataframe()
    assert len(df) == 2 * 4 and set(KINDS) <= set(df.columns)
    threshold = float(res["first_token"].median())
    chosen = res.classify(threshold)["first_token"]
    assert len(chosen) == int((res["first_token"] >= threshold).sum())
    assert res.classify(1.01)["induction"] == []
    with pytest.raises(InputError, match="Unknown head score"):
        _ = res["copying"]


def test_demo_model_heads_top_their_scores(demo):
    """On the trained demo model the induction heads sit in the last layer and the top
    previous-token head in an earlier layer (the two-layer induction circuit)."""
    res = head_scores(demo, n=50, batch=8, seed=0)
    ind_head, ind = res.top("induction", 1)[0]
    prev_head, prev = res.top("previous_token", 1)[0]
    assert ind > 0.5 and prev > 0.5
    assert int(prev_head[1]) < int(ind_head[1])
    assert ind_head not in [h for h, _ in res.top("previous_token", 3)]
