"""Generation with hooks: token by token on the wrapped HF model, with its key-value cache.

:func:`generate_stream` yields one :class:`GenerationStep` per new token (for every prompt of the
batch at once); :func:`generate` runs it to the end and returns a :class:`Generation`. Both are
also methods of :class:`~workbench.bridge.Bridge`.

**What hooks see.** ``fwd_hooks`` are attached for the whole generation and fire on every
forward pass. The first pass runs the prompt: ``[batch, prompt_pos, ...]``. With
``use_past_kv_cache=True`` (the default) each later pass runs only the newest token, so
position-shaped hooks see position dimension 1: ``hook_resid_*`` ``[batch, 1, d_model]``,
``hook_q`` / ``hook_k`` / ``hook_v`` / ``hook_z`` ``[batch, 1, heads, d_head]`` (K/V of the new
token only; a write is stored in the cache), ``hook_attn_scores`` / ``hook_pattern``
``[batch, n_heads, 1, pos_so_far]``. For the **full-sequence view** either generate with
``use_past_kv_cache=False`` (every pass re-runs the whole sequence, so hooks see
``[batch, pos_so_far, ...]``; slower) or ask for ``return_cache=True``: one more pass over the
final sequence, under the same hooks, caches every activation ``[batch, pos, ...]``.

**Decoding** follows HF's ``generate``: greedy (``do_sample=False``) takes the argmax of the
float32 logits; sampling divides by ``temperature``, keeps the ``top_k`` largest, then the
smallest set whose probability reaches ``top_p``, and draws with ``torch.multinomial``. A prompt
stops at the end-of-sequence token (``stop_at_eos``) or once its new text contains one of
``stop`` (the token completing it is kept); finished prompts get the pad token while the others
go on. Batches are left-padded, with position ids counted from each prompt's first token, so each
prompt gets the tokens it gets alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .attention import kv_write_back
from .errors import InputError
from .hf_compat import cache_kwarg, output_cache
from .results import need_logits
from .tokens import decode_each, positions_from_mask

if TYPE_CHECKING:
    from .bridge import Bridge
    from .cache import ActivationCache
    from .registry import HookSpec


@dataclass(frozen=True)
class GenerationStep:
    """One new token per prompt. ``step`` counts from 0; ``tokens [batch]`` the new ids (the
    pad id for a prompt that had finished); ``strs`` each decoded alone; ``finished [batch]``
    (bool) whether that prompt is done after this token; ``logits [batch, d_vocab]`` (float32)
    the scores the token was chosen from, after the hooks."""

    step: int
    tokens: torch.Tensor
    strs: list[str]
    finished: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class Generation:
    """A finished generation.

    - ``tokens [batch, prompt_pos + n_new]``: the (left-padded) prompts and the new tokens;
      ``attention_mask`` of the same shape (0 on padding and on tokens after a prompt finished).
    - ``prompt_pos``: where the new tokens start; ``new_tokens [batch, n_new]``.
    - ``text``: each prompt's new text; ``finish_reason``: "eos", "stop" or "length" per prompt.
    - ``cache``: with ``return_cache=True``, the activations of the whole final sequence
      (``[batch, prompt_pos + n_new, ...]``), else None."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    prompt_pos: int
    text: list[str]
    finish_reason: list[str]
    cache: ActivationCache | None = None

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_pos:]


@dataclass(frozen=True)
class _Options:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float
    stop: tuple[str, ...]
    stop_at_eos: bool
    use_past_kv_cache: bool


def _check_options(max_new_tokens: Any, do_sample: Any, temperature: Any, top_k: Any, top_p: Any,
                   stop: Any, stop_at_eos: Any, use_past_kv_cache: Any) -> _Options:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}.")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise InputError(f"temperature: expected a number > 0, got {temperature!r}; for greedy "
                         "decoding pass do_sample=False.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k: expected None or an int >= 1, got {top_k!r}.")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise InputError(f"top_p: expected a number in (0, 1], got {top_p!r}.")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if not all(isinstance(s, str) and s for s in stops):
        raise InputError(f"stop: expected a non-empty string or a list of them, got {stop!r}.")
    return _Options(max_new_tokens, bool(do_sample), float(temperature), top_k, float(top_p), stops,
                    bool(stop_at_eos), bool(use_past_kv_cache))


