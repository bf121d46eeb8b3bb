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
    return reference.pair("sparse_conv2d", name, value)


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


def _check_residual(residual, input, shape, op: str = "sparse_conv2d") -> None:
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != shape:
        got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual)
        raise ValueError(f"{op}: residual must have the output's shape {shape}, "
                         f"got {got}")
    if residual.dtype != input.dtype or residual.device != input.device:
        raise ValueError(f"{op}: residual must be {input.dtype} on {input.device} like "
                         f"the input, got {residual.dtype} on {residual.device}")


def sparse_conv2d(input, values, col_idx, row_ptr, bias=None, *, kernel_size, stride=1,
                  padding=0, dilation=1, groups: int = 1, residual=None,
                  activation: str = "none") -> torch.Tensor:
    """act(F.conv2d(input, W, bias, stride, padding, dilation, groups) + residual), in one pass.

    input (N, Cin, H, W), any strides; W (Cout, Cin/groups, kh, kw) in CSR by output channel:
    values (nnz,) float32, col_idx (nnz,) int32 flattened columns c*kh*kw + r*kw + s (strictly
    increasing within a row), row_ptr (Cout + 1,) int32, from compressor.formats.csr.csr_from_dense;
    residual (N, Cout, Ho, Wo) or None; activation none | relu | relu6 | silu.
    Returns (N, Cout, Ho, Wo).
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise ValueError("sparse_conv2d: input must be a 4-dim (N, C, H, W) tensor")
    _check_csr("sparse_conv2d", values, col_idx, row_ptr, bias, "col_idx")
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"sparse_conv2d: activation must be one of "
                         f"{', '.join(reference.ACTIVATIONS)}, got {activation!r}")
    args = (_pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding"),
            _pair(dilation, "dilation"), int(groups))
    _check_residual(residual, input, _out_shape(input, row_ptr, *args[:4]))
    if not _use_kernel("sparse_conv2d", input):
        return reference.sparse_conv2d(input, values, col_idx, row_ptr, bias, *args, residual,
                                       activation)
    return torch.ops.compressor.sparse_conv2d(
        input.contiguous(), values, col_idx, row_ptr, bias, *args,
        None if residual is None else residual.contiguous(), activation)


def sparse_bottleneck(input, conv0, conv1, conv2, kernel_size: int, residual=None,
                      activations=("none", "none", "none"), stride: int = 1) -> torch.Tensor:
    """A residual bottleneck in one pass: act2(conv2(act1(conv1(act0(conv0(input))))) +
    residual), the inner activations kept in cache (CPU kernel; elsewhere the three convs).

    conv_i = (values, col_idx, row_ptr, bias) in CSR as for sparse_conv2d: conv0 1x1 Cin -> Cm,
    conv1 kernel_size x kernel_size (odd) Cm -> Cm2 padded kernel_size // 2 with `stride`,
    conv2 1x1 Cm2 -> Cout; groups 1. input (N, Cin, H, W), any strides; residual
    (N, Cout, Ho, Wo) or None, Ho = (H - 1) // stride + 1 (Wo alike); activations: three of
    none | relu | relu6 | silu. Returns (N, Cout, Ho, Wo)."""
    if not isinstance(input, torch.Tensor) or input.dim() != 4:
        raise ValueError("sparse_bottleneck: input must be a 4-dim (N, C, H, W) tensor")
    reference.check_bottleneck_geometry(kernel_size, stride)
    convs = (conv0, conv1, conv2)
    for i, conv in enumerate(convs):
        if not isinstance(conv, (tuple, list)) or len(conv) != 4:
            raise ValueError(f"sparse_bottleneck: conv{i} must be (values, col_idx, row_ptr, "
                             f"bias), got {type(conv).__name__}")
        _check_csr(f"sparse_bottleneck conv{i}", *conv, "col_idx")
    if not isinstance(activations, (tuple, list)) or len(activations) != 3 or any(
            a not in reference.ACTIVATIONS for a in activations):
        raise ValueError(f"sparse_bottleneck: activations must be three of "
                         f"{', '.join(reference.ACTIVATIONS)}, got {activations!r}")
    _check_residual(residual, input, _bottleneck_shape(input, conv2[2], stride),
                    "sparse_bottleneck")
    if not _use_kernel("sparse_bottleneck", input):
        return reference.sparse_bottleneck(input, conv0, conv1, conv2, kernel_size, residual,
                                           tuple(activations), stride)
    return torch.ops.compressor.sparse_bottleneck(
        input.contiguous(), *conv0, *conv1, *conv2, kernel_size, stride,
        None if residual is None else residual.contiguous(), *activations)


def _bottleneck_shape(input, row_ptr2, stride: int) -> tuple:
    n, _, h, w = input.shape
    return (n, row_ptr2.shape[0] - 1, (h - 1) // stride + 1, (w - 1) // stride + 1)


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


def _out_shape(input, row_ptr, kernel_size, stride, padding, dilation) -> tuple:
    ho, wo = (reference.conv_out(input.shape[2 + i], kernel_size[i], stride[i], padding[i],
                                 dilation[i]) for i in range(2))
    return (input.shape[0], row_ptr.shape[0] - 1, ho, wo)


if _extension.load():

    @torch.library.register_fake("compressor::sparse_conv2d")
    def _sparse_conv2d_fake(input, values, col_idx, row_ptr, bias, kernel_size, stride, padding,
                            dilation, groups, residual=None, activation="none"):
        shape = _out_shape(input, row_ptr, kernel_size, stride, padding, dilation)
        torch._check(residual is None or tuple(residual.shape) == shape,
                     lambda: "sparse_conv2d: residual must have the output's shape")
        return input.new_empty(shape)

    @torch.library.register_fake("compressor::sparse_bottleneck")
    def _sparse_bottleneck_fake(input, values0, col_idx0, row_ptr0, bias0, values1, col_idx1,
                                row_ptr1, bias1, values2, col_idx2, row_ptr2, bias2, kernel_size,
                                stride, residual, activation0, activation1, activation2):
        shape = _bottleneck_shape(input, row_ptr2, stride)
        torch._check(residual is None or tuple(residual.shape) == shape,
                     lambda: "sparse_bottleneck: residual must have the output's shape")
        return input.new_empty(shape)

    @torch.library.register_fake("compressor::sparse_linear")
    def _sparse_linear_fake(input, values, col_idx, row_ptr, bias):
        return input.new_empty(input.shape[0], row_ptr.shape[0] - 1)
