"""ON-LSTM with its time loop as torch's `scan`, for export with a dynamic sequence length.

The plain loop ONLSTM runs without its fused kernels unrolls into one graph node per time step
under torch.export, so an exported graph only accepts the example's length. `ScanONLSTM` wraps an
ONLSTM (sharing its parameters and its input checks) and runs each layer's recurrence as
torch's scan higher-order op while being exported (torch.onnx writes it as one ONNX Scan: any
length at run time); run eagerly, it is the plain loop.
The cell is compressor.ops.reference.onlstm_cell, the same function the kernels are tested
against. Eval only (it is what ONLSTM.export_module returns).
"""

import torch
from torch import nn
from torch._higher_order_ops.scan import scan

from compressor.ops import reference


class ScanONLSTM(nn.Module):
    """The export form of an ONLSTM `rnn` (same forward signature and outputs)."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def _layer(self, k: int, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        w_ih, w_hh, b_ih, b_hh = self.rnn.layer_weights(k)
        w_hh = self.rnn._dropconnect(w_hh)
        xg = nn.functional.linear(x, w_ih, b_ih)  # the whole sequence in one matmul
        chunk = self.rnn.chunk_size
        if not torch.compiler.is_exporting():
            # eager scan compiles its body on every call; the loop computes the same
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
