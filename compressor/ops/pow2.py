"""pow2_linear: a Linear whose weight is stored as packed power-of-two codes (INQ).

The kernels decode each weight in registers from its 4-bit code (sign + exponent index) and the
per-layer n1; no float copy of the weight is ever made. Inference only. Format and contract:
compressor/formats/pow2_codes.py and the pow2 block of csrc/ops.cpp.

CPU paths: AVX-512, AVX2 or scalar, the best one the build's -march allows; the environment
variable COMPRESSOR_POW2_ISA=avx2|scalar forces a slower one (tests check every path with it).
`pow2_decode` is the other way to run the codes: decode them once (a table lookup, traceable) and
use the dense kernels; the modules in compressor.nn.pow2 choose per layer.
"""

import math

import torch

from compressor import _extension
from compressor.errors import CompressorError
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel
from compressor.ops.reference import check_pow2_packed

_KERNEL_DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise CompressorError(f"pow2_linear: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_input(op: str, input, in_features: int) -> None:
    _check_tensor(input, "input")
    if input.dtype not in _FLOATS:
        raise CompressorError(f"{op}: input must be floating point, got {input.dtype}")
    if input.dim() == 0 or input.shape[-1] != in_features:
        raise CompressorError(f"{op}: input's last dim must be in_features={in_features}, "
                              f"got shape {tuple(input.shape)}")


def _check_bias(op: str, bias, n_out: int, device) -> None:
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.shape != (n_out,) or bias.device != device:
            raise CompressorError(f"{op}: bias must have shape ({n_out},) on {device}, got "
                                  f"{tuple(bias.shape)} on {bias.device}")


def pow2_linear(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                bias: torch.Tensor | None, in_features: int, bits: int, n1: int) -> torch.Tensor:
    """input (..., in_features) @ W^T + bias, W decoded from `codes` (see pow2_codes.py)."""
    _check_input("pow2_linear", input, in_features)
    check_pow2_packed("pow2_linear", codes, nonzero, in_features, bits, n1, input.device)
    _check_bias("pow2_linear", bias, codes.shape[0], input.device)
    lead = input.shape[:-1]
    # Not reshape(-1, K): with K = 0 the -1 is ambiguous and reshape fails.
    flat = input.reshape(math.prod(lead), in_features)
    if has_kernel("pow2_linear", input.device) and input.dtype in _KERNEL_DTYPES.get(
            input.device.type, ()):
        b = None if bias is None else bias.to(input.dtype).contiguous()
        out = torch.ops.compressor.pow2_linear(flat.contiguous(), codes.contiguous(),
                                               nonzero.contiguous(), b, in_features, bits, n1)
    else:
        out = reference.pow2_linear(flat, codes, nonzero, bias, in_features, bits, n1)
    return out.reshape(*lead, codes.shape[0])


def pow2_linear_int8(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                     bias: torch.Tensor | None, in_features: int, bits: int,
                     n1: int) -> torch.Tensor:
    """pow2_linear with each input row quantized to int8 at run time (bits <= 4), as torch's
    dynamic int8 Linear does; the weights stay exact. Not the float result: each row is rounded
    to 255 levels of its max |x| (contract: the pow2 block of csrc/ops.cpp). A row holding NaN
    or inf gives NaN. input (..., in_features) -> (..., out_features), float32 on CPU; other
    devices and dtypes run the twin."""
    op = "pow2_linear_int8"
    _check_input(op, input, in_features)
    check_pow2_packed(op, codes, nonzero, in_features, bits, n1, input.device)
    _check_bias(op, bias, codes.shape[0], input.device)
    if bits == 5:
        raise CompressorError(f"{op}: bits must be <= 4 (a 5-bit level, 128 * 2^(n1 - 7), is "
                              "no int8); use pow2_linear")
    lead = input.shape[:-1]
    flat = input.reshape(math.prod(lead), in_features)
    if has_kernel(op, input.device) and input.dtype == torch.float32:
        b = None if bias is None else bias.float().contiguous()
        out = torch.ops.compressor.pow2_linear_int8(flat.contiguous(), codes.contiguous(),
                                                    nonzero.contiguous(), b, in_features, bits,
                                                    n1)
    else:
        out = reference.pow2_linear_int8(flat, codes, nonzero, bias, in_features, bits, n1)
    return out.reshape(*lead, codes.shape[0]).to(input.dtype)


def _code_table(bits: int, n1: int, device) -> torch.Tensor:
    """The float32 value of each of the 16 codes (format in pow2_codes.py)."""
    code = torch.arange(16, device=device)
    m = code & 7
    exponent = n1 - m + (1 if bits <= 4 else 0)
    magnitude = torch.ldexp(torch.ones(16, device=device), exponent)
    value = torch.where(code >= 8, -magnitude, magnitude)
    return torch.where(m == 0, 0.0, value) if bits <= 4 else value


def pow2_decode(codes: torch.Tensor, nonzero: torch.Tensor, in_features: int, bits: int,
                n1: int) -> torch.Tensor:
    """The float32 weight (N, in_features) the codes stand for, by table lookup.

    Equal to compressor.formats.pow2_codes.unpack_pow2 (the oracle) but a few times faster, and
    made of plain tensor ops, so it traces into compiled and exported graphs.
    """
    check_pow2_packed("pow2_decode", codes, nonzero, in_features, bits, n1, codes.device)
    n_out = codes.shape[0]
    # explicit widths: reshape(n_out, -1) is ambiguous for zero rows (an empty lookup)
    nibbles = torch.stack((codes & 15, codes >> 4), dim=-1).reshape(
        n_out, 2 * codes.shape[1])[:, :in_features]
    weight = _code_table(bits, n1, codes.device)[nibbles.long()]
    if bits == 5:
        shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
        bit = (nonzero.unsqueeze(-1) >> shifts) & 1
        weight = weight * bit.reshape(n_out, 8 * nonzero.shape[1])[:, :in_features]
    return weight


if _extension.load():

    @torch.library.register_fake("compressor::pow2_linear")
    def _pow2_linear_fake(input, codes, nonzero, bias, in_features, bits, n1):
        return input.new_empty((input.shape[0], codes.shape[0]))

    @torch.library.register_fake("compressor::pow2_linear_int8")
    def _pow2_linear_int8_fake(input, codes, nonzero, bias, in_features, bits, n1):
        return input.new_empty((input.shape[0], codes.shape[0]))
