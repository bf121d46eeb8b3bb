"""Modules of compressor: sparse and power-of-two inference modules, ON-LSTM."""

from compressor.nn.onlstm import ONLSTM
from compressor.nn.pow2 import Pow2Conv1d, Pow2Conv2d, Pow2Linear
from compressor.nn.pow2_embedding import Pow2Embedding
from compressor.nn.pow2_recurrent import Pow2GRU, Pow2LSTM, Pow2RNN
from compressor.nn.sparse import SparseConv1d, SparseConv2d, SparseLinear

__all__ = ["ONLSTM", "Pow2Conv1d", "Pow2Conv2d", "Pow2Embedding", "Pow2GRU", "Pow2LSTM",
           "Pow2Linear", "Pow2RNN", "SparseConv1d", "SparseConv2d", "SparseLinear"]
