"""The generic path: decoder families without an adapter are discovered from their module tree,
checked against the model on a probe prompt and wrapped with an UnverifiedFamilyWarning;
families that bypass transformers' attention interface, or that the structure cannot describe,
are refused with an error naming what is missing.

Real transformers families without an adapter, each with a different structure: helium (the
Llama layout), glm4 (a fused gate/up projection, norms after attention and the MLP), arcee (an
MLP that is not gated), olmo3 (no norms before attention or the MLP, Q/K norms) and nemotron
(LayerNorms that scale by 1 + weight)."""

import dataclasses
import warnings

import pytest
import torch
from conftest import VARIANTS, assert_equals_hf_eager, no_torch_hooks
from conftest import rel_close as close
from transformers import AutoConfig, AutoModelForCausalLM

from workbench import Bridge, UnsupportedModelError, UnverifiedFamilyWarning
from workbench.adapters import adapter_for, for_model, known_adapter, optional_module
from workbench.adapters.discover import discover
from workbench.toy import char_tokenizer, tiny_model

PROMPT = "When Mary and John went to the store, John gave"
SIZES = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, vocab_size=103, head_dim=16, pad_token_id=1, bos_token_id=0,
             eos_token_id=0, max_position_embeddings=128)
GENERIC = ("helium", "glm4", "arcee", "olmo3", "nemotron")


