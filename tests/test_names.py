"""The name grammar and hook metadata."""

import pytest
import torch

from workbench import HookNameError
from workbench.names import act_name, parse


def test_parse_roundtrip():
    for name in ["hook_embed", "blocks.3.attn.hook_pattern", "blocks.0.ln2.hook_scale",
                 "ln_final.hook_normalized", "blocks.11.hook_resid_post"]:
        assert str(parse(name)) == name
    assert parse("blocks.3.mlp.hook_post").layer == 3
    with pytest.raises(HookNameError):
        parse("blocks.x.hook_resid_pre")


def test_act_name():
    assert act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert act_name("resid_pre", -1, n_layers=4) == "blocks.3.hook_resid_pre"
    assert act_name("attn_logits", 2) == "blocks.2.attn.hook_attn_scores"
    assert act_name("scale") == "ln_final.hook_scale"
    assert act_name("normalized", 1, "ln2") == "blocks.1.ln2.hook_normalized"
    with pytest.raises(HookNameError, match="give a layer"):
        act_name("pattern")
    with pytest.raises(HookNameError, match="Unknown activation"):
        act_name("patern", 0)


def test_hook_info_bytes_match_the_cache(bridge):
    tokens = bridge.to_tokens("When Mary and John")
    bridge.use_attn_result = True
    _, cache = bridge.run_with_cache(tokens)
    for name, tensor in cache.items():
        info = bridge.hook_info(name)
        assert info.nbytes(1, tokens.shape[1]) == tensor.numel() * tensor.element_size(), name
        assert len(info.shape) == tensor.ndim, name


def test_ungrouped_kv_hooks_show_each_query_head(bridge):
    tokens = bridge.to_tokens("When Mary and John")
    _, grouped = bridge.run_with_cache(tokens)
    bridge.ungroup_grouped_query_attention = True
    logits, ungrouped = bridge.run_with_cache(tokens)
    cfg = bridge.cfg
    assert ungrouped["k", 0].shape[2] == cfg.n_heads
    groups = cfg.n_heads // cfg.n_kv_heads
    torch.testing.assert_close(ungrouped["k", 0], grouped["k", 0].repeat_interleave(groups, 2))
    torch.testing.assert_close(logits, bridge(tokens), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_parity(saved, hf_eager):
    from workbench import Bridge
    b = Bridge.from_pretrained(str(saved[1]), device="cuda")
    tokens = b.to_tokens("When Mary and John went to the store")
    with torch.no_grad():
        _, cache = b.run_with_cache(tokens)
        ref = hf_eager(tokens.cpu(), output_hidden_states=True)
    torch.testing.assert_close(cache["resid_pre", 1].cpu(), ref.hidden_states[1], rtol=1e-4, atol=1e-4)
