"""Typed wrappers over torch.ops.compressor.*; each falls back to compressor.ops.reference."""

from compressor.ops.cumax import cumax
from compressor.ops.onlstm import onlstm_cell, onlstm_sequence

# Every op in csrc/ops.cpp, for `compressor info` and the tests that check registration.
OP_NAMES = [
    "cumax", "cumax_backward",
    "onlstm_cell", "onlstm_cell_backward", "onlstm_sequence", "onlstm_sequence_backward",
]

__all__ = ["OP_NAMES", "cumax", "onlstm_cell", "onlstm_sequence"]
