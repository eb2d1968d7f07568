"""Tiny random-init models and a character tokenizer, built offline (tests and the first tour).

``tiny_model("llama", n_kv_heads=1)`` gives a 2-layer model of the family with a ~100-token
character vocabulary; ``char_tokenizer()`` tokenises one character per token.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<bos>", "<pad>", "<unk>"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus <bos>, <pad> and <unk> (ids 0, 1, 2)."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_config(family: str, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
                n_kv_heads: int | None = None, vocab: int = 103, **extra):
    """A small config of ``family`` ("gpt2", "llama", "mistral", "gpt_neox")."""
    if family == "gpt2":
        return GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, vocab_size=vocab,
                          n_positions=128, bos_token_id=0, eos_token_id=0, **extra)
    if family == "llama":
        return LlamaConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                           num_attention_heads=n_heads, num_key_value_heads=n_kv_heads or n_heads,
                           intermediate_size=2 * d_model, vocab_size=vocab,
                           max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                           pad_token_id=1, **extra)
    if family == "mistral":
        return MistralConfig(num_hidden_layers=n_layers, hidden_size=d_model, num_attention_heads=n_heads,
                    num_key_value_heads=n_kv_heads or n_heads, intermediate_size=2 * d_model,
                    vocab_size=vocab, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                    pad_token_id=1, **extra)
    if family == "gpt_neox":
        extra.setdefault("rotary_pct", 0.5)
        return GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d_model,
                             num_attention_heads=n_heads, intermediate_size=4 * d_model,
                             vocab_size=vocab, max_position_embeddings=128, bos_token_id=0,
                             eos_token_id=0, **extra)
    raise ValueError(f"family must be one of gpt2, llama, mistral, gpt_neox; got {family!r}.")


def tiny_model(family: str, seed: int = 0, **config_kwargs):
    """A random-init causal LM of ``family`` in eval mode (float32, CPU)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **config_kwargs))
    return model.eval()
