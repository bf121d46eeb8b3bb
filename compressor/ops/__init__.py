"""Typed wrappers over torch.ops.compressor.*; each falls back to compressor.ops.reference."""

from compressor.ops.cumax import cumax

# Every op in csrc/ops.cpp, for `compressor info` and the tests that check registration.
OP_NAMES = ["cumax", "cumax_backward"]

__all__ = ["OP_NAMES", "cumax"]
