"""Masks on any module parameter, kept as buffers named `<param>_mask` on the owning module.

A mask has the parameter's dtype and shape and holds 0/1. The parameter itself stays a plain
nn.Parameter (so optimizers, state_dicts and other helpers see the usual names) with its pruned
entries set to exactly zero. One mechanism keeps them zero while training: `HoldMasks`, a
callback of compressor.train.fit (or called by hand around `optimizer.step()`), which zeroes
masked gradients before the step, clears per-weight optimizer state (momentum, Adam moments) at
pruned positions and re-masks the weights after it, so weight decay and stale momentum cannot
resurrect a pruned weight. `apply_masks(model)` re-applies every mask at any other time (after a
load or a manual edit).
"""

import torch
from torch import nn

from compressor.train import Callback

MASK_SUFFIX = "_mask"


def masked_param_names(module: nn.Module) -> list[str]:
    """Names of this module's own parameters that carry a mask."""
    return [name[:-len(MASK_SUFFIX)] for name in module._buffers
            if name.endswith(MASK_SUFFIX) and module._buffers[name] is not None
            and module._parameters.get(name[:-len(MASK_SUFFIX)]) is not None]


@torch.no_grad()
def _mask_module(module: nn.Module) -> None:
    for name in masked_param_names(module):
        module._parameters[name].mul_(module._buffers[name + MASK_SUFFIX])


def set_mask(module: nn.Module, param_name: str, mask: torch.Tensor) -> None:
    """Attach (or replace) the mask of `module.<param_name>` and zero the pruned entries now."""
    param = module._parameters.get(param_name)
    if param is None:
        raise ValueError(f"set_mask: {type(module).__name__} has no parameter {param_name!r}")
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(f"set_mask: mask shape {tuple(mask.shape)} does not match "
                         f"{param_name} {tuple(param.shape)}")
    mask = mask.detach().to(device=param.device, dtype=param.dtype)
    buffer_name = param_name + MASK_SUFFIX
    if module._buffers.get(buffer_name) is not None:
        module._buffers[buffer_name].copy_(mask)
    else:
        module.register_buffer(buffer_name, mask.clone())
    _mask_module(module)


def iter_masked(model: nn.Module):
    """(qualified_param_name, module, param_name) for every masked parameter."""
    for mod_name, module in model.named_modules():
        for name in masked_param_names(module):
            yield (f"{mod_name}.{name}" if mod_name else name), module, name


def has_masks(model: nn.Module) -> bool:
    return next(iter_masked(model), None) is not None


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{qualified parameter name: mask} (the live buffers, not copies)."""
    return {qual: module._buffers[name + MASK_SUFFIX] for qual, module, name in iter_masked(model)}


def apply_masks(model: nn.Module) -> nn.Module:
    """Zero every pruned entry now (after an optimizer step, a load, a manual edit)."""
    for module in model.modules():
        _mask_module(module)
    return model


def fold_masks(model: nn.Module) -> nn.Module:
    """Multiply masks in and remove all mask machinery: plain modules and parameters remain,
    with zeros in place. Returns the same model."""
    for module in model.modules():
        names = masked_param_names(module)
        if names:
            _mask_module(module)
        for name in names:
            del module._buffers[name + MASK_SUFFIX]
    return model


def load_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """Load a state_dict saved from a masked model into `model`, creating the masks it carries
    (an unmasked model rejects the `<param>_mask` keys with plain `model.load_state_dict`)."""
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        mod_name, _, buffer_name = key.rpartition(".")
        module = modules.get(mod_name)
        param_name = buffer_name[:-len(MASK_SUFFIX)]
        if module is not None and module._parameters.get(param_name) is not None:
            set_mask(module, param_name, torch.ones_like(value))
    result = model.load_state_dict(state_dict, strict=strict)
    apply_masks(model)
    return result


class HoldMasks(Callback):
    """Keeps pruned weights at exactly zero through optimizer steps.

    With masked gradients and optimizer state cleared at pruned positions, pruned weights get
    exactly zero updates under SGD (momentum, weight decay) and Adam; re-masking after the step
    also undoes anything else that touched them. `dynamic=True` looks the masks up at every
    step, for schedules that add or change masks while training (gradual pruning)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 dynamic: bool = False):
        self.model, self.optimizer, self.dynamic = model, optimizer, dynamic
        self.entries = self._entries()

    def _entries(self):
        return [(module._parameters[name], module._buffers[name + MASK_SUFFIX])
                for _, module, name in iter_masked(self.model)]

    @torch.no_grad()
    def after_backward(self, step: int = 0) -> None:
        if self.dynamic:
            self.entries = self._entries()
        for param, mask in self.entries:
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def after_step(self, step: int = 0) -> None:
        if self.dynamic:
            self.entries = self._entries()
        state = self.optimizer.state if self.optimizer is not None else {}
        for param, mask in self.entries:
            param.mul_(mask)
            for value in state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.mul_(mask)


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of pruned entries per masked parameter, and 'total' over all of them."""
    out, zeros, count = {}, 0, 0
    for qual, mask in get_masks(model).items():
        pruned = int((mask == 0).sum())
        out[qual] = pruned / max(mask.numel(), 1)
        zeros += pruned
        count += mask.numel()
    out["total"] = zeros / max(count, 1)
    return out
