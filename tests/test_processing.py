"""Weight processing (fold LN, centre writing weights, centre unembed, fold value biases) keeps the
model's outputs, does what each step promises, and matches TransformerLens's processed weights.

Tiny random-init models have norm weights of exactly 1 and zero biases, so every model here is
first given random norm weights/biases, random linear biases and a value bias (llama has none).
"""

import warnings

import pytest
import torch
from torch import nn

from workbench import Bridge, InputError
from workbench.adapters import norm_weight
from workbench.toy import char_tokenizer, tiny_model

TOKENS = torch.tensor([[0, 5, 17, 40, 22, 8, 60, 33, 12, 90],
                       [1, 1, 1, 0, 44, 3, 71, 9, 9, 15]])
MASK = torch.tensor([[1] * 10, [0] * 3 + [1] * 7])  # second prompt left-padded
VALID = MASK.bool()
ALL = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
STEPS = tuple(ALL)


def close(a, b, **kw):
    torch.testing.assert_close(a, b, **({"rtol": 1e-4, "atol": 1e-5} | kw))


def flags(*on: str) -> dict:
    return {k: k in on for k in ALL}


def applies(bridge, step: str) -> bool:
    """Whether a step runs on this model: centring needs LayerNorm; folding value biases needs no
    clamp after them (OLMo's clip_qkv); centring the unembedding needs logits that are not
    soft-capped (Gemma 2). The others warn and skip."""
    if step == "center_writing_weights":  # BLOOM's embedding LayerNorm: no centred residual
        return bridge.cfg.normalization_type == "LN" and bridge.adapter.embed_norm is None
    if step == "center_unembed":
        return bridge.cfg.output_logits_soft_cap is None
    return step != "fold_value_biases" or bridge.cfg.clip_qkv is None


def assert_skipped(bridge, step: str, reason: str) -> None:
    """``step`` alone warns (the warning names ``reason``), records nothing and changes no weight."""
    state = {k: v.clone() for k, v in bridge.model.state_dict().items()}
    with pytest.warns(UserWarning, match=reason):
        bridge.process_weights(**flags(step))
    assert bridge.processing == ()
    for k, v in bridge.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def norms(bridge) -> list[nn.Module]:
    a, m = bridge.adapter, bridge.model
    blocks = [f"{a.blocks}.{i}" for i in range(bridge.cfg.n_layers)]
    names = {n for n, _ in m.named_modules()}  # parallel StableLM has no ln2 module
    return [m.get_submodule(f"{b}.{p}") for b in blocks for p in dict.fromkeys((a.ln1, a.ln2))
            if p is not None and f"{b}.{p}" in names] + \
        [m.get_submodule(a.ln_final)]


def randomise(bridge, seed: int = 0) -> None:
    """Random norm weights (1 + 0.3 N) and biases, random linear biases, a V bias where missing."""
    g = torch.Generator().manual_seed(seed)
    a, c = bridge.adapter, bridge.cfg

    def rand(t, scale=0.2, base=0.0):
        t.copy_(base + scale * torch.randn(t.shape, generator=g))

    with torch.no_grad():
        norm_ids = {id(n) for n in norms(bridge)}
        for n in norms(bridge):
            if getattr(n, "weight", None) is not None:  # OLMo's LayerNorm has no weight, no bias
                rand(n.weight, 0.3, 1.0)
            if getattr(n, "bias", None) is not None:
                rand(n.bias)
        for mod in bridge.model.modules():
            if id(mod) not in norm_ids and isinstance(getattr(mod, "bias", None), nn.Parameter):
                rand(mod.bias)
        if a.qkv_layout == "split":  # llama: q/k/v without bias; give V one (o_proj keeps none)
            for i in range(c.n_layers):
                v = bridge.model.get_submodule(f"{a.blocks}.{i}.{a.attn_qkv[2]}")
                if v.bias is None:
                    v.bias = nn.Parameter(0.2 * torch.randn(v.out_features, generator=g))
        elif a.linear_layout == "linear":  # Phi-3: one fused Q/K/V Linear without bias; give it one
            for i in range(c.n_layers):
                qkv = bridge.model.get_submodule(f"{a.blocks}.{i}.{a.attn_qkv[0]}")
                if qkv.bias is None:
                    qkv.bias = nn.Parameter(0.2 * torch.randn(qkv.out_features, generator=g))


