"""One-shot pruning of any model from one validated config (the entry point the CLI uses)."""

from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.pruning.criteria import CRITERIA, prune_global, prune_layerwise
from compressor.pruning.nm import prune_nm
from compressor.pruning.selection import check_rate, layer_rates

SCOPES = ("layerwise", "global")


@dataclass
class PruneConfig:
    """sparsity: fraction of the surviving weights to remove (of all weights, on a dense model).
    scope: 'layerwise' (every layer loses the same fraction) or 'global' (one magnitude threshold).
    output_sparsity: the output layer's own fraction (layerwise only); rates: fnmatch pattern ->
    fraction; exclude: fnmatch patterns never pruned. nm=(2, 4) applies N:M instead."""

    sparsity: float = 0.5
    scope: str = "layerwise"
    criterion: str = "magnitude"
    output_sparsity: float | None = None
    rates: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    nm: tuple[int, int] | None = None
    seed: int = 0

    def __post_init__(self):
        if self.nm is None:
            check_rate(self.sparsity, "sparsity")
        if self.scope not in SCOPES:
            raise CompressorError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.criterion not in CRITERIA:
            raise CompressorError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.scope == "global" and (self.output_sparsity is not None or self.rates):
            raise CompressorError("per-layer rates need scope='layerwise'; global pruning uses "
                                  "one threshold for all layers")
        self.exclude = tuple(self.exclude)


def prune(model: nn.Module, cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """Prune `model` in place as `cfg` says (masks stay attached); returns the masks added."""
    if cfg.nm is not None:
        return prune_nm(model, *cfg.nm, exclude=cfg.exclude)
    rates = layer_rates(model, cfg.sparsity, cfg.output_sparsity, cfg.rates, cfg.exclude)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.scope == "global":
        return prune_global(model, cfg.sparsity, list(rates), cfg.criterion, generator)
    return prune_layerwise(model, rates, cfg.criterion, generator)
