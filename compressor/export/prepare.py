"""Turn a compressed model into plain PyTorch modules the ONNX exporter understands.

Works on a deep copy. Pruning masks are folded into the weights (compressor.pruning's masks,
torch.nn.utils.prune reparametrisations); then every module that follows the export protocol
(compressor.nn.convert.Exportable: SparseConv2d / SparseLinear, Pow2*, Int8FakeQuant, ONLSTM,
MultiheadAttention) is replaced by what its `export_module()` returns (nn.LSTM by its scan form,
for a dynamic sequence length), and the children of that are treated the same way.
Int8FakeQuant layers also give the QDQ parameters the graph rewrite needs. Then one forward
pass under a dispatch spy finds any op outside aten (a compressor kernel, say) and names the
module that calls it, before the exporter fails with a less helpful message.
"""

import copy

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils._python_dispatch import TorchDispatchMode

from compressor.errors import CompressorError
from compressor.export.qdq import QuantSpec
from compressor.nn.convert import export_form
from compressor.pruning import fold_masks, get_masks
from compressor.quantization.int8 import Int8FakeQuant

STANDARD_NAMESPACES = {"aten", "prims", "prim"}


def fold_prune_masks(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Fold compressor's pruning masks and torch.nn.utils.prune reparametrisations into the
    weights, in place. Returns the model and the names of the weights that were masked."""
    folded = sorted(get_masks(model))
    fold_masks(model)
    for module_name, module in model.named_modules():
        names = [hook._tensor_name for hook in list(module._forward_pre_hooks.values())
                 if isinstance(hook, torch_prune.BasePruningMethod)]
        for name in names:
            torch_prune.remove(module, name)
            folded.append(f"{module_name}.{name}" if module_name else name)
    return model, folded


def _int8_spec(name: str, module: Int8FakeQuant) -> QuantSpec:
    return QuantSpec(name, module.weight_int8.cpu().numpy(), module.weight_scale.cpu().numpy(),
                     float(module.act_scale), int(module.act_zero_point),
                     float(module.out_scale), int(module.out_zero_point))


def _export_children(parent: nn.Module, prefix: str, changes: list, specs: list,
                     originals: set[int], wrapped: nn.Module | None = None) -> None:
    for name, child in list(parent.named_children()):
        path = f"{prefix}{name}"
        if child is wrapped or id(child) not in originals:
            # the module an export form wraps, or one an export form made (ScanLSTM's fresh
            # nn.LSTM): never converted again, but its children may be the model's own
            _export_children(child, f"{path}.", changes, specs, originals)
            continue
        plain = _exported(child, path, changes, specs, originals)
        if plain is not child:
            setattr(parent, name, plain)


def _exported(module: nn.Module, path: str, changes: list, specs: list,
              originals: set[int]) -> nn.Module:
    """What `module` (one of the model's own) exports as (compressor.nn.convert.export_form),
    its children exported too."""
    if isinstance(module, Int8FakeQuant):
        specs.append(_int8_spec(path, module))
    plain = export_form(module)
    if not isinstance(plain, nn.Module):
        raise CompressorError(f"{path or '<model>'} ({type(module).__name__}): "
                              f"export_module() returned {type(plain).__name__}, not a module")
    if plain is not module:
        changes.append(f"{path or '<model>'}: {type(module).__name__} -> {type(plain).__name__}")
    _export_children(plain, f"{path}." if path else "", changes, specs, originals,
                     wrapped=module)
    return plain


def exported_copy(model: nn.Module) -> tuple[nn.Module, dict, list[QuantSpec]]:
    """A deep copy of `model` with its masks folded and every Exportable module replaced by its
    export_module(); returns the copy, notes {"folded_masks": weight names, "converted":
    'path: Old -> New' lines} and the QDQ parameters of the int8 layers."""
    plain, folded = fold_prune_masks(copy.deepcopy(model))
    changes, specs = [], []
    originals = {id(m) for m in plain.modules()}  # what export forms create is already plain
    plain = _exported(plain, "", changes, specs, originals)
    return plain, {"folded_masks": folded, "converted": changes}, specs


class _ModuleStack:
    """Forward hooks that keep the path of the module currently running."""

    def __init__(self, model: nn.Module):
        self.stack, self.handles = [], []
        for name, module in model.named_modules():
            label = f"{name or '<model>'} ({type(module).__name__})"
            self.handles.append(module.register_forward_pre_hook(
                lambda m, a, label=label: self.stack.append(label)))
            self.handles.append(module.register_forward_hook(self._pop))

    def _pop(self, module, args, output):
        self.stack.pop()  # returning the label would replace the module's output

    def remove(self):
        for handle in self.handles:
            handle.remove()


class _NonStandardOpSpy(TorchDispatchMode):
    """Records the first op outside aten/prims and the module that called it."""

    def __init__(self, stack: list):
        super().__init__()
        self.stack, self.found = stack, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace = getattr(func, "namespace", "aten")
        if self.found is None and namespace not in STANDARD_NAMESPACES:
            self.found = (self.stack[-1] if self.stack else "<model>", str(func))
        return func(*args, **(kwargs or {}))


def find_non_standard_op(model: nn.Module, inputs: tuple) -> tuple[str, str] | None:
    """(module, op) of the first non-standard op the forward pass calls, or None."""
    modules = _ModuleStack(model)
    try:
        with torch.no_grad(), _NonStandardOpSpy(modules.stack) as spy:
            model(*inputs)
    finally:
        modules.remove()
    return spy.found

def prepare_for_export(model: nn.Module, inputs: tuple) -> tuple[nn.Module, dict, list]:
    """A plain, eval-mode copy of `model`, what was changed to get it, and the QDQ parameters of
    its int8 layers (which the copy holds as float layers with the dequantized weights)."""
    plain, notes, specs = exported_copy(model)
    plain.eval()
    found = find_non_standard_op(plain, inputs)
    if found is not None:
        module, op = found
        raise CompressorError(
            f"module {module} calls {op}, which has no standard ONNX operator: give its class "
            "an export_module() method returning a standard module (compressor.nn.convert."
            "Exportable)")
    return plain, notes, specs


def locate_export_failure(model: nn.Module, inputs: tuple) -> str | None:
    """'path (Class)' of the deepest submodule that torch.export cannot trace on the inputs it
    receives in the model's forward, or None when every submodule traces on its own."""
    seen, handles = {}, []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, args)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    # deepest first: a failing leaf is the cause, its parents fail only because of it
    for name in sorted(seen, key=lambda n: -n.count(".")):
        args = seen[name]
        if not all(isinstance(a, torch.Tensor) for a in args):
            continue
        module = model.get_submodule(name)
        try:
            torch.export.export(module, tuple(args), strict=False)
        except Exception:  # any tracing failure marks the culprit
            return f"{name} ({type(module).__name__})"
    return None
