"""The logit lens panel: what the model would predict if its residual stream stopped early.

Rows are residual sites (``resid_pre`` / ``resid_mid`` / ``resid_post`` of each layer, forward
order), columns the prompt's positions. Each cell shows the top token the model's own final norm
and unembedding read off the residual there, coloured by that token's probability, by a chosen
target token's probability, or by the entropy of the whole prediction; hovering lists the top-k.
The last layer's ``resid_post`` row is the model's real prediction.

The panel calls :func:`workbench.lens.logit_lens` and draws its :class:`~workbench.lens.LogitLens`
(kept in ``panel.result``). Probabilities travel as float16 buffers through one fetch per result
(``{"kind": "lens", "version": n}``); only token strings travel as JSON. Clicking a cell moves the
shared selection's ``layer`` and ``position``.
"""

from __future__ import annotations

from typing import Any

import torch
from traitlets import Int, List, Unicode

from workbench.errors import InputError, TokenizerError
from workbench.lens import SITES, LogitLens, logit_lens

from ._base import Panel, esm, guarded
from ._selection import Selection
from ._transport import to_bytes

COLOUR_BY = ("top", "target", "entropy")


class LogitLensPanel(Panel):
    """Logit lens of one prompt: a (residual site x position) heatmap labelled with top tokens.

    ``sites``: any non-empty subset of ``("resid_pre", "resid_mid", "resid_post")``; ``k``: top
    tokens kept per cell (shown on hover); ``target``: a string that is one token ("" for none);
    ``colour_by``: ``"top"`` (top-1 probability), ``"target"`` or ``"entropy"``.
    ``panel.result`` holds the current :class:`~workbench.lens.LogitLens` (None without a prompt).
    """

    _esm = esm("logit_lens.js")
    _title = "logit lens"
    _linked = ("prompt", "layer", "position")

    prompt = Unicode("").tag(sync=True)
    layer = Int(0).tag(sync=True)
    position = Int(-1).tag(sync=True)
    sites = List(Unicode(), default_value=["resid_post"]).tag(sync=True)
    k = Int(5).tag(sync=True)
    target = Unicode("").tag(sync=True)
    colour_by = Unicode("top").tag(sync=True)
    version = Int(0).tag(sync=True)  # bumped per new result: the front end fetches it

    def __init__(self, bridge: Any, prompt: str = "", *, sites: tuple[str, ...] | str = ("resid_post",),
                 k: int = 5, target: str = "", colour_by: str | None = None,
                 selection: Selection | None = None, **kwargs: Any) -> None:
        sites = SITES if sites == "all" else (sites,) if isinstance(sites, str) else tuple(sites)
        colour_by = colour_by or ("target" if target else "top")
        self.result: LogitLens | None = None
        super().__init__(bridge, selection=selection, sites=list(sites), k=k, target=target,
                         colour_by=colour_by, **kwargs)
        if prompt:  # an explicit prompt wins over the selection's
            self.prompt = prompt
        self.observe(self._recompute, names=["prompt", "sites", "k", "target"])
        self.observe(self._check_colour_by, names="colour_by")
        self._recompute()

    # -- computing --------------------------------------------------------------------------------
    def _target_arg(self) -> str | None:
        """The target as given (None when empty), after checking it is one token of the model."""
        if not self.target:
            return None
        try:
            self.bridge.to_single_token(self.target)
        except TokenizerError as exc:
            raise InputError(f"target: expected a string that is exactly one token of this model, got "
                             f"{self.target!r}. {exc} Clear the target box to colour by the top-1 "
                             "probability instead.") from exc
        return self.target

    @guarded("running the logit lens")
    def _recompute(self, _change: dict | None = None) -> None:
        if not self.prompt:
            self.result, self.code = None, ""
            self.version += 1
            return
        target = self._target_arg()  # a target that is not one token keeps the view (and says so)
        try:
            self.result = logit_lens(self.bridge, self.prompt, sites=tuple(self.sites), k=self.k,
                                     target=target)
        except BaseException:  # a failed run shows no lens (never the old inputs' one)
            self.result = None
            raise
        finally:
            self.version += 1
        self.code = self._code(target)

    def _code(self, target: str | None) -> str:
        args = [repr(self.prompt), f"sites={tuple(self.sites)!r}", f"k={self.k}"]
        if target is not None:
            args.append(f"target={target!r}")
        return ("from workbench.lens import logit_lens\n"
                f"lens = logit_lens(bridge, {', '.join(args)})")

    @guarded("checking the colour")
    def _check_colour_by(self, change: dict) -> None:
        if change["new"] not in COLOUR_BY:
            raise ValueError(f"colour_by: expected one of {COLOUR_BY}, got {change['new']!r}; "
                             "pick top, target or entropy.")

    # -- front end --------------------------------------------------------------------------------
    def _fetch_lens(self, version: int | None = None) -> tuple[dict, list[bytes]]:
        """The current result: token strings as JSON, numbers as buffers listed in ``arrays``
        (``top_probs [rows, pos, k]``, ``entropy [rows, pos]``, ``row_layers [rows]``,
        ``positions [pos]``, with a target ``target_prob [rows, pos]``, ``target_rank [rows, pos]``)."""
        res = self.result
        if res is None:
            return {"version": self.version, "empty": True}, []
        arrays = [("top_probs", res.top_probs, "float16"), ("entropy", res.entropy, "float16"),
                  ("row_layers", torch.tensor(res.layers), "int32"),
                  ("positions", torch.tensor(res.positions), "int32")]
        if res.target is not None:
            arrays += [("target_prob", res.target_prob, "float16"),
                       ("target_rank", res.target_rank, "int32")]
        meta = {"version": self.version, "empty": False, "rows": res.rows, "sites": res.sites,
                "str_tokens": res.str_tokens, "top_strs": res.top_strs, "target_str": res.target_str,
                "arrays": [{"name": n, "dtype": d, "shape": list(t.shape)} for n, t, d in arrays]}
        return meta, [to_bytes(t, d) for _, t, d in arrays]

    def _action_select(self, row: int, col: int) -> None:
        """A click on cell (``row``, ``col``): the selection's layer and position follow."""
        res = self.result
        if res is None or not (0 <= row < len(res.rows) and 0 <= col < len(res.positions)):
            shape = None if res is None else (len(res.rows), len(res.positions))
            raise ValueError(f"select: expected a cell inside the heatmap {shape}, got ({row}, {col}).")
        self.layer = res.layers[row]
        self.position = res.positions[col]

    def _export_requests(self) -> list[dict]:
        return [{"kind": "lens", "version": self.version}]