@pytest.fixture
def rb(saved):
    """A fresh bridge of each variant with randomised norms and biases."""
    b = Bridge.from_pretrained(str(saved[1]))
    randomise(b)
    return b


def run(bridge):
    with torch.no_grad():
        return bridge.run_with_cache(TOKENS, attention_mask=MASK)


def centred(logits):
    return logits - logits.mean(-1, keepdim=True)


def resid_names(cache):
    return [n for n in cache.keys() if ".hook_resid_" in n]


@pytest.mark.parametrize("on", [("fold_ln",), ("center_writing_weights",), ("center_unembed",),
                                ("fold_value_biases",), STEPS], ids=lambda t: "+".join(t))
def test_outputs_preserved(rb, on):
    logits, _ = run(rb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RMS models warn that they skip centring (OLMo: folding b_V)
        rb.process_weights(**flags(*on))
    new, _ = run(rb)
    if "center_unembed" in on:
        close(torch.log_softmax(new, -1)[VALID], torch.log_softmax(logits, -1)[VALID])
        close(centred(new)[VALID], centred(logits)[VALID])
    else:
        close(new[VALID], logits[VALID])
    assert rb.processing == tuple(s for s in on if applies(rb, s))


def test_fold_ln(rb):
    W_E = rb.W_E.clone()
    tied = rb.model.get_submodule(rb.adapter.unembed).weight is \
        rb.model.get_submodule(rb.adapter.embed).weight
    _, before = run(rb)
    assert rb.process_weights(**flags("fold_ln")).processing == ("fold_ln",)
    _, after = run(rb)
    for n in norms(rb):
        w = norm_weight(rb.adapter, n)  # Gemma's norms scale by 1 + weight
        if w is not None:
            assert torch.equal(w, torch.ones_like(w))
        if getattr(n, "bias", None) is not None:
            assert torch.equal(n.bias, torch.zeros_like(n.bias))
    assert torch.equal(rb.W_E, W_E)  # untied first: folding ln_final into W_U left W_E alone
    if tied:
        assert rb.model.get_submodule(rb.adapter.unembed).weight.data_ptr() != rb.W_E.data_ptr()
        assert rb.model.config.tie_word_embeddings is False
    for name in resid_names(before):
        close(after[name][VALID], before[name][VALID])
    for name in ("blocks.0.ln1.hook_normalized", "ln_final.hook_normalized")[rb.adapter.ln1 is None:]:
        close(after[name][VALID], before[name][VALID])
    if rb.cfg.normalization_type == "LN":  # reading weights centred over d_model, as TL does
        close(rb.W_Q.mean(-2), torch.zeros_like(rb.W_Q.mean(-2)), atol=1e-6, rtol=0)
        close(rb.W_U.mean(0), torch.zeros_like(rb.W_U.mean(0)), atol=1e-6, rtol=0)


def test_center_writing_weights(rb):
    if not applies(rb, "center_writing_weights"):
        assert_skipped(rb, "center_writing_weights",
                       "RMSNorm" if rb.cfg.normalization_type != "LN" else "embeddings")
        return
    rb.process_weights(**flags("center_writing_weights"))
    _, cache = run(rb)
    assert len(resid_names(cache)) >= 2 * rb.cfg.n_layers
    for name in resid_names(cache):
        mean = cache[name][VALID].mean(-1)
        close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    for W in (rb.W_E, rb.W_O, rb.b_O, rb.W_out, rb.b_out):
        close(W.mean(-1), torch.zeros_like(W.mean(-1)), atol=1e-6, rtol=0)


def test_center_unembed(rb):
    if not applies(rb, "center_unembed"):
        assert_skipped(rb, "center_unembed", "soft-caps")
        return
    rb.process_weights(**flags("center_unembed"))
    close(rb.W_U.mean(-1), torch.zeros(rb.cfg.d_model), atol=1e-6, rtol=0)
    close(rb.b_U.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_fold_value_biases(rb):
    if not applies(rb, "fold_value_biases"):
        assert_skipped(rb, "fold_value_biases", "clip_qkv")
        return
    _, before = run(rb)
    b_Q, b_K = rb.b_Q.clone(), rb.b_K.clone()
    rb.process_weights(**flags("fold_value_biases"))
    assert rb.processing == ("fold_value_biases",)
    assert torch.equal(rb.b_V, torch.zeros_like(rb.b_V))
    assert torch.equal(rb.b_Q, b_Q) and torch.equal(rb.b_K, b_K)  # only V was zeroed
    _, after = run(rb)
    for layer in range(rb.cfg.n_layers):
        close(after["attn_out", layer][VALID], before["attn_out", layer][VALID])
    close(after["resid_post", -1][VALID], before["resid_post", -1][VALID])


def test_fold_value_biases_without_v_bias_is_not_applied():
    bridge = Bridge.from_hf(tiny_model("llama"), char_tokenizer())  # no attention biases
    state = {k: v.clone() for k, v in bridge.model.state_dict().items()}
    assert bridge.process_weights(**flags("fold_value_biases")).processing == ()
    assert bridge.model.state_dict().keys() == state.keys()


def test_processing_twice_changes_nothing(rb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rb.process_weights()
        state = {k: v.clone() for k, v in rb.model.state_dict().items()}
        rb.process_weights()
    for k, v in rb.model.state_dict().items():
        close(v, state[k], atol=1e-6, rtol=0)
    assert rb.processing == tuple(s for s in STEPS if applies(rb, s))


def test_from_pretrained_flags_equal_processing_after_load(saved, tmp_path):
    b = Bridge.from_pretrained(str(saved[1]))
    randomise(b)
    if getattr(b.model.config, "attention_bias", None) is False:  # persist the added V bias (all get one)
        b.model.config.attention_bias = True
        for i in range(b.cfg.n_layers):
            attn = b.model.get_submodule(f"{b.adapter.blocks}.{i}.{b.adapter.attn}")
            for proj in (attn.q_proj, attn.k_proj, attn.o_proj):
                proj.bias = nn.Parameter(0.1 * torch.randn(proj.out_features))
    b.model.save_pretrained(tmp_path)
    b.tokenizer.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = Bridge.from_pretrained(str(tmp_path), **ALL)
        after = Bridge.from_pretrained(str(tmp_path)).process_weights()
    assert loaded.processing == after.processing
    # Mistral's (and Mixtral's) attention has no bias parameters: the added V bias is not saved,
    # so nothing to fold, unless folding a LayerNorm's bias gave V one (StableLM)
    assert "fold_ln" in loaded.processing
    folded = Bridge.from_pretrained(str(tmp_path)).process_weights(**flags("fold_ln"))
    v_bias = bool(folded.b_V.abs().sum() > 0)
    assert ("fold_value_biases" in loaded.processing) == (v_bias and applies(b, "fold_value_biases"))
    s1, s2 = loaded.model.state_dict(), after.model.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert torch.equal(loaded(TOKENS), after(TOKENS))


def test_unreadable_weights_raise_input_error():
    bridge = Bridge.from_hf(tiny_model("gpt2"), char_tokenizer())
    ln = bridge.model.transformer.ln_f
    ln.weight = nn.Parameter(torch.empty(ln.weight.shape, device="meta"))
    with pytest.raises(InputError, match="meta"):
        bridge.process_weights()
    ln.weight = nn.Parameter(torch.ones(ln.weight.shape, dtype=torch.int8), requires_grad=False)
    with pytest.raises(InputError, match="floating-point"):
        bridge.process_weights()
    assert bridge.processing == ()


# -- TransformerLens parity --------------------------------------------------------------------------

TL_MODELS = {
    "gpt2": ("gpt2", {}),
    "llama_gqa": ("llama", {"n_kv_heads": 2, "attention_bias": True}),
    "neox_parallel": ("gpt_neox", {}),
    "neox_sequential": ("gpt_neox", {"use_parallel_residual": False}),
}
WEIGHTS = ("W_E", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_U",
           "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module", params=list(TL_MODELS))
def tl_folder(request, tmp_path_factory):
    family, kw = TL_MODELS[request.param]
    b = Bridge.from_hf(tiny_model(family, **kw), char_tokenizer())
    randomise(b, seed=3)
    folder = tmp_path_factory.mktemp(f"tl_{request.param}")
    b.model.save_pretrained(folder)
    b.tokenizer.save_pretrained(folder)
    return request.param, folder


@pytest.mark.parametrize("on", [STEPS, ("fold_ln",)], ids=["all", "fold_ln"])
def test_matches_transformer_lens(tl_folder, on):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge

    variant, folder = tl_folder
    tl = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32).eval()
    tl.enable_compatibility_mode(disable_warnings=True, **flags(*on))
    ours = Bridge.from_pretrained(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.process_weights(**flags(*on))
    assert "fold_ln" in ours.processing
    raw = Bridge.from_pretrained(str(folder))
    assert _rel(raw.W_Q, ours.W_Q) > 1e-2  # processing did change the weights
    compared = []
    for name in WEIGHTS:
        if name == "W_gate" and not ours.cfg.gated_mlp:
            continue
        try:
            theirs = getattr(tl, name)
        except AttributeError:  # TL exposes no stacked bias for bias-free projections
            assert torch.equal(getattr(ours, name), torch.zeros_like(getattr(ours, name))), name
            continue
        mine = getattr(ours, name)
        c = ours.cfg
        if name[2] in "KV" and theirs.shape[1] == c.n_kv_heads != c.n_heads:  # TL: per kv head
            theirs = theirs.repeat_interleave(c.n_heads // c.n_kv_heads, dim=1)
        assert theirs.shape == mine.shape, (name, theirs.shape, mine.shape)
        assert _rel(theirs, mine) < 1e-4, (variant, name, _rel(theirs, mine))
        compared.append(name)
    assert {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U", "b_V", "b_O"} <= set(compared)

    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(TOKENS[:1])
        our_logits, our_cache = ours.run_with_cache(TOKENS[:1])
    close(centred(our_logits), centred(tl_logits), rtol=1e-4, atol=1e-4)
    assert _rel(tl_logits, our_logits) < 1e-4
    rotary = ours.cfg.positional_embedding_type == "rotary"
    sites = (".hook_resid_", "hook_attn_out", "hook_mlp_out", "attn.hook_q", "attn.hook_k",
             "attn.hook_v", "attn.hook_z", "attn.hook_pattern", "hook_normalized", "hook_scale")
    checked = []
    for name in our_cache.keys():
        if not any(s in name for s in sites):
            continue
        tl_name = name
        if rotary and name.endswith(("attn.hook_q", "attn.hook_k")):
            tl_name = name.replace("hook_q", "hook_rot_q").replace("hook_k", "hook_rot_k")
            if tl_name not in tl_cache.keys():
                continue  # TL's GPT-NeoX bridge has no post-rotary q/k (see the oracle test)
        a, b = tl_cache[tl_name], our_cache[name]
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert _rel(a, b) < 1e-4, (variant, name, _rel(a, b))
        checked.append(name)
    assert len(checked) >= 8 * ours.cfg.n_layers
