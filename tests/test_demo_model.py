"""The embedded demo model (workbench/data/demo): it loads offline by name and its circuits are
real, measured on the shipped weights."""

from __future__ import annotations

import pytest
import torch

from workbench import Bridge
from workbench.demo_data import (
    HELDOUT_NAMES,
    HELDOUT_TEMPLATES,
    TRAIN_FILLERS,
    TRAIN_NAMES,
    TRAIN_TEMPLATES,
    ioi_prompts,
    ioi_tokens,
)
from workbench.head_scores import induction_scores, previous_token_scores, repeated_random_tokens
from workbench.loading import DEMO_DIR


def test_loads_offline_by_name_and_matches_hf(demo):
    assert (DEMO_DIR / "model.safetensors").stat().st_size < 21 * 2**20
    assert demo.cfg.model_type == "llama" and demo.tokenizer is not None
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(DEMO_DIR, attn_implementation="eager").eval()
    toks = demo.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.inference_mode():
        assert torch.allclose(demo(toks), hf(toks).logits, atol=1e-4)


def test_heldout_split_is_disjoint():
    assert not set(HELDOUT_NAMES) & set(TRAIN_NAMES)
    assert not set(HELDOUT_TEMPLATES) & set(TRAIN_TEMPLATES)
    # the held-out frames' openings and verbs never occur in a training IOI sentence
    train_words = {w.strip(",.") for t in TRAIN_TEMPLATES + TRAIN_FILLERS for w in t.split()}
    for word in ("Later", "As", "Yesterday", "way", "sent", "threw", "offered", "showed"):
        assert word not in train_words, word
    for p in ioi_prompts(300, split="train", seed=2):
        assert p.io.strip() in TRAIN_NAMES and p.s.strip() in TRAIN_NAMES
        assert not {w.strip(",.") for w in p.text.split()} & {"sent", "threw", "offered", "showed"}
    for p in ioi_prompts(50, split="heldout"):
        assert p.io.strip() in HELDOUT_NAMES and p.s.strip() in HELDOUT_NAMES
        assert p.text.count(p.s.strip()) == 2 and p.text.count(p.io.strip()) == 1


def test_names_are_single_tokens(demo):
    for name in TRAIN_NAMES + HELDOUT_NAMES:
        assert len(demo.to_tokens(" " + name, prepend_bos=False)[0]) == 1, name


def test_induction_loss_drops_on_the_repeat(demo):
    toks = repeated_random_tokens(demo, n=50, batch=16, seed=7)
    with torch.inference_mode():
        logits = demo(toks)
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, toks[:, 1:, None])[..., 0]
    first, second = -lp[:, 1:50].mean(), -lp[:, 50:].mean()  # predicting r_2..r_50 / r'_1..r'_50
    assert second < 0.3 * first, (first.item(), second.item())


def test_induction_and_previous_token_heads(demo):
    ind = induction_scores(demo, repeated_random_tokens(demo, n=50, batch=8, seed=3))
    assert ind.shape == (demo.cfg.n_layers, demo.cfg.n_heads)
    assert ind.max() > 0.5, ind
    texts = [p.full for p in ioi_prompts(8, split="heldout", seed=5)]
    prev = previous_token_scores(demo, demo.to_tokens(texts[:1]))
    prev_rand = previous_token_scores(demo, repeated_random_tokens(demo, n=30, batch=4, seed=4)[:, :31])
    assert prev.max() > 0.5 and prev_rand.max() > 0.5, (prev, prev_rand)
    # the induction heads sit after the previous-token heads (K-composition needs an earlier layer)
    layer_ind = int(ind.max(dim=1).values.argmax())
    assert prev_rand[:layer_ind].max() > 0.5


def ioi_metrics(demo, prompts):
    toks, io, s = ioi_tokens(demo, prompts)
    with torch.inference_mode():
        last = demo(toks)[:, -1]
    diff = last.gather(1, io[:, None]) - last.gather(1, s[:, None])
    return diff.mean().item(), (last.argmax(-1) == io).float().mean().item()


def test_ioi_on_training_templates(demo):
    # (a regression guard: the shipped model scores 0.85 here, see docs/demo_model.md)
    diff, top1 = ioi_metrics(demo, ioi_prompts(200, split="train", seed=11))
    assert diff > 2.0 and top1 >= 0.8, (diff, top1)


def test_ioi_logit_difference_on_heldout_names_and_templates(demo):
    diff, _ = ioi_metrics(demo, ioi_prompts(200, split="heldout", seed=11))
    assert diff > 2.0, diff


def test_ioi_top1_on_heldout_names_and_templates(demo):
    _, top1 = ioi_metrics(demo, ioi_prompts(200, split="heldout", seed=11))
    assert top1 >= 0.8, top1


def test_from_pretrained_demo_device_and_dtype():
    b = Bridge.from_pretrained("workbench-demo", device="cpu", dtype=torch.float64)
    assert next(b.model.parameters()).dtype == torch.float64
    assert b.cfg.device.type == "cpu"


def test_missing_demo_weights_say_how_to_rebuild(monkeypatch, tmp_path):
    from workbench import InputError, loading

    monkeypatch.setattr(loading, "DEMO_DIR", tmp_path)
    with pytest.raises(InputError, match="train_demo_model.py"):
        Bridge.from_pretrained("workbench-demo")


def test_corpus_and_tokenizer_are_reproducible(demo):
    """Rebuilding the tokenizer from the script's corpus (same seed) gives the shipped vocabulary."""
    import importlib.util
    import json
    import random
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = json.loads((DEMO_DIR / "training_log.json").read_text())["args"]
    docs = mod.text_docs(random.Random(args["seed"]), 20000, tuple(args["mix"]), args["entity_share"])
    assert docs == mod.text_docs(random.Random(args["seed"]), 20000, tuple(args["mix"]),
                                 args["entity_share"])
    rebuilt = mod.train_tokenizer(docs, args["vocab"])
    assert rebuilt.get_vocab() == demo.tokenizer.get_vocab()
