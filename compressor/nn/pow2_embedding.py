"""Pow2Embedding: an embedding table stored as packed power-of-two codes (INQ), so a language
model's state_dict shrinks where most of its weights are, not only in its output layer.

Modes (`module.mode`, chosen by measurement like the other Pow2 layers):
  "decoded"  the table is decoded once into a float buffer that is not saved; forward is
             F.embedding (the float model's speed);
  "codes"    forward gathers the looked-up rows of the codes and decodes only those: no float
             table in memory, which pays for large vocabularies.
Recurrent weights: compressor.nn.pow2_recurrent.
"""

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import CompressorError
from compressor.formats.pow2_levels import check_bits
from compressor.nn.pow2 import _Pow2Packed
from compressor.ops.pow2 import pow2_decode


class Pow2Embedding(_Pow2Packed):
    """An nn.Embedding whose table (num_embeddings, embedding_dim) is packed power-of-two codes."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, n1: int = 0,
                 padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self._init_packed(num_embeddings, embedding_dim, bits, n1, bias=False)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in ("decoded", "codes"):
            raise CompressorError(f"Pow2Embedding.mode must be 'decoded' or 'codes', got "
                                  f"{value!r}")
        self._mode = value
        self._refresh_decoded()

    @classmethod
    def from_float(cls, embedding: nn.Embedding, bits: int,
                   n1: int | None = None) -> "Pow2Embedding":
        """Quantize `embedding.weight` with the INQ rule (n1 from its max unless given), pack."""
        if not isinstance(embedding, nn.Embedding):
            raise CompressorError("Pow2Embedding.from_float needs an nn.Embedding, got "
                                  f"{type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise CompressorError("Pow2Embedding: an nn.Embedding with max_norm rewrites its "
                                  "table on lookup, which packed codes cannot do")
        check_bits(bits)
        mod = cls(embedding.num_embeddings, embedding.embedding_dim, bits, 0,
                  embedding.padding_idx)
        mod._set_weight(embedding.weight, n1)
        return mod.to(embedding.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        return self._weight2d()

    def run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if x.dtype not in (torch.int32, torch.int64):
            raise CompressorError(f"Pow2Embedding expects integer indices, got {x.dtype}")
        if mode == "decoded":
            return F.embedding(x, self._float_weight(torch.float32, mode), self.padding_idx)
        flat = x.reshape(-1)
        codes = self.codes.index_select(0, flat)
        nonzero = self.nonzero.index_select(0, flat) if self.bits == 5 else self.nonzero
        rows = pow2_decode(codes, nonzero, self._k, self.bits, self.n1)
        return rows.reshape(*x.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
                f"bits={self.bits}, n1={self.n1}, mode={self.mode}")

    def export_module(self) -> nn.Module:
        """An nn.Embedding holding the exact dequantized table (the exporter stores it as codes
        again)."""
        embedding = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx,
                                 device=self.codes.device)
        with torch.no_grad():
            embedding.weight.copy_(self.dequantized_weight())
        return embedding
