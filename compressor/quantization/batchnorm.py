"""Fold BatchNorm into the convolution (or Linear) before it, for export and quantization.

In eval mode BN is an affine map per channel, y = γ (z − μ) / sqrt(σ² + ε) + β, so
conv+BN equals one conv with W' = W · γ/sqrt(σ² + ε) (per output channel) and
b' = (b − μ) · γ/sqrt(σ² + ε) + β. Quantizing after folding quantizes the weights that really run.
"""

import copy

import torch
from torch import nn

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold `bn` (running statistics) into `layer` in place; the caller drops `bn`."""
    if bn.running_mean is None:
        raise ValueError(f"{type(bn).__name__} tracks no running statistics; it cannot be folded")
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.copy_((layer.weight.double() * factor.reshape(shape)).to(layer.weight.dtype))
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(factor)
    new_bias = ((bias - bn.running_mean.double()) * factor + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


def _foldable_pair(layer: nn.Module, bn: nn.Module) -> bool:
    if not (isinstance(layer, FOLDABLE) and isinstance(bn, NORMS)):
        return False
    if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return False
    return bn.num_features == layer.weight.shape[0] and bn.track_running_stats


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Eval-mode model where every BatchNorm directly after a Conv/Linear inside an nn.Sequential
    is folded into it and replaced by nn.Identity (a BN elsewhere stays: its input is not known
    without tracing). Returns a copy unless `inplace`."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            layer, bn = module._modules[first], module._modules[second]
            if _foldable_pair(layer, bn):
                fold_bn_into(layer, bn)
                module._modules[second] = nn.Identity()
    return model
