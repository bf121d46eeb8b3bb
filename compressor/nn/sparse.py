"""Inference modules running pruned Conv2d / Linear layers on the direct sparse kernels.

`SparseConv2d.from_dense(conv, bn, activation, residual)` and `SparseLinear.from_dense(linear)` keep
only the nonzero weights (CSR, in the state_dict); `to_dense()` gives back the equivalent dense
module (for ONNX export or further training). There is no backward: train with masks on dense
kernels, then convert.
"""

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.formats.csr import csr_from_dense, dense_from_csr, sparsity
from compressor.nn.fused import ConvAct, check_activation, check_residual_call, fold_bn
from compressor.ops._dispatch import has_kernel
from compressor.ops.sparse import sparse_conv2d, sparse_linear

_CSR = ("values", "col_idx", "row_ptr")


class _CsrModule(nn.Module):
    """Holds values / col_idx / row_ptr / bias buffers whose nnz may change on load."""

    def _set_csr(self, values, col_idx, row_ptr, bias) -> None:
        self.register_buffer("values", values)
        self.register_buffer("col_idx", col_idx)
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint of the same layer pruned differently has another nnz: take its sizes.
        for name in _CSR:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def sparsity(self) -> float:
        return sparsity(self.values, self.dense_numel)


class SparseConv2d(_CsrModule):
    """nn.Conv2d (zeros padding) with a CSR weight, computed by direct sparse convolution; fused
    forms apply `activation` (none, relu, relu6, silu) and, with `residual=True`, add the residual
    passed to forward before it: act(conv(x) + bias + residual), in the same pass."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups=1, *, values, col_idx, row_ptr, bias=None,
                 activation: str = "none", residual: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.dense_numel = out_channels * in_channels // groups * self.kernel_size[0] * \
            self.kernel_size[1]
        self.activation = check_activation(activation, "SparseConv2d")
        self.residual = bool(residual)
        self._set_csr(values, col_idx, row_ptr, bias)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, bn: nn.Module | None = None, activation: str = "none",
                   residual: bool = False) -> "SparseConv2d":
        """The sparse form of `conv`, with eval-mode BatchNorm `bn` folded into its weight and
        bias (folding scales rows, so pruned zeros stay zero)."""
        if not isinstance(conv, nn.Conv2d):
            raise CompressorError(f"SparseConv2d.from_dense needs an nn.Conv2d, got "
                                  f"{type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise CompressorError(f"SparseConv2d supports padding_mode='zeros' only, got "
                                  f"{conv.padding_mode!r}; keep this layer dense")
        weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            weight, bias = fold_bn(weight, bias, bn)
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                   _explicit_padding(conv), conv.dilation, conv.groups, bias=bias,
                   activation=activation, residual=residual,
                   **dict(zip(_CSR, csr_from_dense(weight), strict=True)))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise CompressorError(f"SparseConv2d expects input (N, {self.in_channels}, H, W), got "
                                  f"shape {tuple(x.shape)}")
        check_residual_call(self, residual)
        if x.dtype == torch.float32 and has_kernel("sparse_conv2d", x.device):
            # straight to the kernel, which checks everything itself: the wrapper's own checks
            # cost as much as a small layer (9 us of 18 here)
            return torch.ops.compressor.sparse_conv2d(
                x.contiguous(), self.values, self.col_idx, self.row_ptr, self.bias,
                self.kernel_size, self.stride, self.padding, self.dilation, self.groups,
                None if residual is None else residual.contiguous(), self.activation)
        return sparse_conv2d(x, self.values, self.col_idx, self.row_ptr, self.bias,
                             kernel_size=self.kernel_size, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, groups=self.groups,
                             residual=residual, activation=self.activation)

    def to_dense(self) -> nn.Module:
        """nn.Conv2d holding the same weight; a fused layer gives ConvAct (conv, then residual
        and activation), so a model calling it as before still works."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, bias=self.bias is not None,
                         device=self.values.device)
        with torch.no_grad():
            conv.weight.copy_(dense_from_csr(self.values, self.col_idx, self.row_ptr,
                                             conv.weight.shape, "SparseConv2d.to_dense"))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        if self.activation == "none" and not self.residual:
            return conv
        return ConvAct(conv, self.activation, self.residual)

    def extra_repr(self) -> str:
        fused = "" if self.activation == "none" else f", activation={self.activation}"
        fused += ", residual=True" if self.residual else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, sparsity={self.sparsity:.3f}{fused}")

    def export_module(self) -> nn.Module:
        """The export protocol: the equivalent nn.Conv2d (the exporter stores its zeros
        compactly)."""
        return self.to_dense()


