"""Direct sparse convolution and sparse linear (Park et al., ICLR 2017): typed wrappers.

Weights come packed as CSR by output row; see compressor.formats.csr for how to build them.
Inference only: there is no backward (train with masks on dense kernels, then convert).
"""

import math

import torch

from compressor import _extension
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"sparse_conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_csr(op: str, values, index, row_ptr, bias, index_name: str) -> None:
    for name, t in (("values", values), (index_name, index), ("row_ptr", row_ptr)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{op}: {name} must be a 1-dim tensor")
    if index.dtype != torch.int32 or row_ptr.dtype != torch.int32:
        raise TypeError(f"{op}: {index_name} and row_ptr must be int32, got "
                        f"{index.dtype} and {row_ptr.dtype}")
    if bias is not None and bias.shape != (row_ptr.numel() - 1,):
        raise ValueError(f"{op}: bias must have shape ({row_ptr.numel() - 1},), "
                         f"got {tuple(bias.shape)}")


def _use_kernel(op: str, input: torch.Tensor) -> bool:
    return input.dtype == torch.float32 and has_kernel(op, input.device)


def sparse_conv2d(input, values, col_offsets, row_ptr, bias=None, *, input_hw, kernel_size,
                  stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d(input, W, bias, stride, padding, dilation, groups) with W in offset-CSR form.

    input (N, Cin, H, W), any strides; values (nnz,) same dtype; col_offsets, row_ptr int32 from
    compressor.formats.csr.conv_offsets for this input_hw == (H, W). Returns (N, Cout, Ho, Wo).
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise ValueError("sparse_conv2d: input must be a 4-dim (N, C, H, W) tensor")
    _check_csr("sparse_conv2d", values, col_offsets, row_ptr, bias, "col_offsets")
    args = (_pair(input_hw, "input_hw"), _pair(kernel_size, "kernel_size"), _pair(stride, "stride"),
            _pair(padding, "padding"), _pair(dilation, "dilation"), int(groups))
    if tuple(input.shape[-2:]) != args[0]:
        raise ValueError(f"sparse_conv2d: input is {tuple(input.shape[-2:])} but the offsets were "
                         f"packed for input_hw={args[0]}; re-pack them for this size")
    if not _use_kernel("sparse_conv2d", input):
        return reference.sparse_conv2d(input, values, col_offsets, row_ptr, bias, *args)
    return torch.ops.compressor.sparse_conv2d(input.contiguous(), values, col_offsets, row_ptr,
                                              bias, *args)


def sparse_linear(input, values, col_idx, row_ptr, bias=None) -> torch.Tensor:
    """F.linear(input, W, bias) with W (N_out, K) in CSR. input (..., K) -> (..., N_out).

    NaN / inf in a row of the input make that whole output row non-finite, as in F.linear (where
    the pruned zeros multiply them too): the kernels fill such rows with NaN."""
    if not isinstance(input, torch.Tensor) or input.dim() < 1:
        raise ValueError("sparse_linear: input must be a tensor with at least 1 dim (..., K)")
    _check_csr("sparse_linear", values, col_idx, row_ptr, bias, "col_idx")
    # Not reshape(-1, K): with K = 0 the -1 is ambiguous and reshape fails.
    flat = input.reshape(math.prod(input.shape[:-1]), input.shape[-1])
    if _use_kernel("sparse_linear", input):
        out = torch.ops.compressor.sparse_linear(flat.contiguous(), values, col_idx, row_ptr, bias)
    else:
        out = reference.sparse_linear(flat, values, col_idx, row_ptr, bias)
    return out.reshape(*input.shape[:-1], row_ptr.numel() - 1)


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


if _extension.load():

    @torch.library.register_fake("compressor::sparse_conv2d")
    def _sparse_conv2d_fake(input, values, col_offsets, row_ptr, bias, input_hw, kernel_size,
                            stride, padding, dilation, groups):
        ho, wo = (_conv_out(input.shape[2 + i], kernel_size[i], stride[i], padding[i],
                            dilation[i]) for i in range(2))
        return input.new_empty(input.shape[0], row_ptr.shape[0] - 1, ho, wo)

    @torch.library.register_fake("compressor::sparse_linear")
    def _sparse_linear_fake(input, values, col_idx, row_ptr, bias):
        return input.new_empty(input.shape[0], row_ptr.shape[0] - 1)
