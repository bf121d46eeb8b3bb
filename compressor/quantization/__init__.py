"""Quantization: INQ power-of-two weights (pow2 quantizer, INQ procedure, packing, conversion)."""

from compressor.quantization.convert import convert_to_pow2
from compressor.quantization.inq import INQ, PRESETS, INQConfig, inq_, quantizable_parameters
from compressor.quantization.pow2 import pow2_exponents, pow2_levels, pow2_quantize

__all__ = ["INQ", "PRESETS", "INQConfig", "convert_to_pow2", "inq_", "pow2_exponents",
           "pow2_levels", "pow2_quantize", "quantizable_parameters"]
