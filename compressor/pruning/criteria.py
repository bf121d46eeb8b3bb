"""Pruning criteria: magnitude (layerwise or global) and random.

Every criterion prunes a fraction of the *surviving* weights (those not masked yet), so calling it
once on a dense model is one-shot pruning and calling it each round is iterative pruning. Counts
are exact: a layer with s survivors and rate p loses round(p * s) of them; the global criterion
loses round(p * S) of all S survivors. Ties are broken by position, so results are deterministic.
"""

import math
import warnings

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.pruning.masks import MASK_SUFFIX, set_mask
from compressor.pruning.selection import check_rate, prunable_parameters

CRITERIA = ("magnitude", "random")


def current_mask(module: nn.Module, name: str) -> torch.Tensor:
    mask = module._buffers.get(name + MASK_SUFFIX)
    return torch.ones_like(module._parameters[name]) if mask is None else mask


def keep_top(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """A mask keeping the `keep` highest-scoring entries among those where mask != 0."""
    flat = scores.detach().flatten().float().masked_fill(mask.flatten() == 0, float("-inf"))
    order = torch.sort(flat, descending=True, stable=True).indices
    new = torch.zeros_like(flat)
    new[order[:keep]] = 1.0
    return new.view_as(mask).to(mask.dtype)


def _scores(param: torch.Tensor, criterion: str, generator: torch.Generator | None):
    if criterion == "magnitude":
        return param.detach().abs()
    if criterion == "random":
        return torch.rand(param.shape, generator=generator).to(param.device)
    raise CompressorError(f"unknown pruning criterion {criterion!r}: use one of {CRITERIA}")


def _resolve(model: nn.Module, names) -> dict[str, tuple[nn.Module, str]]:
    params = prunable_parameters(model)
    missing = [n for n in names if n not in params]
    if missing:
        raise CompressorError(f"cannot prune {missing}: not prunable weights of the model "
                              f"(prunable: {list(params)})")
    return {n: params[n] for n in names}


def prune_layerwise(model: nn.Module, rates: dict[str, float], criterion: str = "magnitude",
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Prune each named parameter's survivors by its own rate; returns the new masks."""
    out = {}
    for qual, (module, name) in _resolve(model, rates).items():
        rate = check_rate(rates[qual], f"rate for {qual}")
        mask = current_mask(module, name)
        survivors = int(mask.count_nonzero())
        keep = survivors - round(rate * survivors)
        new = keep_top(_scores(module._parameters[name], criterion, generator), mask, keep)
        set_mask(module, name, new)
        out[qual] = new
    return out


MIN_KEEP = 0.01  # global pruning keeps at least this fraction of every layer (and 1 weight)


def _floor(numel: int, survivors: int, min_keep: float) -> int:
    if min_keep <= 0:
        return 0
    return min(survivors, max(1, math.ceil(min_keep * numel)))


def _global_keep(scores: list, masks: list, keep_total: int, floors: list) -> tuple[list, set]:
    """Per-layer keep masks for one global threshold, with every layer the threshold would
    take below its floor held at its floor instead (its own best weights) and the rest of the
    budget spent globally on the other layers. Returns (masks, indices of floored layers)."""
    floored: set[int] = set()
    while True:
        free = [i for i in range(len(scores)) if i not in floored]
        budget = max(0, keep_total - sum(floors[i] for i in floored))
        kept = keep_top(torch.cat([scores[i] for i in free]),
                        torch.cat([masks[i] for i in free]), budget) if free else None
        out, start, newly = {}, 0, []
        for i in free:
            out[i] = kept[start:start + scores[i].numel()]
            start += scores[i].numel()
            if int(out[i].count_nonzero()) < floors[i]:
                newly.append(i)
        if not newly:
            break
        floored.update(newly)
    for i in floored:
        out[i] = keep_top(scores[i], masks[i], floors[i])
    return [out[i] for i in range(len(scores))], floored


def prune_global(model: nn.Module, rate: float, names=None, criterion: str = "magnitude",
                 generator: torch.Generator | None = None, min_keep: float = MIN_KEEP,
                 report: dict | None = None) -> dict[str, torch.Tensor]:
    """Prune round(rate * S) of the S survivors of all named parameters together, lowest scores
    first (magnitudes compared across layers as they are, as in Frankle & Carbin).

    Per-layer floor: a layer keeps at least ceil(min_keep * its size) weights (and at least 1;
    min_keep=0 turns the floor off). A layer the threshold would take below it keeps its own
    largest weights up to the floor, with a warning, and the others lose that many more, so
    the total stays exact. `report` gets {weight: {"action", "sparsity", ...}}."""
    rate = check_rate(rate)
    if not 0.0 <= min_keep < 1.0:
        raise CompressorError(f"min_keep must be a fraction in [0, 1), got {min_keep!r}")
    chosen = _resolve(model, names if names is not None else prunable_parameters(model))
    if not chosen:
        raise CompressorError("global pruning needs at least one prunable weight")
    scores, masks = [], []
    for module, name in chosen.values():
        scores.append(_scores(module._parameters[name], criterion, generator).flatten().cpu())
        masks.append(current_mask(module, name).flatten().cpu())
    survivors = int(torch.cat(masks).count_nonzero())
    floors = [_floor(m.numel(), int(m.count_nonzero()), min_keep) for m in masks]
    kept, floored = _global_keep(scores, masks, survivors - round(rate * survivors), floors)
    out = {}
    for index, (qual, (module, name)) in enumerate(chosen.items()):
        set_mask(module, name, kept[index].view_as(module._parameters[name]))
        out[qual] = current_mask(module, name)
        if index in floored:
            warnings.warn(f"global pruning at {rate:.0%} would leave {qual} almost or entirely "
                          f"empty; it keeps its {floors[index]} largest weights (floor "
                          f"min_keep={min_keep:g} of {masks[index].numel()})", stacklevel=2)
        if report is not None:
            report[qual] = {"action": "pruned", "sparsity": round(
                float((out[qual] == 0).float().mean()), 4)}
            if index in floored:
                report[qual]["reason"] = f"held at the per-layer floor (min_keep={min_keep:g})"
    return out


def random_masks_like(masks: dict[str, torch.Tensor],
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Masks with the same number of survivors per parameter at uniformly random positions
    (the lottery paper's random-pruning control)."""
    out = {}
    for qual, mask in masks.items():
        keep = int(mask.count_nonzero())
        order = torch.randperm(mask.numel(), generator=generator)
        new = torch.zeros(mask.numel(), dtype=mask.dtype)
        new[order[:keep]] = 1.0
        out[qual] = new.view(mask.shape).to(mask.device)
    return out


def prune_to_sparsity(model: nn.Module, sparsities: dict[str, float],
                      criterion: str = "magnitude",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Bring each named parameter to (at least) its target sparsity, keeping pruned weights
    pruned (gradual schedules call this with rising targets)."""
    out = {}
    for qual, (module, name) in _resolve(model, sparsities).items():
        target = float(sparsities[qual])
        if not 0.0 <= target < 1.0:
            raise CompressorError(f"target sparsity for {qual} must be in [0, 1), got {target}")
        mask = current_mask(module, name)
        keep = min(int(mask.count_nonzero()), mask.numel() - round(target * mask.numel()))
        new = keep_top(_scores(module._parameters[name], criterion, generator), mask, keep)
        set_mask(module, name, new)
        out[qual] = new
    return out
