"""Small helpers shared by the analyses: input encoding, token arguments, data frames."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .tokens import Encoded, decode_each

if TYPE_CHECKING:
    from .bridge import Bridge


def encode_input(bridge: Bridge, input: Any) -> Encoded:
    """Tokens ``[batch, pos]`` and mask of a string, list of strings or token tensor."""
    return bridge._encode_input(input, None, None, None)


def need_logits(bridge: Bridge, what: str) -> None:
    """Raise a clear error when ``bridge`` has no logits (an encoder without an LM head)."""
    if bridge.adapter.unembed is None:
        raise InputError(
            f"{what} reads the model's logits, and this {bridge.cfg.model_type} bridge wraps an "
            "encoder without a language-model head, so it has none. On encoders, use "
            "attention_patterns (the attention panel), composition_scores or run_with_cache.")


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """``[batch]`` index of each row's last real token (left or right padding)."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), pos, -1).max(dim=1).values


def check_layers(bridge, layers) -> list[int]:
    """Layer indices (negative count from the end), or an InputError with the valid range."""
    n = bridge.cfg.n_layers
    if layers is None:
        return list(range(n))
    out = []
    for L in [layers] if isinstance(layers, int) else list(layers):
        if not isinstance(L, int) or not -n <= L < n:
            raise InputError(f"Layer {L!r} does not exist: this model has layers 0..{n - 1} "
                             f"(or -{n}..-1 from the end).")
        out.append(L % n)
    if not out:
        raise InputError("layers is empty; give at least one layer (or None for all).")
    return out


def token_ids(bridge: Bridge, tokens: Any, batch: int, what: str) -> torch.Tensor:
    """``[batch]`` token ids from an int, a one-token string, or a sequence of either (one per
    prompt)."""
    if isinstance(tokens, (int, str)):
        tokens = [tokens] * batch
    if isinstance(tokens, torch.Tensor):
        ids = tokens.flatten().tolist()
    else:
        ids = [bridge.to_single_token(t) if isinstance(t, str) else int(t) for t in tokens]
    if len(ids) == 1:
        ids = ids * batch
    if len(ids) != batch:
        raise InputError(f"{what}: expected one token or one per prompt ({batch}); got {len(ids)}. "
                         "Pass a single token, or a list as long as the batch.")
    bad = [i for i in ids if not 0 <= i < bridge.cfg.d_vocab]
    if bad:
        raise InputError(f"{what}: token ids must be in [0, {bridge.cfg.d_vocab}); got {bad[:5]}.")
    return torch.tensor(ids, device=bridge.cfg.device)


def check_memory_budget(budget: Any, none_means: str) -> None:
    """An InputError unless ``budget`` is None or a positive number of bytes."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not budget > 0):
        raise InputError(f"memory_budget is a positive number of bytes (e.g. 2**30 for 1 GiB); got "
                         f"{budget!r}. Leave it None for {none_means}.")


def non_finite_error(bridge: Bridge, what: str, site: str | None = None) -> InputError:
    """The error for an analysis whose numbers came out NaN or inf: it names the hook points with
    functions attached (the usual cause) and ``site``, where the residual stream first went bad."""
    hooks = sorted({h.name for h in bridge.attached_hooks()})
    where = f" (the residual stream is non-finite from {site!r} on)" if site else ""
    cause = (f"Hook functions are attached at {', '.join(hooks)}: one of them returned NaN or inf. "
             "Make it return finite values, or remove it (bridge.reset_hooks())." if hooks else
             "No hook function is attached: check the model's weights, and its dtype (float16 "
             "overflows past 65504; load it in float32 or bfloat16).")
    return InputError(f"{what} came out NaN or inf{where}. {cause}")


def decode(bridge: Bridge, ids: list[int]) -> list[str]:
    """One string per token id (the id itself, as a string, when the bridge has no tokenizer)."""
    if bridge.tokenizer is None:
        return [str(i) for i in ids]
    return decode_each(bridge.tokenizer, ids)


def dataframe(rows: list[dict]):
    """A pandas DataFrame of ``rows`` (pandas is imported only here)."""
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas is a dependency
        raise ImportError("to_dataframe() needs pandas: pip install pandas") from err
    return pd.DataFrame(rows)
