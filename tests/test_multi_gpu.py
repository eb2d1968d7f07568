"""A model spread over two GPUs by a ``device_map`` gives every analysis the numbers it gives on one.

The embedding and the first half of the blocks go to one GPU, the other blocks, the final norm and
the unembedding to another (as ``device_map="auto"`` spreads a big model): token ids then live on
the first GPU, each hook point's activation on its own layer's GPU, and any tensor the analyses
build on one device and meet with an activation from the other would raise "Expected all tensors
to be on the same device". Every analysis runs on the spread model and on the same weights on one
device, and must give the same numbers (float32 noise).

These tests need two CUDA GPUs (they skip otherwise). To check the test code itself on a machine
without them, point ``DEVICES`` at ``("cpu", "cpu", "cpu")`` and drop the skip.
"""

import pytest
import torch
from conftest import assert_same

from workbench import (
    Bridge,
    CellPatcher,
    Metric,
    Steering,
    attention_patterns,
    attribution_sweep,
    composition_scores,
    direct_logit_attribution,
    head_scores,
    logit_lens,
    patch_cell,
    patch_sweep,
    path_patch,
    path_patch_sweep,
)
from workbench.head_scores import previous_token_scores
from workbench.metrics import kl_to, logit_diff, normalized
from workbench.patch_sites import SITES
from workbench.toy import tiny_model, tiny_tokenizer
from workbench.weights import READERS

# (first GPU: embedding and blocks 0..1, second GPU: blocks 2..3, final norm and unembedding, the
# device the whole model runs on for reference)
DEVICES = ("cuda:0", "cuda:1", "cuda:0")
FIRST, SECOND, WHOLE = DEVICES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2,
                       reason="needs at least 2 CUDA GPUs (a model spread over several devices)"),
]

N_LAYERS = 4
CLEAN = "Mary, John: John gave"  # (a character-level tokenizer: 21 tokens)
CORRUPT = "Mary, John: Mary gave"
TOL = 1e-4

# untied embeddings: the unembedding lives on the other GPU than the embedding
FAMILIES = {
    "llama": {"n_kv_heads": 2},  # grouped K/V, rotary, RMSNorm without biases
    "gpt2": {"tie_word_embeddings": False},  # learned positions, LayerNorm biases, Conv1D weights
    # final soft-capping (DLA through the final norm and unembedding) and post-attention norms
    "gemma2": {"n_kv_heads": 2, "attn_logit_softcapping": 0.3, "final_logit_softcapping": 0.5,
               "tie_word_embeddings": False},
}


def spread_map(model, blocks: str, first: str, second: str) -> dict[str, str]:
    """A ``device_map`` with every module before the blocks (embeddings, rotary tables) and the
    first half of the blocks on ``first``, the rest (later blocks, final norm, unembedding) on
    ``second``."""
    parent_path, _, attr = blocks.rpartition(".")
    device_map, after = {}, False
    for name, _ in model.get_submodule(parent_path).named_children():
        if name == attr:
            device_map.update({f"{blocks}.{i}": first if i < N_LAYERS // 2 else second
                               for i in range(N_LAYERS)})
            after = True
        else:
            device_map[f"{parent_path}.{name}"] = second if after and "rotary" not in name else first
    for name, _ in model.named_children():
        if name != parent_path.split(".")[0]:
            device_map[name] = second
    return device_map


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    """``(spread, whole)``: the same saved weights spread over two devices and on one."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"{family}_spread")
    model = tiny_model(family, n_layers=N_LAYERS, **FAMILIES[family])
    model.save_pretrained(folder)
    tiny_tokenizer(family).save_pretrained(folder)
    whole = Bridge.from_pretrained(str(folder), device=WHOLE)
    device_map = spread_map(whole.model, whole.adapter.blocks, FIRST, SECOND)
    spread = Bridge.from_pretrained(str(folder), device_map=device_map)
    if FIRST != SECOND:  # really spread: the first and last blocks on different GPUs
        blocks = spread.model.get_submodule(spread.adapter.blocks)
        assert next(blocks[0].parameters()).device == torch.device(FIRST)
        assert next(blocks[-1].parameters()).device == torch.device(SECOND)
        assert spread.cfg.device == torch.device(FIRST)
    return spread, whole


def both(pair, run, what: str, tol: float = TOL):
    """``run(bridge)`` on the spread and on the whole model, asserted equal; returns the spread
    model's result."""
    spread, whole = pair
    got = run(spread)
    assert_same(got, run(whole), what, tol)
    return got


