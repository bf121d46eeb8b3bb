"""Fused conv blocks: BatchNorm folded into the conv, the activation (and a residual add) applied
by the conv itself.

`ConvAct` is the dense form (nn.Conv2d with the BN folded in, then + residual, then the
activation); `SparseConv2d` with `activation` / `residual=True` is the sparse form, doing all of it
in one pass. `ResidualBlock` holds a chain of either: act(main(x) + shortcut(x)) as one module, the
shape torchvision's BasicBlock / Bottleneck and MobileNetV2's inverted residual reduce to.
"""

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from compressor.errors import CompressorError
from compressor.ops import max_pool2d
from compressor.ops._dispatch import has_kernel
from compressor.ops.reference import ACTIVATIONS, activate


@torch.no_grad()
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None,
            bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') with layer(x) followed by eval-mode `bn` equal to one layer: per output channel
    W' = W γ/sqrt(σ² + ε), b' = (b − μ) γ/sqrt(σ² + ε) + β, computed in float64."""
    if bn.running_mean is None:
        raise CompressorError(f"{type(bn).__name__} tracks no running statistics; it cannot be "
                              "folded")
    if bn.num_features != weight.shape[0]:
        raise CompressorError(f"{type(bn).__name__}({bn.num_features}) does not match a layer "
                              f"with {weight.shape[0]} outputs")
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(inv_std)
    factor = gamma * inv_std
    folded = weight.double() * factor.reshape((-1,) + (1,) * (weight.dim() - 1))
    b = bias.double() if bias is not None else torch.zeros_like(factor)
    new_bias = (b - bn.running_mean.double()) * factor + beta
    return folded.to(weight.dtype), new_bias.to(weight.dtype)


def check_activation(activation: str, who: str) -> str:
    if activation not in ACTIVATIONS:
        raise CompressorError(f"{who}: activation must be one of {', '.join(ACTIVATIONS)}, got "
                              f"{activation!r}")
    return activation


class ConvAct(nn.Module):
    """act(conv(x) + residual): the dense twin of a fused SparseConv2d (and what one becomes for
    export). `residual` says whether forward takes the residual."""

    def __init__(self, conv: nn.Conv2d, activation: str = "none", residual: bool = False):
        super().__init__()
        self.conv = conv
        self.activation = check_activation(activation, "ConvAct")
        self.residual = bool(residual)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, bn=None, activation: str = "none",
                   residual: bool = False) -> "ConvAct":
        """A copy of `conv` with `bn` (eval statistics) folded into its weight and bias."""
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups,
                          bias=conv.bias is not None or bn is not None,
                          padding_mode=conv.padding_mode, device=conv.weight.device,
                          dtype=conv.weight.dtype)
        weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            weight, bias = fold_bn(weight, bias, bn)
        with torch.no_grad():
            fused.weight.copy_(weight)
            if bias is not None:
                fused.bias.copy_(bias)
        return cls(fused, activation, residual)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        check_residual_call(self, residual)
        out = self.conv(x)
        return activate(out if residual is None else out + residual, self.activation)

    def extra_repr(self) -> str:
        return f"activation={self.activation}, residual={self.residual}"


def check_residual_call(module: nn.Module, residual) -> None:
    if (residual is not None) != module.residual:
        want = "a residual" if module.residual else "no residual"
        raise CompressorError(f"{type(module).__name__} was fused with {want}; call it "
                              f"{'as (x, residual)' if module.residual else 'as (x)'}")


class ResidualBlock(nn.Module):
    """main[-1](main[-2](...main[0](x)), residual=shortcut(x) or x): a residual block whose last
    conv adds the shortcut and applies the block's activation itself."""

    def __init__(self, main: list[nn.Module], shortcut: nn.Module | None = None):
        super().__init__()
        if not main or not getattr(main[-1], "residual", False):
            raise CompressorError("ResidualBlock: the last main module must take the residual")
        self.main = nn.ModuleList(main)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        last = len(self.main) - 1
        for i, unit in enumerate(self.main):  # (slicing a ModuleList builds a new one per call)
            if i == last:
                return unit(x, identity)
            x = unit(x)


class FastMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d with the same values (a max is exact), computed by compressor's NCHW kernel
    where it applies (CPU float32, no indices, dilation 1, floor mode) and channels-last by torch
    otherwise. On VGG-16's first pool (2 threads, AMD EPYC Zen 4, one run) torch's NCHW kernel took
    8.0 ms, this 0.61 ms. The converter swaps it in where it measures faster."""

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> "FastMaxPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                   pool.return_indices, pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or self.return_indices:
            return super().forward(x)
        if (x.dtype == torch.float32 and has_kernel("max_pool2d", x.device) and not self.ceil_mode
                and _pair(self.dilation) == (1, 1)):
            return max_pool2d(x, self.kernel_size, self.stride, self.padding)
        out = super().forward(x.contiguous(memory_format=torch.channels_last))
        return out.contiguous()

    def export_module(self) -> nn.Module:
        """The export protocol: the plain nn.MaxPool2d."""
        return nn.MaxPool2d(self.kernel_size, self.stride, self.padding, self.dilation,
                            self.return_indices, self.ceil_mode)
