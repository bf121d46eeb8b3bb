"""ON-LSTM (Shen et al., "Ordered Neurons", ICLR 2019) as a drop-in recurrent module.

Parameters are plain nn.Parameters named like nn.LSTM's and read by attribute name on every
forward, so pruning (a `<name>_mask` buffer or a reparametrisation hook) and INQ (in-place weight
rewrites) apply to them unchanged. Each layer's input projection over the whole sequence is one
matmul; the recurrence runs in the fused sequence op, or, with `use_fused_kernels = False`, in a
plain Python loop of standard torch ops that torch.onnx.export can trace.

`pack_pow2_(bits)` (what convert_to_pow2 calls) stores every layer's weights as packed
power-of-two codes for inference: the input projection becomes a Pow2Linear `ih_l{k}` and the
recurrent matmul a Pow2Linear `hh_l{k}`. With `hh_l{k}` in mode "decoded" the recurrence runs in
the fused sequence op on the decoded weight (float speed); in "codes" / "codes_int8" each step's
W_hh h runs on the codes (measured 1.8x / 6.7x faster than fp32 for the PTB layer's 20 x 1150 by
1150 x 4830 step, 1 thread) followed by the fused cell.
"""

import math

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.nn.pow2 import Pow2Linear
from compressor.nn.scan import ScanONLSTM
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel
from compressor.ops.onlstm import check_chunk, gate_width, onlstm_cell, onlstm_sequence
from compressor.ops.pow2 import pow2_linear, pow2_linear_int8


