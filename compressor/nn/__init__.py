"""Inference and training modules of compressor."""

from compressor.nn.sparse import SparseConv2d, SparseLinear

__all__ = ["SparseConv2d", "SparseLinear"]
