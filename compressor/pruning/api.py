"""`prune_(model, PruneConfig, filter_fn)`: unstructured or N:M pruning in place, and
`prune_and_finetune_` for one-shot or gradual pruning with fine-tuning under held masks."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.config import Config
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.history import record
from compressor.pruning.criteria import CRITERIA, prune_global, prune_layerwise
from compressor.pruning.masks import HoldMasks, get_masks, sparsity
from compressor.pruning.nm import prune_nm
from compressor.pruning.schedules import Gradual, GradualPruner
from compressor.pruning.selection import layer_rates, prunable_parameters
from compressor.train import TrainConfig, fit, make_optimizer

SCOPES = ("layerwise", "global")
SCHEDULES = ("one-shot", "gradual")

FilterFn = Callable[[nn.Module, str], bool]


def parse_nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise CompressorError(f"nm must look like 2:4 (N:M), got {text!r}") from None
    if not 0 < n < m:
        raise CompressorError(f"nm needs 0 < N < M (e.g. 2:4), got {text!r}")
    return n, m


@dataclass
class PruneConfig(Config):
    """sparsity: fraction of the surviving weights to remove (of all weights, on a dense model).
    scope: 'layerwise' (every layer loses the same fraction) or 'global' (one magnitude
    threshold). output_sparsity: the output layer's own fraction (layerwise only); rates: fnmatch
    pattern -> fraction; exclude: fnmatch patterns never pruned. nm='2:4' applies N:M instead.
    schedule: 'one-shot' (prune, then fine-tune) or 'gradual' (AGP while fine-tuning)."""

    sparsity: float = field(default=0.5, metadata={"help": "fraction of weights pruned"})
    scope: str = field(default="layerwise", metadata={"choices": SCOPES})
    criterion: str = field(default="magnitude", metadata={"choices": CRITERIA})
    schedule: str = field(default="one-shot", metadata={"choices": SCHEDULES})
    output_sparsity: float | None = field(
        default=None, metadata={"help": "the output layer's own sparsity (layerwise only)"})
    rates: dict[str, float] = field(default_factory=dict, metadata={"flag": False})
    exclude: tuple[str, ...] = field(
        default=(), metadata={"help": "comma-separated fnmatch patterns of weights kept dense"})
    nm: str | None = field(default=None, metadata={"help": "N:M pattern, e.g. 2:4"})
    seed: int = 0

    def validate(self) -> None:
        if self.nm is not None:
            parse_nm(self.nm)
            self.require(self.schedule == "one-shot", "schedule", "must be one-shot with nm")
        else:
            self.require(0.0 < self.sparsity < 1.0, "sparsity", "must be a fraction in (0, 1)")
        if self.output_sparsity is not None:
            self.require(0.0 < self.output_sparsity < 1.0, "output_sparsity",
                         "must be a fraction in (0, 1)")
        if self.scope == "global":
            self.require(self.output_sparsity is None and not self.rates, "scope",
                         "must be 'layerwise' for per-layer rates (global uses one threshold)")
            self.require(self.schedule == "one-shot", "schedule",
                         "must be one-shot with scope='global' (gradual prunes layerwise)")
        for pattern, rate in self.rates.items():
            if not 0.0 < float(rate) < 1.0:
                raise CompressorError(f"PruneConfig.rates[{pattern!r}] must be a fraction in "
                                      f"(0, 1), got {rate!r}")


def filtered_exclude(model: nn.Module, exclude, filter_fn: FilterFn | None) -> tuple[str, ...]:
    """`exclude` plus the exact names of weights whose module `filter_fn(module, fqn)` rejects."""
    if filter_fn is None:
        return tuple(exclude)
    rejected = []
    for qual, (module, _) in prunable_parameters(model, exclude).items():
        owner = qual.rpartition(".")[0]
        if not filter_fn(module, owner):
            rejected.append(qual)
    return (*exclude, *rejected)


def _layer_report(model: nn.Module, exclude, details: dict) -> dict:
    """{weight: {"action", ...}}: what the pruning function said of a weight (an N:M skip and
    its reason, a global floor), else pruned with its sparsity, else why it was left dense."""
    report = {}
    masks = get_masks(model)
    excluded = set(prunable_parameters(model)) - set(prunable_parameters(model, exclude))
    for qual in prunable_parameters(model):
        if qual in details:
            report[qual] = details[qual]
        elif qual in masks:
            report[qual] = {"action": "pruned", "sparsity": round(sparsity_of(masks[qual]), 4)}
        elif qual in excluded:
            report[qual] = {"action": "kept dense", "reason": "excluded (exclude or filter_fn)"}
        else:
            report[qual] = {"action": "kept dense", "reason": "not selected"}
    return report


def sparsity_of(mask: torch.Tensor) -> float:
    return float((mask == 0).sum()) / max(mask.numel(), 1)


def prune_(model: nn.Module, config: PruneConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Prune `model` in place as `config` says (masks stay attached until `fold_masks`)."""
    exclude = filtered_exclude(model, config.exclude, filter_fn)
    details: dict = {}
    if config.nm is not None:
        prune_nm(model, *parse_nm(config.nm), exclude=exclude, report=details)
    else:
        rates = layer_rates(model, config.sparsity, config.output_sparsity, config.rates, exclude)
        generator = torch.Generator().manual_seed(config.seed)
        if config.scope == "global":
            prune_global(model, config.sparsity, list(rates), config.criterion, generator,
                         report=details)
        else:
            prune_layerwise(model, rates, config.criterion, generator)
    record(model, "prune", config, _layer_report(model, exclude, details),
           total_sparsity=round(sparsity(model)["total"], 4))
    return model


def prune_and_finetune_(model: nn.Module, data: Dataset, config: PruneConfig,
                        train: TrainConfig, filter_fn: FilterFn | None = None,
                        loss_fn=None, progress: bool = False) -> nn.Module:
    """One-shot: prune, then fine-tune `train.steps` with the masks held. Gradual: Zhu & Gupta's
    AGP over the first 3/4 of the fine-tuning (a quarter left to recover)."""
    if config.schedule == "gradual":
        exclude = filtered_exclude(model, config.exclude, filter_fn)
        final = layer_rates(model, config.sparsity, config.output_sparsity, config.rates, exclude)
        end = max(1, int(0.75 * train.steps))
        pruner = GradualPruner(model, Gradual(config.sparsity, 0, end,
                                              frequency=max(1, end // 10)), final,
                               config.criterion)
        optimizer = make_optimizer(model.parameters(), train)
        fit(model, data, train, optimizer=optimizer, loss_fn=loss_fn, progress=progress,
            desc="gradual pruning",
            callbacks=[HoldMasks(model, optimizer, dynamic=True), pruner])
        record(model, "prune", config, _layer_report(model),
               total_sparsity=round(sparsity(model)["total"], 4))
        return model
    prune_(model, config, filter_fn)
    optimizer = make_optimizer(model.parameters(), train)
    fit(model, data, train, optimizer=optimizer, loss_fn=loss_fn, progress=progress,
        desc="fine-tune", callbacks=[HoldMasks(model, optimizer)])
    return model


def prune(model: nn.Module, cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """prune_ that returns the masks (kept for callers that want them)."""
    prune_(model, cfg)
    return get_masks(model)
