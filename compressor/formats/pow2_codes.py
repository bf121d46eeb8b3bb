"""Power-of-two weights <-> the packed codes pow2_linear computes on (contract: csrc/ops.cpp).

K = in_features, K_pad = round_up(K, 8). `codes` is uint8 (N, K_pad/2): column j lives in byte j/2,
low nibble for even j, high nibble for odd j. Nibble bit 3 = sign (1 = negative), bits 0-2 = m.
  bits <= 4: m = 0 is a zero weight, m in 1..7 means |w| = 2^(n1 - m + 1); `nonzero` is empty.
  bits == 5: m in 0..7 means |w| = 2^(n1 - m); `nonzero` is uint8 (N, K_pad/8) whose bit j%8 of
             byte j/8 is set when weight j is nonzero (a zero weight has nibble 0 and bit 0).
Padding columns K..K_pad are zero weights. 5 bits/weight: >= 6x smaller than fp32.
"""

import torch

from compressor.errors import CompressorError
from compressor.formats.pow2_levels import check_bits, exponent_count

# Every decoded exponent must be a normal float32 exponent (the kernels build floats from bits).
MIN_N1, MAX_N1 = -119, 127


def padded_in_features(in_features: int) -> int:
    return (in_features + 7) // 8 * 8


def check_n1(n1: int) -> int:
    if not MIN_N1 <= int(n1) <= MAX_N1:
        raise CompressorError(f"n1={n1} is outside {MIN_N1}..{MAX_N1}: weights this small or large "
                              "cannot be packed as float32 powers of two")
    return int(n1)


def _magnitude_index(weight: torch.Tensor, n1: int,
                     bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, nonzero) per weight; raises when a weight is not one of the levels of (n1, bits)."""
    w = weight.detach().to(torch.float64)
    nonzero = w != 0
    mantissa, exponent = torch.frexp(w.abs())
    e = exponent.to(torch.int64) - 1  # |w| = 2^e exactly when mantissa == 0.5
    offset = 1 if bits <= 4 else 0
    m = n1 - e + offset
    low = offset
    high = offset + exponent_count(bits) - 1
    bad = nonzero & ((mantissa != 0.5) | (m < low) | (m > high))
    if bad.any():
        value = w[bad][0].item()
        raise CompressorError(f"weight {value!r} is not a {bits}-bit power-of-two level for "
                              f"n1={n1}; "
                              "quantize it with pow2_quantize first")
    return torch.where(nonzero, m, 0), nonzero


def pack_pow2(weight: torch.Tensor, n1: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, nonzero) for a 2-D weight (N, K) whose entries are 0 or levels of (n1, bits)."""
    check_bits(bits)
    check_n1(n1)
    if weight.dim() != 2:
        raise CompressorError("pack_pow2: weight must be 2-D (out, in), got shape "
                              f"{tuple(weight.shape)}")
    n_out, k = weight.shape
    k_pad = padded_in_features(k)
    m, nonzero = _magnitude_index(weight.cpu(), n1, bits)
    sign = (weight.detach().cpu() < 0).to(torch.int64)
    nibbles = torch.zeros(n_out, k_pad, dtype=torch.int64)
    nibbles[:, :k] = torch.where(nonzero, (sign << 3) | m, 0)
    codes = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).to(torch.uint8)
    if bits <= 4:
        return codes, torch.empty(0, dtype=torch.uint8)
    bitmap = torch.zeros(n_out, k_pad, dtype=torch.int64)
    bitmap[:, :k] = nonzero.to(torch.int64)
    shifts = torch.arange(8, dtype=torch.int64)
    packed = (bitmap.view(n_out, k_pad // 8, 8) << shifts).sum(-1).to(torch.uint8)
    return codes, packed


def unpack_pow2(codes: torch.Tensor, nonzero: torch.Tensor, in_features: int, bits: int,
                n1: int) -> torch.Tensor:
    """The float32 weight (N, in_features) the codes stand for: exact powers of two and zeros."""
    c = codes.to(torch.int64)
    nibbles = torch.stack([c & 0xF, c >> 4], dim=-1).flatten(-2)[:, :in_features]
    m = nibbles & 7
    negative = (nibbles >> 3) & 1
    if bits <= 4:
        is_nonzero = m != 0
        exponent = n1 - m + 1
    else:
        bytes_ = nonzero.to(torch.int64).repeat_interleave(8, dim=-1)
        shifts = torch.arange(bytes_.shape[-1], device=codes.device) % 8
        is_nonzero = ((bytes_ >> shifts) & 1)[:, :in_features] == 1
        exponent = n1 - m
    ones = torch.ones_like(exponent, dtype=torch.float32)
    magnitude = torch.ldexp(ones, exponent.to(torch.int32))
    value = torch.where(negative == 1, -magnitude, magnitude)
    return torch.where(is_nonzero, value, torch.zeros_like(value))


def packed_nbytes(out_features: int, in_features: int, bits: int) -> int:
    """Bytes the codes (and bitmap) of an (out, in) weight occupy."""
    k_pad = padded_in_features(in_features)
    return out_features * (k_pad // 2 + (k_pad // 8 if bits == 5 else 0))
