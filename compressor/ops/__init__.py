"""Typed wrappers over torch.ops.compressor.*; each falls back to compressor.ops.reference."""

from compressor.ops.cumax import cumax
from compressor.ops.pow2 import pow2_linear

# Every op in csrc/ops.cpp, for `compressor info` and the tests that check registration.
OP_NAMES = ["cumax", "cumax_backward", "pow2_linear"]

__all__ = ["OP_NAMES", "cumax", "pow2_linear"]
