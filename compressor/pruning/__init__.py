"""Unstructured and N:M pruning of any module's weights with masks that stay put.

Contract other parts rely on: a mask is a buffer named `<param>_mask` on the module owning the
parameter; `fold_masks(model)` multiplies masks in and removes all mask machinery;
`has_masks(model)`; `get_masks(model)` -> {qualified param name: mask}.
"""

from compressor.pruning.api import PruneConfig, parse_nm, prune, prune_, prune_and_finetune_
from compressor.pruning.criteria import (
    prune_global,
    prune_layerwise,
    prune_to_sparsity,
    random_masks_like,
)
from compressor.pruning.masks import (
    HoldMasks,
    apply_masks,
    fold_masks,
    get_masks,
    has_masks,
    load_state_dict,
    set_mask,
    sparsity,
)
from compressor.pruning.nm import is_nm_sparse, nm_mask, prune_nm
from compressor.pruning.schedules import Gradual, GradualPruner
from compressor.pruning.selection import layer_rates, prunable_parameters

__all__ = [
    "Gradual", "GradualPruner", "HoldMasks", "PruneConfig", "apply_masks",
    "fold_masks", "get_masks", "has_masks", "is_nm_sparse", "layer_rates", "load_state_dict",
    "nm_mask", "parse_nm", "prunable_parameters", "prune", "prune_", "prune_and_finetune_",
    "prune_global", "prune_layerwise", "prune_nm", "prune_to_sparsity", "random_masks_like",
    "set_mask", "sparsity",
]
