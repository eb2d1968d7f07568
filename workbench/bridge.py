"""``Bridge``: a HuggingFace causal LM behind TransformerLens-named hook points.

The HF module tree runs as it is; the bridge only adds hook points (see ``taps.py``) and routes
attention through its own registered function (see ``attention.py``). Hook bookkeeping lives in
``registry.py``, tokenising in ``tokens.py``, caches in ``cache.py``, loading in ``loading.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from . import memory
from .adapters import (
    Adapter,
    adapter_for,
    execution_device,
    for_model,
    known_adapter,
    live_param,
    supported_model_types,
)
from .attention import ensure_registered
from .cache import ActivationCache, CacheContext
from .config import BridgeConfig
from .errors import InputError, TokenizerError, UnsupportedModelError
from .hook_points import AttachedHook, HookFn
from .registry import HookRegistry, HookSpec, NameFilter
from .results import check_memory_budget
from .taps import RunState, build_hook_points, get_module
from .tokens import Encoded, decode_each, encode, need_tokenizer, positions_from_mask
from .weights import READERS


class ForwardOutput(NamedTuple):
    """``return_type="both"``: logits ``[batch, pos, d_vocab]`` and the mean loss (scalar)."""

    logits: torch.Tensor
    loss: torch.Tensor


class _Stop(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class Bridge:
    """A wrapped HF model. Build it with :meth:`from_pretrained` or :meth:`from_hf`."""

    def __init__(self, model: nn.Module, tokenizer: Any, adapter: Adapter) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        param = next(model.parameters())
        self.cfg = BridgeConfig(
            model_type=model.config.model_type, positional_embedding_type=adapter.positional,
            normalization_type=adapter.normalization, dtype=param.dtype,
            device=execution_device(get_module(model, adapter.embed)),
            **adapter.read_config(model.config),
        )
        self._state = RunState()
        self.processing: tuple[str, ...] = ()  # weight processing applied (process_weights)
        points, self._sites = self._build_hook_points()
        self._hooks = HookRegistry(points, self.cfg)
        self._cache_context = self._make_cache_context()

    def _build_hook_points(self):
        return build_hook_points(self.model, self.adapter, self.cfg, self._state)

    def _make_cache_context(self) -> CacheContext:
        """The weights the cache's decompositions read (rebuilt after weight processing)."""
        model, adapter = self.model, self.adapter
        blocks = get_module(model, adapter.blocks)
        return CacheContext(
            normalization_type=adapter.normalization, n_heads=self.cfg.n_heads,
            d_head=self.cfg.d_head, W_U=live_param(get_module(model, adapter.unembed)).T,
            o_projs=tuple(get_module(b, adapter.attn_out_proj) for b in blocks),
            o_layout=adapter.linear_layout,
            ln_final=get_module(model, adapter.ln_final), norm_weight_offset=adapter.norm_weight_offset,
            attn_post_norms=(() if adapter.attn_post_norm is None
                             else tuple(get_module(b, adapter.attn_post_norm) for b in blocks)),
            residual_multiplier=self.cfg.residual_multiplier,
            pre_norms=adapter.ln1 is not None,
        )

    def process_weights(self, fold_ln: bool = True, center_writing_weights: bool = True,
                        center_unembed: bool = True, fold_value_biases: bool = True) -> Bridge:
        """Rewrite the HF model's weights in place so analyses read more simply, as
        TransformerLens's processed models do (see :mod:`workbench.processing`): logits are
        unchanged (``center_unembed`` shifts each position's logits by a constant, which softmax
        ignores). Returns the bridge; ``bridge.processing`` lists what was applied."""
        from .processing import process_weights

        done = process_weights(self, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                               center_unembed=center_unembed, fold_value_biases=fold_value_biases)
        self.processing = tuple(dict.fromkeys((*self.processing, *done)))
        self._cache_context = self._make_cache_context()
        return self

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer: Any = None) -> Bridge:
        """Wrap an already-loaded HF causal LM. Its attention implementation is switched to the
        bridge's (``"workbench"``), which equals eager when hooks read attention internals and
        runs SDPA otherwise."""
        config = getattr(model, "config", None)
        if config is None:
            raise UnsupportedModelError(
                f"Expected a transformers PreTrainedModel; got {type(model).__name__}."
            )
        known = known_adapter(config.model_type)
        if known is None:  # the generic path: discovered, then checked against the model
            return cls._discovered(model, tokenizer)
        adapter = for_model(known, config)
        if adapter.encoder:  # BERT-style: its own bridge (see workbench.encoder)
            from .encoder import EncoderBridge

            return EncoderBridge.wrap(model, tokenizer, adapter)
        try:
            get_module(model, adapter.blocks)
            get_module(model, adapter.unembed)
        except AttributeError as err:
            raise UnsupportedModelError(
                f"Expected a causal LM with modules {adapter.blocks!r} and {adapter.unembed!r} "
                f"(e.g. AutoModelForCausalLM); got {type(model).__name__}. Load it with "
                "AutoModelForCausalLM."
            ) from err
        ensure_registered()
        # a family outside the attention interface runs its own path, with the hooked one installed
        model.set_attn_implementation(adapter.attn_implementation)
        return cls(model, tokenizer, adapter)

    @classmethod
    def _discovered(cls, model: nn.Module, tokenizer: Any) -> Bridge:
        """A family without an adapter: discover its structure (see adapters.discover), wrap it,
        check the bridge against the model on a probe prompt, and warn that it is unverified."""
        from .adapters.discover import discover, verify

        if not hasattr(model, "get_output_embeddings") or not hasattr(model, "base_model"):
            adapter_for(model.config.model_type)  # not a transformers LM: the usual error
        try:
            adapter = discover(model)
        except UnsupportedModelError as err:
            err.add_note(f"Model types with a tested adapter: {', '.join(supported_model_types())}.")
            raise
        ensure_registered()
        model.set_attn_implementation(adapter.attn_implementation)
        bridge = cls(model, tokenizer, adapter)
        verify(bridge)
        return bridge

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, device_map: Any = None,
                        max_memory: dict | None = None, offload_folder: str | None = None,
                        revision: str | None = None, trust_remote_code: bool = False,
                        allow_pickle: bool = False, fold_ln: bool = False,
                        center_writing_weights: bool = False, center_unembed: bool = False,
                        fold_value_biases: bool = False) -> Bridge:
        """Load a hub name or a local ``save_pretrained`` folder (same code path) and wrap it.
        ``"workbench-demo"`` is the embedded demo model (offline, see docs/demo_model.md).
        ``device_map`` / ``max_memory`` / ``offload_folder`` spread the model with accelerate
        (e.g. ``device_map="auto"``; layers offloaded to the CPU or disk load for each forward,
        and the weight readers load them the same way). Weights load from safetensors;
        pickle-based files (``pytorch_model.bin``) only with ``allow_pickle=True``, since
        unpickling can run code. The four processing flags (off by default) are
        :meth:`process_weights`'s."""
        from .loading import load

        model, tokenizer = load(name_or_path, device=device, dtype=dtype, device_map=device_map,
                                max_memory=max_memory, offload_folder=offload_folder,
                                revision=revision, trust_remote_code=trust_remote_code,
                                allow_pickle=allow_pickle)
        bridge = cls.from_hf(model, tokenizer)
        flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                     center_unembed=center_unembed, fold_value_biases=fold_value_biases)
        return bridge.process_weights(**flags) if any(flags.values()) else bridge

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Bridge({c.model_type}: {c.n_layers} layers, {c.n_heads} heads "
                f"({c.n_kv_heads} kv), d_model {c.d_model}, {len(self._hooks.points)} hook points)")

    # -- hook points -----------------------------------------------------------------------
    @property
    def use_attn_result(self) -> bool:
        """Include ``attn.hook_result`` ([batch, pos, n_heads, d_model]) in filters that do not
        name it (off by default: it costs n_heads x the memory of hook_attn_out)."""
        return self._hooks.use_attn_result

    @use_attn_result.setter
    def use_attn_result(self, value: bool) -> None:
        self._hooks.use_attn_result = bool(value)

    @property
    def ungroup_grouped_query_attention(self) -> bool:
        """Show ``hook_k``/``hook_v`` per query head ([.., n_heads, d_head]) on GQA models."""
        return self._sites[0].ungroup_kv if self._sites else False

    @ungroup_grouped_query_attention.setter
    def ungroup_grouped_query_attention(self, value: bool) -> None:
        for site in self._sites:
            site.ungroup_kv = bool(value)

    def hook_names(self) -> list[str]:
        """Every hook point of this model, in the order the forward pass meets them."""
        return list(self._hooks.points)

    def hook_info(self, name: str, seq_len: int = 1):
        """Shape template and memory of one hook point (see :class:`HookInfo`)."""
        from .hook_info import hook_info

        self._hooks.point(name)
        return hook_info(name, self.cfg, self.ungroup_grouped_query_attention, seq_len)

    def add_hook(self, name_or_filter: str | Callable[[str], bool], fn: HookFn, dir: str = "fwd",
                 is_permanent: bool = False) -> list[AttachedHook]:
        """Attach ``fn(tensor, hook)`` to a name or to every name a predicate accepts; returns
        the attached entries (pass them to :meth:`remove_hooks` to detach exactly those)."""
        return self._hooks.add(name_or_filter, fn, dir, is_permanent)

    def remove_hooks(self, entries: Sequence[AttachedHook]) -> None:
        self._hooks.remove(entries)

    def reset_hooks(self, including_permanent: bool = False) -> None:
        """Detach every non-permanent hook (and the permanent ones if asked)."""
        self._hooks.reset(including_permanent)

    def attached_hooks(self) -> list[AttachedHook]:
        """What is attached right now (name, direction, fn, permanent)."""
        return self._hooks.attached()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[HookSpec] = (),
              bwd_hooks: Sequence[HookSpec] = ()) -> Iterator[Bridge]:
        """``with bridge.hooks(fwd_hooks=[(name, fn)]):`` attaches for the block only."""
        with self._hooks.temporary(fwd_hooks, bwd_hooks):
            yield self

    # -- running ---------------------------------------------------------------------------
    def __call__(self, input, return_type: str | None = "logits", *,
                 attention_mask: torch.Tensor | None = None, stop_at_layer: int | None = None,
                 prepend_bos: bool | None = None, padding_side: str | None = None,
                 loss_per_token: bool = False):
        """Run the model. ``input``: a string, a list of strings, or token ids ``[batch, pos]``
        (or ``[pos]``). Returns logits ``[batch, pos, d_vocab]`` ("logits"), the mean next-token
        loss ("loss"; ``[batch, pos-1]`` with ``loss_per_token``), a ``ForwardOutput`` ("both")
        or None. With ``stop_at_layer=L`` returns the residual stream entering block L
        ``[batch, pos, d_model]`` instead (L == n_layers: before the final norm)."""
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(
                f"return_type must be 'logits', 'loss', 'both' or None; got {return_type!r}."
            )
        enc = self._encode_input(input, attention_mask, prepend_bos, padding_side)
        kwargs: dict[str, Any] = {"input_ids": enc.tokens, "use_cache": False}
        if enc.padded:
            kwargs["attention_mask"] = enc.attention_mask
            kwargs["position_ids"] = positions_from_mask(enc.attention_mask)
        out, stopped = self._run_model(kwargs, stop_at_layer)
        if stopped is not None:
            return stopped
        logits = out.logits
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss_fn(logits, enc.tokens, enc.attention_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else ForwardOutput(logits, loss)

    forward = __call__

    def _run_model(self, kwargs: dict, stop_at_layer: int | None):
        """Run the HF model on ``kwargs``: ``(output, None)``, or ``(None, residual)`` when
        ``stop_at_layer`` stopped it (the residual entering that block, ``[batch, pos, d_model]``)."""
        stop = self._stop_handle(stop_at_layer)
        self._state.clear()
        self._state.batch_size = kwargs["input_ids"].shape[0]
        try:
            return self.model(**kwargs), None
        except _Stop as s:
            return None, s.value
        finally:
            if stop is not None:
                stop.remove()
            self._state.clear()

    def _stop_handle(self, stop_at_layer: int | None):
        if stop_at_layer is None:
            return None
        n = self.cfg.n_layers
        if (isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int)
                or not -n <= stop_at_layer <= n):
            raise InputError(f"stop_at_layer must be an int in [-{n}, {n}]; got {stop_at_layer!r}.")
        layer = stop_at_layer if stop_at_layer >= 0 else n + stop_at_layer
        module = (get_module(self.model, self.adapter.ln_final) if layer == n
                  else get_module(self.model, self.adapter.blocks)[layer])

        def raise_stop(mod, args, kwargs):
            raise _Stop(args[0] if args else kwargs["hidden_states"])
        return module.register_forward_pre_hook(raise_stop, with_kwargs=True)

    @staticmethod
    def loss_fn(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy. logits ``[b, p, v]``, tokens ``[b, p]``; padded positions
        (mask 0) are left out. Returns a scalar, or ``[b, p-1]`` with ``per_token``."""
        if tokens.shape[1] < 2:
            raise InputError("The loss needs at least 2 tokens per prompt; got 1.")
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, tokens[:, 1:, None].to(logp.device))[..., 0]
        if attention_mask is None:
            valid = torch.ones_like(nll, dtype=torch.bool)
        else:
            m = attention_mask.to(nll.device).bool()
            valid = m[:, 1:] & m[:, :-1]
        nll = nll * valid
        return nll if per_token else nll.sum() / valid.sum().clamp_min(1)

    def run_with_hooks(self, input, fwd_hooks: Sequence[HookSpec] = (),
                       bwd_hooks: Sequence[HookSpec] = (), **forward_kwargs):
        """Run once with temporary hooks (detached afterwards, whatever happens). Backward
        hooks are attached to the activations of this run and fire when you call backward."""
        with self._hooks.temporary(fwd_hooks, bwd_hooks):
            return self(input, **forward_kwargs)

    def cache_bytes(self, input, names_filter: NameFilter = None, incl_bwd: bool = False) -> int:
        """Bytes a ``run_with_cache(input, names_filter)`` would hold, computed before running from
        each chosen hook point's shape (see :meth:`hook_info`) in the model's dtype; doubled with
        ``incl_bwd`` (one gradient per activation). ``input``: what ``run_with_cache`` takes, or
        a ``(batch, pos)`` pair."""
        if isinstance(input, tuple) and len(input) == 2 and all(isinstance(n, int) for n in input):
            batch, pos = input
        else:
            batch, pos = self._encode_input(input, None, None, None, plan=True).tokens.shape
        total = sum(self.hook_info(p.name, pos).nbytes(batch, pos)
                    for p in self._hooks.select(names_filter))
        return total * (2 if incl_bwd else 1)

    def run_with_cache(self, input, names_filter: NameFilter = None,
                       device: str | torch.device | None = None, remove_batch_dim: bool = False,
                       incl_bwd: bool = False, memory_budget: int | str | None = None,
                       pin_memory: bool = False, **forward_kwargs):
        """Run once and keep the chosen activations: returns ``(output, ActivationCache)``.
        ``device`` is where cached tensors are stored (default: where they were made; "cpu"
        moves each one there as it is made, so a long GPU run keeps little on the GPU). With
        ``incl_bwd`` the output must be a scalar (e.g. ``return_type="loss"``); its gradient
        w.r.t. every cached activation is stored as ``name + "_grad"`` (the parameters' ``.grad``
        stay untouched: nothing is differentiated w.r.t. the weights). ``memory_budget``
        (bytes): refuse before running when :meth:`cache_bytes` says the cache would exceed it;
        "auto": the memory free now where the cache goes (a GPU's free memory, the host's
        available memory for "cpu"; every device of a spread model), no check where unknown.
        ``pin_memory`` (with ``device="cpu"`` on a GPU model): cache into page-locked memory,
        copied without blocking the GPU's stream (faster to send back to a GPU later)."""
        try:
            target = torch.device(device) if device is not None else None  # a clear error for a typo
        except (RuntimeError, TypeError) as err:
            raise InputError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1', ...); got "
                             f"{device!r} ({err}).") from None
        if memory_budget is not None:
            self._check_budget(input, names_filter, incl_bwd, memory_budget,
                               forward_kwargs.get("attention_mask"), target)
        if target is not None and target.type == "meta":
            raise InputError("device='meta' would keep only the activations' shapes, not their values; "
                             "cache to 'cpu' or a GPU. For sizes alone, bridge.cache_bytes(input) "
                             "computes them without running.")
        store: dict[str, torch.Tensor] = {}

        if pin_memory and (device is None or torch.device(device).type != "cpu"
                           or not torch.cuda.is_available()):
            raise InputError("pin_memory=True caches a GPU model's activations into page-locked CPU "
                             f"memory: it needs device='cpu' and a CUDA GPU (got device={device!r}, "
                             f"CUDA {'available' if torch.cuda.is_available() else 'not available'}).")

        copied_from: set[torch.device] = set()

        def keep(tensor):  # moved as it comes, so a GPU run can cache to the CPU
            if device is None:
                return tensor.detach()
            if pin_memory and tensor.is_cuda:
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                copied_from.add(tensor.device)
                return pinned.copy_(tensor.detach(), non_blocking=True)
            return tensor.detach().to(device)

        live: list[torch.Tensor] = []  # what the gradients are taken with respect to

        def save(tensor, hook):
            store[hook.name] = keep(tensor)
            if incl_bwd and tensor.requires_grad:
                live.append(tensor)

        def save_grad(grad, hook):
            store[hook.name + "_grad"] = keep(grad)

        points = self._hooks.select(names_filter)
        if (torch.device(device) if device is not None else self.cfg.device).type == "cpu":
            memory.before_cpu_cache()  # reuse the pages of dropped caches (see memory.py)
        fwd = [(p.name, save) for p in points]
        bwd = [(p.name, save_grad) for p in points] if incl_bwd else []
        with self._hooks.temporary(fwd, bwd):
            if not incl_bwd:
                out = self(input, **forward_kwargs)
            else:
                with torch.enable_grad():
                    out = self(input, **forward_kwargs)
                    if not isinstance(out, torch.Tensor) or out.numel() != 1:
                        raise InputError(
                            "incl_bwd=True differentiates the output, which must be a scalar; "
                            "pass return_type='loss'."
                        )
                    # with respect to the activations only: no parameter's .grad is written
                    if live:
                        torch.autograd.grad(out, live, allow_unused=True)
        if pin_memory:
            for gpu in copied_from:  # the non-blocking copies have landed (every GPU of a spread model)
                torch.cuda.synchronize(gpu)
        cache = ActivationCache(_own_bytes(store), self.cfg.n_layers, context=self._cache_context)
        return out, (cache.remove_batch_dim() if remove_batch_dim else cache)

    def _cache_devices(self, device) -> list[torch.device]:
        """Where a cache lands: ``device``, or (None) every device the model computes on."""
        if device is not None:
            return [torch.device(device)]
        blocks = get_module(self.model, self.adapter.blocks)
        return sorted({self.cfg.device, *(execution_device(b) for b in blocks)}, key=str)

    def _check_budget(self, input, names_filter, incl_bwd, budget, mask, device=None) -> None:
        where = "the memory budget is"
        if budget == "auto":  # what the cache's devices have free now
            devices = self._cache_devices(device)
            budget = memory.available_on(devices)
            if budget is None:
                return  # unknown: no check
            where = f"{', '.join(map(str, devices))} {'has' if len(devices) == 1 else 'have'} free"
        check_memory_budget(budget, "no limit, or 'auto' for the free memory")
        shape = tuple(self._encode_input(input, mask, None, None, plan=True).tokens.shape)
        need = self.cache_bytes(shape, names_filter, incl_bwd)
        if need > budget:
            n = len(self._hooks.select(names_filter))
            raise InputError(
                f"This cache would hold {memory.human_bytes(need)} ({n} hook points for "
                f"{shape[0]} prompt(s) of {shape[1]} tokens{', with gradients' if incl_bwd else ''}); "
                f"{where} {memory.human_bytes(budget)}. Cache fewer hook points "
                "(names_filter=), fewer or shorter prompts, or raise memory_budget; "
                "device='cpu' keeps the cache off the GPU.")

    # -- tokens ----------------------------------------------------------------------------
    def _encode_input(self, input, attention_mask, prepend_bos, padding_side, *,
                      plan: bool = False) -> Encoded:
        """Tokens and mask on the embedding's execution device. ``plan``: only the shape is
        wanted (a model without weights, on the "meta" device, may then be asked too)."""
        if isinstance(input, (str, list, tuple)):
            if attention_mask is not None:
                raise InputError("attention_mask is built from text input; pass it only with "
                                 "token ids.")
            enc = self._encode_text(input, prepend_bos, padding_side)
        elif isinstance(input, torch.Tensor):
            enc = self._check_token_tensor(input, attention_mask)
        else:
            raise InputError(f"Input must be a string, a list of strings or a token tensor; got "
                             f"{type(input).__name__}.")
        if enc.tokens.shape[1] > self.cfg.n_ctx:
            raise InputError(
                f"The prompt is {enc.tokens.shape[1]} tokens long; this model's context is "
                f"{self.cfg.n_ctx} tokens. Shorten the prompt (or slice the tokens)."
            )
        device = execution_device(get_module(self.model, self.adapter.embed))
        if device.type == "meta":
            if not plan:
                raise InputError(
                    "This model's weights are on the meta device: it has shapes but no values, so it "
                    "cannot run. hook_names(), hook_info() and cache_bytes() work on it; to run, load "
                    "the weights (Bridge.from_pretrained, or accelerate's load_checkpoint_and_dispatch)."
                )
            return enc
        return Encoded(enc.tokens.to(device), enc.attention_mask.to(device))

    def _encode_text(self, texts, prepend_bos, padding_side) -> Encoded:
        return encode(self.tokenizer, texts, prepend_bos=prepend_bos, padding_side=padding_side)

    def _check_token_tensor(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> Encoded:
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise InputError(f"Token ids must be an integer tensor; got {tokens.dtype}. Pass "
                             "tokens.long(), or the text itself.")
        if tokens.is_meta:
            raise InputError("Token ids are on the meta device, which holds shapes but no values; "
                             "pass real ids (e.g. bridge.to_tokens(prompt)).")
        if tokens.ndim == 1:
            tokens = tokens[None]
            mask = None if mask is None else mask.reshape(1, -1)
        if tokens.ndim != 2 or tokens.numel() == 0:
            raise InputError(f"Token ids must be a non-empty [batch, pos] tensor; got shape "
                             f"{tuple(tokens.shape)}.")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            raise InputError(
                f"Token ids must lie in [0, {self.cfg.d_vocab - 1}] (the vocabulary); got ids from "
                f"{lo} to {hi}. Check the tokenizer matches the model."
            )
        if mask is None:
            mask = torch.ones_like(tokens)
        elif mask.shape != tokens.shape:
            raise InputError(f"attention_mask has shape {tuple(mask.shape)}; expected the tokens' "
                             f"shape {tuple(tokens.shape)}.")
        elif not bool(((mask == 0) | (mask == 1)).all()) or not bool(mask.bool().any(-1).all()):
            raise InputError(f"attention_mask must hold 1 (real token) and 0 (padding), with at least "
                             f"one 1 per prompt; got values {sorted(set(mask.flatten().tolist()))[:5]}"
                             f" (rows without a real token: {(~mask.bool().any(-1)).sum().item()}). "
                             "Build it as (tokens != pad_id).long(), or let to_tokens pad text.")
        return Encoded(tokens.long(), mask.long())

    # -- generating (workbench/generation.py) -----------------------------------------------
    def generate(self, input, max_new_tokens: int = 20, **options):
        """Generate with hooks and a key-value cache: see :func:`workbench.generation.generate`
        (returns a :class:`~workbench.generation.Generation`)."""
        from .generation import generate
        return generate(self, input, max_new_tokens, **options)

    def generate_stream(self, input, max_new_tokens: int = 20, **options):
        """Yield each new token as it comes: see :func:`workbench.generation.generate_stream`."""
        from .generation import generate_stream
        return generate_stream(self, input, max_new_tokens, **options)

    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None,
                  padding_side: str | None = None) -> torch.Tensor:
        """Token ids ``[batch, pos]`` (padded on ``padding_side``, default right)."""
        return self._encode_input(text, None, prepend_bos, padding_side).tokens

    def to_str_tokens(self, input, prepend_bos: bool | None = None):
        """One string per token: a list for one prompt or a 1-D / [1, pos] tensor; a list of
        lists for a list of prompts (padding dropped)."""
        if isinstance(input, (list, tuple)):
            enc = self._encode_text(input, prepend_bos, "right")
            return [decode_each(self.tokenizer, row[m.bool()].tolist())
                    for row, m in zip(enc.tokens, enc.attention_mask, strict=True)]
        if isinstance(input, str):
            input = self.to_tokens(input, prepend_bos=prepend_bos)
        tokens = torch.as_tensor(input).squeeze()
        if tokens.ndim > 1:
            raise InputError(f"to_str_tokens takes one prompt; got token shape "
                             f"{tuple(torch.as_tensor(input).shape)}.")
        return decode_each(self.tokenizer, tokens.reshape(-1).tolist())

    def to_string(self, tokens) -> str | list[str]:
        """Decode ``[pos]`` to a string, or ``[batch, pos]`` to a list of strings."""
        tok = need_tokenizer(self.tokenizer, "to_string")
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [tok.decode(r.tolist(), clean_up_tokenization_spaces=False) for r in tokens]
        return tok.decode(tokens.reshape(-1).tolist(), clean_up_tokenization_spaces=False)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no BOS, no special tokens)."""
        if not isinstance(string, str) or string == "":
            raise TokenizerError(f"to_single_token takes a non-empty string that is one token (e.g. "
                                 f"' Mary'); got {string!r}. A token id needs no conversion.")
        ids = encode(self.tokenizer, string, prepend_bos=False, padding_side=None).tokens[0]
        if ids.numel() != 1:
            raise TokenizerError(
                f"{string!r} is {ids.numel()} tokens, not one: "
                f"{decode_each(self.tokenizer, ids.tolist())}. Pick a string that is one token "
                "(mind the leading space)."
            )
        return int(ids[0])

    def get_token_position(self, single_token: str | int, input, mode: str = "first",
                           prepend_bos: bool | None = None) -> int:
        """Index of the first (or last) occurrence of a token in one prompt."""
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}.")
        tokens = (self.to_tokens(input, prepend_bos=prepend_bos) if isinstance(input, str)
                  else torch.as_tensor(input))
        tokens = tokens.reshape(-1) if tokens.ndim == 1 or tokens.shape[0] == 1 else None
        if tokens is None:
            raise InputError("get_token_position takes one prompt ([pos] or [1, pos]).")
        tid = self.to_single_token(single_token) if isinstance(single_token, str) else int(single_token)
        hits = (tokens == tid).nonzero().flatten()
        if hits.numel() == 0:
            tok = self.tokenizer
            shown = tokens.tolist() if tok is None else decode_each(tok, tokens.tolist())
            raise InputError(f"Token {single_token!r} (id {tid}) does not occur in the prompt, whose "
                             f"{len(shown)} tokens are {shown[:40]}{' ...' if len(shown) > 40 else ''}. "
                             "Pick one of those (mind the leading space).")
        return int(hits[0] if mode == "first" else hits[-1])


def _own_bytes(store: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cache exactly the bytes shown: a view into a bigger buffer (e.g. q, k and v slices of a fused
    QKV output) is kept as a view only when the cached views of that buffer cover all of it, and
    copied otherwise (so caching one slice does not pin the whole buffer)."""
    shown: dict[int, int] = {}
    for t in store.values():
        ptr = t.untyped_storage().data_ptr()
        shown[ptr] = shown.get(ptr, 0) + t.numel() * t.element_size()
    out = {}
    for name, t in store.items():
        storage = t.untyped_storage()
        if storage.nbytes() > t.numel() * t.element_size() and shown[storage.data_ptr()] < storage.nbytes():
            t = t.clone()
        out[name] = t
    return out


def _weight_property(name: str) -> property:
    return property(lambda self: READERS[name](self),
                    doc=f"``{name}`` in TransformerLens's shape (see :mod:`workbench.weights`).")


for _name in READERS:
    setattr(Bridge, _name, _weight_property(_name))
