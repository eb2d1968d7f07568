"""Shapes and memory of hook points, before anything runs (for pickers and budgets)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import BridgeConfig
from .names import parse


@dataclass(frozen=True)
class HookInfo:
    """``shape`` names each dimension ("batch", "pos", "n_heads", ...); ``sizes`` gives the
    fixed ones (None for batch and positions). ``bytes_per_token`` is the memory per batch
    element and position at ``seq_len`` (attention scores/pattern grow with ``seq_len``)."""

    name: str
    shape: tuple[str, ...]
    sizes: tuple[int | None, ...]
    itemsize: int
    seq_len: int

    def nbytes(self, batch: int, seq_len: int) -> int:
        """Bytes one activation of this hook takes for ``batch`` prompts of ``seq_len``."""
        n = 1
        for dim, size in zip(self.shape, self.sizes, strict=True):
            n *= batch if dim == "batch" else seq_len if size is None else size
        return n * self.itemsize

    @property
    def bytes_per_token(self) -> int:
        return self.nbytes(1, self.seq_len) // self.seq_len


def hook_info(name: str, cfg: BridgeConfig, ungroup_kv: bool, seq_len: int) -> HookInfo:
    site = parse(name).site
    kv = cfg.n_heads if ungroup_kv else cfg.n_kv_heads
    table = {
        "hook_scale": (("batch", "pos", "1"), (None, None, 1)),
        "hook_q": (("batch", "pos", "n_heads", "d_head"), (None, None, cfg.n_heads, cfg.d_head)),
        "hook_z": (("batch", "pos", "n_heads", "d_head"), (None, None, cfg.n_heads, cfg.d_head)),
        "hook_k": (("batch", "pos", "n_kv_heads", "d_head"), (None, None, kv, cfg.d_head)),
        "hook_v": (("batch", "pos", "n_kv_heads", "d_head"), (None, None, kv, cfg.d_head)),
        "hook_attn_scores": (("batch", "n_heads", "query_pos", "key_pos"),
                             (None, cfg.n_heads, None, None)),
        "hook_pattern": (("batch", "n_heads", "query_pos", "key_pos"),
                         (None, cfg.n_heads, None, None)),
        "hook_result": (("batch", "pos", "n_heads", "d_model"),
                        (None, None, cfg.n_heads, cfg.d_model)),
        "hook_pre": (("batch", "pos", "d_mlp"), (None, None, cfg.d_mlp)),
        "hook_pre_linear": (("batch", "pos", "d_mlp"), (None, None, cfg.d_mlp)),
        "hook_post": (("batch", "pos", "d_mlp"), (None, None, cfg.d_mlp)),
        "hook_router_logits": (("batch", "pos", "n_experts"), (None, None, cfg.n_experts)),
        "hook_expert_weights": (("batch", "pos", "n_experts"), (None, None, cfg.n_experts)),
        "hook_expert_indices": (("batch", "pos", "experts_per_token"),
                                (None, None, cfg.experts_per_token)),
    }
    shape, sizes = table.get(site, (("batch", "pos", "d_model"), (None, None, cfg.d_model)))
    itemsize = cfg.dtype.itemsize if hasattr(cfg.dtype, "itemsize") else 4
    if site == "hook_expert_indices":  # int64 expert ids
        itemsize = 8
    return HookInfo(name, shape, sizes, itemsize, max(1, seq_len))
