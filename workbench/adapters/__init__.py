"""Declarative adapters: where each architecture family keeps its modules.

An adapter (:class:`Adapter`) is data, not code: module paths, the layout of the weights the bridge
reads, and a reader that turns the HF config into the bridge's config fields. Each family has one
small module here defining its config reader and its ``ADAPTER``; ``ADAPTERS`` below lists them.

Adding a family: write ``workbench/adapters/<family>.py`` with its ``ADAPTER`` (a Llama-like
family can ``dataclasses.replace`` the Llama adapter), add it to ``ADAPTERS``, and add a tiny
variant of it to ``VARIANTS`` in ``tests/conftest.py`` (and to ``workbench/toy.py``'s
``tiny_config``) so the suite runs on it. See docs/support.md, "Adding a family".
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from . import (
    bert,
    bloom,
    cohere,
    falcon,
    gemma,
    gpt2,
    gpt_neox,
    gptj,
    granite,
    llama,
    moe,
    olmo,
    olmo2,
    opt,
    phi,
    phi3,
    qwen2,
    qwen3,
    stablelm,
    starcoder2,
)
from .base import (
    Adapter,
    execution_device,
    for_model,
    live_param,
    norm_factor,
    norm_weight,
    optional_module,
    split_out_proj,
)

ADAPTERS: tuple[Adapter, ...] = (
    gpt2.ADAPTER,
    llama.ADAPTER,  # llama, mistral
    gpt_neox.ADAPTER,
    qwen2.ADAPTER,
    qwen3.ADAPTER,
    olmo.ADAPTER,
    starcoder2.ADAPTER,
    gemma.ADAPTER,
    gemma.GEMMA2,
    gemma.GEMMA3,
    phi.ADAPTER,
    cohere.ADAPTER,
    granite.ADAPTER,
    olmo2.ADAPTER,
    moe.MIXTRAL,
    moe.QWEN2_MOE,
    moe.QWEN3_MOE,
    phi3.ADAPTER,
    opt.ADAPTER,
    stablelm.ADAPTER,
    gptj.ADAPTER,
    bloom.ADAPTER,
    falcon.ADAPTER,
    bert.ADAPTER,
)

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "execution_device", "for_model", "known_adapter",
           "live_param", "norm_factor", "norm_weight", "optional_module", "split_out_proj",
           "supported_model_types"]


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` the bridge can wrap."""
    return sorted(t for a in ADAPTERS for t in a.model_types)


def known_adapter(model_type: str) -> Adapter | None:
    """The tested adapter of a model type, or None (the bridge then tries the generic path)."""
    return next((a for a in ADAPTERS if model_type in a.model_types), None)


def adapter_for(model_type: str) -> Adapter:
    """The adapter of a model type, or UnsupportedModelError listing the supported ones."""
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise UnsupportedModelError(
        f"Model type {model_type!r} is not supported yet: it has no adapter, and it is not a "
        "causal LM that the generic path could discover. Supported model types: "
        f"{', '.join(supported_model_types())}. Load one of those, or add an adapter: a module "
        "in workbench/adapters/ and one entry in ADAPTERS (see docs/support.md, 'Adding a family')."
    )
