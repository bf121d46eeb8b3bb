"""compressor.sparse.convert: swap pruned Conv2d / Linear layers for sparse ones where it pays."""

from dataclasses import dataclass

import torch
from torch import nn

from compressor.nn.sparse import SparseConv2d, SparseLinear
from compressor.sparse.perf_model import PerfModel, median_seconds


@dataclass
class Decision:
    name: str
    sparsity: float
    speedup: float
    converted: bool


def _layer_inputs(model: nn.Module, example_inputs, filter_fn=None) -> dict[str, torch.Tensor]:
    seen, hooks = {}, []
    for name, mod in model.named_modules():
        if type(mod) in (nn.Conv2d, nn.Linear) and (filter_fn is None or filter_fn(mod, name)):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, args[0].detach())))
    with torch.no_grad():
        model(*example_inputs)
    for h in hooks:
        h.remove()
    return seen


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def convert(model: nn.Module, example_inputs, min_speedup: float = 1.05,
            perf_model: PerfModel | None = None,
            filter_fn=None) -> tuple[nn.Module, list[Decision]]:
    """Replace each Conv2d/Linear whose sparse twin was measured faster on its example input.

    Returns (model, decisions). The converted model is then timed against the dense one on
    `example_inputs`; while it is slower, the conversion with the smallest gain is undone.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    perf = perf_model or PerfModel()
    inputs = _layer_inputs(model, example_inputs, filter_fn)
    decisions, originals = [], {}
    for name, x in inputs.items():
        dense = model.get_submodule(name)
        sparse = (SparseConv2d if isinstance(dense, nn.Conv2d) else SparseLinear).from_dense(dense)
        sparse = sparse.to(x.device)
        speedup = perf.measure(dense, sparse, x)["speedup"]
        take = speedup >= min_speedup and x.dtype == torch.float32
        decisions.append(Decision(name, sparse.sparsity, speedup, take))
        if take:
            originals[name] = dense
            _swap(model, name, sparse)
    _keep_not_slower(model, example_inputs, decisions, originals)
    return model, decisions


def _time(model, example_inputs) -> float:
    device = example_inputs[0].device.type
    with torch.no_grad():
        return median_seconds(lambda: model(*example_inputs), device, repeat=7)


def _keep_not_slower(model, example_inputs, decisions, originals) -> None:
    taken = sorted((d for d in decisions if d.converted), key=lambda d: d.speedup)
    for dense_name, dense in originals.items():
        _swap(model, dense_name, dense)
    dense_s = _time(model, example_inputs)
    for d in taken:
        _swap(model, d.name, SparseConv2d.from_dense(originals[d.name])
              if isinstance(originals[d.name], nn.Conv2d)
              else SparseLinear.from_dense(originals[d.name]))
    for d in taken:
        if _time(model, example_inputs) <= dense_s:
            return
        _swap(model, d.name, originals[d.name])
        d.converted = False


def report(decisions: list[Decision]) -> str:
    return "\n".join(f"{d.name}: sparsity {d.sparsity:.2f}, measured speedup {d.speedup:.2f}x -> "
                     f"{'sparse' if d.converted else 'dense'}" for d in decisions)
