"""Drop-in modules backed by compressor's kernels."""

from compressor.nn.onlstm import ONLSTM

__all__ = ["ONLSTM"]
