"""Masks on any module parameter, kept as buffers named `<param>_mask` on the owning module.

A mask has the parameter's dtype and shape and holds 0/1. The parameter itself stays a plain
nn.Parameter (so optimizers, state_dicts and other helpers see the usual names) with its pruned
entries set to exactly zero. Three mechanisms keep them zero:

- a forward pre-hook re-applies the masks when the parameter changed since it was last masked
  (tracked by the tensor version counter, so a module called many times per forward, or
  gradient accumulation, never sees an in-place change of a tensor autograd saved);
- `mask_optimizer` zeroes masked gradients before each step, re-masks after it and clears the
  optimizer state (momentum, Adam moments) at pruned positions, so weight decay and stale
  momentum cannot resurrect a pruned weight;
- `apply_masks` can be called at any time (the lottery trainer calls it after every step).
"""

import torch
from torch import nn

MASK_SUFFIX = "_mask"
_VERSIONS = "_pruning_mask_versions"


def masked_param_names(module: nn.Module) -> list[str]:
    """Names of this module's own parameters that carry a mask."""
    return [name[:-len(MASK_SUFFIX)] for name in module._buffers
            if name.endswith(MASK_SUFFIX) and module._buffers[name] is not None
            and module._parameters.get(name[:-len(MASK_SUFFIX)]) is not None]


@torch.no_grad()
def _mask_module(module: nn.Module, force: bool = False) -> None:
    versions = module.__dict__.setdefault(_VERSIONS, {})
    for name in masked_param_names(module):
        param = module._parameters[name]
        if force or versions.get(name) != param._version:
            param.mul_(module._buffers[name + MASK_SUFFIX])
            versions[name] = param._version


def _mask_pre_hook(module: nn.Module, args) -> None:
    _mask_module(module)


def _has_hook(module: nn.Module) -> bool:
    return any(hook is _mask_pre_hook for hook in module._forward_pre_hooks.values())


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
    if not _has_hook(module):
        module.register_forward_pre_hook(_mask_pre_hook)
    _mask_module(module, force=True)


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
        _mask_module(module, force=True)
    return model


def fold_masks(model: nn.Module) -> nn.Module:
    """Multiply masks in and remove all mask machinery: plain modules and parameters remain,
    with zeros in place. Returns the same model."""
    for module in model.modules():
        names = masked_param_names(module)
        if names:
            _mask_module(module, force=True)
        for name in names:
            del module._buffers[name + MASK_SUFFIX]
        for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _mask_pre_hook]:
            del module._forward_pre_hooks[key]
        module.__dict__.pop(_VERSIONS, None)
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


class MaskKeeper:
    """The fast path for a training loop whose masks do not change: (param, mask) pairs found
    once; `grads()` before the optimizer step, `weights()` after it. With gradients masked and
    optimizer state starting at zero, pruned weights get exactly zero updates under SGD
    (momentum, weight decay) and Adam; `weights()` also undoes anything else that touched them."""

    def __init__(self, model: nn.Module):
        self.entries = [(module, name, module._parameters[name],
                         module._buffers[name + MASK_SUFFIX]) for _, module, name in
                        iter_masked(model)]

    @torch.no_grad()
    def grads(self) -> None:
        for _, _, param, mask in self.entries:
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def weights(self) -> None:
        for module, name, param, mask in self.entries:
            param.mul_(mask)
            module.__dict__.setdefault(_VERSIONS, {})[name] = param._version


def _param_masks(model: nn.Module) -> dict[int, torch.Tensor]:
    return {id(module._parameters[name]): module._buffers[name + MASK_SUFFIX]
            for _, module, name in iter_masked(model)}


def mask_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Keep `model`'s masks through `optimizer.step()`: mask gradients before the step, re-mask
    weights and clear per-weight optimizer state at pruned positions after it. Masks are looked
    up at every step, so masks added or changed later (gradual pruning) are honoured.
    Returns the two hook handles (call `.remove()` on them to detach)."""

    def before(opt, args, kwargs):
        masks = _param_masks(model)
        for group in opt.param_groups:
            for param in group["params"]:
                mask = masks.get(id(param))
                if mask is not None and param.grad is not None:
                    param.grad.mul_(mask)

    @torch.no_grad()
    def after(opt, args, kwargs):
        masks = _param_masks(model)
        for group in opt.param_groups:
            for param in group["params"]:
                mask = masks.get(id(param))
                if mask is None:
                    continue
                for value in opt.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value.mul_(mask)
        apply_masks(model)

    return (optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after))


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