def _eos_ids(bridge: Bridge) -> list[int]:
    ids = getattr(getattr(bridge.model, "generation_config", None), "eos_token_id", None)
    if ids is None and bridge.tokenizer is not None:
        ids = bridge.tokenizer.eos_token_id
    return [] if ids is None else [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def _pad_id(bridge: Bridge, eos: list[int]) -> int:
    pad = getattr(bridge.tokenizer, "pad_token_id", None) if bridge.tokenizer is not None else None
    return int(pad) if pad is not None else (eos[0] if eos else 0)


def _cache_writes(on: bool):
    return kv_write_back() if on else contextlib.nullcontext()


def _decode(bridge: Bridge, ids: list[int]) -> str:
    if bridge.tokenizer is None:
        return ""
    return bridge.tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def next_tokens(logits: torch.Tensor, opts: _Options, generator: torch.Generator | None) -> torch.Tensor:
    """Choose ``[batch]`` ids from float32 ``logits [batch, d_vocab]`` (see the module doc)."""
    if not opts.do_sample:
        return logits.argmax(-1)
    scores = logits / opts.temperature
    if opts.top_k is not None and opts.top_k < scores.shape[-1]:
        kth = torch.topk(scores, opts.top_k).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if opts.top_p < 1.0:
        ascending, order = torch.sort(scores, descending=False)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - opts.top_p
        drop[..., -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = scores.softmax(-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def generate_stream(bridge: Bridge, input: Any, max_new_tokens: int = 20, *, do_sample: bool = False,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                    stop: str | Sequence[str] | None = None, stop_at_eos: bool = True,
                    use_past_kv_cache: bool = True, fwd_hooks: Sequence[HookSpec] = (),
                    prepend_bos: bool | None = None, seed: int | None = None) -> Iterator[GenerationStep]:
    """Yield a :class:`GenerationStep` per new token (see the module doc for what hooks see).
    ``input``: a string, a list of strings (left-padded) or token ids ``[batch, pos]``. ``seed``
    makes sampling reproducible without touching torch's global generator. Hooks are attached
    only during each forward pass, so code between steps runs without them. Bad arguments raise
    here, before the first step."""
    run = _setup(bridge, input, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                 top_p=top_p, stop=stop, stop_at_eos=stop_at_eos, use_past_kv_cache=use_past_kv_cache,
                 fwd_hooks=fwd_hooks, prepend_bos=prepend_bos, seed=seed)
    return _loop(bridge, run)


def generate(bridge: Bridge, input: Any, max_new_tokens: int = 20, *, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
             stop: str | Sequence[str] | None = None, stop_at_eos: bool = True,
             use_past_kv_cache: bool = True, fwd_hooks: Sequence[HookSpec] = (),
             return_cache: bool = False, names_filter: Any = None, prepend_bos: bool | None = None,
             seed: int | None = None) -> Generation:
    """Generate up to ``max_new_tokens`` per prompt and return a :class:`Generation` (arguments as
    :func:`generate_stream`; ``return_cache`` / ``names_filter``: cache the final sequence's
    activations, under the same hooks)."""
    run = _setup(bridge, input, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                 top_p=top_p, stop=stop, stop_at_eos=stop_at_eos, use_past_kv_cache=use_past_kv_cache,
                 fwd_hooks=fwd_hooks, prepend_bos=prepend_bos, seed=seed)
    for _ in _loop(bridge, run):
        pass
    tokens, mask, prompt_pos = run["tokens"], run["mask"], run["prompt_pos"]
    new = tokens[:, prompt_pos:]
    text = [_decode(bridge, [int(t) for t, m in zip(row, row_mask, strict=True) if m])
            for row, row_mask in zip(new, mask[:, prompt_pos:], strict=True)]
    cache = None
    if return_cache:
        with bridge.hooks(fwd_hooks=fwd_hooks):
            _, cache = bridge.run_with_cache(tokens, names_filter=names_filter, attention_mask=mask)
    return Generation(tokens=tokens, attention_mask=mask, prompt_pos=prompt_pos, text=text,
                      finish_reason=run["reasons"], cache=cache)


def _setup(bridge: Bridge, input: Any, max_new_tokens: int, **options: Any) -> dict[str, Any]:
    """Check the arguments and encode the prompts: the state :func:`_loop` advances."""
    need_logits(bridge, "Generation")
    fwd_hooks, prepend_bos, seed = options.pop("fwd_hooks"), options.pop("prepend_bos"), options.pop("seed")
    opts = _check_options(max_new_tokens, **options)
    if opts.stop and bridge.tokenizer is None:
        raise InputError("stop strings are matched on decoded text: this bridge has no tokenizer. "
                         "Pass stop=None, or load the model with its tokenizer.")
    with bridge.hooks(fwd_hooks=fwd_hooks):  # bad hook specs raise here, not at the first step
        pass
    enc = bridge._encode_input(input, None, prepend_bos, "left")
    batch, prompt_pos = enc.tokens.shape
    n_ctx = bridge.cfg.n_ctx
    if n_ctx and prompt_pos + opts.max_new_tokens > n_ctx:
        raise InputError(f"The prompt ({prompt_pos} tokens) plus max_new_tokens={opts.max_new_tokens} "
                         f"exceed the model's context of {n_ctx} positions; ask for at most "
                         f"{max(n_ctx - prompt_pos, 0)} new tokens, or shorten the prompt.")
    eos = _eos_ids(bridge)
    generator = torch.Generator(device=enc.tokens.device).manual_seed(seed) if seed is not None else None
    return {"opts": opts, "hooks": tuple(fwd_hooks), "tokens": enc.tokens, "mask": enc.attention_mask.long(),
            "prompt_pos": prompt_pos, "reasons": ["length"] * batch, "eos": eos if opts.stop_at_eos else [],
            "pad": _pad_id(bridge, eos), "generator": generator}


def _loop(bridge: Bridge, run: dict[str, Any]) -> Iterator[GenerationStep]:
    """Advance ``run`` one token per step (``run["tokens"]`` / ``["mask"]`` / ``["reasons"]``
    are kept current), yielding each step."""
    opts, tokens, mask, reasons = run["opts"], run["tokens"], run["mask"], run["reasons"]
    batch = tokens.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    # a stop string is matched on the decoded tail of the new tokens, long enough to hold the
    # longest one (each token is at least a byte), so a character split over several byte-level
    # tokens is whole there (decoding token by token would show it as replacement characters)
    tail = max((len(s.encode()) for s in opts.stop), default=0) + 8
    past = None
    for step in range(opts.max_new_tokens):
        positions = positions_from_mask(mask)
        if past is None or not opts.use_past_kv_cache:
            kwargs = {"input_ids": tokens, "attention_mask": mask, "position_ids": positions,
                      "use_cache": opts.use_past_kv_cache}
        else:
            kwargs = {"input_ids": tokens[:, -1:], "attention_mask": mask,
                      "position_ids": positions[:, -1:], "use_cache": True, cache_kwarg(bridge.model): past}
        # hooks and no-grad only around the pass: the caller's code between steps runs as usual
        with torch.no_grad(), bridge.hooks(fwd_hooks=run["hooks"]), _cache_writes(opts.use_past_kv_cache):
            out, _ = bridge._run_model(kwargs, None)
        past = output_cache(out) if opts.use_past_kv_cache else None
        logits = out.logits[:, -1, :].float()
        new = next_tokens(logits, opts, run["generator"]).to(tokens.device)  # (a last layer elsewhere)
        new = torch.where(done, torch.full_like(new, run["pad"]), new)
        live = ~done
        strs = decode_each(bridge.tokenizer, new.tolist()) if bridge.tokenizer is not None else [""] * batch
        for i in range(batch):
            if not live[i]:
                continue
            new_ids[i].append(int(new[i]))
            if new_ids[i][-1] in run["eos"]:
                done[i], reasons[i] = True, "eos"
            elif opts.stop and any(s in _decode(bridge, new_ids[i][-tail:]) for s in opts.stop):
                done[i], reasons[i] = True, "stop"
        tokens = torch.cat([tokens, new[:, None]], dim=1)
        mask = torch.cat([mask, live.long()[:, None]], dim=1)
        run.update(tokens=tokens, mask=mask)
        yield GenerationStep(step=step, tokens=new, strs=strs, finished=done.clone(), logits=logits)
        if bool(done.all()):
            break
