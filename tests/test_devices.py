"""Models spread by accelerate and models in half precision, on the CPU.

A ``device_map`` that offloads a layer to disk (its weights sit on the "meta" device between
forwards, loaded by accelerate's hooks for each one) gives the same activations, weights and
analyses as the model in memory; bfloat16 and float16 models equal HF eager in the same dtype
within that dtype's rounding, with the analyses that need precision computed in float32."""

import pytest
import torch
from conftest import rel_close
from transformers import AutoModelForCausalLM

from workbench import Bridge, InputError, direct_logit_attribution, logit_lens, patch_sweep
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


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("family,kw", [("llama", {"n_kv_heads": 2}), ("gpt2", {}),
                                       ("gemma2", {"n_kv_heads": 2, "attn_logit_softcapping": 0.3})])
def test_half_precision_equals_hf_eager_in_the_same_dtype(tmp_path, family, kw, dtype, tol):
    """Scores and softmax as HF computes them in that dtype: the hooked path's patterns equal HF
    eager's within the dtype's rounding, as do logits and residuals."""
    tiny_model(family, **kw).save_pretrained(tmp_path)
    tiny_tokenizer(family).save_pretrained(tmp_path)
    bridge = Bridge.from_pretrained(str(tmp_path), dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype, attn_implementation="eager").eval()
    assert bridge.cfg.dtype == dtype
    with torch.no_grad():
        ref = hf(TOKENS, output_hidden_states=True, output_attentions=True)
        logits, cache = bridge.run_with_cache(TOKENS)
    assert logits.dtype == dtype and cache["blocks.0.attn.hook_pattern"].dtype == dtype
    rel_close(logits.float(), ref.logits.float(), tol)
    for layer in range(bridge.cfg.n_layers):
        rel_close(cache["resid_pre", layer].float(), ref.hidden_states[layer].float(), tol)
        rel_close(cache["pattern", layer].float(), ref.attentions[layer].float(), tol)
    # analyses that need precision compute in float32 from the half-precision activations
    lens = logit_lens(bridge, TOKENS, layers=[bridge.cfg.n_layers - 1])
    assert lens.top_probs.dtype == torch.float32
    assert direct_logit_attribution(bridge, TOKENS, 5).values.dtype == torch.float32


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
