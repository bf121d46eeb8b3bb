"""Typed wrappers over torch.ops.compressor.*; each falls back to compressor.ops.reference."""

from compressor import _extension
from compressor.ops.cumax import cumax
from compressor.ops.memory import release_kept_outputs
from compressor.ops.onlstm import onlstm_cell, onlstm_sequence
from compressor.ops.pool import max_pool2d
from compressor.ops.pow2 import pow2_decode, pow2_linear, pow2_linear_int8
from compressor.ops.sparse import sparse_bottleneck, sparse_conv2d, sparse_linear

# Every op in csrc/ops.cpp, for `compressor info` and the tests that check registration.
OP_NAMES = list(_extension.OP_NAMES)

__all__ = ["OP_NAMES", "cumax", "max_pool2d", "onlstm_cell", "onlstm_sequence", "pow2_decode",
           "pow2_linear", "pow2_linear_int8", "release_kept_outputs", "sparse_bottleneck",
           "sparse_conv2d", "sparse_linear"]
