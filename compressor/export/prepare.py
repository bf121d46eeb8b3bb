"""Turn a compressed model into plain PyTorch modules the ONNX exporter understands.

Works on a deep copy. In order: pruning masks are folded into the weights (compressor's
`<param>_mask` buffers, torch.nn.utils.prune reparametrisations); modules with `to_dense()`
(SparseConv2d, SparseLinear) become their dense equivalents; power-of-two modules
(`dequantized_weight()`) become nn.Linear / nn.Conv1d / nn.Conv2d holding the exact dequantized
weights; ON-LSTM-style modules get `use_fused_kernels = False`, so forward uses only standard torch
ops.
Then one forward pass under a dispatch spy finds any op outside aten (a compressor kernel, say) and
names the module that calls it, before the exporter fails with a less helpful message.
"""

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from compressor.errors import CompressorError
from compressor.export.qdq import QuantSpec

STANDARD_NAMESPACES = {"aten", "prims", "prim"}


def fold_prune_masks(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Multiply every `<param>_mask` buffer into its parameter and drop it; undo torch prune
    reparametrisations. Uses compressor.pruning.fold_masks first when it exists (in place, or
    returning the folded model). Returns the model and the folded names."""
    try:
        from compressor.pruning import fold_masks
    except ImportError:
        fold_masks = None
    folded = []
    if fold_masks is not None:
        before = {n for n, _ in model.named_buffers() if n.endswith("_mask")}
        result = fold_masks(model)
        model = result if isinstance(result, nn.Module) else model
        gone = sorted(before - {n for n, _ in model.named_buffers()})
        modules = dict(model.named_modules())
        for name in gone:  # a custom forward may still multiply by its mask: make it ones
            owner, _, buffer_name = name.rpartition(".")
            setattr(modules[owner], buffer_name, torch.ones(()))
        folded += gone
    for module_name, module in model.named_modules():
        folded += _remove_torch_prune(module, module_name)
        folded += _fold_mask_buffers(module, module_name)
    return model, folded


def _remove_torch_prune(module: nn.Module, module_name: str) -> list[str]:
    from torch.nn.utils import prune

    names = [hook._tensor_name for hook in list(module._forward_pre_hooks.values())
             if isinstance(hook, prune.BasePruningMethod)]
    for name in names:
        prune.remove(module, name)
    return [f"{module_name}.{name}" for name in names]


def _fold_mask_buffers(module: nn.Module, module_name: str) -> list[str]:
    folded = []
    for buffer_name, mask in list(module.named_buffers(recurse=False)):
        param = getattr(module, buffer_name[:-len("_mask")], None)
        if not buffer_name.endswith("_mask") or not isinstance(param, nn.Parameter):
            continue
        with torch.no_grad():
            param.mul_(mask.to(param.dtype))
        # a forward that still multiplies by the mask now multiplies by ones, which the exporter
        # folds away; keeping the attribute keeps such a forward working
        delattr(module, buffer_name)
        setattr(module, buffer_name, torch.ones((), dtype=param.dtype))
        folded.append(f"{module_name}.{buffer_name}")
    return folded


def _pow2_to_float(module: nn.Module) -> nn.Module:
    """nn.Linear / nn.Conv1d / nn.Conv2d holding `module.dequantized_weight()` exactly."""
    weight = module.dequantized_weight().detach().float()
    bias = getattr(module, "bias", None)
    if weight.dim() == 2:
        plain = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    elif weight.dim() in (3, 4):
        conv = nn.Conv1d if weight.dim() == 3 else nn.Conv2d
        plain = conv(weight.shape[1] * module.groups, weight.shape[0], weight.shape[2:],
                          stride=module.stride, padding=module.padding, dilation=module.dilation,
                          groups=module.groups, bias=bias is not None,
                          padding_mode=getattr(module, "padding_mode", "zeros"))
    else:
        raise CompressorError(f"{type(module).__name__}: dequantized_weight() has "
                              f"{weight.dim()} dims; only Linear (2), Conv1d (3) and Conv2d (4) "
                              "export")
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias.detach().float())
    return plain


def _convert(module: nn.Module) -> nn.Module | None:
    """The plain replacement of a compressed module, or None when it needs none."""
    if callable(getattr(module, "to_dense", None)) and not isinstance(module, torch.Tensor):
        dense = module.to_dense()
        if isinstance(dense, nn.Module):
            return dense
    if callable(getattr(module, "dequantized_weight", None)):
        return _pow2_to_float(module)
    return None


def disable_fused_kernels(model: nn.Module) -> list[str]:
    changed = []
    for name, module in model.named_modules():
        if hasattr(module, "use_fused_kernels"):
            module.use_fused_kernels = False
            changed.append(f"{name or type(module).__name__}: use_fused_kernels=False")
    return changed


def converted_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Deep copy of `model` in which compressed modules are their plain equivalents. The plain
    modules go in through deepcopy's memo, so the compressed ones are never copied (a sparse CSR
    tensor, for one, cannot be deep-copied). Returns the copy and 'path: Old -> New' lines."""
    int8 = _int8_class()
    memo, changes = {}, []
    for name, module in model.named_modules():
        if int8 is not None and isinstance(module, int8):
            continue
        if any(name.startswith(done + ".") for done in changes):
            continue  # inside a module already replaced
        plain = _convert(module)
        if plain is not None:
            memo[id(module)] = plain
            changes.append(name)
    described = [f"{n or '<model>'}: {type(model.get_submodule(n)).__name__} -> "
                 f"{type(memo[id(model.get_submodule(n))]).__name__}" for n in changes]
    return copy.deepcopy(model, memo), described


def _int8_class():
    try:
        from compressor.quantization.int8 import Int8FakeQuant
    except ImportError:
        return None
    return Int8FakeQuant


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

def take_int8_layers(model: nn.Module) -> list[QuantSpec]:
    """Replace Int8FakeQuant layers by their float layer (holding the dequantized weights) and
    return their QDQ parameters."""
    Int8FakeQuant = _int8_class()
    if Int8FakeQuant is None:
        return []
    specs = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Int8FakeQuant):
                specs.append(QuantSpec(f"{parent_name}.{name}".lstrip("."),
                                       child.weight_int8.numpy(), child.weight_scale.numpy(),
                                       float(child.act_scale), int(child.act_zero_point)))
                setattr(parent, name, child.layer)
    return specs



def prepare_for_export(model: nn.Module, inputs: tuple) -> tuple[nn.Module, dict, list]:
    """A plain, eval-mode copy of `model`, what was changed to get it, and the QDQ parameters of
    its int8 layers (which the copy holds as float layers with the dequantized weights)."""
    plain, converted = converted_copy(model)
    plain.eval()
    specs = take_int8_layers(plain)
    plain, folded = fold_prune_masks(plain)
    notes = {"folded_masks": folded, "converted": converted + disable_fused_kernels(plain)}
    found = find_non_standard_op(plain, inputs)
    if found is not None:
        module, op = found
        raise CompressorError(
            f"module {module} calls {op}, which has no standard ONNX operator: convert it to a "
            "standard module first (to_dense(), dequantized weights, use_fused_kernels=False)")
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
