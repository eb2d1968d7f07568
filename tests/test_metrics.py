"""Patching metrics: values against direct computations, declared positions, and errors."""

import pytest
import torch

from workbench import Bridge, InputError
from workbench.metrics import (
    Metric,
    as_metric,
    check_output,
    kl_to,
    logit_diff,
    logprob,
    normalized,
    prob,
)
from workbench.toy import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tiny():
    return Bridge.from_hf(tiny_model("gpt2"), char_tokenizer())


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return 3 * torch.randn(2, 5, 103)


def test_logit_diff_ids_strings_and_per_prompt(tiny, logits):
    a, w = tiny.to_single_token("a"), tiny.to_single_token("b")
    expected = logits[:, -1, a] - logits[:, -1, w]
    torch.testing.assert_close(logit_diff(None, a, w)(logits), expected)
    torch.testing.assert_close(logit_diff(tiny, "a", "b")(logits), expected)
    per = logit_diff(tiny, ["a", 7], torch.tensor([w, 9]), position=2)(logits)
    torch.testing.assert_close(per, torch.stack([logits[0, 2, a] - logits[0, 2, w],
                                                 logits[1, 2, 7] - logits[1, 2, 9]]))
    assert logit_diff(None, a, w).positions == (-1,)


def test_prob_logprob(logits):
    logp = torch.log_softmax(logits[:, -1], -1)
    torch.testing.assert_close(logprob(None, 5)(logits), logp[:, 5])
    torch.testing.assert_close(prob(None, [5, 6])(logits), logp[[0, 1], [5, 6]].exp())
    torch.testing.assert_close(prob(None, 3, position=1)(logits),
                               torch.softmax(logits[:, 1], -1)[:, 3])


def test_kl_to_clean(logits):
    other = logits + torch.randn_like(logits)
    metric = kl_to(logits)
    assert metric(logits).abs().max() < 1e-6
    p, logq = torch.log_softmax(logits[:, -1], -1), torch.log_softmax(other[:, -1], -1)
    torch.testing.assert_close(metric(other), (p.exp() * (p - logq)).sum(-1))
    two = kl_to(logits, positions=(1, -1))(other)
    p1, q1 = torch.log_softmax(logits[:, 1], -1), torch.log_softmax(other[:, 1], -1)
    torch.testing.assert_close(two, metric(other) + (p1.exp() * (p1 - q1)).sum(-1))
    with pytest.raises(InputError, match="kl_to"):
        kl_to()(logits)
    bound = kl_to().prepare(logits, other)
    assert bound(logits).abs().max() < 1e-6


def test_normalized(logits):
    base = logit_diff(None, 1, 2)
    clean, corrupted = logits, logits + 2 * torch.randn_like(logits)
    metric = normalized(base, base(clean).mean(), base(corrupted).mean())
    assert metric(clean).mean().item() == pytest.approx(1.0, abs=1e-5)
    assert metric(corrupted).mean().item() == pytest.approx(0.0, abs=1e-5)
    bound = normalized(base).prepare(clean, corrupted)
    torch.testing.assert_close(bound(clean), metric(clean))
    per_prompt = normalized(base, base(clean), base(corrupted))
    torch.testing.assert_close(per_prompt(clean), torch.ones(2))
    with pytest.raises(InputError, match="baselines are equal"):
        normalized(base, 1.0, 1.0)
    with pytest.raises(InputError, match="without baselines"):
        normalized(base)(clean)


def test_metric_positions_and_plain_functions(logits):
    m = Metric(lambda at: at[:, 0, 0] - at[:, 1, 0], positions=(3, -1), name="two")
    torch.testing.assert_close(m(logits), logits[:, 3, 0] - logits[:, -1, 0])
    torch.testing.assert_close(m.read(logits[:, [3, 4]]), m(logits))
    with pytest.raises(InputError, match="outside the 5 positions"):
        Metric(lambda at: at[:, 0, 0], positions=(7,))(logits)
    plain = as_metric(lambda lg: lg[:, :, 0].sum(-1))
    assert plain.positions is None
    torch.testing.assert_close(plain(logits), logits[:, :, 0].sum(-1))
    assert as_metric(m) is m
    with pytest.raises(InputError, match="must be a Metric or a function"):
        as_metric(3)


def test_check_output_errors():
    assert check_output(torch.zeros(3), 3, "m").shape == (3,)
    with pytest.raises(InputError, match=r"returned shape \(\); expected \[3\].*mean"):
        check_output(torch.tensor(1.0), 3, "m")
    with pytest.raises(InputError, match=r"returned shape \(3, 2\); expected \[3\]"):
        check_output(torch.zeros(3, 2), 3, "m")
    with pytest.raises(InputError, match="returned float"):
        check_output(1.5, 3, "m")


def test_token_errors(tiny, logits):
    with pytest.raises(InputError, match="without a bridge"):
        logit_diff(None, "a", "b")
    with pytest.raises(InputError, match="one per prompt"):
        logit_diff(None, [1, 2, 3], 4)(logits)
    with pytest.raises(InputError, match=r"token ids must be in \[0, 103\)"):
        prob(tiny, 500)
    with pytest.raises(Exception, match="not one"):
        prob(tiny, "ab")
