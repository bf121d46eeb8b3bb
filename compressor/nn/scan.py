"""Recurrences as torch's `scan`, for export with a dynamic sequence length.

The plain loop ONLSTM runs without its fused kernels (and torch.export's decomposition of
nn.LSTM) unroll into one graph node per time step, so an exported graph only accepts the
example's length. `ScanONLSTM` and `ScanLSTM` are the export forms. `ScanONLSTM` wraps an
ONLSTM (sharing its parameters and its input checks) and runs each layer's recurrence as
torch's scan higher-order op while being exported with a dynamic length (torch.onnx writes it as
one ONNX Scan: any length at run time); eagerly, or exported with a fixed length, it is the plain
loop.
The cell is compressor.ops.reference.onlstm_cell, the same function the kernels are tested
against. Eval only (it is what ONLSTM.export_module returns).
"""

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from compressor.ops import reference


def _dynamic_length(t: torch.Tensor, dim: int = 0) -> bool:
    """True while torch.export traces `t` with a symbolic length along `dim`."""
    return torch.compiler.is_exporting() and isinstance(t.shape[dim], torch.SymInt)


def _onlstm_weights(rnn: nn.Module, k: int):
    """(w_ih, w_hh with eval-time DropConnect, b_ih, b_hh) of layer k, float or packed (a
    packed ONLSTM holds them as Linear children ih_l{k} / hh_l{k}, plain nn.Linear once
    exported)."""
    if rnn.packed_bits is None:
        w_ih, w_hh, b_ih, b_hh = rnn.layer_weights(k)
        return w_ih, rnn._dropconnect(w_hh), b_ih, b_hh
    ih, hh = getattr(rnn, f"ih_l{k}"), getattr(rnn, f"hh_l{k}")
    keep = 1.0 - rnn.dropconnect
    return ih.weight, hh.weight if keep == 1.0 else hh.weight * keep, ih.bias, hh.bias


class ScanONLSTM(nn.Module):
    """The export form of an ONLSTM `rnn` (same forward signature and outputs)."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def _layer(self, k: int, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        w_ih, w_hh, b_ih, b_hh = _onlstm_weights(self.rnn, k)
        xg = nn.functional.linear(x, w_ih, b_ih)  # the whole sequence in one matmul
        chunk = self.rnn.chunk_size
        if not _dynamic_length(xg):
            # eagerly scan compiles its body on every call, and tracing it costs seconds per
            # layer: a fixed length runs (and exports) as the plain loop, which computes the same
            out, cells, dist = reference.onlstm_sequence(xg, w_hh, b_hh, h0, c0, chunk)
            last = (out[-1], cells[-1]) if out.shape[0] else (h0, c0)
            return out, last, dist

        def step(carry, xg_t):
            h, c = carry
            h, c, dist = reference.onlstm_cell(xg_t, nn.functional.linear(h, w_hh, b_hh), c,
                                               chunk)
            return (h, c), (h.clone(), c.clone(), dist)

        # the initial states may be one tensor (zeros): scan refuses aliased inputs
        (h_last, c_last), (out, cells, dist) = scan(step, (h0.clone(), c0.clone()), xg)
        return out, (h_last, c_last), dist

    def forward(self, input: torch.Tensor, hx=None):
        states = self.rnn._check_input(input, hx)
        x = input.transpose(0, 1) if self.rnn.batch_first else input
        final, d_f, d_i = [], [], []
        for k in range(self.rnn.num_layers):
            x, last, dist = self._layer(k, x, *states[k])
            final.append(last)
            d_f.append(dist[..., 0])
            d_i.append(dist[..., 1])
        d_f, d_i = torch.stack(d_f), torch.stack(d_i)
        if self.rnn.batch_first:
            x, d_f, d_i = x.transpose(0, 1), d_f.transpose(1, 2), d_i.transpose(1, 2)
        return x, final, (d_f, d_i)


def lstm_gates(gates: torch.Tensor, c: torch.Tensor):
    """nn.LSTM's cell update from the summed gate pre-activations (i, f, g, o): (h, c)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _lstm_cell(x_gates: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor,
               b_hh: torch.Tensor | None):
    """One nn.LSTM step: gates i, f, g, o from the projected input and the hidden state."""
    return lstm_gates(x_gates + nn.functional.linear(h, w_hh, b_hh), c)


def lstm_stack(rnn: nn.LSTM, input: torch.Tensor, hx, direction):
    """nn.LSTM's forward over layers and directions (no projection), each layer and direction
    computed by `direction(x (T, B, I), h0, c0, suffix, reverse) -> (out, h, c)` where suffix
    names its weights ("_l0", "_l0_reverse")."""
    x = input.transpose(0, 1) if rnn.batch_first else input
    dirs = 2 if rnn.bidirectional else 1
    if hx is None:
        zeros = x.new_zeros(rnn.num_layers * dirs, x.shape[1], rnn.hidden_size)
        hx = (zeros, zeros)
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            out, h, c = direction(x, hx[0][k], hx[1][k], f"_l{layer}" + ("_reverse" if d else ""),
                                  bool(d))
            outs.append(out)
            hs.append(h)
            cs.append(c)
        x = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
    out = x.transpose(0, 1) if rnn.batch_first else x
    return out, (torch.stack(hs), torch.stack(cs))


class ScanLSTM(nn.Module):
    """The export form of an nn.LSTM `rnn` (same forward and outputs): torch.export unrolls
    nn.LSTM over the example's length, so with a dynamic length each layer and direction runs
    as one scan instead. Eagerly, or with a fixed length, it is `rnn` itself. proj_size and
    unbatched inputs are not supported (such an nn.LSTM exports as it is, fixed length)."""

    def __init__(self, rnn: nn.LSTM):
        super().__init__()
        self.rnn = rnn

    @staticmethod
    def supports(rnn: nn.LSTM) -> bool:
        return type(rnn) is nn.LSTM and rnn.proj_size == 0

    def _direction(self, x, h0, c0, suffix: str, reverse: bool):
        w_ih, w_hh = (getattr(self.rnn, f"weight_{k}{suffix}") for k in ("ih", "hh"))
        b_ih = getattr(self.rnn, f"bias_ih{suffix}") if self.rnn.bias else None
        b_hh = getattr(self.rnn, f"bias_hh{suffix}") if self.rnn.bias else None
        xg = nn.functional.linear(x, w_ih, b_ih)

        def step(carry, xg_t):
            h, c = _lstm_cell(xg_t, *carry, w_hh, b_hh)
            return (h, c), h.clone()

        (h, c), out = scan(step, (h0.clone(), c0.clone()), xg, reverse=reverse)
        return out, h, c

    def forward(self, input: torch.Tensor, hx=None):
        rnn = self.rnn
        time_dim = 1 if rnn.batch_first else 0
        if input.dim() != 3 or not _dynamic_length(input, time_dim):
            return rnn(input, hx)
        return lstm_stack(rnn, input, hx, self._direction)
