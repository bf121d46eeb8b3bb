"""SparseBottleneck: a residual block of three sparse convs (ResNet's Bottleneck as the converter
fuses it) run as one op, compressor::sparse_bottleneck, so that the block's inner activations stay
in cache instead of going to memory and back between three ops.

It is a ResidualBlock with the same children, state_dict and results (fp32 rounding aside): where
the fused kernel does not apply (another device, dtype or layout of the children) it runs as the
ResidualBlock does, and it exports as one.
"""

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.nn.fused import ResidualBlock
from compressor.nn.sparse import SparseConv2d
from compressor.ops._dispatch import has_kernel


def _is_1x1(conv: nn.Module) -> bool:
    return conv.kernel_size == (1, 1) and conv.padding == (0, 0)


def bottleneck_mismatch(block: nn.Module) -> str | None:
    """Why `block` cannot run as one sparse_bottleneck call, or None when it can: a
    ResidualBlock whose main is exactly three SparseConv2d (not subclasses), a 1x1, a k x k with
    k odd padded k // 2 and any square stride, and a 1x1 taking the residual, the 1x1s stride 1,
    all dilation 1 and groups 1, the channels chained. (The shortcut may be any module.)"""
    if not isinstance(block, ResidualBlock):
        return f"{type(block).__name__} is not a ResidualBlock"
    if len(block.main) != 3 or any(type(c) is not SparseConv2d for c in block.main):
        return "its main is not three SparseConv2d"
    c0, c1, c2 = block.main
    k = c1.kernel_size[0]
    if not (_is_1x1(c0) and _is_1x1(c2)):
        return "its first and last convs are not 1x1 unpadded"
    if c1.kernel_size != (k, k) or k % 2 == 0 or c1.padding != (k // 2, k // 2):
        return f"its middle conv is not a square odd 'same' conv (kernel {c1.kernel_size}, " \
               f"padding {c1.padding})"
    if c0.stride != (1, 1) or c2.stride != (1, 1) or c1.stride[0] != c1.stride[1]:
        return "a 1x1 conv is strided, or the middle conv's stride is not square"
    if any(c.dilation != (1, 1) or c.groups != 1 for c in block.main):
        return "a conv has a dilation or groups other than 1"
    if c0.residual or c1.residual or not c2.residual:
        return "only its last conv may take the residual"
    if c0.out_channels != c1.in_channels or c1.out_channels != c2.in_channels:
        return "its convs' channels do not chain"
    return None


class SparseBottleneck(ResidualBlock):
    """A ResidualBlock (see bottleneck_mismatch for its shape) computed by one
    compressor::sparse_bottleneck call: per slab of rows, the first conv's output goes to a
    per-thread padded (and, under a strided middle conv, phase-split) scratch, the middle conv's
    to a second, and the last conv writes the block's output with the shortcut added, so nothing
    between the convs leaves the cache. The shortcut, if any, runs first as in ResidualBlock.
    The converter swaps it in for every block that fits where the whole model measures not
    slower with them."""

    @classmethod
    def from_block(cls, block: ResidualBlock) -> "SparseBottleneck":
        """The same children (shared, not copied) as one fused block; the mode is kept."""
        why = bottleneck_mismatch(block)
        if why:
            raise CompressorError(f"SparseBottleneck.from_block: {why}")
        return cls(list(block.main), block.shortcut).train(block.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.dtype == torch.float32
                and has_kernel("sparse_bottleneck", x.device)
                and x.shape[1] == self.main[0].in_channels
                and bottleneck_mismatch(self) is None):
            return super().forward(x)
        identity = x if self.shortcut is None else self.shortcut(x)
        c0, c1, c2 = self.main
        return torch.ops.compressor.sparse_bottleneck(
            x.contiguous(), c0.values, c0.col_idx, c0.row_ptr, c0.bias,
            c1.values, c1.col_idx, c1.row_ptr, c1.bias,
            c2.values, c2.col_idx, c2.row_ptr, c2.bias, c1.kernel_size[0], c1.stride[0],
            identity.contiguous(), c0.activation, c1.activation, c2.activation)

    def export_module(self) -> nn.Module:
        """The export protocol: the ResidualBlock of the same children (each exports itself)."""
        return ResidualBlock(list(self.main), self.shortcut)