def metric_for(bridge):
    """The logit difference of two token ids at the last position (no tokenizer lookups)."""
    return logit_diff(None, 7, 9)


def test_run_with_cache_and_decompositions(pair):
    """Every hook point (hook_result too), each on its own layer's device, equals the one-device
    run; the cache's decompositions gather the layers onto one device."""
    for bridge in pair:
        bridge.use_attn_result = True
    try:
        logits, cache = both(pair, lambda b: b.run_with_cache(CLEAN), "run_with_cache")
    finally:
        for bridge in pair:
            bridge.use_attn_result = False
    if FIRST != SECOND:
        assert cache["blocks.0.hook_resid_post"].device == torch.device(FIRST)
        assert cache[f"blocks.{N_LAYERS - 1}.hook_resid_post"].device == torch.device(SECOND)
        assert logits.device == torch.device(FIRST)  # the model's output comes back to the input's

    def decompositions(bridge):
        _, c = bridge.run_with_cache(CLEAN)
        n = bridge.cfg.n_layers
        return {
            "stack_activation": c.stack_activation("resid_post"),
            "accumulated": c.accumulated_resid(apply_ln=True, incl_mid=True),
            "accumulated_mid": c.accumulated_resid(layer=n - 1, apply_ln=True, mlp_input=True),
            "decomposed": c.decompose_resid(apply_ln=True),
            "heads": c.stack_head_results(apply_ln=True, incl_remainder=True),
            "logit_attrs": c.logit_attrs(c.decompose_resid(apply_ln=False, pos_slice=-1), 7, 9,
                                         pos_slice=-1),
        }
    both(pair, decompositions, "decompositions")


def test_run_with_cache_to_the_cpu(pair):
    """``device="cpu"`` gathers every layer's activation onto the CPU as it is made."""
    spread, _ = pair
    _, on_cpu = spread.run_with_cache(CLEAN, device="cpu", incl_bwd=True, return_type="loss")
    _, ref = spread.run_with_cache(CLEAN, incl_bwd=True, return_type="loss")
    assert all(t.device == torch.device("cpu") for t in on_cpu.values())
    assert_same(dict(on_cpu.items()), dict(ref.items()), "cache on the cpu")
    both(pair, lambda b: dict(b.run_with_cache(CLEAN, device="cpu")[1].items()), "cpu cache")
    if torch.cuda.is_available():  # (pinned memory needs CUDA: skipped when DEVICES point at the CPU)
        _, pinned = spread.run_with_cache(CLEAN, device="cpu", pin_memory=True)  # copied from both GPUs
        _, plain = spread.run_with_cache(CLEAN, device="cpu")
        for name, tensor in plain.items():
            assert pinned[name].is_pinned() and torch.equal(pinned[name], tensor), name


