"""Swap a model's Linear / Conv1d / Conv2d layers for their packed power-of-two twins."""

from torch import nn

from compressor.formats.pow2_levels import check_bits
from compressor.nn.pow2 import Pow2Conv1d, Pow2Conv2d, Pow2Linear
from compressor.pruning.selection import compressible_


def convert_to_pow2(model: nn.Module, bits: int, n1: dict[str, int] | None = None,
                    filter_fn=None, _prefix: str = "") -> nn.Module:
    """Replace every nn.Linear, nn.Conv1d and nn.Conv2d (in place, returned for chaining) by its
    packed twin (Pow2Linear, Pow2Conv1d, Pow2Conv2d).

    `n1` maps a parameter name ("0.weight") to the exponent INQ fixed for it; without an entry the
    layer's own max picks n1, which is the same for weights INQ already quantized.
    `filter_fn(module, fqn)` chooses the layers (default: all). ON-LSTM keeps
    its (power-of-two valued) float weights: no packed recurrent kernel exists yet.
    """
    check_bits(bits)
    n1 = n1 or {}
    if not _prefix:  # torch's attention layers hide their projections from the swap
        compressible_(model)
    for name, child in list(model.named_children()):
        cls = {nn.Linear: Pow2Linear, nn.Conv1d: Pow2Conv1d, nn.Conv2d: Pow2Conv2d}.get(type(child))
        fqn = f"{_prefix}{name}"
        if cls is None:
            convert_to_pow2(child, bits, {k[len(name) + 1:]: v for k, v in n1.items()
                                          if k.startswith(name + ".")}, filter_fn, f"{fqn}.")
            continue
        if filter_fn is not None and not filter_fn(child, fqn):
            continue
        setattr(model, name, cls.from_float(child, bits, n1.get(f"{name}.weight")))
    return model
