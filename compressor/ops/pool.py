"""max_pool2d: NCHW float32 max pooling on the CPU kernel, torch's elsewhere.

The pools between sparse layers: torch's NCHW max-pool kernel is several times slower than a
pass over the input (8.7 ms for VGG-16's first pool, 2 threads, on the machine of
docs/benchmarks.md), and its channels-last one pays two layout conversions.
"""

import torch

from compressor import _extension
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    """F.max_pool2d(input, kernel_size, stride, padding) for a 4-dim input, without indices,
    dilation 1, floor mode; padding at most half of kernel_size (as torch requires). NaN in a
    window gives NaN. Any strides (a non-contiguous input is copied once)."""
    kernel_size = reference.pair("max_pool2d", "kernel_size", kernel_size)
    stride = kernel_size if stride is None else reference.pair("max_pool2d", "stride", stride)
    padding = reference.pair("max_pool2d", "padding", padding)
    if input.dtype != torch.float32 or not has_kernel("max_pool2d", input.device):
        return reference.max_pool2d(input, kernel_size, stride, padding)
    reference.check_max_pool2d(input, kernel_size, stride, padding)
    return torch.ops.compressor.max_pool2d(input.contiguous(), kernel_size, stride, padding)


if _extension.load():

    @torch.library.register_fake("compressor::max_pool2d")
    def _max_pool2d_fake(input, kernel_size, stride, padding):
        n, c, h, w = input.shape
        return input.new_empty(n, c, *(reference.conv_out(size, kernel_size[i], stride[i],
                                                          padding[i])
                                       for i, size in enumerate((h, w))))
