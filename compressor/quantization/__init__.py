"""Quantization: BatchNorm folding and int8 post-training quantization (INQ lands beside these)."""

from compressor.quantization.batchnorm import fold_batchnorm
from compressor.quantization.int8 import Int8Config, Int8FakeQuant, quantize_int8

__all__ = ["Int8Config", "Int8FakeQuant", "fold_batchnorm", "quantize_int8"]