def test_run_with_hooks_writing_on_both_devices(pair):
    """Hook functions writing activations stored from another run (on the CPU and on the GPU),
    at points on either device, hook_result, the final norm and the residual between devices."""
    def run(bridge):
        _, clean = bridge.run_with_cache(CLEAN)
        stored_cpu = {k: v.cpu() for k, v in clean.items()}
        last = bridge.cfg.n_layers - 1

        def put(name, source):
            def fn(act, hook):
                out = act.clone()
                out[:, -3:] = source[name][:, -3:]  # a stored activation, another device maybe
                return out
            return name, fn
        hooks = [put(f"blocks.{N_LAYERS // 2}.hook_resid_pre", stored_cpu),  # arrives from GPU 0
                 put("blocks.1.attn.hook_z", clean),
                 put(f"blocks.{last}.hook_resid_mid", clean),
                 (f"blocks.{last}.attn.hook_result", lambda act, hook: act * 0.5),
                 ("ln_final.hook_normalized", lambda act, hook: act * 1.25),
                 ("ln_final.hook_scale", lambda act, hook: act * 1.1)]
        return bridge.run_with_hooks(CORRUPT, fwd_hooks=hooks)
    both(pair, run, "run_with_hooks")


def test_weights_and_composition_scores(pair):
    def weights(bridge):  # stacked over layers on both devices (circuits: from W_Q... below)
        absent = {"QK", "OV", *(("W_pos",) if bridge.adapter.pos_embed is None else ()),
                  *(("W_gate",) if bridge.adapter.mlp_gate is None else ())}
        return {name: read(bridge) for name, read in READERS.items() if name not in absent}
    both(pair, weights, "weights")
    for kind in ("q", "k", "v"):
        both(pair, lambda b, kind=kind: composition_scores(b, kind, baseline=True), f"composition {kind}")


