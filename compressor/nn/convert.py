"""Replace torch layers that read their weights as tensors by compressor's equivalents.

nn.MultiheadAttention, nn.TransformerEncoder(Layer) and nn.TransformerDecoder(Layer) pass weight
tensors to fused functions instead of calling their Linear children, so a transform that swaps
modules (sparse, power-of-two, int8) cannot reach those weights, and swapping `out_proj` or
`linear1` breaks their fast paths. `convert_torch_layers_` replaces each of them by the module
of compressor.nn.attention / .transformer that computes the same function through nn.Linear
children. Everything else is left alone; a subclass of one of those torch classes is left alone
too (its own forward may read the tensors) and reported.

All or nothing: every replacement is built and checked before the first one goes into the
model, so a layer that cannot be converted is named in the error and the model is unchanged.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from compressor.errors import CompressorError
from compressor.history import adopt_
from compressor.nn.attention import MultiheadAttention
from compressor.nn.scan import ScanLSTM
from compressor.nn.transformer import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)


@runtime_checkable
class Exportable(Protocol):
    """The export protocol every compressed module follows: `export_module()` returns the
    standard torch module (or self, when it computes with standard ops only) that ONNX export
    writes in its place; compressor.export calls nothing else."""

    def export_module(self) -> nn.Module: ...


def export_form(module: nn.Module) -> nn.Module:
    """What `module` exports as: its export_module() when it follows the protocol; nn.LSTM's
    scan form (a dynamic sequence length in the exported graph); else the module itself."""
    if isinstance(module, Exportable):
        return module.export_module()
    if isinstance(module, nn.LSTM) and ScanLSTM.supports(module):
        return ScanLSTM(module)
    return module


CONVERTERS = {
    nn.MultiheadAttention: MultiheadAttention,
    nn.TransformerEncoderLayer: TransformerEncoderLayer,
    nn.TransformerDecoderLayer: TransformerDecoderLayer,
    nn.TransformerEncoder: TransformerEncoder,
    nn.TransformerDecoder: TransformerDecoder,
}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


@dataclass
class Swap:
    """One planned replacement: the module at `name` (old) by `new`. `sources` maps each of
    new's parameters to (old's parameter it comes from, rows of it or None for all)."""

    name: str
    old: nn.Module
    new: nn.Module
    sources: dict

    def replaced_modules(self) -> dict[str, nn.Module]:
        """Old submodules (relative path -> module) that the new module does not reuse."""
        kept = {id(m) for m in self.new.modules()}
        return {n: m for n, m in self.old.named_modules() if id(m) not in kept}


# carry(swap) moves per-parameter state the converter does not know (pruning masks, say) from
# swap.old onto swap.new and returns the old buffers it took, as paths relative to swap.old.
Carry = Callable[[Swap], set[str]]


def _parameter_sources(old: nn.Module, new: nn.Module) -> dict:
    old_names = {id(p): n for n, p in old.named_parameters(remove_duplicate=False)}
    sources = {}
    for path, module in new.named_modules():
        if isinstance(module, MultiheadAttention):
            prefix = f"{path}." if path else ""
            for name, (source, rows) in module.parameter_sources().items():
                sources[prefix + name] = (prefix + source, rows)
    for name, param in new.named_parameters(remove_duplicate=False):
        if id(param) in old_names:
            sources[name] = (old_names[id(param)], None)
        elif name not in sources:
            raise CompressorError(f"internal error: converted parameter {name} has no source")
    return sources


def _is_left_alone(module: nn.Module) -> bool:
    return type(module) not in CONVERTERS and isinstance(module, tuple(CONVERTERS))


def plan(model: nn.Module) -> tuple[list[Swap], dict]:
    """The replacements `convert_torch_layers_` would make (outermost first; the model is not
    touched) and a report {module path: {"action", "reason"}} of subclasses left alone."""
    swaps, left, done = [], {}, []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in done):
            continue
        where = name or "<model>"
        if _is_left_alone(module):
            left[where] = {"action": "left as is", "reason": (
                f"{type(module).__name__} subclasses torch's "
                f"{next(c.__name__ for c in CONVERTERS if isinstance(module, c))}; its own "
                "forward may read weights as tensors, so its weights are never swapped")}
            done.append(f"{name}." if name else "")
            continue
        cls = CONVERTERS.get(type(module))
        if cls is None:
            continue
        try:
            new = cls.from_torch(module)
        except CompressorError as exc:
            raise CompressorError(f"cannot convert {where} ({type(module).__name__}): {exc}; "
                                  "the model is unchanged") from None
        swaps.append(Swap(name, module, new, _parameter_sources(module, new)))
        done.append(f"{name}." if name else "")
    return swaps, left


def _check_state(swap: Swap, carried: set[str]) -> None:
    """Refuse to drop hooks or buffers of the modules a swap replaces."""
    for path, module in swap.replaced_modules().items():
        where = ".".join(p for p in (swap.name, path) if p) or "<model>"
        hooks = [h for h in _HOOKS if getattr(module, h, None)]
        if hooks:
            raise CompressorError(f"cannot convert {where} ({type(module).__name__}): it has "
                                  f"{hooks[0].strip('_').replace('_', ' ')} the converted module "
                                  "would lose; remove them first; the model is unchanged")
        for buffer, value in module._buffers.items():
            key = f"{path}.{buffer}" if path else buffer
            if value is not None and key not in carried:
                raise CompressorError(
                    f"cannot convert {where} ({type(module).__name__}): buffer {buffer!r} is not "
                    "carried over to the converted module (pruning masks are carried by "
                    "compressor.pruning.compressible_); the model is unchanged")


def _install(model: nn.Module, swap: Swap) -> None:
    if swap.name == "":  # the model itself: the caller's object becomes the converted module
        adopt_(model, swap.new)
        return
    parent, _, child = swap.name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, swap.new)


def convert_torch_layers_(model: nn.Module, carry: Carry | None = None) -> dict:
    """Convert in place (see the module docstring); returns {module path: {"action": ...,
    "from", "to"} or {"action": "left as is", "reason"}}."""
    swaps, report = plan(model)
    for swap in swaps:
        _check_state(swap, carry(swap) if carry is not None else set())
    for swap in swaps:
        report[swap.name or "<model>"] = {
            "action": "converted", "from": f"torch.nn.{type(swap.old).__name__}",
            "to": f"compressor.nn.{type(swap.new).__name__}"}
        _install(model, swap)
    return report
