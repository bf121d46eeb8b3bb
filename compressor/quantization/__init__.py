"""Quantization: INQ power-of-two weights (quantizer, INQ procedure, packing, conversion),
int8 post-training quantization and BatchNorm folding."""

from compressor.formats.pow2_levels import pow2_exponents, pow2_levels, pow2_quantize
from compressor.quantization.api import quantize_
from compressor.quantization.batchnorm import fold_batchnorm
from compressor.quantization.convert import convert_to_pow2
from compressor.quantization.inq import INQ, PRESETS, INQConfig, inq_, quantizable_parameters
from compressor.quantization.int8 import Int8Config, Int8FakeQuant, quantize_int8

__all__ = ["INQ", "PRESETS", "INQConfig", "Int8Config", "Int8FakeQuant", "convert_to_pow2",
           "fold_batchnorm", "inq_", "pow2_exponents", "pow2_levels", "pow2_quantize",
           "quantizable_parameters", "quantize_", "quantize_int8"]
