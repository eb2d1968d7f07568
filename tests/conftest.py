import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

from workbench import Bridge  # noqa: E402
from workbench.adapters import norm_weight  # noqa: E402
from workbench.toy import tiny_model, tiny_tokenizer  # noqa: E402

VARIANTS = {
    "gpt2": ("gpt2", {}),
    "llama_mha": ("llama", {}),
    "llama_gqa": ("llama", {"n_kv_heads": 2}),
    "llama_mqa": ("llama", {"n_kv_heads": 1}),
    "mistral_sliding": ("mistral", {"n_kv_heads": 2, "sliding_window": 3}),
    "llama_bias": ("llama", {"n_kv_heads": 2, "attention_bias": True}),
    "neox_parallel": ("gpt_neox", {}),
    "neox_sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "qwen2_gqa": ("qwen2", {"n_kv_heads": 2, "use_sliding_window": True, "sliding_window": 3,
                            "max_window_layers": 1}),
    "qwen3_gqa": ("qwen3", {"n_kv_heads": 2, "head_dim": 32}),
    "olmo": ("olmo", {"clip_qkv": 0.4}),
    "starcoder2_gqa": ("starcoder2", {"n_kv_heads": 2}),
    "gemma": ("gemma", {"n_kv_heads": 1}),
    # caps small enough to bend a tiny model's scores and logits
    "gemma2": ("gemma2", {"n_kv_heads": 2, "sliding_window": 3, "attn_logit_softcapping": 0.3,
                          "final_logit_softcapping": 0.5}),
    "gemma3": ("gemma3", {"n_kv_heads": 2, "sliding_window": 3,
                          "layer_types": ["sliding_attention", "full_attention"]}),
    "phi_gqa": ("phi", {"n_kv_heads": 2}),
    "cohere_qk_norm": ("cohere", {"n_kv_heads": 2, "use_qk_norm": True, "logit_scale": 0.5}),
    "granite": ("granite", {"n_kv_heads": 2, "embedding_multiplier": 3.0, "residual_multiplier": 0.5,
                            "attention_multiplier": 0.2, "logits_scaling": 2.0}),
    "olmo2_gqa": ("olmo2", {"n_kv_heads": 2}),
    "mixtral": ("mixtral", {"n_kv_heads": 2, "num_experts_per_tok": 2}),
    # layer 0 dense, layer 1 sparse with a shared expert
    "qwen2_moe": ("qwen2_moe", {"n_kv_heads": 2, "num_experts_per_tok": 2, "mlp_only_layers": [0]}),
    "qwen3_moe": ("qwen3_moe", {"n_kv_heads": 2, "num_experts_per_tok": 2}),
    "phi3_partial_rotary": ("phi3", {"n_kv_heads": 2, "partial_rotary_factor": 0.5}),
    "opt": ("opt", {}),
    "stablelm_qk_norm": ("stablelm", {"n_kv_heads": 2, "qk_layernorm": True, "use_qkv_bias": True,
                                      "partial_rotary_factor": 0.25}),
    "stablelm_parallel": ("stablelm", {"use_parallel_residual": True}),
    "gptj": ("gptj", {}),
    "bloom": ("bloom", {}),
    # Falcon-7B's layout (one K/V head, one norm, parallel) and Falcon-40B's (grouped K/V fused
    # per group, two norms, parallel); the RW checkpoints' ALiBi layout: tests/test_falcon_alibi.py
    "falcon_mqa": ("falcon", {"multi_query": True, "parallel_attn": True}),
    "falcon_gqa": ("falcon", {"n_kv_heads": 2, "new_decoder_architecture": True,
                              "num_ln_in_parallel_attn": 2, "bias": True}),
}


# variants TransformerLens 4 cannot load, and why (its tests skip them, saying so)
TL_CANNOT_LOAD = {
    "falcon_gqa": "TransformerLens 4 cannot load Falcon's new_decoder_architecture: it splits "
                  "the fused Q/K/V as [q | k | v] with one K/V head",
}


