"""How tensors travel to the browser: typed binary buffers, never ``tolist()`` JSON.

A payload is ``(meta, buffers)``: ``meta`` is a small JSON-able dict (shapes, dtypes, labels) and
``buffers`` a list of ``bytes`` that the front end reads as ``Float16Array``/``Uint8Array``/
``Float32Array`` views. Square causal matrices (attention patterns) travel as their lower
triangle only, which halves the bytes.
"""

from __future__ import annotations

import numpy as np
import torch

DTYPES = {"float16": np.float16, "float32": np.float32, "uint8": np.uint8, "int32": np.int32}


def to_bytes(tensor: torch.Tensor | np.ndarray, dtype: str = "float16") -> bytes:
    """Any tensor ``[...]`` as contiguous little-endian ``dtype`` bytes (C order).

    float16 saturates at ±65504 (logits and scores here are far below); non-finite values
    (masked attention scores) stay as ±inf/NaN, which the front end draws as blank."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    arr = tensor.detach().to("cpu", torch.float32).numpy() if isinstance(tensor, torch.Tensor) \
        else np.asarray(tensor)
    return np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()  # native order: little-endian


def lower_triangle(square: torch.Tensor) -> torch.Tensor:
    """``[..., n, n]`` -> ``[..., n * (n + 1) // 2]``: row ``q`` holds keys ``0..q`` (row-major),
    the part of a causal attention pattern that can be non-zero."""
    n = square.shape[-1]
    if square.shape[-2] != n:
        raise ValueError(f"lower_triangle expects square [..., n, n] matrices, got {tuple(square.shape)}.")
    rows, cols = torch.tril_indices(n, n, device=square.device)
    return square[..., rows, cols]


def from_bytes(data: bytes | memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`to_bytes` (tests and the HTML export use it)."""
    return np.frombuffer(bytes(data), dtype=DTYPES[dtype]).reshape(shape)
