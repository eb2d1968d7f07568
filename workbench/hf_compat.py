"""What differs between the transformers versions the workbench supports, in one place.

transformers 5.24 renamed the key-value cache of a model's forward: the argument
``past_key_values`` became ``cache`` (the old name still works, with a FutureWarning) and the
output field ``past_key_values`` became ``cache``. The bridge passes and reads the cache under
the name the loaded model's class takes.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn


@functools.cache
def _takes_cache(cls: type) -> bool:
    return "cache" in inspect.signature(cls.forward).parameters


def cache_kwarg(model: nn.Module) -> str:
    """The keyword ``model``'s forward takes its key-value cache under."""
    return "cache" if _takes_cache(type(model)) else "past_key_values"


def output_cache(output: Any) -> Any:
    """The key-value cache a forward returned (None if it returned none)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)