def boot_transformer_lens(variant: str, folder):
    """TransformerLens's bridge on a saved variant, or a skip naming why it cannot load it."""
    pytest.importorskip("transformer_lens")
    if variant in TL_CANNOT_LOAD:
        pytest.skip(TL_CANNOT_LOAD[variant])
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session", params=list(VARIANTS))
def saved(request, tmp_path_factory):
    """A tiny model of each family/variant written with save_pretrained: (variant, folder)."""
    family, kw = VARIANTS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    tiny_model(family, **kw).save_pretrained(folder)
    tiny_tokenizer(family).save_pretrained(folder)
    return request.param, folder


@pytest.fixture
def bridge(saved):
    return Bridge.from_pretrained(str(saved[1]))


@pytest.fixture
def hf_eager(saved):
    return AutoModelForCausalLM.from_pretrained(saved[1], attn_implementation="eager",
                                                dtype=torch.float32).eval()


def norm_affine(bridge, norm, x: torch.Tensor) -> torch.Tensor:
    """``x * weight + bias`` of a norm module, for a normalized ``x [..., d_model]``; a missing
    weight or bias (OLMo's LayerNorm has neither) is left out; Gemma's weight is ``1 + w``."""
    weight, bias = norm_weight(bridge.adapter, norm), getattr(norm, "bias", None)
    x = x if weight is None else x * weight
    return x if bias is None else x + bias


def finish_logits(bridge, x: torch.Tensor) -> torch.Tensor:
    """What the model does after the unembedding, written out: times the logit multiplier (Cohere,
    Granite), then ``cap * tanh(x / cap)`` (Gemma 2)."""
    x = x * bridge.cfg.logit_multiplier
    cap = bridge.cfg.output_logits_soft_cap
    return x if cap is None else cap * torch.tanh(x / cap)


def unfinish_logits(bridge, logits: torch.Tensor) -> torch.Tensor:
    """The unembedding's output from the model's logits: ``finish_logits`` inverted."""
    cap = bridge.cfg.output_logits_soft_cap
    x = logits if cap is None else cap * torch.atanh(logits / cap)
    return x / bridge.cfg.logit_multiplier


def assert_same(a, b, what: str = "result", tol: float = 1e-4, same_device: bool = False) -> None:
    """Two results equal: tensors within ``tol`` (compared on the CPU, NaN where NaN; integer and
    bool tensors exactly), floats within ``tol``, everything else equal; dataclasses, mappings
    (a cache too), lists and tuples field by field. ``same_device``: tensors also on one device
    (else each is compared on the CPU: results of a model spread over several devices)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, what
        assert not same_device or a.device == b.device, what
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True, msg=what)
        else:
            assert torch.equal(a, b), what
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), what
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{what}.{f.name}", tol, same_device)
    elif isinstance(a, Mapping):
        assert list(a.keys()) == list(b.keys()), what
        for key in a:
            assert_same(a[key], b[key], f"{what}[{key!r}]", tol, same_device)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{what}[{i}]", tol, same_device)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=tol, abs=tol, nan_ok=True), what
    else:
        assert a == b, what


def rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    """Max |a - b| relative to max |b| (at least 1) below ``tol``."""
    assert ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() < tol


def assert_equals_hf_eager(bridge, hf, tokens: torch.Tensor, tol: float = 1e-4):
    """The bridge's plain run and its fully hooked run give HF eager's logits, every layer's
    residual (HF ``hidden_states[i]`` is the input of block i) and attention weights, and leave
    no PyTorch hook behind. Returns ``(HF's output, the bridge's cache)`` for further checks."""
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True, output_attentions=True)
        plain = bridge(tokens)
        logits, cache = bridge.run_with_cache(tokens)
    rel_close(plain, ref.logits, tol)
    rel_close(logits, ref.logits, tol)
    for layer in range(bridge.cfg.n_layers):
        rel_close(cache["resid_pre", layer], ref.hidden_states[layer], tol)
        rel_close(cache["pattern", layer], ref.attentions[layer], tol)
    assert no_torch_hooks(bridge.model)
    return ref, cache


def assert_padding_equivalent(bridge, prompts: list[str], tol: float = 1e-5) -> None:
    """Left- and right-padded batches of ``prompts`` give each prompt's output run alone (the
    output's real positions; relative max difference below ``tol``)."""
    singles = [bridge(p)[0] for p in prompts]
    for side in ("left", "right"):
        tokens = bridge.to_tokens(prompts, padding_side=side)
        out = bridge(prompts, padding_side=side)
        for i, single in enumerate(singles):
            n = single.shape[0]
            got = out[i, :n] if side == "right" else out[i, tokens.shape[1] - n:]
            assert ((got - single).abs().max() / single.abs().max().clamp_min(1.0)).item() < tol, \
                (side, i)


_MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                      "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
                      "_forward_hooks_always_called", "_state_dict_hooks", "_state_dict_pre_hooks",
                      "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
_GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                      "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def hook_state(model) -> dict:
    """Every hook PyTorch holds for ``model``'s modules, and globally (keys of each hook dict)."""
    state = {(name, attr): tuple(getattr(m, attr))
             for name, m in model.named_modules() for attr in _MODULE_HOOK_DICTS
             if getattr(m, attr, None)}
    module = torch.nn.modules.module
    state.update({("<global>", attr): tuple(getattr(module, attr)) for attr in _GLOBAL_HOOK_DICTS
                  if getattr(module, attr, None)})
    return state


def no_torch_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


@pytest.fixture(scope="session")
def demo():
    """The embedded demo model, loaded by name (offline)."""
    return Bridge.from_pretrained("workbench-demo")


@pytest.fixture
def comm(monkeypatch):
    """Widgets created in this test get a recording comm (see tests/widget_comm.py)."""
    import comm as comm_pkg
    from widget_comm import RecordingComm

    monkeypatch.setattr(comm_pkg, "create_comm", lambda **kw: RecordingComm(**kw))
    return RecordingComm


# -- the support table's results -----------------------------------------------------------------
# docs/support.md's support table is generated from these tests' outcomes per variant, recorded
# here whenever a run covers every (test, variant) pair (a full `make test`), and rendered by
# scripts/docs_hooks.py. Nothing in the table is written by hand.
SUPPORT_COLUMNS = {
    "parity": ["test_parity.py::test_logits_and_residuals_equal_hf_eager",
               "test_parity.py::test_padding_equivalence_left_and_right"],
    "attention internals": ["test_patterns.py::test_equals_cache_and_hf_eager",
                            "test_weights.py::test_weights_reproduce_activations",
                            "test_hooks.py::test_writes_change_downstream"],
    "hook_result": ["test_parity.py::test_residual_identities"],
    "bf16 / fp16": ["test_devices.py::test_half_precision_is_hf_eager_bit_for_bit"],
    "MLP hooks": ["test_weights.py::test_weights_reproduce_activations",
                  "test_hooks.py::test_writes_change_downstream"],
    "weight processing": ["test_processing.py::test_outputs_preserved",
                          "test_processing.py::test_fold_ln"],
    "generation": ["test_parity.py::test_generation_with_cache_equals_hf_eager",
                   "test_generation.py::test_greedy_equals_hf_generate"],
    "TransformerLens": ["test_transformer_lens_oracle.py::test_every_hook_matches_transformer_lens"],
}
# encoders are not causal LMs, so not VARIANTS entries: tests/test_encoder.py runs them, and its
# tests fill the same columns (weight processing and generation do not apply to them)
ENCODER_VARIANTS = {"minilm": "bert", "tiny_bert": "bert"}
ENCODER_COLUMNS = {
    "parity": ["test_encoder.py::test_hidden_states_and_attention_equal_hf_eager",
               "test_encoder.py::test_stop_at_layer_and_padding"],
    "attention internals": ["test_encoder.py::test_hidden_states_and_attention_equal_hf_eager",
                            "test_encoder.py::test_weights_reproduce_activations",
                            "test_encoder.py::test_writes_change_the_output"],
    "hook_result": ["test_encoder.py::test_post_norm_identities"],
    "MLP hooks": ["test_encoder.py::test_weights_reproduce_activations",
                  "test_encoder.py::test_writes_change_the_output"],
    "TransformerLens": ["test_encoder.py::test_transformer_lens_bridge_on_the_same_weights"],
}
SUPPORT_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "support_results.json"
_outcomes: dict[tuple[str, str], list[str]] = {}


