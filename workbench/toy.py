"""Tiny random-init models and a character tokenizer, built offline (tests and the first tour).

``tiny_model("llama", n_kv_heads=1)`` gives a 2-layer model of the family with a ~100-token
character vocabulary; ``char_tokenizer()`` tokenises one character per token, and
``tiny_tokenizer(family)`` gives it in the form that a saved folder of that family reads back.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE, WordLevel
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BloomConfig,
    CohereConfig,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    OlmoConfig,
    OPTConfig,
    Phi3Config,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    StableLmConfig,
    Starcoder2Config,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIALS = ["<bos>", "<pad>", "<unk>"]


def char_tokenizer(byte_level: bool = False) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus <bos>, <pad> and <unk> (ids 0, 1, 2).

    ``byte_level``: the same ids as a byte-level BPE without merges (a space is stored as ``Ġ``, as
    in GPT-2). transformers loads the tokenizer of a ``qwen2`` folder as ``Qwen2Tokenizer``
    whatever class was saved, and that class rebuilds a byte-level pre-tokenizer, under which the
    plain form would lose its spaces; the byte-level form reads back unchanged."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    if byte_level:
        to_unicode = bytes_to_unicode()
        vocab = {t: i for i, t in enumerate(SPECIALS + [to_unicode[ord(c)] for c in chars])}
        tok = Tokenizer(BPE(vocab, [], unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    else:
        vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
        tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        tok.decoder = decoders.Fuse()
    # byte-level: name an eos, or Qwen2Tokenizer adds its own "<|endoftext|>" beyond the vocab
    extra = {"eos_token": "<bos>"} if byte_level else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>",
                                   unk_token="<unk>", **extra)


_BYTE_LEVEL_FAMILIES = ("qwen2",)  # AutoTokenizer forces their own byte-level tokenizer class


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The character tokenizer in the form that a saved folder of ``family`` reads back as is."""
    return char_tokenizer(byte_level=family in _BYTE_LEVEL_FAMILIES)


# Llama-like families: same constructor arguments
_LLAMA_LIKE = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
               "qwen3": Qwen3Config, "olmo": OlmoConfig, "starcoder2": Starcoder2Config,
               "gemma": GemmaConfig, "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig,
               "cohere": CohereConfig, "granite": GraniteConfig, "olmo2": Olmo2Config,
               "mixtral": MixtralConfig, "qwen2_moe": Qwen2MoeConfig, "qwen3_moe": Qwen3MoeConfig,
               "phi3": Phi3Config, "stablelm": StableLmConfig}
# their configs default to a head_dim of 128 or 256
_EXPLICIT_HEAD_DIM = ("qwen3", "gemma", "gemma2", "gemma3", "qwen3_moe")
_GEMMA = ("gemma", "gemma2", "gemma3")  # RMSNorms scale by 1 + weight (stored near 0)
FAMILIES = ("gpt2", *_LLAMA_LIKE, "gpt_neox", "phi", "opt", "gptj", "bloom", "falcon")


def tiny_config(family: str, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
                n_kv_heads: int | None = None, vocab: int = 103, **extra):
    """A small config of ``family`` (one of ``FAMILIES``); ``extra`` goes to the config class
    (e.g. ``head_dim``, ``attention_bias``, ``sliding_window``, ``clip_qkv``)."""
    if family == "gpt2":
        return GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, vocab_size=vocab,
                          n_positions=128, bos_token_id=0, eos_token_id=0, **extra)
    if family in _LLAMA_LIKE:
        if family in _EXPLICIT_HEAD_DIM:
            extra.setdefault("head_dim", d_model // n_heads)
        if family == "mixtral":
            extra.setdefault("num_local_experts", 4)
        if family in ("qwen2_moe", "qwen3_moe"):
            extra.setdefault("num_experts", 4)
            extra.setdefault("moe_intermediate_size", d_model)
            extra.setdefault("shared_expert_intermediate_size", d_model)
        if family in ("gemma2", "gemma3"):
            extra.setdefault("query_pre_attn_scalar", extra["head_dim"])
        return _LLAMA_LIKE[family](
            num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads or n_heads, intermediate_size=2 * d_model,
            vocab_size=vocab, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
            pad_token_id=1, **extra)
    if family == "gpt_neox":
        extra.setdefault("rotary_pct", 0.5)
        return GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                             num_attention_heads=n_heads, intermediate_size=4 * d_model,
                             vocab_size=vocab, max_position_embeddings=128, bos_token_id=0,
                             eos_token_id=0, **extra)
    if family == "gptj":
        extra.setdefault("rotary_dim", d_model // n_heads // 2)
        return GPTJConfig(n_layer=n_layers, n_embd=d_model, n_head=n_heads, vocab_size=vocab,
                          n_positions=128, bos_token_id=0, eos_token_id=0, **extra)
    if family == "opt":
        return OPTConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                         ffn_dim=4 * d_model, vocab_size=vocab, max_position_embeddings=128,
                         word_embed_proj_dim=d_model, bos_token_id=0, eos_token_id=0, pad_token_id=1,
                         **extra)
    if family == "bloom":
        return BloomConfig(n_layer=n_layers, hidden_size=d_model, n_head=n_heads, vocab_size=vocab,
                           bos_token_id=0, eos_token_id=0, pad_token_id=1, **extra)
    if family == "bert":  # an encoder: build it with AutoModel.from_config
        return BertConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                          intermediate_size=4 * d_model, vocab_size=vocab, max_position_embeddings=128,
                          pad_token_id=1, **extra)
    if family == "falcon":  # ``multi_query``, ``new_decoder_architecture``, ``alibi``... in extra
        return FalconConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                            num_attention_heads=n_heads, num_kv_heads=n_kv_heads or n_heads,
                            vocab_size=vocab, max_position_embeddings=128, bos_token_id=0,
                            eos_token_id=0, pad_token_id=1, **extra)
    if family == "phi":
        extra.setdefault("partial_rotary_factor", 0.5)
        return PhiConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                         num_key_value_heads=n_kv_heads or n_heads, intermediate_size=4 * d_model,
                         vocab_size=vocab, max_position_embeddings=128, bos_token_id=0,
                         eos_token_id=0, **extra)
    raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}.")


def tiny_model(family: str, seed: int = 0, **config_kwargs):
    """A random-init causal LM of ``family`` in eval mode (float32, CPU). Norms inside attention
    (Qwen3's per-head ``q_norm``/``k_norm``) get random weights around 1: HF initialises them to
    ones, which would hide a hook taken before them instead of after."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **config_kwargs))
    offset = 1.0 if family in _GEMMA else 0.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight", "q_layernorm.weight", "k_layernorm.weight")):
                param.copy_(1 - offset + 0.5 * torch.randn_like(param))
            elif offset and name.endswith("norm.weight"):  # all Gemma norms: 1 + w, w near 0
                param.copy_(0.3 * torch.randn_like(param))
    return model.eval()
