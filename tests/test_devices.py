"""Models spread by accelerate and models in half precision, on the CPU.

A ``device_map`` that offloads a layer to disk (its weights sit on the "meta" device between
forwards, loaded by accelerate's hooks for each one) gives the same activations, weights and
analyses as the model in memory, with accelerate's own placement (``device_map="auto"``,
``max_memory``) as with a hand-written map; bfloat16 and float16 models equal HF eager in the same
dtype within that dtype's rounding, with the analyses that need precision computed in float32. A
real-shaped model on the meta device (no weights) plans a cache, and the estimate holds at real
width."""

import pytest
import torch
from conftest import assert_same, rel_close
from transformers import AutoModelForCausalLM

from workbench import (
    Bridge,
    CellPatcher,
    InputError,
    Steering,
    attention_patterns,
    attribution_sweep,
    composition_scores,
    direct_logit_attribution,
    head_scores,
    logit_lens,
    patch_sweep,
    path_patch_sweep,
)
from workbench.toy import tiny_model, tiny_tokenizer
from workbench.weights import READERS

PROMPT = "When Mary and John went to the store, John gave"
TOKENS = torch.tensor([[0, 5, 17, 40, 22, 8, 60, 33, 12, 90]])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_offload")
    tiny_model("llama", n_kv_heads=2, n_layers=3).save_pretrained(path)
    tiny_tokenizer("llama").save_pretrained(path)
    return path


def test_disk_offload_gives_the_same_activations_weights_and_analyses(folder, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu",
                  "lm_head": "cpu"}
    spread = Bridge.from_pretrained(str(folder), device_map=device_map, offload_folder=str(tmp_path))
    whole = Bridge.from_pretrained(str(folder))
    q_proj = spread.model.get_submodule("model.layers.1.self_attn.q_proj")
    assert q_proj.weight.device.type == "meta"  # offloaded: loaded by accelerate per forward
    with torch.no_grad():
        logits, cache = spread.run_with_cache(TOKENS)
        ref_logits, ref = whole.run_with_cache(TOKENS)
    rel_close(logits, ref_logits, 1e-6)
    assert cache.keys() == ref.keys()
    for name in ref.keys():  # (masked attention scores are -inf in both)
        torch.testing.assert_close(cache[name], ref[name], rtol=1e-6, atol=1e-6)
    for name, read in READERS.items():  # offloaded weights are loaded for the read
        if name not in ("W_pos", "QK", "OV"):  # (no learned positions; circuits: from W_Q...)
            assert torch.equal(read(spread), read(whole)), name
    assert q_proj.weight.device.type == "meta"  # and offloaded again
    dla, ref_dla = (direct_logit_attribution(b, PROMPT, "a", "b") for b in (spread, whole))
    rel_close(dla.values, ref_dla.values, 1e-5)
    sweep = [patch_sweep(b, "abcdef", "abcxef", site="resid_pre",
                         metric=lambda lg: lg[:, -1].log_softmax(-1)[:, 7]) for b in (spread, whole)]
    rel_close(sweep[0].values, sweep[1].values, 1e-5)
    with pytest.raises(InputError, match="meta"):
        spread.process_weights()
    with pytest.raises(InputError, match="device_map"):
        Bridge.from_pretrained(str(folder), offload_folder=str(tmp_path))


# max_memory for the CPU (bytes; the model's weights are ~0.5 MB): everything offloaded to disk
# (no module keeps its weights: accelerate's hooks load each one per forward), or the embedding
# and the first block in memory and the rest on disk
@pytest.mark.parametrize("cpu_bytes,placed", [(150_000, {"": "disk"}),
                                              (400_000, {"model.embed_tokens": "cpu", "lm_head": "disk"})])