def test_logit_lens_dla_patterns_and_head_scores(pair):
    both(pair, lambda b: logit_lens(b, CLEAN, sites="all", target=7, k=4), "logit lens")
    both(pair, lambda b: logit_lens(b, CLEAN, layers=[1, N_LAYERS - 1], positions=[2, -1]),
         "logit lens, some positions")
    both(pair, lambda b: direct_logit_attribution(b, CLEAN, 7, 9), "dla")
    both(pair, lambda b: direct_logit_attribution(b, [CLEAN, "Mary went"], [7, 8], 9),
         "dla, padded batch")
    both(pair, lambda b: direct_logit_attribution(b, CLEAN, 7, position=3), "dla, one position")
    both(pair, lambda b: attention_patterns(b, CLEAN), "patterns")
    both(pair, lambda b: attention_patterns(b, CLEAN, layers=[N_LAYERS // 2]), "patterns, stopped")
    both(pair, lambda b: head_scores(b, n=12, batch=2), "head scores")
    both(pair, lambda b: previous_token_scores(b, b.to_tokens([CLEAN, CORRUPT])), "previous-token")


def _sweeps():
    """(site, index) of every patching site, each index kind it has."""
    out = []
    for site, (_, kind) in SITES.items():
        out += [(site, "pos")] if kind == "resid" else [(site, "head"), (site, "head_pos")]
    return out


@pytest.mark.parametrize("site,index", _sweeps())
def test_patch_sweep_every_site(pair, site, index):
    """Small chunks (several forward passes), so cells join at layers on both devices and skip
    prefix positions; a metric reading two positions (unembedded by position list)."""
    if site == "resid_mid" and pair[0].cfg.parallel_attn_mlp:
        pytest.skip("parallel blocks have no resid_mid")
    two = Metric(lambda at: at[:, 0, 7] - at[:, 1, 9], positions=(-4, -1), name="two positions")
    both(pair, lambda b: patch_sweep(b, CLEAN, CORRUPT, site=site, index=index, metric=metric_for(b),
                                     batch_size=3), f"sweep {site} {index}")
    both(pair, lambda b: patch_sweep(b, CLEAN, CORRUPT, site=site, index=index, metric=two,
                                     batch_size=5, direction="noise"), f"sweep {site} {index}, noise")


def test_patch_sweep_options(pair):
    """Skipping switched off, a user hook attached (no skipping), KL and normalised metrics."""
    both(pair, lambda b: patch_sweep(b, CLEAN, CORRUPT, site="resid_pre", metric=metric_for(b),
                                     skip_blocks=False, reuse_prefix=False, skip_unchanged=False),
         "sweep without skipping")
    both(pair, lambda b: patch_sweep(b, CLEAN, CORRUPT, site="attn_out", metric=kl_to(), batch_size=4),
         "sweep, kl")
    both(pair, lambda b: patch_sweep(b, CLEAN, CORRUPT, site="z", metric=normalized(metric_for(b))),
         "sweep, normalized")

    def hooked(bridge):
        steer = Steering.from_vector(bridge, "blocks.1.hook_resid_post", torch.ones(bridge.cfg.d_model))
        with bridge.hooks(fwd_hooks=[steer.hook]):
            return patch_sweep(bridge, CLEAN, CORRUPT, site="mlp_out", metric=metric_for(bridge))
    both(pair, hooked, "sweep under a user hook")


def test_patch_cell(pair):
    def cells(bridge):
        patcher = CellPatcher(bridge, CLEAN, CORRUPT, metric=metric_for(bridge))
        last = bridge.cfg.n_layers - 1
        return [patcher.patch(site="resid_pre", layer=N_LAYERS // 2, position=-3),
                patcher.patch(site="resid_post", layer=0, position=None),
                patcher.patch(site="z", layer=last, head=1),
                patcher.patch(site="v", layer=last, head=0, position=-3),
                patcher.patch(site="pattern", layer=N_LAYERS // 2, head=0, position=-1),
                patch_cell(bridge, CLEAN, CORRUPT, site="mlp_out", layer=1, position=-3,
                           metric=metric_for(bridge), direction="noise")]
    both(pair, cells, "cells")


def test_path_patching(pair):
    last = N_LAYERS - 1
    both(pair, lambda b: path_patch_sweep(b, CLEAN, CORRUPT, receivers=None, metric=metric_for(b),
                                          batch_size=5), "path sweep to the logits")
    both(pair, lambda b: path_patch_sweep(b, CLEAN, CORRUPT, receivers=[(last, 0), (last, 1)],
                                          receiver_input="qkv", metric=metric_for(b)),
         "path sweep to heads")
    both(pair, lambda b: path_patch(b, CLEAN, CORRUPT, senders=[(0, 1), (N_LAYERS // 2, 0)],
                                    receivers=[(last, 1)], receiver_input="v", metric=metric_for(b),
                                    positions={p: p for p in range(5, 11)}), "path patch")


@pytest.mark.parametrize("site,index", [("resid_pre", None), ("attn_out", None), ("z", "head"),
                                        ("k", "head_pos"), ("result", "head"), ("pattern", "head_pos")])
def test_attribution_sweep(pair, site, index):
    both(pair, lambda b: attribution_sweep(b, CLEAN, CORRUPT, site=site, index=index,
                                           metric=metric_for(b)), f"attribution {site}")


def test_generate_and_steer(pair):
    """Greedy tokens equal (with and without the key-value cache, a batch left-padded), a
    steering vector from prompts at a point on the second device, a cache of the final sequence."""
    both(pair, lambda b: b.generate(CLEAN, max_new_tokens=8).tokens, "greedy")
    both(pair, lambda b: b.generate([CLEAN, "Mary went"], max_new_tokens=6,
                                    use_past_kv_cache=False).tokens, "greedy, no kv cache")
    layer = N_LAYERS // 2

    def steered(bridge):
        steer = Steering.from_prompts(bridge, f"blocks.{layer}.hook_resid_pre", ["Mary"], ["John"],
                                      scale=4)
        out = bridge.generate(CLEAN, max_new_tokens=8, fwd_hooks=[steer.hook], return_cache=True,
                              names_filter=lambda n: n.endswith("resid_post"))
        return {"vector": steer.vector, "tokens": out.tokens, "cache": dict(out.cache.items()),
                "logits": bridge.run_with_hooks(CLEAN, fwd_hooks=[steer.hook])}
    both(pair, steered, "steered")
    both(pair, lambda b: b.generate(CLEAN, max_new_tokens=6, do_sample=True, seed=3, top_k=20,
                                    top_p=0.9).tokens, "sampled")
