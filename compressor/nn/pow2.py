"""Pow2Linear, Pow2Conv1d, Pow2Conv2d: layers whose weights are packed power-of-two codes (INQ).

The state_dict holds the packed `codes` (and `nonzero` bitmap for 5 bits), `bias`, and the ints `n1`
and `bits` as 0-dim int64 tensors, so a saved model is small and loads with weights_only=True.
Inference only: the codes are not trainable.

Each module runs in one of three modes, a plain attribute (`module.mode`) decided per layer by
measurement (compressor.quantization.convert_to_pow2 with example inputs) or set by hand:
  "decoded"    the codes are decoded once into a float buffer that is not saved (rebuilt on load,
               on conversion and after an in-place edit of the codes); forward is F.linear /
               F.conv*, so the layer is exactly as fast as its float model. The default.
  "codes"      forward computes on the codes: Linear and ungrouped conv (unfold) through the
               pow2_linear kernel, which pays for large Linear layers at small batches; grouped
               and depthwise convs decode the codes per call (no kernel for them pays). No float
               copy of the weight stays in memory.
  "codes_int8" (bits <= 4, Linear and ungrouped conv) the pow2_linear_int8 kernel: input rows
               quantized to int8 at run time, as torch's dynamic int8 Linear does, times the exact
               weights; fastest at token batches, but its result is not the float one (opt in).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair, _single

from compressor.errors import CompressorError
from compressor.formats.pow2_codes import check_n1, pack_pow2, padded_in_features, unpack_pow2
from compressor.formats.pow2_levels import check_bits, pow2_exponents, quantize_to_levels
from compressor.ops.pow2 import pow2_decode, pow2_linear, pow2_linear_int8

MODES = ("decoded", "codes", "codes_int8")


class _Pow2Packed(nn.Module):
    """Holds the codes of an (out, K) weight, the ints bits, n1 and the execution mode."""

    def _init_packed(self, out_rows: int, k: int, bits: int, n1: int, bias: bool) -> None:
        self.bits, self.n1 = check_bits(bits), check_n1(n1)
        self._k = k
        k_pad = padded_in_features(k)
        self.register_buffer("codes", torch.zeros(out_rows, k_pad // 2, dtype=torch.uint8))
        bitmap_shape = (out_rows, k_pad // 8) if bits == 5 else (0,)
        self.register_buffer("nonzero", torch.zeros(bitmap_shape, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_rows), requires_grad=False) if bias else None
        # The decoded weight (out, K), or empty when the mode computes on the codes. Not saved.
        self.register_buffer("decoded", torch.zeros(0), persistent=False)
        self._mode, self._decoded_from = "decoded", ()
        self._refresh_decoded()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise CompressorError(f"{type(self).__name__}.mode must be one of {MODES}, got "
                                  f"{value!r}")
        if value == "codes_int8" and (self.bits == 5 or getattr(self, "groups", 1) != 1):
            raise CompressorError(f"{type(self).__name__}: mode 'codes_int8' needs bits <= 4 "
                                  f"and groups == 1, got bits={self.bits}, "
                                  f"groups={getattr(self, 'groups', 1)}")
        self._mode = value
        self._refresh_decoded()

    def _codes_state(self) -> tuple:
        """What the decoded buffer was built from: the code tensors themselves (replaced
        buffers), their version counters (in-place edits; inference tensors have none) and n1.
        Read straight from _buffers: this runs on every eager call and must cost ~nothing."""
        codes, nonzero = self._buffers["codes"], self._buffers["nonzero"]
        return (codes, nonzero, -1 if codes.is_inference() else codes._version,
                -1 if nonzero.is_inference() else nonzero._version, self.n1)

    def _stale(self) -> bool:
        now, then = self._codes_state(), self._decoded_from
        return (now[0] is not then[0] or now[1] is not then[1] or now[2:] != then[2:])

    def _refresh_decoded(self) -> None:
        if self._mode != "decoded":
            self.decoded = torch.zeros(0, device=self.codes.device)
        else:
            w = pow2_decode(self.codes, self.nonzero, self._k, self.bits, self.n1)
            self.decoded = w.reshape(self._weight_shape())
        self._decoded_from = self._codes_state()

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.codes.shape[0], self._k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self._mode)

    def run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """forward(x) as `mode` would compute it ("decoded" needs the module in that mode)."""
        raise NotImplementedError

    def _float_weight(self, dtype: torch.dtype, mode: str) -> torch.Tensor:
        """The float weight in `dtype`: the buffer, rebuilt if the codes changed since."""
        if mode != "decoded":
            w = pow2_decode(self.codes, self.nonzero, self._k, self.bits, self.n1)
            return w.reshape(self._weight_shape()).to(dtype)
        # Eager only: traced graphs (compile, export) take the buffer as it is at trace time.
        if not torch.compiler.is_compiling() and self._stale():
            self._refresh_decoded()
        w = self._buffers["decoded"]
        return w if w.dtype == dtype else w.to(dtype)

    def _bias_like(self, x: torch.Tensor) -> torch.Tensor | None:
        b = self._parameters.get("bias")
        return b if b is None or b.dtype == x.dtype else b.to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The float weight (what nn.Linear / nn.Conv*d would hold), for code that reads it."""
        return self._float_weight(torch.float32, self._mode)

    def _set_weight(self, weight2d: torch.Tensor, n1: int | None) -> None:
        """Quantize (a no-op for weights already on the levels) and pack a 2-D float weight."""
        if n1 is None:
            n1, _ = pow2_exponents(weight2d, self.bits)
        self.n1 = check_n1(n1)
        q = quantize_to_levels(weight2d.detach().float().cpu(), self.n1, self.bits)
        codes, nonzero = pack_pow2(q, self.n1, self.bits)
        self.codes = codes.to(self.codes.device)
        self.nonzero = nonzero.to(self.nonzero.device)
        self._refresh_decoded()

    def _weight2d(self) -> torch.Tensor:
        return unpack_pow2(self.codes, self.nonzero, self._k, self.bits, self.n1)

    def _matmul(self, x2d: torch.Tensor, mode: str) -> torch.Tensor:
        """x (..., K) @ W^T + b on the codes (modes "codes" and "codes_int8")."""
        op = pow2_linear_int8 if mode == "codes_int8" else pow2_linear
        return op(x2d, self.codes, self.nonzero, self.bias, self._k, self.bits, self.n1)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "n1"] = torch.tensor(self.n1, dtype=torch.int64)
        destination[prefix + "bits"] = torch.tensor(self.bits, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in ("n1", "bits"):
            if prefix + name not in state_dict:
                missing_keys.append(prefix + name)
        bits = state_dict.get(prefix + "bits")
        if bits is not None and int(bits) != self.bits:
            error_msgs.append(f"{prefix}bits is {int(bits)} in the checkpoint but the module has "
                              f"bits={self.bits}; build the module with the checkpoint's bits")
        if prefix + "n1" in state_dict:
            self.n1 = check_n1(int(state_dict[prefix + "n1"]))
        rest = {k: v for k, v in state_dict.items() if k not in (prefix + "n1", prefix + "bits")}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._refresh_decoded()


class Pow2Linear(_Pow2Packed):
    """A Linear with power-of-two weights in packed codes: y = x W^T + b."""

    def __init__(self, in_features: int, out_features: int, bits: int, n1: int = 0,
                 bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_packed(out_features, in_features, bits, n1, bias)

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int, n1: int | None = None) -> "Pow2Linear":
        """Quantize `linear.weight` with the INQ rule (n1 from its max unless given) and pack it."""
        if not isinstance(linear, nn.Linear):
            raise CompressorError("Pow2Linear.from_float needs an nn.Linear, got "
                                  f"{type(linear).__name__}")
        check_bits(bits)
        mod = cls(linear.in_features, linear.out_features, bits, 0, linear.bias is not None)
        mod._set_weight(linear.weight, n1)
        if linear.bias is not None:
            mod.bias.data.copy_(linear.bias.detach().float())
        return mod.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight (out, in): exact powers of two and zeros."""
        return self._weight2d()

    def run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "decoded":
            return F.linear(x, self._float_weight(x.dtype, mode), self._bias_like(x))
        return self._matmul(x, mode)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, n1={self.n1}, bias={self.bias is not None}, mode={self.mode}")

    def export_module(self) -> nn.Module:
        """The export protocol: an nn.Linear holding the exact dequantized weights (the
        exporter stores them as codes again)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.codes.device)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


