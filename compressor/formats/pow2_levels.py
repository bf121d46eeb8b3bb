"""The INQ power-of-two quantizer (Zhou et al., ICLR 2017, Eq. 2-4), exactly as the paper states it.

Per layer: s = max|W|, n1 = floor(log2(4s/3)), n2 = n1 + 1 - 2^(b-1)/2, levels
P = {0} U {+-2^n : n2 <= n <= n1}. A weight goes to the nearest level: with alpha < beta adjacent
magnitudes in P, |w| in [(alpha+beta)/2, 3beta/2) maps to beta. Tie rule (the paper's half-open
intervals): a weight exactly halfway between two levels goes to the LARGER magnitude, i.e. away
from zero. The largest weight never exceeds 3*2^n1/2 (by the choice of n1), so nothing clips.
An all-zero layer has no scale; it quantizes to zeros and by convention n1 = 0.
"""

import math

import torch

from compressor.errors import CompressorError

MIN_BITS, MAX_BITS = 2, 5
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise CompressorError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


def _check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise CompressorError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in _FLOATS:
        raise CompressorError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.numel() and not torch.isfinite(weight).all():
        raise CompressorError("weight holds NaN or inf; quantize a finite weight")
    return weight


def exponent_count(bits: int) -> int:
    """How many nonzero magnitudes 2^n2..2^n1 a bit width allows: 2^(b-1)/2."""
    return 2 ** (check_bits(bits) - 1) // 2


def n1_from_max(max_abs: float) -> int:
    """floor(log2(4s/3)) computed exactly (frexp of a correctly rounded float64 quotient)."""
    if max_abs <= 0:
        return 0
    mantissa, exponent = math.frexp(4.0 * float(max_abs) / 3.0)  # x = m * 2^e, m in [0.5, 1)
    return exponent - 1


def pow2_exponents(weight: torch.Tensor, bits: int) -> tuple[int, int]:
    """(n1, n2) of the paper for this weight and bit width."""
    check_bits(bits)
    weight = _check_weight(weight)
    s = weight.detach().abs().max().item() if weight.numel() else 0.0
    n1 = n1_from_max(s)
    return n1, n1 + 1 - exponent_count(bits)


def pow2_levels(n1: int, bits: int) -> torch.Tensor:
    """The sorted nonnegative magnitudes {0, 2^n2, ..., 2^n1} (float64)."""
    count = exponent_count(bits)
    mags = [2.0 ** (n1 - count + 1 + i) for i in range(count)]
    return torch.tensor([0.0, *mags], dtype=torch.float64)


def quantize_to_levels(weight: torch.Tensor, n1: int, bits: int) -> torch.Tensor:
    """Round each weight to the nearest level of (n1, bits) with the paper's tie rule.

    Thresholds (alpha+beta)/2 are exact in float64, so a weight exactly halfway is recognised.
    """
    levels = pow2_levels(n1, bits).to(weight.device)
    thresholds = (levels[:-1] + levels[1:]) / 2
    mag = weight.detach().abs().to(torch.float64)
    index = torch.bucketize(mag, thresholds, right=True)  # count of thresholds <= |w|
    return (torch.sign(weight.detach().to(torch.float64)) * levels[index]).to(weight.dtype)


def pow2_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The paper's quantization of a whole layer: a tensor like `weight` holding 0 or +-2^n."""
    n1, _ = pow2_exponents(weight, bits)
    return quantize_to_levels(weight, n1, bits)
