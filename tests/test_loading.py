"""Loading safety and determinism: pickle-based weights load only when the caller opts in, a
checkpoint's own Python code runs only with ``trust_remote_code=True``, and the same input gives
bit-identical caches and patching results on the CPU."""

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


def test_remote_code_runs_only_when_asked(tmp_path, monkeypatch):
    """A folder whose config maps to its own Python file: without ``trust_remote_code=True`` the
    load is refused with the fix named and the file never runs; with it, the file runs."""
    import json

    marker = tmp_path / "RAN"
    monkeypatch.setenv("WORKBENCH_TEST_MARKER", str(marker))
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "custom_lm", "auto_map": {
        "AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}}))
    (folder / "custom.py").write_text(
        "import os, pathlib\npathlib.Path(os.environ['WORKBENCH_TEST_MARKER']).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom_lm'\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        Bridge.from_pretrained(str(folder))
    assert not marker.exists()  # nothing of the folder's code ran
    with pytest.raises(AttributeError, match="CustomModel"):  # the file ran, then lacks a model
        Bridge.from_pretrained(str(folder), trust_remote_code=True)
    assert marker.read_text() == "ran"
