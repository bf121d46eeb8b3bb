"""Pow2LSTM, Pow2GRU, Pow2RNN: nn.LSTM / nn.GRU / nn.RNN with their weight_* tensors stored as
packed power-of-two codes (INQ); biases stay float.

Each is still an nn.LSTM / nn.GRU / nn.RNN (so code that handles those keeps working: export,
structured rules, user code reading `weight_ih_l0`): the weights are non-persistent buffers
decoded from the saved codes at packing and at load, and torch's own forward runs on them (the
float model's speed). Pow2LSTM also runs on the codes (`module.pow2_mode`: nn.LSTM's own `mode`
attribute is its cell type):
  "decoded"     nn.LSTM's forward on the decoded weights;
  "codes"       the input projection of the whole sequence and each step's W_hh h run through
                the pow2_linear kernel on the codes (pays from ~512 hidden units, where the
                recurrent weight no longer sits in cache: docs/benchmarks.md);
  "codes_int8"  the same through pow2_linear_int8 (bits <= 4; activations rounded to int8 as
                torch's dynamic int8 LSTM does; opt in).
The codes modes take (T, B, input) / (B, T, input) tensors, no projection (proj_size), in eval.
GRU and RNN have no codes path: their cells are cheap next to the matmuls, which their float
kernels run on the decoded weights.
"""

from functools import partial

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from compressor.errors import CompressorError
from compressor.formats.pow2_codes import check_n1, pack_pow2, padded_in_features
from compressor.formats.pow2_levels import check_bits, pow2_exponents, quantize_to_levels
from compressor.nn.scan import ScanLSTM, lstm_gates, lstm_stack
from compressor.ops.pow2 import pow2_decode, pow2_linear, pow2_linear_int8

MODES = ("decoded", "codes", "codes_int8")