class _Pow2ConvNd(_Pow2Packed):
    """What Pow2Conv1d and Pow2Conv2d share: construction, from_float, the dequantized weight."""

    _float_type: type = nn.Module  # the nn.ConvNd a subclass packs
    _to_tuple = staticmethod(_pair)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, bits: int, n1: int = 0,
                 stride=1, padding=0, dilation=1, groups: int = 1, bias: bool = True):
        super().__init__()
        name = type(self).__name__
        if in_channels % groups or out_channels % groups:
            raise CompressorError(f"{name}: channels ({in_channels}, {out_channels}) must be "
                                  f"divisible by groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = self._to_tuple(kernel_size), self._to_tuple(stride)
        self.padding, self.dilation = self._to_tuple(padding), self._to_tuple(dilation)
        self.padding_mode = "zeros"
        k = in_channels // groups * math.prod(self.kernel_size)
        self._init_packed(out_channels, k, bits, n1, bias)

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @classmethod
    def from_float(cls, conv: nn.Module, bits: int, n1: int | None = None):
        """Quantize `conv.weight` with the INQ rule (n1 from its max unless given) and pack it."""
        if not isinstance(conv, cls._float_type):
            raise CompressorError(f"{cls.__name__}.from_float needs an nn."
                                  f"{cls._float_type.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise CompressorError(f"{cls.__name__} supports numeric zero padding only, got "
                                  f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        check_bits(bits)
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, bits, 0, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        mod._set_weight(conv.weight.reshape(conv.out_channels, -1), n1)
        if conv.bias is not None:
            mod.bias.data.copy_(conv.bias.detach().float())
        return mod.to(conv.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight (out, in/groups, *kernel_size): exact powers of two and zeros."""
        return self._weight2d().reshape(self._weight_shape())

    def _check_input(self, x: torch.Tensor, dims: int, layout: str) -> None:
        if x.dim() != dims or x.shape[1] != self.in_channels:
            raise CompressorError(f"{type(self).__name__} expects (N, {self.in_channels}, "
                                  f"{layout}) input, got shape {tuple(x.shape)}")

    def _unfold_conv2d(self, x: torch.Tensor, mode: str, kernel_size, stride, padding,
                       dilation) -> torch.Tensor:
        """Ungrouped zero-padded conv of x (N, C, H, W) as unfold + the kernel on the codes."""
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, kernel_size, dilation, padding, stride)
        out = self._matmul(cols.transpose(1, 2), mode)  # (N, L, C*kh*kw) @ W^T, W viewed (O, -1)
        return out.transpose(1, 2).reshape(n, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bits={self.bits}, n1={self.n1}, "
                f"bias={self.bias is not None}, mode={self.mode}")

    def export_module(self) -> nn.Module:
        """The export protocol: the nn.Conv1d / nn.Conv2d holding the exact dequantized
        weights."""
        conv = self._float_type(self.in_channels, self.out_channels, self.kernel_size,
                                self.stride, self.padding, self.dilation, self.groups,
                                bias=self.bias is not None, device=self.codes.device)
        with torch.no_grad():
            conv.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


class Pow2Conv2d(_Pow2ConvNd):
    """A Conv2d (zero padding) with packed power-of-two weights."""

    _float_type = nn.Conv2d
    _to_tuple = staticmethod(_pair)

    def run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        self._check_input(x, 4, "H, W")
        if mode == "decoded" or self.groups != 1:
            return F.conv2d(x, self._float_weight(x.dtype, mode), self._bias_like(x), self.stride,
                            self.padding, self.dilation, self.groups)
        return self._unfold_conv2d(x, mode, self.kernel_size, self.stride, self.padding,
                                   self.dilation)


class Pow2Conv1d(_Pow2ConvNd):
    """A Conv1d (zero padding) with packed power-of-two weights."""

    _float_type = nn.Conv1d
    _to_tuple = staticmethod(_single)

    def run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        self._check_input(x, 3, "L")
        if mode == "decoded" or self.groups != 1:
            return F.conv1d(x, self._float_weight(x.dtype, mode), self._bias_like(x), self.stride,
                            self.padding, self.dilation, self.groups)
        out = self._unfold_conv2d(x.unsqueeze(2), mode, (1, self.kernel_size[0]),
                                  (1, self.stride[0]), (0, self.padding[0]), (1, self.dilation[0]))
        return out.squeeze(2)