class SparseConv1d(SparseConv2d):
    """nn.Conv1d (zeros padding) with a CSR weight: the direct sparse convolution over a height-1
    input (kernel (1, k)), so 1-D CNNs run on the same kernel."""

    @classmethod
    def from_dense(cls, conv: nn.Conv1d, bn: nn.Module | None = None, activation: str = "none",
                   residual: bool = False) -> "SparseConv1d":
        if not isinstance(conv, nn.Conv1d):
            raise CompressorError(f"SparseConv1d.from_dense needs an nn.Conv1d, got "
                                  f"{type(conv).__name__}")
        as2d = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
                         (1, conv.stride[0]), (0, _explicit_padding(conv)[0]),
                         (1, conv.dilation[0]), conv.groups, bias=conv.bias is not None,
                         padding_mode=conv.padding_mode, device=conv.weight.device)
        with torch.no_grad():
            as2d.weight.copy_(conv.weight.unsqueeze(2))
            if conv.bias is not None:
                as2d.bias.copy_(conv.bias)
        return super().from_dense(as2d, bn, activation, residual)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise CompressorError(f"SparseConv1d expects input (N, {self.in_channels}, L), got "
                                  f"shape {tuple(x.shape)}")
        residual = None if residual is None else residual.unsqueeze(2)
        return super().forward(x.unsqueeze(2), residual).squeeze(2)

    def to_dense(self) -> nn.Module:
        """nn.Conv1d holding the same weight (ConvAct around it for a fused layer)."""
        as2d = super().to_dense()
        conv2d = as2d.conv if isinstance(as2d, ConvAct) else as2d
        conv = nn.Conv1d(self.in_channels, self.out_channels, self.kernel_size[1],
                         self.stride[1], self.padding[1], self.dilation[1], self.groups,
                         bias=self.bias is not None, device=self.values.device)
        with torch.no_grad():
            conv.weight.copy_(conv2d.weight.squeeze(2))
            if self.bias is not None:
                conv.bias.copy_(conv2d.bias)
        if isinstance(as2d, ConvAct):
            return ConvAct(conv, self.activation, self.residual)
        return conv


def _explicit_padding(conv: nn.Module) -> tuple[int, ...]:
    if isinstance(conv.padding, tuple):
        return conv.padding
    if conv.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
    if any(t % 2 for t in totals):
        raise CompressorError(f"{type(conv).__name__}: a sparse conv cannot express "
                              "padding='same' with an even kernel "
                              "extent (asymmetric padding); keep this layer dense")
    return tuple(t // 2 for t in totals)


class SparseLinear(_CsrModule):
    """nn.Linear with a CSR weight (N_out, K)."""

    def __init__(self, in_features, out_features, *, values, col_idx, row_ptr, bias=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.dense_numel = in_features * out_features
        self._set_csr(values, col_idx, row_ptr, bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        if not isinstance(linear, nn.Linear):
            raise CompressorError(f"SparseLinear.from_dense needs an nn.Linear, got "
                                  f"{type(linear).__name__}")
        return cls(linear.in_features, linear.out_features, bias=linear.bias,
                   **dict(zip(_CSR, csr_from_dense(linear.weight), strict=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise CompressorError(f"SparseLinear expects input (..., {self.in_features}), got "
                                  f"shape {tuple(x.shape)}")
        return sparse_linear(x, self.values, self.col_idx, self.row_ptr, self.bias)

    def to_dense(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device)
        with torch.no_grad():
            linear.weight.copy_(dense_from_csr(self.values, self.col_idx, self.row_ptr,
                                               linear.weight.shape, sorted_rows=False))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"sparsity={self.sparsity:.3f}")

    def export_module(self) -> nn.Module:
        """The export protocol: the equivalent nn.Linear."""
        return self.to_dense()
