"""``ActivationCache``: activations of one run by hook name, indexable without the model.

``cache["blocks.0.attn.hook_pattern"]``, ``cache["pattern", 0]`` and ``cache["resid_pre", -1]``
name the same kind of thing; a negative layer counts from the end. The cache holds tensors and a
few facts about the model's shape (number of layers), never the model itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .errors import HookNameError, InputError
from .names import act_name


class ActivationCache(Mapping[str, torch.Tensor]):
    """A read-only mapping from hook name to a detached tensor (shapes as the hook saw them,
    with a leading batch dimension unless ``has_batch_dim`` is False)."""

    def __init__(self, tensors: dict[str, torch.Tensor], n_layers: int,
                 has_batch_dim: bool = True) -> None:
        self._tensors = dict(tensors)
        self.n_layers = n_layers
        self.has_batch_dim = has_batch_dim

    def _name(self, key) -> str:
        if isinstance(key, str):
            return act_name(key, n_layers=self.n_layers)
        if isinstance(key, tuple) and 1 <= len(key) <= 3 and isinstance(key[0], str):
            return act_name(*key, n_layers=self.n_layers)
        raise HookNameError(f"Cache keys are a name or (name, layer[, layer_type]); got {key!r}.")

    def __getitem__(self, key) -> torch.Tensor:
        name = self._name(key)
        if name not in self._tensors:
            raise HookNameError(
                f"{name!r} is not in this cache ({len(self._tensors)} entries). Include it in "
                "run_with_cache's names_filter."
            )
        return self._tensors[name]

    def __contains__(self, key) -> bool:
        try:
            return self._name(key) in self._tensors
        except HookNameError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} entries: {list(self._tensors)[:4]}...)"

    def nbytes(self) -> int:
        """Bytes held, counting each underlying storage once."""
        seen: dict[int, int] = {}
        for t in self._tensors.values():
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy of the cache with every tensor on ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self._tensors.items()},
                               self.n_layers, self.has_batch_dim)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the leading batch dimension (the batch must have size 1)."""
        if not self.has_batch_dim:
            return self
        for k, v in self._tensors.items():
            if v.shape[0] != 1:
                raise InputError(
                    f"remove_batch_dim needs batch size 1; {k!r} has shape {tuple(v.shape)}. "
                    "Run one prompt, or index the batch yourself."
                )
        return ActivationCache({k: v[0] for k, v in self._tensors.items()}, self.n_layers,
                               has_batch_dim=False)

    def stack_activation(self, name: str) -> torch.Tensor:
        """``[n_layers, ...]``: one short-named activation (e.g. "resid_post") of every layer."""
        return torch.stack([self[name, layer] for layer in range(self.n_layers)])
