"""Loading a model by hub name or local folder: one code path for both."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .adapters import adapter_for, for_model, known_adapter
from .attention import ensure_registered
from .errors import InputError

DEMO_NAME = "workbench-demo"
DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"


def resolve(name_or_path: str) -> str:
    """``"workbench-demo"`` -> the demo model's folder inside the package; anything else as is."""
    if str(name_or_path) != DEMO_NAME:
        return name_or_path
    if not (DEMO_DIR / "model.safetensors").is_file():
        raise InputError(f"The embedded demo model is missing: expected {DEMO_DIR}/model.safetensors "
                         f"(it ships with the repo). Re-clone, or rebuild it with "
                         f"`python scripts/train_demo_model.py`.")
    return str(DEMO_DIR)


def load(name_or_path: str, *, device=None, dtype: torch.dtype | None = None,
         device_map: Any = None, max_memory: dict | None = None, offload_folder: str | None = None,
         revision: str | None = None, trust_remote_code: bool = False,
         allow_pickle: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``; the tokenizer is None when the folder has none. ``dtype``
    defaults to float32; ``trust_remote_code`` is never turned on implicitly, and pickle-based
    weight files load only with ``allow_pickle``. The name
    ``"workbench-demo"`` loads the embedded demo model (offline)."""
    if device is not None and device_map is not None:
        raise InputError("Pass either device= or device_map=, not both.")
    if (max_memory is not None or offload_folder is not None) and device_map is None:
        raise InputError("max_memory= and offload_folder= place a model across devices through "
                         "accelerate: pass them with device_map= (e.g. device_map='auto').")
    name_or_path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path, revision=revision,
                                        trust_remote_code=trust_remote_code)
    # a type without an adapter loads as a causal LM, and the bridge then tries the generic
    # path (Bridge._discovered); one that is not a causal LM fails here, before any weights load
    adapter = known_adapter(config.model_type)
    remote = trust_remote_code and "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if adapter is None and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not remote:
        adapter_for(config.model_type)  # raises: not supported, listing what is
    ensure_registered()
    encoder = adapter is not None and adapter.encoder
    auto = AutoModel if encoder else AutoModelForCausalLM  # an encoder loads headless
    kwargs: dict[str, Any] = dict(revision=revision, trust_remote_code=trust_remote_code,
                                  dtype=dtype or torch.float32, device_map=device_map,
                                  use_safetensors=None if allow_pickle else True)
    kwargs.update({k: v for k, v in (("max_memory", max_memory), ("offload_folder", offload_folder))
                   if v is not None})
    if adapter is not None:  # (the generic path sets it once the model is checked)
        kwargs["attn_implementation"] = for_model(adapter, config).attn_implementation
    try:
        model = auto.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        if allow_pickle or "safetensors" not in str(err):
            raise
        raise InputError(
            f"Found no safetensors weights for {name_or_path!r}. Weights in pickle-based files "
            "(pytorch_model.bin, *.pt) are not loaded by default: unpickling can run code. If you "
            "trust this checkpoint, pass allow_pickle=True (or convert it to safetensors)."
        ) from err
    if device is not None:
        model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        warnings.warn(f"No tokenizer loaded for {name_or_path!r} ({err}); pass token ids.",
                      stacklevel=3)
        tokenizer = None
    return model, tokenizer
