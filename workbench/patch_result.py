"""``PatchResult``: a labelled patching sweep, frozen, with ``to_dataframe()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .results import dataframe


@dataclass(frozen=True)
class PatchResult:
    """A patching sweep.

    - ``values``: the batch-mean metric per cell in TransformerLens's layout; ``axes`` names its
      dimensions (``("layer", "pos")`` -> ``[n_layers, n_pos]``, ``("layer", "head")``,
      ``("layer", "pos", "head")``, or ``("layer", "head", "pos")`` for patterns by position).
      NaN where a cancelled sweep did not reach (``partial`` is then True).
    - ``per_prompt [*values.shape, batch]``: the metric of each prompt.
    - ``labels[i]`` labels axis ``i``: layers and heads as ints (the swept ones), positions as
      ``"3:␣Mary"`` from the clean prompt's tokens (``"3:␣Mary/␣John"`` where the corrupted token
      differs; the first prompt's tokens for a batch). ``positions[j]`` is position label j's
      (clean pos, corrupted pos).
    - ``clean_value`` / ``corrupted_value``: the batch-mean metric of the unpatched runs.
    - ``direction``: "denoise" (clean into corrupted) or "noise" (corrupted into clean).
    - ``n_done`` cells run, in ``n_forward`` batched forward passes."""

    values: torch.Tensor
    per_prompt: torch.Tensor
    site: str
    index: str
    axes: tuple[str, ...]
    labels: tuple[tuple, ...]
    positions: tuple[tuple[int, int], ...]
    clean_value: float
    corrupted_value: float
    direction: str
    metric: str
    partial: bool
    n_done: int
    n_forward: int

    def __repr__(self) -> str:
        shape = " x ".join(f"{a} {len(lab)}" for a, lab in zip(self.axes, self.labels, strict=True))
        state = ", partial" if self.partial else ""
        return (f"PatchResult({self.site} by {self.index}: {shape}; {self.direction}, {self.metric} "
                f"clean {self.clean_value:.4g} corrupted {self.corrupted_value:.4g}{state})")

    def normalized(self) -> torch.Tensor:
        """``values`` rescaled so 0 is the corrupted baseline and 1 the clean one."""
        return (self.values - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def to_dataframe(self):
        """One row per cell: ``layer``, ``pos`` (clean position) and ``token``, ``head`` (as the
        axes have them) and ``value`` (NaN where not run)."""
        rows = []
        for idx in torch.cartesian_prod(*(torch.arange(s) for s in self.values.shape)).reshape(
                -1, self.values.ndim).tolist():
            row: dict[str, Any] = {}
            for axis, i, labels in zip(self.axes, idx, self.labels, strict=True):
                if axis == "pos":
                    row["pos"], row["token"] = self.positions[i][0], labels[i]
                else:
                    row[axis] = labels[i]
            row["value"] = float(self.values[tuple(idx)])
            rows.append(row)
        return dataframe(rows)


def position_labels(clean: list[str], corrupted: list[str],
                    pairs: list[tuple[int, int]]) -> tuple[str, ...]:
    """``"pos:token"`` per aligned pair, spaces shown as ``␣`` and newlines as ``↵``."""
    def show(tok: str) -> str:
        return tok.replace(" ", "␣").replace("\n", "↵")
    return tuple(f"{c}:{show(clean[c])}" + ("" if clean[c] == corrupted[d] else f"/{show(corrupted[d])}")
                 for c, d in pairs)
