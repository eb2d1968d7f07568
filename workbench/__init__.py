"""The workbench's bridge core: any HF causal LM behind TransformerLens-named hook points."""

from .attribution import DirectLogitAttribution, direct_logit_attribution
from .attribution_patching import AttributionResult, attribution_sweep
from .bridge import Bridge, ForwardOutput
from .cache import ActivationCache
from .cell_patch import CellPatch, CellPatcher, patch_cell
from .composition import CompositionScores, composition_scores
from .config import BridgeConfig
from .errors import (
                     HookNameError,
                     HookShapeError,
                     InputError,
                     TokenizerError,
                     UnsupportedModelError,
                     UnverifiedFamilyWarning,
                     WorkbenchError,
)
from .factored import FactoredMatrix
from .generation import Generation, GenerationStep
from .head_scores import HeadScores, head_scores
from .hook_info import HookInfo
from .hook_points import AttachedHook, HookPoint
from .lens import LogitLens, logit_lens
from .memory import keep_freed_memory, release_memory
from .metrics import Metric
from .patch_cost import CostEstimate, estimate_cost
from .patch_engine import Cancelled
from .patch_result import PatchResult
from .patching import patch_sweep
from .path_patching import PathPatchResult, path_patch, path_patch_sweep
from .patterns import AttentionPatterns, attention_patterns
from .steering import Steering

__all__ = [
    "ActivationCache", "AttachedHook", "AttentionPatterns", "AttributionResult", "Bridge",
    "BridgeConfig", "Cancelled", "CellPatch", "CellPatcher", "CompositionScores", "CostEstimate",
    "DirectLogitAttribution", "FactoredMatrix", "ForwardOutput", "Generation", "GenerationStep",
    "HeadScores", "HookInfo",
    "HookNameError", "HookPoint", "HookShapeError", "InputError", "LogitLens", "Metric",
    "PatchResult", "PathPatchResult", "Steering", "TokenizerError", "UnsupportedModelError",
    "UnverifiedFamilyWarning",
    "WorkbenchError",
    "attention_patterns", "attribution_sweep", "composition_scores", "direct_logit_attribution",
    "estimate_cost", "head_scores", "keep_freed_memory", "logit_lens", "patch_cell", "patch_sweep",
    "path_patch", "path_patch_sweep", "release_memory",
]
