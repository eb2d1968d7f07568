"""The workbench's bridge core: any HF causal LM behind TransformerLens-named hook points."""

from .attribution import DirectLogitAttribution, direct_logit_attribution
from .bridge import Bridge, ForwardOutput
from .cache import ActivationCache
from .composition import CompositionScores, composition_scores
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
from .head_scores import HeadScores, head_scores
from .hook_info import HookInfo
from .hook_points import AttachedHook, HookPoint
from .lens import LogitLens, logit_lens

__all__ = [
    "ActivationCache", "AttachedHook", "Bridge", "BridgeConfig", "CompositionScores",
    "DirectLogitAttribution", "FactoredMatrix", "ForwardOutput", "HeadScores", "HookInfo",
    "HookNameError", "HookPoint", "HookShapeError", "InputError", "LogitLens", "TokenizerError",
    "UnsupportedModelError", "WorkbenchError", "composition_scores", "direct_logit_attribution",
    "head_scores", "logit_lens",
]
