"""pow2_linear: a Linear whose weight is stored as packed power-of-two codes (INQ).

The kernels decode each weight in registers from its 4-bit code (sign + exponent index) and the
per-layer n1; no float copy of the weight is ever made. Inference only. Format and contract:
compressor/formats/pow2_codes.py and the pow2 block of csrc/ops.cpp.

CPU paths: AVX-512, AVX2 or scalar, the best one the build's -march allows; the environment
variable COMPRESSOR_POW2_ISA=avx2|scalar forces a slower one (tests check every path with it).
"""

import torch

from compressor import _extension
from compressor.errors import CompressorError
from compressor.ops import reference
from compressor.ops._dispatch import has_kernel

_KERNEL_DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise CompressorError(f"pow2_linear: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_packed(codes, nonzero, in_features: int, bits: int, n1: int, device):
    from compressor.formats.pow2_codes import check_n1, padded_in_features
    from compressor.formats.pow2_levels import check_bits

    check_bits(bits)
    check_n1(n1)
    _check_tensor(codes, "codes")
    _check_tensor(nonzero, "nonzero")
    k_pad = padded_in_features(in_features)
    if codes.dtype != torch.uint8 or codes.dim() != 2 or codes.shape[1] != k_pad // 2:
        raise CompressorError(f"pow2_linear: codes must be uint8 of shape (out_features, "
                              f"{k_pad // 2}) for in_features={in_features}, got "
                              f"{codes.dtype} {tuple(codes.shape)}")
    want = (codes.shape[0], k_pad // 8) if bits == 5 else (0,)
    if nonzero.dtype != torch.uint8 or (tuple(nonzero.shape) != want if bits == 5
                                        else nonzero.numel() != 0):
        raise CompressorError(f"pow2_linear: nonzero must be uint8 of shape {want} for "
                              f"bits={bits}, "
                              f"got {nonzero.dtype} {tuple(nonzero.shape)}")
    for name, t in (("codes", codes), ("nonzero", nonzero)):
        if t.device != device and not (name == "nonzero" and t.numel() == 0):
            raise CompressorError(f"pow2_linear: {name} is on {t.device} but input is on {device}")


def pow2_linear(input: torch.Tensor, codes: torch.Tensor, nonzero: torch.Tensor,
                bias: torch.Tensor | None, in_features: int, bits: int, n1: int) -> torch.Tensor:
    """input (..., in_features) @ W^T + bias, W decoded from `codes` (see packing.py)."""
    _check_tensor(input, "input")
    if input.dtype not in _FLOATS:
        raise CompressorError(f"pow2_linear: input must be floating point, got {input.dtype}")
    if input.dim() == 0 or input.shape[-1] != in_features:
        raise CompressorError(f"pow2_linear: input's last dim must be in_features={in_features}, "
                              f"got shape {tuple(input.shape)}")
    _check_packed(codes, nonzero, in_features, bits, n1, input.device)
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.shape != (codes.shape[0],) or bias.device != input.device:
            raise CompressorError(f"pow2_linear: bias must have shape ({codes.shape[0]},) on "
                                  f"{input.device}, got {tuple(bias.shape)} on {bias.device}")
    lead = input.shape[:-1]
    flat = input.reshape(-1, in_features)
    if has_kernel("pow2_linear", input.device) and input.dtype in _KERNEL_DTYPES.get(
            input.device.type, ()):
        b = None if bias is None else bias.to(input.dtype).contiguous()
        out = torch.ops.compressor.pow2_linear(flat.contiguous(), codes.contiguous(),
                                               nonzero.contiguous(), b, in_features, bits, n1)
    else:
        out = reference.pow2_linear(flat, codes, nonzero, bias, in_features, bits, n1)
    return out.reshape(*lead, codes.shape[0])


if _extension.load():

    @torch.library.register_fake("compressor::pow2_linear")
    def _pow2_linear_fake(input, codes, nonzero, bias, in_features, bits, n1):
        return input.new_empty((input.shape[0], codes.shape[0]))
