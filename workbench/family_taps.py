"""Taps for what some families do differently (see ``taps.py`` for the common ones): a block that
flattens its MLP half to ``[batch * pos, d_model]`` (OPT), a projection computing two halves at
once (Phi-3's gate and up), and a mixture-of-experts router (Mixtral, Qwen-MoE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import InputError
from .hook_points import HookPoint, Tap

if TYPE_CHECKING:
    from .taps import RunState


def rows_tap(block: nn.Module, layer: int, state: RunState) -> Tap:
    """Record the batch rows of the block's input (the patch engine varies them per layer)."""
    def fn(mod, args, kwargs):
        state.block_rows[layer] = (args[0] if args else kwargs["hidden_states"]).shape[0]
    return Tap(block, "pre", fn)


class Rows:
    """A hook point seen through a flattening: the module sees ``[batch * pos, ...]`` (OPT's MLP
    half of the block), the point shows ``[batch, pos, ...]`` (batch: the rows the block
    received); a write is flattened back."""

    def __init__(self, point: HookPoint, state: RunState, layer: int) -> None:
        self.point, self.state, self.layer = point, state, layer

    @property
    def bwd(self):
        return self.point.bwd

    def fire(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() != 2:
            return self.point.fire(value)
        b = self.state.block_rows.get(self.layer, self.state.batch_size)
        shown = value.reshape(b, value.shape[0] // b, value.shape[1])
        new = self.point.fire(shown)
        if new is shown and not self.point.bwd:
            return value
        return new.reshape(value.shape)  # (through ``shown``, so backward functions fire)


def halves_tap(module: nn.Module, first: HookPoint, second: HookPoint) -> Tap:
    """A projection whose output is ``[first half | second half]`` (Phi-3's fused gate and up):
    fire each half ``[b, p, d_mlp]`` on its own point; a write rebuilds the output."""
    def fn(mod, args, kwargs, output):
        a, b = output.chunk(2, dim=-1)
        new_a, new_b = first.fire(a), second.fire(b)
        if new_a is a and new_b is b and not (first.bwd or second.bwd):
            return None
        return torch.cat([new_a, new_b], dim=-1)  # (through the halves: backward functions fire)
    return Tap(module, "post", fn)


def router_tap(router: nn.Module, state: RunState, logits_p: HookPoint, indices_p: HookPoint,
                weights_p: HookPoint) -> Tap:
    """A mixture-of-experts router returns ``(logits [N, E], weights [N, k], indices [N, k])``
    over the ``N = batch * pos`` tokens. Fire ``hook_router_logits [b, p, E]`` and
    ``hook_expert_indices [b, p, k]`` (read-only: the router has already chosen) and
    ``hook_expert_weights [b, p, E]``, each expert's mixing weight, 0 for the experts not
    chosen (as TransformerLens). It is writable for the chosen experts: their outputs are mixed
    with the written weights; an unchosen expert cannot be given weight."""
    def read_only(point: HookPoint, value: torch.Tensor) -> None:
        if point.fire(value) is not value:
            raise InputError(
                f"{point.name} is read-only: the router chose the experts from these values "
                "before the hook saw them, so a written value would be ignored. Write "
                f"{weights_p.name} instead (zero an expert's weight to remove it).")

    def fn(mod, args, kwargs, output):
        logits, weights, indices = output[:3]
        b = state.batch_size if logits.shape[0] % max(state.batch_size, 1) == 0 else 1

        def as_bp(t: torch.Tensor) -> torch.Tensor:  # [N, x] -> [batch, pos, x]
            return t.reshape(b, t.shape[0] // b, t.shape[-1])
        if logits_p.active:
            read_only(logits_p, as_bp(logits))
        if indices_p.active:
            read_only(indices_p, as_bp(indices))
        if not weights_p.active:
            return None
        dense = torch.zeros_like(logits, dtype=weights.dtype).scatter(1, indices, weights)  # [N, E]
        shown = as_bp(dense)
        new = weights_p.fire(shown)
        if new is shown and not weights_p.bwd:
            return None
        new = new.reshape(dense.shape)
        unchosen = torch.ones_like(new, dtype=torch.bool).scatter(1, indices, False)
        if bool((new[unchosen] != 0).any()):
            raise InputError(
                f"{weights_p.name}: a weight was written for an expert the router did not choose "
                "for that token; only the chosen experts run (see hook_expert_indices). Write "
                "weights only where hook_expert_indices points, or 0 elsewhere.")
        return (logits, new.gather(1, indices), indices, *output[3:])
    return Tap(router, "post", fn)