def random_norms(model, seed: int = 0) -> None:
    """Norm weights and biases away from their init (1 and 0), so a misplaced norm shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module", params=GENERIC)
def folder(request, tmp_path_factory):
    assert known_adapter(request.param) is None  # still without an adapter
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(request.param, **SIZES))
    random_norms(model)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(folder):
    with pytest.warns(UnverifiedFamilyWarning, match="no tested adapter"):
        bridge = Bridge.from_pretrained(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return bridge, hf


def test_equals_hf_eager(pair):
    bridge, hf = pair
    assert bridge.adapter.family == f"generic:{bridge.cfg.model_type}"
    assert_equals_hf_eager(bridge, hf, bridge.to_tokens(PROMPT))


def test_identities_and_decompositions(pair):
    bridge, _ = pair
    logits, cache = bridge.run_with_cache(PROMPT)
    n = bridge.cfg.n_layers
    for layer in range(n):
        close(cache["resid_pre", layer] + cache["attn_out", layer] + cache["mlp_out", layer],
              cache["resid_post", layer], 1e-5)
    parts = cache.decompose_resid()  # embeddings, then each attn_out and mlp_out
    close(parts.sum(0), cache["resid_post", n - 1], 1e-5)
    heads = cache.stack_head_results(layer=1)  # through the post-attention norm where there is one
    b_O = bridge.b_O[0]
    written = cache.context.attn_written(0, b_O, cache.get("blocks.0.ln1_post.hook_scale"))
    close(heads.sum(0) + written, cache["attn_out", 0], 1e-4)
    # the logit lens's last layer is the logits (the final norm and unembedding were found)
    from workbench import logit_lens

    lens = logit_lens(bridge, PROMPT, layers=[n - 1])
    assert torch.equal(lens.top_tokens[-1, :, 0], logits[0].argmax(-1))


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_mid", "blocks.0.attn.hook_z",
                                  "blocks.1.attn.hook_pattern", "blocks.0.hook_mlp_out"])
def test_writes_change_the_output(pair, name):
    bridge, _ = pair
    base = bridge(PROMPT)
    out = bridge.run_with_hooks(PROMPT, fwd_hooks=[(name, lambda t, hook: t.flip(1))])
    assert (out - base).abs().max() > 1e-3
    assert not bridge.attached_hooks()


# the declared adapters are the ground truth for what discovery should find
FIELDS = ("blocks", "embed", "unembed", "ln_final", "ln1", "attn_post_norm", "mlp_post_norm",
          "attn_qkv", "attn_out_proj", "mlp_in", "mlp_gate", "mlp_out", "normalization",
          "norm_weight_offset", "mlp_fused_gate_up", "attn_qk_norms")
AGREE = ("llama_gqa", "mistral_sliding", "qwen2_gqa", "qwen3_gqa", "olmo", "starcoder2_gqa",
         "gemma", "gemma3", "olmo2_gqa", "phi_gqa", "phi3_partial_rotary", "stablelm_qk_norm")


@pytest.mark.parametrize("variant", AGREE)
def test_discovery_finds_what_the_declared_adapter_says(variant):
    family, kw = VARIANTS[variant]
    model = tiny_model(family, **kw)
    random_norms(model)
    declared = for_model(adapter_for(model.config.model_type), model.config)
    block = model.get_submodule(declared.blocks)[0]
    if declared.attn_qk_norms and optional_module(block, declared.attn_qk_norms[0]) is None:
        declared = dataclasses.replace(declared, attn_qk_norms=None)  # switched off in the config
    found = discover(model)
    for field in FIELDS:
        assert getattr(found, field) == getattr(declared, field), field
    ours, theirs = found.read_config(model.config), declared.read_config(model.config)
    for key in ("n_heads", "n_kv_heads", "d_head", "d_mlp", "rotary_dim", "parallel_attn_mlp",
                "gated_mlp"):
        assert ours[key] == theirs[key], key
    if not theirs["parallel_attn_mlp"]:
        assert found.ln2 == declared.ln2


@pytest.mark.parametrize("variant,why", [
    ("gemma2", "logits"),  # the final logits are soft-capped
    ("cohere_qk_norm", "logits"),  # the logits are scaled by logit_scale
    ("granite", "differs"),  # embedding and residual multipliers
])
def test_what_the_structure_cannot_show_is_refused(variant, why):
    """Families that scale or cap something outside their modules' structure fail the probe
    check with a message naming the quantity that differs, instead of being wrapped wrong."""
    family, kw = VARIANTS[variant]
    with pytest.raises(UnsupportedModelError, match=why) as err:
        Bridge._discovered(tiny_model(family, **kw), None)
    assert "does not reproduce the model" in str(err.value)


@pytest.mark.parametrize("model_type,sizes", [
    ("mpt", dict(d_model=32, n_layers=1, n_heads=2, vocab_size=50)),
    ("gpt_neo", dict(hidden_size=32, num_layers=2, num_heads=2, vocab_size=50,
                     attention_types=[[["global", "local"], 1]])),
    ("xglm", dict(d_model=32, num_layers=1, attention_heads=2, ffn_dim=64, vocab_size=50)),
])
def test_families_that_bypass_the_attention_interface_are_refused(model_type, sizes, tmp_path):
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **sizes))
    model.save_pretrained(tmp_path)
    for load in (lambda: Bridge.from_hf(model), lambda: Bridge.from_pretrained(str(tmp_path))):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnverifiedFamilyWarning)
            with pytest.raises(UnsupportedModelError, match="attention interface") as err:
                load()
        message = str(err.value)
        assert model_type in message and "Attention" in message  # names the attention class
        assert "Adding a family" in message


def test_mixtures_of_experts_are_refused():
    with pytest.raises(UnsupportedModelError, match="mixtures of experts"):
        discover(tiny_model("mixtral", n_kv_heads=2))


def test_a_misread_layout_fails_the_check(pair):
    """The check reads the weights back against the activations: an adapter with gate and up
    swapped (a layout the names could misstate) is caught, naming the hook that differs."""
    from workbench.adapters.discover import verify

    bridge, _ = pair
    a = bridge.adapter
    if a.mlp_gate is None or a.mlp_fused_gate_up:
        pytest.skip("needs separate gate and up projections")
    wrong = Bridge(bridge.model, None, dataclasses.replace(a, mlp_gate=a.mlp_in, mlp_in=a.mlp_gate))
    with pytest.raises(UnsupportedModelError, match=r"hook_post as \w+\(hook_pre\) \* hook_pre_linear"):
        verify(wrong)
    assert no_torch_hooks(bridge.model)
