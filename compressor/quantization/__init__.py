"""Quantization: INQ power-of-two weights (pow2, inq, packing)."""

from compressor.quantization.pow2 import pow2_exponents, pow2_levels, pow2_quantize

__all__ = ["pow2_exponents", "pow2_levels", "pow2_quantize"]
