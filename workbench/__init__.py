"""The workbench's bridge core: any HF causal LM behind TransformerLens-named hook points."""

from .bridge import Bridge, ForwardOutput
from .cache import ActivationCache
from .config import BridgeConfig
from .errors import (
                     HookNameError,
                     HookShapeError,
                     InputError,
                     TokenizerError,
                     UnsupportedModelError,
                     WorkbenchError,
)
from .factored import FactoredMatrix
from .hook_info import HookInfo
from .hook_points import AttachedHook, HookPoint

__all__ = [
    "ActivationCache", "AttachedHook", "Bridge", "BridgeConfig", "FactoredMatrix", "ForwardOutput",
    "HookInfo",
    "HookNameError", "HookPoint", "HookShapeError", "InputError", "TokenizerError",
    "UnsupportedModelError", "WorkbenchError",
]
