"""Stand-ins that follow the public contracts of modules other branches build (pruning masks,
SparseLinear.to_dense, Pow2Linear/Pow2Conv2d, ONLSTM), so the exporter is tested before they land.
Tests use the real modules too when they are importable."""

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from compressor.ops import cumax


def pow2_round(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """DESIGN §3 INQ levels: s = max|W|, n1 = floor(log2(4s/3)), n2 = n1 + 1 − 2^(b−1)/2, nearest
    of {0} ∪ {±2^n : n2 <= n <= n1}. Returns (weights, n1)."""
    s = float(weight.abs().max())
    n1 = math.floor(math.log2(4 * s / 3))
    n2 = n1 + 1 - 2 ** (bits - 1) // 2
    levels = torch.tensor([0.0] + [2.0**n for n in range(n2, n1 + 1)])
    nearest = (weight.abs().unsqueeze(-1) - levels).abs().argmin(-1)
    return torch.sign(weight) * levels[nearest], n1


def magnitude_prune_(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude `sparsity` fraction of every weight matrix / kernel, in place."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                k = int(p.numel() * sparsity)
                if k:
                    threshold = p.abs().flatten().kthvalue(k).values
                    p.mul_(p.abs() > threshold)


class MaskedLinear(nn.Linear):
    """Pruning contract: a `weight_mask` buffer on the module that owns `weight`."""

    def __init__(self, n_in, n_out, sparsity=0.9):
        super().__init__(n_in, n_out)
        mask = torch.rand(n_out, n_in, generator=torch.Generator().manual_seed(1)) > sparsity
        self.register_buffer("weight_mask", mask.float())

    def forward(self, x):
        return F.linear(x, self.weight * self.weight_mask, self.bias)


class StandInSparseLinear(nn.Module):
    """Sparse contract: to_dense() returns the equivalent nn.Linear. Its own forward uses a
    torch sparse matmul, which the ONNX exporters do not support."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return (self.weight @ x.T).T + self.bias

    def to_dense(self) -> nn.Linear:
        out = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            out.weight.copy_(self.weight.to_dense())
            out.bias.copy_(self.bias)
        return out


class StandInPow2Conv2d(nn.Module):
    """INQ contract: bits, n1, dequantized_weight(), bias and nn.Conv2d's conv attributes."""

    def __init__(self, conv: nn.Conv2d, bits: int):
        super().__init__()
        weight, self.n1 = pow2_round(conv.weight.detach(), bits)
        self.bits = bits
        self.register_buffer("weight_values", weight)  # the real module stores packed codes
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def dequantized_weight(self):
        return self.weight_values.clone()

    def forward(self, x):
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class StandInPow2Linear(nn.Module):
    def __init__(self, linear: nn.Linear, bits: int):
        super().__init__()
        weight, self.n1 = pow2_round(linear.weight.detach(), bits)
        self.bits = bits
        self.register_buffer("weight_values", weight)
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def dequantized_weight(self):
        return self.weight_values.clone()

    def forward(self, x):
        return F.linear(x, self.dequantized_weight(), self.bias)


class StandInONLSTM(nn.Module):
    """One ON-LSTM layer as DESIGN §3 defines it; input (T, B, E). Returns (output (T, B, D),
    [(h, c)], distances (2, T, B)). With use_fused_kernels it calls compressor's cumax op."""

    def __init__(self, n_in=6, hidden=8, chunk=2):
        super().__init__()
        self.hidden, self.chunk, self.m = hidden, chunk, hidden // chunk
        self.ih = nn.Linear(n_in, 4 * hidden + 2 * self.m)
        self.hh = nn.Linear(hidden, 4 * hidden + 2 * self.m)
        self.use_fused_kernels = True

    def _cumax(self, x):
        return cumax(x) if self.use_fused_kernels else torch.cumsum(torch.softmax(x, -1), -1)

    def forward(self, x):
        steps, batch, _ = x.shape
        h = x.new_zeros(batch, self.hidden)
        c = x.new_zeros(batch, self.m, self.chunk)
        projected, outputs, distances = self.ih(x), [], []
        for t in range(steps):
            gates = projected[t] + self.hh(h)
            m = self.m
            forget_master = self._cumax(gates[:, m:2 * m])
            input_master = 1 - self._cumax(gates[:, :m])
            o, cell, i, f = gates[:, 2 * m:].view(batch, 4, m, self.chunk).unbind(1)
            omega = (forget_master * input_master).unsqueeze(-1)
            fm, im = forget_master.unsqueeze(-1), input_master.unsqueeze(-1)
            f_hat = torch.sigmoid(f) * omega + (fm - omega)
            i_hat = torch.sigmoid(i) * omega + (im - omega)
            c = f_hat * c + i_hat * torch.tanh(cell)
            h = (torch.sigmoid(o) * torch.tanh(c)).reshape(batch, self.hidden)
            outputs.append(h)
            distances.append(torch.stack([1 - forget_master.mean(-1), input_master.mean(-1)]))
        return (torch.stack(outputs), [(h, c.reshape(batch, self.hidden))],
                torch.stack(distances, 1))