def test_device_map_auto_with_max_memory_gives_every_analysis_unchanged(folder, tmp_path, cpu_bytes, placed):
    """``device_map="auto"`` and ``max_memory`` (accelerate's own placement) over the CPU and disk:
    the bridge runs on the execution device accelerate names (``cfg.device`` is "cpu" even when
    no weight is in memory), and every analysis gives the in-memory model's numbers."""
    spread = Bridge.from_pretrained(str(folder), device_map="auto", max_memory={"cpu": cpu_bytes},
                                    offload_folder=str(tmp_path))
    whole = Bridge.from_pretrained(str(folder))
    assert {k: spread.model.hf_device_map[k] for k in placed} == placed
    assert spread.cfg.device == torch.device("cpu")
    clean, corrupt = "When Mary and John went to the store, John gave", \
        "When Mary and John went to the store, Mary gave"
    metric = lambda lg: lg[:, -1].log_softmax(-1)[:, 7] - lg[:, -1].log_softmax(-1)[:, 9]  # noqa: E731
    runs = {
        "logits": lambda b: {"logits": b(PROMPT)},
        "cache": lambda b: dict(b.run_with_cache(PROMPT, incl_bwd=False)[1].items()),
        "lens": lambda b: logit_lens(b, PROMPT, sites="all", target="e"),
        "dla": lambda b: direct_logit_attribution(b, PROMPT, "a", "b"),
        "patterns": lambda b: attention_patterns(b, PROMPT),
        "head_scores": lambda b: head_scores(b, n=12, batch=2),
        "composition": lambda b: composition_scores(b, "q"),
        "sweep": lambda b: patch_sweep(b, clean, corrupt, site="z", metric=metric),
        "cell": lambda b: CellPatcher(b, clean, corrupt, metric=metric).patch(site="resid_pre", layer=1,
                                                                             position=-3),
        "path": lambda b: path_patch_sweep(b, clean, corrupt, receivers=None, metric=metric),
        "attribution": lambda b: attribution_sweep(b, clean, corrupt, site="resid_pre", metric=metric),
        "generate": lambda b: {"tokens": b.generate(PROMPT, max_new_tokens=6).tokens},
        "steered": lambda b: {"tokens": b.generate(PROMPT, max_new_tokens=6, fwd_hooks=[
            Steering.from_prompts(b, "blocks.1.hook_resid_post", ["Mary"], ["John"], scale=4).hook]
        ).tokens},
    }
    for what, run in runs.items():
        assert_same(run(spread), run(whole), what, tol=1e-5, same_device=True)
    assert spread.model.get_submodule("lm_head").weight.device.type == "meta"  # still offloaded


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_hf_eager_bit_for_bit(saved, dtype):
    """Every family in bfloat16 and float16: the fully hooked path computes scores, softmax and
    the pattern's product in the dtypes and order HF's eager attention does (GPT-J's q.k in
    float32, BLOOM's fused ALiBi baddbmm, softmax in float32), so logits, every residual and
    every pattern are HF eager's bit for bit, not just within the dtype's rounding (which is
    checked to be non-zero: an upcast anywhere would show). The analyses that need precision
    compute in float32 from the half-precision activations."""
    variant, folder = saved
    bridge = Bridge.from_pretrained(str(folder), dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()
    hf32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    assert bridge.cfg.dtype == dtype
    with torch.no_grad():
        ref = hf(TOKENS, output_hidden_states=True, output_attentions=True)
        logits, cache = bridge.run_with_cache(TOKENS)
        assert not torch.equal(ref.logits.float(), hf32.eval()(TOKENS).logits)  # rounding shows
    assert logits.dtype == dtype and cache["blocks.0.attn.hook_pattern"].dtype == dtype
    assert torch.equal(logits, ref.logits), variant
    for layer in range(bridge.cfg.n_layers):
        assert torch.equal(cache["resid_pre", layer], ref.hidden_states[layer]), (variant, layer)
        assert torch.equal(cache["pattern", layer], ref.attentions[layer]), (variant, layer)
    lens = logit_lens(bridge, TOKENS, layers=[bridge.cfg.n_layers - 1])
    assert lens.top_probs.dtype == torch.float32
    assert direct_logit_attribution(bridge, TOKENS, 5).values.dtype == torch.float32
    assert composition_scores(bridge, "k").scores.dtype == torch.float32


def test_gpu_benchmark_runs_in_smoke_mode():
    """benchmarks/bench_gpu.py (run on a GPU machine for issue 8's table) runs end to end on a
    tiny model on the CPU, so it does not rot between GPU sessions."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    run = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| 64 |" in run.stdout and "cells/s" in run.stdout


def test_pin_memory_needs_a_gpu_model_cached_to_the_cpu(folder):
    bridge = Bridge.from_pretrained(str(folder))
    with pytest.raises(InputError, match="pin_memory=True .* needs device='cpu' and a CUDA GPU"):
        bridge.run_with_cache(TOKENS, device="cpu" if torch.cuda.is_available() else None,
                              pin_memory=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", ["llama3-8b", "gemma2-9b"])
def test_real_shaped_bf16_on_gpu_equals_hf_eager(shape):
    """A Llama-3-8B / Gemma-2-9B-shaped model (2 of its layers, random weights) in bf16 on the
    GPU: the hooked run equals HF eager in bf16; a cache pinned on the CPU equals the GPU one."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_gpu import CONFIGS

    config = CONFIGS[shape]()
    config.num_hidden_layers = 2
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = config.layer_types[:2]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    tokens = torch.randint(0, config.vocab_size, (1, 256), device="cuda")
    with torch.no_grad():
        model.set_attn_implementation("eager")
        ref = model(tokens, output_hidden_states=True, output_attentions=True)
        bridge = Bridge.from_hf(model)
        logits, cache = bridge.run_with_cache(tokens)
        _, pinned = bridge.run_with_cache(tokens, device="cpu", pin_memory=True)
    rel_close(logits.float(), ref.logits.float(), 3e-2)
    for layer in range(2):
        rel_close(cache["resid_pre", layer].float(), ref.hidden_states[layer].float(), 3e-2)
        rel_close(cache["pattern", layer].float(), ref.attentions[layer].float(), 3e-2)
    for name in cache.keys():
        assert pinned[name].is_pinned() and torch.equal(pinned[name], cache[name].cpu()), name


def _shaped(shape: str, n_layers: int | None = None, vocab: int | None = None):
    """A real architecture's config (benchmarks/bench_gpu.py), optionally cut to ``n_layers``
    layers and a ``vocab``-token vocabulary."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_gpu import CONFIGS

    config = CONFIGS[shape]()
    if n_layers is not None:
        config.num_hidden_layers = n_layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = config.layer_types[:n_layers]
    if vocab is not None:
        config.vocab_size = vocab
    return config


@pytest.mark.parametrize("shape", ["llama3-8b", "gemma2-9b"])
def test_a_model_without_weights_plans_a_cache_and_refuses_to_run(shape):
    """A Llama-3-8B / Gemma-2-9B-shaped model on the meta device (no weights: built in
    milliseconds) lists its hooks and estimates a cache, so a run can be planned before any
    weight is loaded; running it fails with a clear error, not deep inside PyTorch."""
    config = _shaped(shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    bridge = Bridge.from_hf(model)
    assert bridge.cfg.device.type == "meta" and bridge.cfg.n_layers == config.num_hidden_layers
    per_layer = [n for n in bridge.hook_names() if n.startswith("blocks.0.")]
    assert len(bridge.hook_names()) > config.num_hidden_layers * len(per_layer)
    pattern = bridge.hook_info("blocks.0.attn.hook_pattern", 4096).nbytes(1, 4096)
    assert pattern == config.num_attention_heads * 4096 * 4096 * 2  # bf16
    assert bridge.cache_bytes((1, 4096), "blocks.0.attn.hook_pattern") == pattern
    total = bridge.cache_bytes((1, 4096))
    assert total > config.num_hidden_layers * 2 * pattern  # scores and pattern, every layer
    tokens = torch.zeros((1, 16), dtype=torch.long)
    assert bridge.cache_bytes(tokens) == bridge.cache_bytes((1, 16))
    for run in (lambda: bridge(tokens), lambda: bridge.run_with_cache(tokens),
                lambda: bridge.generate(tokens, max_new_tokens=2)):
        with pytest.raises(InputError, match="meta device: it has shapes but no values"):
            run()
    with pytest.raises(InputError, match=r"would hold [\d.]+ MiB .* memory budget is 1000 B"):
        bridge.run_with_cache(tokens, memory_budget=1000)


@pytest.mark.parametrize("shape,n_layers", [("llama3-8b", 1), ("gemma2-9b", 2)])
def test_the_estimate_holds_at_real_width(shape, n_layers):
    """At a real model's width (d_model, heads, grouped K/V, d_head, d_mlp; 1-2 of its layers,
    zero weights, a small vocabulary) in bf16, the estimate made before running is within 10% of
    what the cache holds (it counts tensors shared by two names twice)."""
    config = _shaped(shape, n_layers=n_layers, vocab=256)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
    model.model.rotary_emb.__init__(config)  # the rotary frequencies (buffers) as HF computes them
    bridge = Bridge.from_hf(model)
    tokens = torch.arange(40)[None] % 256
    for names in (None, lambda n: "attn" in n, lambda n: "mlp" in n):
        estimate = bridge.cache_bytes(tokens, names)
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens, names_filter=names)
        assert cache.nbytes() <= estimate <= 1.1 * cache.nbytes(), (names, estimate, cache.nbytes())


def test_auto_memory_budget_is_the_memory_free_where_the_cache_goes(folder, monkeypatch):
    """``memory_budget="auto"``: the free memory of the device the cache goes to (the host's
    available memory for "cpu"), read before running; unknown free memory means no check."""
    from workbench import memory

    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < memory.available_bytes("cpu") <= total
    assert memory.available_bytes("meta") is None
    bridge = Bridge.from_pretrained(str(folder))
    need = bridge.cache_bytes(TOKENS)
    asked = []

    def free(device):
        asked.append(torch.device(device))
        return need - 1

    monkeypatch.setattr(memory, "available_bytes", free)
    with pytest.raises(InputError, match=r"would hold [\d.]+ KiB .*; cpu has free [\d.]+ KiB"):
        bridge.run_with_cache(TOKENS, memory_budget="auto")
    assert asked == [torch.device("cpu")]
    monkeypatch.setattr(memory, "available_bytes", lambda device: need)
    assert bridge.run_with_cache(TOKENS, memory_budget="auto")[1].nbytes() == \
        bridge.run_with_cache(TOKENS)[1].nbytes()
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    assert len(bridge.run_with_cache(TOKENS, memory_budget="auto", device="cpu")[1]) > 0
    with pytest.raises(InputError, match="'auto' for the free memory"):
        bridge.run_with_cache(TOKENS, memory_budget="all")


def test_patching_batches_fit_the_fullest_gpu_of_a_spread_model(folder, monkeypatch):
    """The automatic batch size of a sweep on a model spread over GPUs takes half the free memory
    of the fullest one (each holds its layers' share of a pass), not of the first one's. (No GPU
    here: the devices and their free memory are stood in for.)"""
    from types import SimpleNamespace

    from workbench import memory
    from workbench.patch_engine import auto_batch_size, bytes_per_cell

    bridge = Bridge.from_pretrained(str(folder))
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    free = {gpus[0]: 40 << 30, gpus[1]: 4 << 30}
    monkeypatch.setattr(bridge, "_cache_devices", lambda device: gpus)
    monkeypatch.setattr(memory, "available_bytes", lambda device: free[torch.device(device)])
    tokens = SimpleNamespace(device=gpus[0], shape=(1, 512), numel=lambda: 512)
    plan = SimpleNamespace(bridge=bridge, base_tokens=tokens, read=None, batch=1,
                           site=SimpleNamespace(name="resid_pre"))
    assert auto_batch_size(plan) == (2 << 30) // bytes_per_cell(plan)
