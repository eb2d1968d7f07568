"""Tokenising: strings to token tensors with a correct attention mask, and back.

Special tokens are never left to the tokenizer's habits: text is encoded with
``add_special_tokens=False`` and the BOS token is prepended here when ``prepend_bos`` is true
(the TransformerLens default: many heads use position 0 as a resting place). Batches of prompts
of different lengths are padded on ``padding_side`` and come with a ``[batch, pos]`` mask
(1 = real token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError, TokenizerError


@dataclass(frozen=True)
class Encoded:
    """Token ids ``[batch, pos]`` (long) and the attention mask ``[batch, pos]`` (1 = real)."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def padded(self) -> bool:
        return not bool(self.attention_mask.all())


def need_tokenizer(tokenizer: Any, what: str) -> Any:
    if tokenizer is None:
        raise TokenizerError(
            f"{what} needs a tokenizer, and this bridge has none. Pass token ids (a [batch, pos] "
            "integer tensor), or build the bridge with Bridge.from_hf(model, tokenizer)."
        )
    return tokenizer


def bos_id(tokenizer: Any) -> int | None:
    """The id prepended as BOS: the tokenizer's BOS token, else its EOS token (GPT-2 style)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return None


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def encode(tokenizer: Any, texts: Sequence[str], *, prepend_bos: bool | None,
           padding_side: str | None, special_tokens: bool = False) -> Encoded:
    """Tokenise ``texts`` into an :class:`Encoded` batch (shapes ``[len(texts), max_len]``).
    ``special_tokens``: the tokenizer adds its own (an encoder's ``[CLS] ... [SEP]``), and no BOS
    is prepended."""
    need_tokenizer(tokenizer, "Tokenising text")
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise InputError("Got an empty list of prompts; expected at least one string.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"Prompt {i} is a {type(t).__name__} ({t!r:.40}); expected str. Pass token "
                             "ids as an integer tensor instead: torch.tensor([ids]).")
        if t == "":
            raise InputError(
                f"Prompt {i} is the empty string; expected some text. To run on the BOS token "
                "alone, pass a token tensor."
            )
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    if side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {side!r}.")
    bos = None if special_tokens else bos_id(tokenizer)
    if special_tokens:
        prepend_bos = False
    elif prepend_bos is None:
        prepend_bos = bos is not None
    elif prepend_bos and bos is None:
        raise TokenizerError("prepend_bos=True, but the tokenizer has no BOS (or EOS) token.")
    ids = tokenizer(list(texts), add_special_tokens=special_tokens)["input_ids"]
    rows = [([bos] if prepend_bos else []) + list(r) for r in ids]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            raise InputError(f"Prompt {i} ({texts[i]!r}) produced no tokens.")
        span = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        tokens[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return Encoded(tokens, mask)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[batch, pos]``: 0, 1, 2... over real tokens, counting from each prompt's
    first real token (so left padding does not shift positions); pads get position 0."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def decode_each(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (a ``[pos]`` list of strings, one per token)."""
    need_tokenizer(tokenizer, "Decoding tokens")
    return [tokenizer.decode([int(i)], clean_up_tokenization_spaces=False) for i in ids]