class ONLSTM(nn.Module):
    """Stacked ON-LSTM. Input (T, B, input_size), or (B, T, input_size) with batch_first.

    forward(input, hx=None) returns (output, [(h, c) per layer], (d_f, d_i)): output holds the
    last layer's hidden states (same layout as the input), h and c are (B, hidden_size), and
    d_f, d_i are the master-gate distances, (num_layers, T, B) or (num_layers, B, T) with
    batch_first.

    Gate rows of weight_ih_l{k} (G, in) and weight_hh_l{k} (G, hidden), G = 4*hidden +
    2*hidden/chunk: [master input | master forget | o | c | i | f]. dropconnect: one Bernoulli
    mask on weight_hh per forward in training, weight_hh * (1 - p) in eval, as in the official
    code. dropout: locked (one mask per sequence) dropout between layers.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 chunk_size: int = 1, dropconnect: float = 0.0, dropout: float = 0.0,
                 batch_first: bool = False):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or value <= 0:
                raise CompressorError(f"ONLSTM: {name} must be a positive int, got {value!r}")
        check_chunk(hidden_size, chunk_size, "ONLSTM")
        for name, p in (("dropconnect", dropconnect), ("dropout", dropout)):
            if not 0.0 <= p < 1.0:
                raise CompressorError(f"ONLSTM: {name} must be in [0, 1), got {p!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.chunk_size, self.dropconnect, self.dropout = chunk_size, dropconnect, dropout
        self.batch_first = batch_first
        self.use_fused_kernels = has_kernel("onlstm_sequence", "cpu")
        width = gate_width(hidden_size, chunk_size)
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(width, fan_in)))
            self.register_parameter(f"weight_hh_l{k}",
                                    nn.Parameter(torch.empty(width, hidden_size)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(width)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(width)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden), 1/sqrt(hidden)) for every parameter, as nn.LSTM does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"chunk_size={self.chunk_size}, dropconnect={self.dropconnect}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")

    def layer_weights(self, k: int):
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer k, looked up by name each time; for
        packed weights, their exact decoded values (what the export path computes with)."""
        if self.packed_bits is not None:
            ih, hh = getattr(self, f"ih_l{k}"), getattr(self, f"hh_l{k}")
            return ih.dequantized_weight(), hh.dequantized_weight(), ih.bias, hh.bias
        return tuple(getattr(self, f"{kind}_l{k}")
                     for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _dropconnect(self, w_hh: torch.Tensor) -> torch.Tensor:
        if self.dropconnect == 0.0:
            return w_hh
        if not self.training:
            return w_hh * (1.0 - self.dropconnect)
        keep = torch.empty_like(w_hh).bernoulli_(1.0 - self.dropconnect)
        return w_hh * keep

    def _locked_dropout(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0.0:
            return x
        keep = x.new_empty(1, *x.shape[1:]).bernoulli_(1.0 - self.dropout)
        return x * keep / (1.0 - self.dropout)

    def _check_input(self, x: torch.Tensor, hx):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise CompressorError("ONLSTM: input must be a 3-dim tensor (time, batch, features) "
                                  f"or (batch, time, features) with batch_first, got "
                                  f"{getattr(x, 'shape', type(x).__name__)}")
        if x.shape[-1] != self.input_size:
            raise CompressorError(f"ONLSTM: input must have {self.input_size} features "
                                  f"(input_size), got shape {tuple(x.shape)}")
        batch = x.shape[0] if self.batch_first else x.shape[1]
        if hx is None:
            zeros = x.new_zeros(batch, self.hidden_size)
            return [(zeros, zeros)] * self.num_layers
        if len(hx) != self.num_layers:
            raise CompressorError(f"ONLSTM: hx must hold {self.num_layers} (h, c) pairs, one per "
                                  f"layer, got {len(hx)}")
        want = (batch, self.hidden_size)
        for k, (h, c) in enumerate(hx):
            for name, t in (("h", h), ("c", c)):
                if tuple(t.shape) != want:
                    raise CompressorError(f"ONLSTM: hx[{k}] {name} must have shape {want} "
                                          f"(batch, hidden_size), got {tuple(t.shape)}")
        return list(hx)

    @property
    def packed_bits(self) -> int | None:
        """The bit width of the packed power-of-two weights, or None for float weights."""
        return self.__dict__.get("_packed_bits")

    def pack_pow2_(self, bits: int, n1: dict[str, int] | None = None) -> "ONLSTM":
        """Replace every weight by packed power-of-two codes, in place (inference only).

        `n1` maps "weight_ih_l0" / "weight_hh_l0" to the exponent INQ fixed; a weight without an
        entry takes n1 from its own max. Returns self.
        """
        if self.packed_bits is not None:
            raise CompressorError(f"ONLSTM: already packed with bits={self.packed_bits}")
        n1 = n1 or {}
        for k in range(self.num_layers):
            for kind, fan_in in (("ih", self.input_size if k == 0 else self.hidden_size),
                                 ("hh", self.hidden_size)):
                w, b = getattr(self, f"weight_{kind}_l{k}"), getattr(self, f"bias_{kind}_l{k}")
                lin = nn.Linear(fan_in, w.shape[0], device=w.device)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)
                packed = Pow2Linear.from_float(lin, bits, n1.get(f"weight_{kind}_l{k}"))
                for name in (f"weight_{kind}_l{k}", f"bias_{kind}_l{k}"):
                    delattr(self, name)
                self.add_module(f"{kind}_l{k}", packed)
        self.__dict__["_packed_bits"] = bits
        return self

    def _layer(self, k: int, x, h0, c0):
        if self.packed_bits is not None:
            return self._packed_layer(k, x, h0, c0)
        w_ih, w_hh, b_ih, b_hh = self.layer_weights(k)
        w_hh = self._dropconnect(w_hh)
        xg = nn.functional.linear(x, w_ih, b_ih)  # the whole sequence in one matmul
        if self.use_fused_kernels:
            return onlstm_sequence(xg, w_hh, b_hh, h0, c0, self.chunk_size)
        return reference.onlstm_sequence(xg, w_hh, b_hh, h0, c0, self.chunk_size)

    def _packed_layer(self, k: int, x, h0, c0):
        if self.training and self.dropconnect > 0:
            raise CompressorError("ONLSTM: packed weights are for inference; call .eval()")
        ih, hh = getattr(self, f"ih_l{k}"), getattr(self, f"hh_l{k}")
        xg = ih(x)
        keep = 1.0 - self.dropconnect  # eval-time DropConnect: W_hh * (1 - p)
        # The export path swaps the Pow2Linear children for nn.Linear ones: no mode, float weights.
        mode = getattr(hh, "mode", "decoded")
        if mode == "decoded":
            w_hh = hh.weight if keep == 1.0 else hh.weight * keep
            run = onlstm_sequence if self.use_fused_kernels else reference.onlstm_sequence
            return run(xg, w_hh, hh.bias, h0, c0, self.chunk_size)
        op = pow2_linear_int8 if mode == "codes_int8" else pow2_linear
        h, c, outs, cells, dists = h0, c0, [], [], []
        for t in range(xg.shape[0]):  # W_hh h on the codes, then the fused cell
            hg = op(h, hh.codes, hh.nonzero, None, self.hidden_size, hh.bits, hh.n1)
            hg = (hg if keep == 1.0 else hg * keep) + hh.bias
            h, c, dist = onlstm_cell(xg[t], hg, c, self.chunk_size)
            outs.append(h)
            cells.append(c)
            dists.append(dist)
        if not outs:
            empty = xg.new_empty(0, *h0.shape)
            return empty, empty.clone(), xg.new_empty(0, h0.shape[0], 2)
        return torch.stack(outs), torch.stack(cells), torch.stack(dists)

    def forward(self, input: torch.Tensor, hx=None):
        states = self._check_input(input, hx)
        x = input.transpose(0, 1) if self.batch_first else input
        final, d_f, d_i = [], [], []
        for k in range(self.num_layers):
            out, cells, dist = self._layer(k, x, *states[k])
            h_last = out[-1] if out.shape[0] else states[k][0]
            c_last = cells[-1] if cells.shape[0] else states[k][1]
            final.append((h_last, c_last))
            d_f.append(dist[..., 0])
            d_i.append(dist[..., 1])
            x = self._locked_dropout(out) if k < self.num_layers - 1 else out
        d_f, d_i = torch.stack(d_f), torch.stack(d_i)
        if self.batch_first:
            x, d_f, d_i = x.transpose(0, 1), d_f.transpose(1, 2), d_i.transpose(1, 2)
        return x, final, (d_f, d_i)

    def export_module(self) -> nn.Module:
        """The export protocol: a ScanONLSTM sharing this module, whose recurrence is one scan
        of standard torch ops (an ONNX Scan: any sequence length in the exported graph)."""
        return ScanONLSTM(self)
