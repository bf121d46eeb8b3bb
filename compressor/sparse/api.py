"""`sparsify_(model, SparsifyConfig, example_inputs, filter_fn)`: run pruned layers on the
sparse kernels where this machine measured them faster, in place.

Power-of-two layers (from INQ) are candidates too: their decoded weights keep their zeros, so a
pruned-then-quantized layer may run faster as CSR; a layer that stays dense keeps its packed
codes."""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.config import Config
from compressor.graph import replace_module
from compressor.history import adopt_, record
from compressor.nn.pow2 import Pow2Conv1d, Pow2Conv2d, Pow2Linear
from compressor.pruning.selection import compressible_
from compressor.sparse.converter import convert

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class SparsifyConfig(Config):
    """min_speedup: a layer is swapped only when its sparse kernel measured at least this much
    faster than dense on its example input."""

    min_speedup: float = field(default=1.05, metadata={
        "help": "swap a layer only when measured at least this much faster"})

    def validate(self) -> None:
        self.require(self.min_speedup > 0, "min_speedup", "must be > 0")


def sparsify_(model: nn.Module, config: SparsifyConfig | None = None, example_inputs=None,
              filter_fn: FilterFn | None = None) -> nn.Module:
    """Swap each selected Conv1d / Conv2d / Linear (and Pow2 layer) whose sparse twin measured
    faster on `example_inputs`; the whole model is then checked not slower than before. A
    failure leaves the model as it was."""
    config = config or SparsifyConfig()
    if example_inputs is None:
        raise ValueError("sparsify_ needs example_inputs: decisions are measured on them")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    work = copy.deepcopy(model).eval()
    compressible_(work)  # torch's attention layers hide their projections from the swap
    pow2 = {n: m for n, m in work.named_modules()
            if isinstance(m, (Pow2Linear, Pow2Conv1d, Pow2Conv2d))}
    twins = {name: module.export_module() for name, module in pow2.items()}  # exact floats
    for name, twin in twins.items():
        replace_module(work, name, twin)
    work, decisions = convert(work, inputs, config.min_speedup, filter_fn=filter_fn)
    modules = dict(work.named_modules())
    for name, module in pow2.items():
        # stays dense: keep the packed codes. convert returns a copy, so the twin is found by
        # its type and weights at the same path; a path a fused block absorbed is left alone
        here = modules.get(name)
        if type(here) is type(twins[name]) and torch.equal(here.weight, twins[name].weight):
            replace_module(work, name, module)
    layers = {d.name: {"action": "sparse" if d.converted else "kept dense",
                       "sparsity": round(d.sparsity, 4), "speedup": round(d.speedup, 3),
                       "dense_ms": round(d.dense_ms, 4), "sparse_ms": round(d.sparse_ms, 4),
                       "fused": d.fused}
              for d in decisions}
    adopt_(model, work)  # a root torch layer comes back as its compressor twin
    record(model, "sparsify", config, layers, whole_model=decisions.whole_model())
    return model
