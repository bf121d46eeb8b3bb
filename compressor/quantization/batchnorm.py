"""Fold BatchNorm into the convolution (or Linear) before it, for export and quantization.

In eval mode BN is an affine map per channel, y = γ (z − μ) / sqrt(σ² + ε) + β, so
conv+BN equals one conv with W' = W · γ/sqrt(σ² + ε) (per output channel) and
b' = (b − μ) · γ/sqrt(σ² + ε) + β. Quantizing after folding quantizes the weights that really run.
The pairs come from the model's torch.fx trace (compressor.graph): a BN is folded when its only
input is a conv/linear whose only user it is, wherever forward puts them (torchvision-style
conv1/bn1 attributes included).
"""

import copy
import warnings

import torch
from torch import nn

from compressor.graph import TraceError, find_patterns, replace_module
from compressor.nn.fused import fold_bn

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold `bn` (running statistics) into `layer` in place; the caller drops `bn`."""
    weight, bias = fold_bn(layer.weight, layer.bias, bn)
    layer.weight.copy_(weight)
    if layer.bias is None:
        layer.bias = nn.Parameter(bias)
    else:
        layer.bias.copy_(bias)


def _foldable_pair(layer: nn.Module, bn: nn.Module) -> bool:
    if not (isinstance(layer, FOLDABLE) and isinstance(bn, NORMS)):
        return False
    if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return False
    return bn.num_features == layer.weight.shape[0] and bn.track_running_stats


def _fold_sequential(model: nn.Module) -> None:
    """The rule for models fx cannot trace: a BN right after a Conv/Linear in an nn.Sequential."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            layer, bn = module._modules[first], module._modules[second]
            if _foldable_pair(layer, bn):
                fold_bn_into(layer, bn)
                module._modules[second] = nn.Identity()


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Eval-mode model where every BatchNorm fed only by a Conv/Linear (found in the fx trace) is
    folded into it and replaced by nn.Identity. A model fx cannot trace falls back, with a
    warning, to folding BNs that directly follow a Conv/Linear inside an nn.Sequential. Returns a
    copy unless `inplace`."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model  # nothing to fold: no trace (and no warning for models fx cannot trace)
    try:
        patterns = find_patterns(model)
    except TraceError as exc:
        warnings.warn(f"fold_batchnorm: {exc}; folding only BatchNorms that directly follow a "
                      "Conv/Linear inside an nn.Sequential", stacklevel=2)
        _fold_sequential(model)
        return model
    for unit in patterns.units:
        if unit.bn is not None:
            fold_bn_into(model.get_submodule(unit.conv), model.get_submodule(unit.bn))
            replace_module(model, unit.bn, nn.Identity())
    return model
