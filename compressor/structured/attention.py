"""Multi-head attention whose widths can differ, so heads and channels can be pruned.

nn.MultiheadAttention ties the query/key/value width to embed_dim (num_heads * head_dim ==
embed_dim), so it cannot hold a model with pruned heads or a pruned residual stream.
`PrunableMultiheadAttention` computes the same function with independent widths: in_dim
(the query/key/value features), num_heads x head_dim (the projections) and out_dim (the
output). Its parameter names are nn.MultiheadAttention's (in_proj_weight, in_proj_bias,
out_proj.weight, out_proj.bias), so the unpruned state_dict is interchangeable.
"""

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import CompressorError


class PrunableMultiheadAttention(nn.Module):
    """forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (output, weights or None), as
    nn.MultiheadAttention with packed projections and no bias_k/bias_v/add_zero_attn."""

    def __init__(self, in_dim: int, num_heads: int, head_dim: int, out_dim: int,
                 bias: bool = True, dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, in_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        # Taylor importance hooks in here (per example and head); None in normal use
        self.head_gate: torch.Tensor | None = None

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "PrunableMultiheadAttention":
        """The same function as `mha`, with its weights."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise CompressorError("PrunableMultiheadAttention: only packed q/k/v projections "
                                  "without bias_k/bias_v/add_zero_attn are supported")
        out = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.embed_dim,
                  bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                  batch_first=mha.batch_first)
        out.load_state_dict(mha.state_dict(), strict=True)
        return out.train(mha.training)

    def _split(self, x: torch.Tensor, part: int) -> torch.Tensor:
        inner = self.num_heads * self.head_dim
        rows = slice(part * inner, (part + 1) * inner)
        bias = None if self.in_proj_bias is None else self.in_proj_bias[rows]
        y = F.linear(x, self.in_proj_weight[rows], bias)
        return y.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _mask(self, scores, attn_mask, key_padding_mask, is_causal):
        if is_causal and attn_mask is None:
            t, s = scores.shape[-2], scores.shape[-1]
            attn_mask = torch.ones(t, s, dtype=torch.bool, device=scores.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (B * heads, T, S), as nn.MultiheadAttention takes it
                attn_mask = attn_mask.view(scores.shape[0], self.num_heads, *attn_mask.shape[1:])
            scores = (scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                      else scores + attn_mask)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = (scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool
                      else scores + pad)
        return scores

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._split(query, 0), self._split(key, 1), self._split(value, 2)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        weights = torch.softmax(self._mask(scores, attn_mask, key_padding_mask, is_causal), -1)
        dropped = F.dropout(weights, self.dropout, self.training)
        heads = dropped @ v
        if self.head_gate is not None:
            heads = heads * self.head_gate
        out = self.out_proj(heads.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"out_dim={self.out_dim}, batch_first={self.batch_first}")
