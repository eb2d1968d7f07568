"""Generation with hooks and a key-value cache (workbench/generation.py, workbench/steering.py).

- Greedy tokens equal HF's ``generate`` on every family (with the cache, without it, and with
  hooks forcing the hooked attention path), and sampling draws HF's tokens from the same seed.
- Hooks fire once per step with the documented shapes: the prompt first, then position 1 (K/V of
  the new token only; patterns over all positions so far); without the cache, the whole sequence.
- A write to ``hook_v`` under the cache is stored in it: the same as writing at every step
  without a cache.
- Left-padded batches give each prompt its tokens alone; stop strings and end-of-sequence stop
  each prompt on its own.
- Steering from two prompt sets moves the demo model's answer the expected way, monotonically in
  the scale, in runs, generation and patching alike.
"""

from __future__ import annotations

import pytest
import torch
from conftest import no_torch_hooks

from workbench import Generation, InputError, Steering, patch_cell
from workbench.metrics import logit_diff

PROMPT = "When Mary and John went to the store, John gave a drink to"
OTHER = "When Anna and Peter went to the park, Peter gave a book to"
SHORT = ["The cat sat", "Alice met Bob. Alice", "When Mary and John went to the store, John gave"]


def test_greedy_equals_hf_generate(bridge, hf_eager):
    tokens = bridge.to_tokens("abcabcab hello")
    # an explicit mask: HF would otherwise mask every token equal to the pad id (here the BOS)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None,
              attention_mask=torch.ones_like(tokens))
    with torch.no_grad():
        ref = hf_eager.generate(tokens, **kw)
    assert torch.equal(bridge.generate(tokens, 6, stop_at_eos=False).tokens, ref)
    assert torch.equal(bridge.generate(tokens, 6, stop_at_eos=False, use_past_kv_cache=False).tokens, ref)
    seen = []
    hooked = bridge.generate(tokens, 6, stop_at_eos=False, fwd_hooks=[
        ("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t.shape[-2]))])
    assert torch.equal(hooked.tokens, ref)  # the hooked attention path on every step
    assert seen == [tokens.shape[1]] + [1] * 5
    assert no_torch_hooks(bridge.model) and bridge.attached_hooks() == []


def test_sampling_draws_hf_tokens_from_the_same_seed(demo):
    tokens = demo.to_tokens(PROMPT)
    kw = dict(do_sample=True, temperature=0.8, top_k=30, top_p=0.9)
    torch.manual_seed(3)
    ref = demo.model.generate(tokens, max_new_tokens=8, **kw, eos_token_id=None, pad_token_id=0,
                              attention_mask=torch.ones_like(tokens))
    torch.manual_seed(3)
    ours = demo.generate(tokens, 8, **kw, stop_at_eos=False)
    assert torch.equal(ours.tokens, ref)
    a, b = (demo.generate(PROMPT, 8, do_sample=True, temperature=1.5, seed=7) for _ in range(2))
    assert torch.equal(a.tokens, b.tokens)  # a seed of its own: reproducible


def test_hooks_fire_every_step_with_documented_shapes(demo):
    cfg = demo.cfg
    n_prompt = demo.to_tokens(PROMPT).shape[1]
    shapes: dict[str, list] = {}

    def record(t, hook):
        shapes.setdefault(hook.name.rsplit(".", 1)[-1], []).append(tuple(t.shape))
    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_k", "blocks.1.attn.hook_pattern",
             "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"]
    out = demo.generate(PROMPT, 5, stop_at_eos=False, fwd_hooks=[(n, record) for n in names])
    steps = out.new_tokens.shape[1]
    assert steps == 5
    for key, dims in (("hook_resid_pre", (cfg.d_model,)), ("hook_k", (cfg.n_kv_heads, cfg.d_head)),
                      ("hook_z", (cfg.n_heads, cfg.d_head)), ("hook_post", (cfg.d_mlp,))):
        assert shapes[key] == [(1, n_prompt, *dims)] + [(1, 1, *dims)] * (steps - 1), key
    assert shapes["hook_pattern"] == [(1, cfg.n_heads, n_prompt, n_prompt)] + [
        (1, cfg.n_heads, 1, n_prompt + t) for t in range(1, steps)]
    shapes.clear()  # without the cache: the full sequence every step
    demo.generate(PROMPT, 3, stop_at_eos=False, use_past_kv_cache=False,
                  fwd_hooks=[("blocks.1.hook_resid_pre", record)])
    assert shapes["hook_resid_pre"] == [(1, n_prompt + t, cfg.d_model) for t in range(3)]


def test_writes_under_the_cache_are_kept_in_it(demo):
    """Written K/V (a returned tensor and an in-place write) reach the later steps through the
    cache: each step's logits equal those of re-running the whole sequence with the same writes."""
    def ablate(v, hook):
        v[:, :, :2] = 0  # K/V heads 0 and 1, at the positions this pass computes
        return v
    hooks = [("blocks.1.attn.hook_k", lambda k, hook: k * 0.5), ("blocks.3.attn.hook_v", ablate)]

    def logits(**kw):
        return torch.stack([s.logits for s in demo.generate_stream(PROMPT, 6, stop_at_eos=False, **kw)])
    cached, full, plain = logits(fwd_hooks=hooks), logits(fwd_hooks=hooks, use_past_kv_cache=False), logits()
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    assert (cached - plain)[1:].abs().max() > 0.1  # the writes matter on the cached steps


def test_grouped_writes_per_query_head_are_refused_under_the_cache(bridge):
    if bridge.cfg.n_kv_heads == bridge.cfg.n_heads or bridge.cfg.n_kv_heads is None:
        pytest.skip("multi-head attention: no K/V groups")
    bridge.ungroup_grouped_query_attention = True
    try:
        def one_head(k, hook):
            k[:, :, 0] = 0  # query head 0 only: its group's other heads keep theirs
            return k
        with pytest.raises(Exception, match="share a K/V head"):
            bridge.generate("abcab", 3, stop_at_eos=False, fwd_hooks=[("blocks.0.attn.hook_k", one_head)])
        assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)
        g = bridge.cfg.n_heads // bridge.cfg.n_kv_heads

        def one_group(k, hook):
            k[:, :, :g] = 0  # the whole first group: storable
            return k
        a = bridge.generate("abcab", 4, stop_at_eos=False, fwd_hooks=[("blocks.0.attn.hook_k", one_group)])
        b = bridge.generate("abcab", 4, stop_at_eos=False, use_past_kv_cache=False,
                            fwd_hooks=[("blocks.0.attn.hook_k", one_group)])
        assert torch.equal(a.tokens, b.tokens)
    finally:
        bridge.ungroup_grouped_query_attention = False


def test_left_padded_batch_equals_each_prompt_alone(demo):
    batch = demo.generate(SHORT, 7, stop_at_eos=False)
    assert batch.tokens.shape[0] == 3
    for i, prompt in enumerate(SHORT):
        alone = demo.generate(prompt, 7, stop_at_eos=False)
        n = alone.tokens.shape[1]
        assert torch.equal(batch.tokens[i, -n:], alone.tokens[0])
        assert batch.text[i] == alone.text[0]


def test_stop_strings_and_end_of_sequence_per_prompt(demo):
    both = demo.generate([PROMPT, "The cat sat"], 12)
    alone = demo.generate(PROMPT, 12)
    assert alone.finish_reason == ["eos"] and both.finish_reason[0] == "eos"
    assert both.text[0] == alone.text[0] and alone.text[0].endswith("<|endoftext|>")
    n_new = both.new_tokens.shape[1]
    stopped = both.attention_mask[0, both.prompt_pos:]
    assert stopped.sum() == alone.new_tokens.shape[1] < n_new  # padding after the first finished
    long = demo.generate("The cat sat", 12, stop_at_eos=False)
    word = long.text[0].split()[1]
    cut = demo.generate(["The cat sat", PROMPT], 12, stop=word, stop_at_eos=False)
    assert cut.finish_reason[0] == "stop" and cut.text[0].endswith(word) and word in cut.text[0]
    assert long.text[0].startswith(cut.text[0])


def test_a_stop_string_split_over_byte_tokens_still_stops(demo, monkeypatch):
    """The demo tokenizer spells '東京' as six byte tokens, each decoding alone to a replacement
    character: the stop string is matched on decoded text, so it stops at the sixth, and the
    generation's text is the real characters. (The tokens are scripted: the model would not
    write Japanese.)"""
    import workbench.generation as generation

    script = demo.tokenizer.encode("café 東京 and more text", add_special_tokens=False)
    assert len(demo.tokenizer.encode("東京", add_special_tokens=False)) > 2
    chosen = iter(script)
    monkeypatch.setattr(generation, "next_tokens",
                        lambda logits, opts, gen: torch.full((logits.shape[0],), next(chosen)))
    out = demo.generate(PROMPT, len(script), stop="東京", stop_at_eos=False)
    assert out.finish_reason == ["stop"] and out.text == ["café 東京"]


def test_stream_yields_tokens_as_they_come(demo):
    steps = []
    stream = demo.generate_stream(PROMPT, 6, stop_at_eos=False)
    for step in stream:
        steps.append(step)
        assert demo.attached_hooks() == []  # nothing attached between steps
    whole = demo.generate(PROMPT, 6, stop_at_eos=False)
    assert [int(s.tokens[0]) for s in steps] == whole.new_tokens[0].tolist()
    assert "".join(s.strs[0] for s in steps) == whole.text[0]
    ref = demo(whole.tokens[:, :-1])[:, -6:]  # each step's logits: the full run's at that position
    torch.testing.assert_close(torch.stack([s.logits[0] for s in steps]), ref[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="max_new_tokens"):  # checked at the call, not the first step
        demo.generate_stream(PROMPT, -1)
    with pytest.raises(Exception, match="hook_resid_pree"):
        demo.generate_stream(PROMPT, 3, fwd_hooks=[("blocks.0.hook_resid_pree", lambda x, hook: x)])
    assert demo.attached_hooks() == []


def test_return_cache_covers_the_generated_tokens(demo):
    seen = []
    out = demo.generate(PROMPT, 5, stop_at_eos=False, return_cache=True,
                        names_filter=["blocks.2.hook_resid_post"],
                        fwd_hooks=[("blocks.2.hook_resid_post", lambda t, hook: seen.append(t.clone()))])
    assert isinstance(out, Generation)
    act = out.cache["blocks.2.hook_resid_post"]
    assert act.shape == (1, out.tokens.shape[1], demo.cfg.d_model)
    incremental = torch.cat(seen[:5], dim=1)  # the five passes: prompt, then one new position each
    torch.testing.assert_close(act[:, :-1], incremental, rtol=1e-4, atol=1e-5)


def test_bad_combinations_are_refused(demo):
    n_ctx = demo.cfg.n_ctx
    cases = [
        (dict(max_new_tokens=n_ctx), "exceed the model's context"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(do_sample=True, temperature=0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(stop=[""]), "stop"),
    ]
    for kwargs, match in cases:
        with pytest.raises(InputError, match=match):
            demo.generate(PROMPT, **kwargs)
    assert demo.attached_hooks() == [] and no_torch_hooks(demo.model)


@pytest.fixture(scope="module")
def mary_direction(demo):
    """Mean last-position residual of prompts answered " Mary" minus that of prompts answered
    " John" (the same sentences with the names swapped)."""
    positive = [PROMPT, "When John and Mary went to the shop, John handed a cup to",
                "Then Mary and John walked home, and John gave a gift to"]
    negative = [p.replace("Mary", "@").replace("John", "Mary").replace("@", "John") for p in positive]
    return Steering.from_prompts(demo, "blocks.4.hook_resid_post", positive, negative)


def test_steering_moves_the_answer_the_expected_way(demo, mary_direction):
    mary, john = demo.to_single_token(" Mary"), demo.to_single_token(" John")
    diffs = []
    for scale in (0.0, 0.5, 1.0, 2.0, 4.0):
        with torch.no_grad():
            logits = demo.run_with_hooks(OTHER, fwd_hooks=[mary_direction.scaled(scale).hook])[0, -1]
        diffs.append(float(logits[mary] - logits[john]))
    assert diffs == sorted(diffs) and diffs[0] < 0 < diffs[-1], diffs
    plain = demo.generate(OTHER, 3)
    assert demo.generate(OTHER, 3, fwd_hooks=[mary_direction.scaled(0.0).hook]).text == plain.text
    steered = demo.generate(OTHER, 3, fwd_hooks=[mary_direction.scaled(4.0).hook])
    assert not plain.text[0].startswith(" Mary") and steered.text[0].startswith(" Mary")


def test_the_same_steering_in_runs_and_patches(demo, mary_direction):
    hook = mary_direction.scaled(2.0).hook
    ref = demo(OTHER) + 0  # a run with the vector added by hand equals the steered run
    manual = demo.run_with_hooks(OTHER, fwd_hooks=[("blocks.4.hook_resid_post", lambda a, hook: a + 2.0
                                                    * mary_direction.vector)])
    torch.testing.assert_close(demo.run_with_hooks(OTHER, fwd_hooks=[hook]), manual, rtol=0, atol=0)
    assert not torch.equal(manual, ref)
    metric = logit_diff(demo, " Mary", " John")
    with demo.hooks(fwd_hooks=[hook]):  # every run of the patch is steered
        cell = patch_cell(demo, OTHER, OTHER, site="resid_pre", layer=2, position=5, metric=metric)
    with torch.no_grad():
        steered = demo.run_with_hooks(OTHER, fwd_hooks=[hook])
    mary, john = demo.to_single_token(" Mary"), demo.to_single_token(" John")
    want = float(steered[0, -1, mary] - steered[0, -1, john])
    assert cell.value == pytest.approx(want, abs=1e-4) and cell.clean_value == pytest.approx(want, abs=1e-4)


def test_steering_checks_its_vector(demo):
    with pytest.raises(InputError, match="dimension of 128"):
        Steering.from_vector(demo, "blocks.0.hook_resid_pre", torch.ones(5))
    with pytest.raises(InputError, match="NaN"):
        Steering.from_vector(demo, "blocks.0.hook_resid_pre", torch.full((128,), float("nan")))
    with pytest.raises(InputError, match="non-empty list"):
        Steering.from_prompts(demo, "blocks.0.hook_resid_pre", "Mary", ["John"])
    with pytest.raises(Exception, match="hook_resid_pree|Unknown|unknown"):
        Steering.from_vector(demo, "blocks.0.hook_resid_pree", torch.ones(128))


def test_steering_at_a_per_head_point_keeps_each_head_its_own_direction(demo):
    """At ``hook_z`` the difference of means is ``[n_heads, d_head]`` (heads have unrelated
    bases: one head's direction means nothing in another's), computed per head as a brute-force
    mean; a ``[d_head]`` vector still goes to every head."""
    name, pos, neg = "blocks.2.attn.hook_z", ["When Mary and John", "Mary went"], ["The cat sat"]
    steer = Steering.from_prompts(demo, name, pos, neg)
    c = demo.cfg
    assert steer.vector.shape == (c.n_heads, c.d_head)

    def last(prompts):  # [n_heads, d_head]: the mean over prompts of each one's last position
        acts = [demo.run_with_cache(p, names_filter=[name])[1][name][0, -1] for p in prompts]
        return torch.stack(acts).mean(0)
    delta = last(pos) - last(neg)
    torch.testing.assert_close(steer.vector, delta)
    assert not torch.allclose(delta, delta.mean(0).expand_as(delta))  # heads do differ
    with torch.no_grad():
        steered = demo.run_with_hooks("The dog ran", fwd_hooks=[steer.hook])
        by_hand = demo.run_with_hooks("The dog ran", fwd_hooks=[(name, lambda act, hook: act + delta)])
        shared = demo.run_with_hooks("The dog ran", fwd_hooks=[
            Steering.from_vector(demo, name, torch.ones(c.d_head)).hook])
        one_each = demo.run_with_hooks("The dog ran", fwd_hooks=[
            Steering.from_vector(demo, name, torch.ones(c.n_heads, c.d_head)).hook])
    torch.testing.assert_close(steered, by_hand)
    torch.testing.assert_close(shared, one_each)
    with pytest.raises(InputError, match=r"shape \[16\] or \[8, 16\]"):
        Steering.from_vector(demo, name, torch.ones(c.n_heads + 1, c.d_head))