class _Pow2Recurrent:
    """What the packed torch RNNs share: codes buffers per weight, decoding, the state_dict ints
    (bits, one n1 per weight), from_float and the export form. Mixed in before the torch class."""

    _float_type: type = nn.RNNBase

    def __init__(self, *args, bits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.bits = check_bits(bits)
        self.n1, self.in_sizes = {}, {}  # per weight: INQ's n1 and its columns (for decoding)
        for name in self.weight_names():
            weight = self._parameters.pop(name)
            rows, k = weight.shape
            self.n1[name], self.in_sizes[name] = 0, k
            self.register_buffer(f"{name}_codes", torch.zeros(
                rows, padded_in_features(k) // 2, dtype=torch.uint8))
            shape = (rows, padded_in_features(k) // 8) if bits == 5 else (0,)
            self.register_buffer(f"{name}_nonzero", torch.zeros(shape, dtype=torch.uint8))
            self.register_buffer(name, torch.zeros_like(weight.detach()), persistent=False)
        for param in self.parameters():
            param.requires_grad_(False)  # inference only, like every packed layer
        self._decode()

    def weight_names(self) -> list[str]:
        return [n for n in self._flat_weights_names if n.startswith("weight_")]

    @staticmethod
    def _settings(rnn: nn.RNNBase) -> dict:
        """The constructor arguments that rebuild `rnn`'s shape and behaviour."""
        out = {k: getattr(rnn, k) for k in ("input_size", "hidden_size", "num_layers", "bias",
                                             "batch_first", "dropout", "bidirectional")}
        if isinstance(rnn, nn.LSTM):
            out["proj_size"] = rnn.proj_size
        if isinstance(rnn, nn.RNN):
            out["nonlinearity"] = rnn.nonlinearity
        return out

    @classmethod
    def from_float(cls, rnn: nn.RNNBase, bits: int, n1: dict[str, int] | None = None):
        """Quantize every weight of `rnn` with the INQ rule (its own n1, from `n1` by parameter
        name or its max) and pack it; biases are copied."""
        if type(rnn) is not cls._float_type:
            raise CompressorError(f"{cls.__name__}.from_float needs an nn."
                                  f"{cls._float_type.__name__}, got {type(rnn).__name__}")
        mod = cls(**cls._settings(rnn), bits=bits)
        n1 = n1 or {}
        with torch.no_grad():
            for name in mod.weight_names():
                weight = getattr(rnn, name).detach().float().cpu()
                own = n1.get(name)
                mod.n1[name] = check_n1(pow2_exponents(weight, bits)[0] if own is None else own)
                q = quantize_to_levels(weight, mod.n1[name], bits)
                codes, nonzero = pack_pow2(q, mod.n1[name], bits)
                mod._buffers[f"{name}_codes"], mod._buffers[f"{name}_nonzero"] = codes, nonzero
            for name, param in rnn.named_parameters():
                if not name.startswith("weight_"):
                    mod._parameters[name].copy_(param)
        mod._decode()
        return mod.train(rnn.training).to(rnn.weight_ih_l0.device)

    def _decode(self) -> None:
        """Rebuild the float weights torch's forward reads from the codes."""
        for name in self.weight_names():
            codes, nonzero = self._buffers[f"{name}_codes"], self._buffers[f"{name}_nonzero"]
            self._buffers[name] = pow2_decode(codes, nonzero, self.in_sizes[name], self.bits,
                                              self.n1[name])
        self._init_flat_weights()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "bits"] = torch.tensor(self.bits, dtype=torch.int64)
        for name, value in self.n1.items():
            destination[f"{prefix}{name}_n1"] = torch.tensor(value, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        ints = [prefix + "bits"] + [f"{prefix}{name}_n1" for name in self.weight_names()]
        for key in ints:
            if key not in state_dict:
                missing_keys.append(key)
        bits = state_dict.get(prefix + "bits")
        if bits is not None and int(bits) != self.bits:
            error_msgs.append(f"{prefix}bits is {int(bits)} in the checkpoint but the module has "
                              f"bits={self.bits}; build the module with the checkpoint's bits")
        for name in self.weight_names():
            if f"{prefix}{name}_n1" in state_dict:
                self.n1[name] = check_n1(int(state_dict[f"{prefix}{name}_n1"]))
        rest = {k: v for k, v in state_dict.items() if k not in ints}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._decode()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}"

    def export_module(self) -> nn.Module:
        """The plain torch RNN with the exact decoded weights (an nn.LSTM in its scan form when
        it has one: a dynamic sequence length, as an nn.LSTM exports)."""
        plain = self._float_type(**self._settings(self), device=self.weight_ih_l0.device)
        with torch.no_grad():
            for name, param in plain.named_parameters():
                param.copy_(getattr(self, name))
        return ScanLSTM(plain) if isinstance(plain, nn.LSTM) and ScanLSTM.supports(plain) else plain


class Pow2GRU(_Pow2Recurrent, nn.GRU):
    """nn.GRU with packed weights (decoded at load; torch's GRU runs on them)."""

    _float_type = nn.GRU


class Pow2RNN(_Pow2Recurrent, nn.RNN):
    """nn.RNN (tanh or relu) with packed weights (decoded at load; torch's RNN runs on them)."""

    _float_type = nn.RNN


class Pow2LSTM(_Pow2Recurrent, nn.LSTM):
    """nn.LSTM with its weight_ih / weight_hh (/ weight_hr) packed; also runs on the codes."""

    _float_type = nn.LSTM

    def __init__(self, *args, bits: int, **kwargs):
        super().__init__(*args, bits=bits, **kwargs)
        self._pow2_mode = "decoded"

    @property
    def pow2_mode(self) -> str:
        return self._pow2_mode

    @pow2_mode.setter
    def pow2_mode(self, value: str) -> None:
        if value not in MODES:
            raise CompressorError(f"Pow2LSTM.pow2_mode must be one of {MODES}, got {value!r}")
        if value != "decoded" and self.proj_size:
            raise CompressorError("Pow2LSTM: the codes modes have no projection (proj_size); "
                                  "use mode 'decoded'")
        if value == "codes_int8" and self.bits == 5:
            raise CompressorError("Pow2LSTM: mode 'codes_int8' needs bits <= 4, got bits=5")
        self._pow2_mode = value

    def candidate_modes(self, allow_int8: bool) -> list[str]:
        """The modes worth timing on this layer."""
        if self.proj_size:
            return ["decoded"]
        return ["decoded", "codes"] + (["codes_int8"] if allow_int8 and self.bits <= 4 else [])

    def forward(self, input, hx=None):
        return self.run(input, self._pow2_mode, hx)

    def run(self, input, mode: str, hx=None):
        """forward(input, hx) as `mode` computes it (the Pow2 layers' run(x, mode)). Unbatched
        and packed-sequence inputs, and empty sequences, run decoded (nn.LSTM's own checks and
        results)."""
        plain = (mode == "decoded" or isinstance(input, PackedSequence) or input.dim() != 3
                 or input.shape[1 if self.batch_first else 0] == 0)
        if plain:
            return super().forward(input, hx)
        if self.training and self.dropout > 0 and self.num_layers > 1:
            raise CompressorError("Pow2LSTM: the codes modes are for inference; call .eval()")
        if hx is not None:
            self.check_forward_args(input, hx, None)  # nn.LSTM's own shape messages
        elif input.shape[-1] != self.input_size:
            raise CompressorError(f"Pow2LSTM: input.size(-1) must be {self.input_size}, got "
                                  f"{input.shape[-1]}")
        return self._codes_forward(input, hx, mode)

    def _codes_forward(self, input: torch.Tensor, hx, mode: str):
        op = pow2_linear_int8 if mode == "codes_int8" else pow2_linear
        return lstm_stack(self, input, hx, partial(self._direction, op))

    def _direction(self, op, x, h, c, suffix: str, reverse: bool):
        """One layer and direction over the sequence x (T, B, I) on the codes."""
        def matmul(inp, kind):
            name = f"weight_{kind}{suffix}"
            bias = getattr(self, f"bias_{kind}{suffix}") if self.bias else None
            return op(inp, self._buffers[f"{name}_codes"], self._buffers[f"{name}_nonzero"],
                      bias, self.in_sizes[name], self.bits, self.n1[name])

        xg = matmul(x, "ih")  # the whole sequence's input projection in one product
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        outs = [None] * x.shape[0]
        for t in steps:
            h, c = lstm_gates(xg[t] + matmul(h, "hh"), c)
            outs[t] = h
        return torch.stack(outs), h, c

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pow2_mode={self.pow2_mode}"
