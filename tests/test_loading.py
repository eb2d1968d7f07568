"""Loading safety and determinism: pickle-based weights load only when the caller opts in, and
the same input gives bit-identical caches and patching results on the CPU."""

import pytest
import torch

from workbench import Bridge, InputError, patch_sweep
from workbench.toy import tiny_model, tiny_tokenizer


def test_pickle_weights_load_only_when_allowed(tmp_path):
    model = tiny_model("llama", n_kv_heads=2)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle-only checkpoint
    model.config.save_pretrained(tmp_path)
    tiny_tokenizer("llama").save_pretrained(tmp_path)
    with pytest.raises(InputError, match="no safetensors weights .* allow_pickle=True"):
        Bridge.from_pretrained(str(tmp_path))
    bridge = Bridge.from_pretrained(str(tmp_path), allow_pickle=True)
    tokens = torch.tensor([[0, 5, 17, 40]])
    with torch.no_grad():
        assert torch.equal(bridge(tokens), model(tokens).logits)


def test_safetensors_need_no_opt_in(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(Bridge.from_pretrained(str(tmp_path)).model, torch.nn.Module)


def test_same_input_gives_bit_identical_caches_and_sweeps(demo):
    prompt = "When Mary and John went to the store, John gave a drink to"
    corrupted = "When Mary and John went to the store, Mary gave a drink to"
    runs = [demo.run_with_cache(prompt) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1].keys() == runs[1][1].keys()
    for name in runs[0][1].keys():
        assert torch.equal(runs[0][1][name], runs[1][1][name]), name

    def metric(logits):
        return logits[:, -1].log_softmax(-1)[:, demo.to_single_token(" Mary")]

    sweeps = [patch_sweep(demo, prompt, corrupted, site="resid_pre", metric=metric) for _ in range(2)]
    assert torch.equal(sweeps[0].values, sweeps[1].values)