# the reliability suites (issue 9): `make test` ends with how many cases each ran and passed
RELIABILITY_SUITES = {
    "test_fault_injection.py": "fault injection (exceptions, interrupts, cancels at random points)",
    "test_panel_abuse.py": "panels under faults and abuse (rapid clicks, prompt changes, memory)",
    "test_bad_inputs.py": "bad-input catalogue (a clear error, then a usable kernel)",
    "test_offline.py": "no network (every panel and analysis with sockets blocked)",
    "test_loading.py": "loading safety (safetensors, no pickle or remote code unless asked)",
    "test_injection_browser.py": "markup and script injection (real browser, every panel and export)",
}
_reliability: dict[str, dict[str, int]] = {}


def pytest_runtest_logreport(report):
    path, _, rest = report.nodeid.partition("::")
    suite = path.rsplit("/", 1)[-1]
    if suite in RELIABILITY_SUITES and (report.when == "call" or report.outcome != "passed"):
        counts = _reliability.setdefault(suite, {})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1
    func, _, params = rest.partition("[")
    key = f"{path.rsplit('/', 1)[-1]}::{func}"
    columns = ENCODER_COLUMNS if path.endswith("test_encoder.py") else SUPPORT_COLUMNS
    if not params or not any(key in tests for tests in columns.values()):
        return
    variant = params.rstrip("]").split("-")[0]
    if variant not in VARIANTS and variant not in ENCODER_VARIANTS:
        return
    if report.when == "call" or report.outcome != "passed":  # setup errors and skips count too
        _outcomes.setdefault((key, variant), []).append(report.outcome)


def pytest_sessionfinish(session, exitstatus):
    groups = ((SUPPORT_COLUMNS, VARIANTS), (ENCODER_COLUMNS, ENCODER_VARIANTS))
    wanted = {(t, v) for columns, variants in groups for tests in columns.values() for t in tests
              for v in variants}
    if not wanted <= _outcomes.keys():
        return  # a partial run: keep the last full run's results

    def one(outcomes: list[str]) -> str:
        return ("failed" if "failed" in outcomes else "passed" if "passed" in outcomes else "skipped")
    results: dict[str, dict] = {}
    for columns, variants in groups:
        for col, tests in columns.items():
            results.setdefault(col, {}).update(
                {v: sorted({one(_outcomes[t, v]) for t in tests}) for v in variants})
    text = json.dumps({"columns": SUPPORT_COLUMNS, "encoder_columns": ENCODER_COLUMNS,
                       "results": results}, indent=1, sort_keys=True) + "\n"
    if not SUPPORT_RESULTS.exists() or SUPPORT_RESULTS.read_text() != text:
        SUPPORT_RESULTS.write_text(text)


def pytest_terminal_summary(terminalreporter):
    if not _reliability:
        return
    terminalreporter.section("reliability suites (docs/reliability.md)")
    for suite, what in RELIABILITY_SUITES.items():
        counts = _reliability.get(suite)
        if counts:
            ran = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            terminalreporter.write_line(f"{suite:<28} {ran:<22} {what}")
