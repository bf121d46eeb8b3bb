"""Multi-head attention whose projections are plain nn.Linear children.

torch's nn.MultiheadAttention keeps its query/key/value projection as a bare `in_proj_weight`
tensor and hands it (and `out_proj.weight`) to F.multi_head_attention_forward, so no module swap
(sparse, power-of-two, int8) can reach those weights. `MultiheadAttention` here computes the same
function with `q_proj`, `k_proj`, `v_proj` and `out_proj` as nn.Linear modules that any
transform may replace by a compressed twin; the attention itself is torch's
scaled_dot_product_attention (or, when weights are asked for, the explicit softmax torch uses).

Same constructor and forward signature as nn.MultiheadAttention; a state_dict of torch's module
(in_proj_weight / q_proj_weight..., in_proj_bias) loads into it, and `from_torch` converts one
with the same parameter values.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import CompressorError

_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype, name: str):
    """A bool mask (True = masked out) as an additive float mask; float masks pass unchanged."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    if not mask.is_floating_point():
        raise CompressorError(f"MultiheadAttention: {name} must be bool or floating point, got "
                              f"{mask.dtype}")
    return mask.to(dtype)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention with nn.Linear projections (see the module docstring)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise CompressorError(f"MultiheadAttention: embed_dim ({embed_dim}) must be a "
                                  f"positive multiple of num_heads ({num_heads})")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        self.add_zero_attn = add_zero_attn
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's initialisation: Xavier-uniform over the packed (3E, E) projection when the
        dims agree (each projection on its own otherwise), zero biases."""
        with torch.no_grad():
            if self.kdim == self.vdim == self.embed_dim:
                packed = torch.empty(3 * self.embed_dim, self.embed_dim)
                nn.init.xavier_uniform_(packed)
                for name, part in zip(_PROJECTIONS, packed.chunk(3), strict=True):
                    getattr(self, name).weight.copy_(part)
            else:
                for name in _PROJECTIONS:
                    nn.init.xavier_uniform_(getattr(self, name).weight)
            for name in (*_PROJECTIONS, "out_proj"):
                if getattr(self, name).bias is not None:
                    getattr(self, name).bias.zero_()
            for p in (self.bias_k, self.bias_v):
                if p is not None:
                    nn.init.xavier_normal_(p)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> "MultiheadAttention":
        """The equivalent module, sharing out_proj's and bias_k/v's Parameter objects and holding
        copies of the q/k/v rows of in_proj_weight (or of q/k/v_proj_weight)."""
        if type(mha) is not nn.MultiheadAttention:
            raise CompressorError(f"MultiheadAttention.from_torch needs an nn.MultiheadAttention, "
                                  f"got {type(mha).__name__}")
        weight = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None,
                  mha.bias_k is not None, mha.add_zero_attn, mha.kdim, mha.vdim, mha.batch_first,
                  device=weight.device, dtype=weight.dtype)
        for name, (source, rows) in new.parameter_sources().items():
            owner, _, attr = name.rpartition(".")
            old = mha.get_parameter(source)
            module = new.get_submodule(owner) if owner else new
            if rows is None:
                setattr(module, attr, old)
            else:
                setattr(module, attr, nn.Parameter(old.detach()[rows].clone(),
                                                   requires_grad=old.requires_grad))
        new.train(mha.training)
        return new

    def parameter_sources(self) -> dict[str, tuple[str, slice | None]]:
        """{own parameter: (nn.MultiheadAttention parameter it comes from, rows or None for the
        whole tensor)}: how torch's layout maps onto this module's."""
        e, packed = self.embed_dim, self.kdim == self.vdim == self.embed_dim
        out = {}
        for i, name in enumerate(_PROJECTIONS):
            rows = slice(i * e, (i + 1) * e)
            out[f"{name}.weight"] = ("in_proj_weight", rows) if packed else \
                (f"{name}_weight", None)
            if getattr(self, name).bias is not None:
                out[f"{name}.bias"] = ("in_proj_bias", rows)
        out["out_proj.weight"] = ("out_proj.weight", None)
        if self.out_proj.bias is not None:
            out["out_proj.bias"] = ("out_proj.bias", None)
        for name in ("bias_k", "bias_v"):
            if getattr(self, name) is not None:
                out[name] = (name, None)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state_dict of nn.MultiheadAttention: split its packed tensors into ours.
        for name, (source, rows) in self.parameter_sources().items():
            key = prefix + source
            if source != name and key in state_dict and prefix + name not in state_dict:
                value = state_dict[key]
                state_dict[prefix + name] = value if rows is None else value[rows]
        for source in ("in_proj_weight", "in_proj_bias", *(f"{n}_weight" for n in _PROJECTIONS)):
            state_dict.pop(prefix + source, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check(self, query, key, value) -> bool:
        """True for batched (3-D) inputs; raises on shapes torch's module would reject."""
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise CompressorError(f"MultiheadAttention: query, key and value must all be 2-D "
                                  f"(unbatched) or 3-D, got {tuple(query.shape)}, "
                                  f"{tuple(key.shape)}, {tuple(value.shape)}")
        for what, t, dim in (("query", query, self.embed_dim), ("key", key, self.kdim),
                             ("value", value, self.vdim)):
            if t.shape[-1] != dim:
                raise CompressorError(f"MultiheadAttention: {what} must have {dim} features, "
                                      f"got shape {tuple(t.shape)}")
        return batched

    def _batch_major(self, t: torch.Tensor, batched: bool) -> torch.Tensor:
        if not batched:
            return t.unsqueeze(0)
        return t if self.batch_first else t.transpose(0, 1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, E) -> (B, H, L, head_dim)."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _keys_values(self, key, value):
        """Projected keys and values (B, H, S, head_dim) with bias_k/v and the zero column."""
        k, v = self.k_proj(key), self.v_proj(value)
        if self.bias_k is not None:
            b = k.shape[0]
            k = torch.cat([k, self.bias_k.expand(b, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(b, 1, -1)], dim=1)
        k, v = self._heads(k), self._heads(v)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(*k.shape[:2], 1, k.shape[-1])], dim=2)
            v = torch.cat([v, v.new_zeros(*v.shape[:2], 1, v.shape[-1])], dim=2)
        return k, v

    def _merged_mask(self, attn_mask, key_padding_mask, batch, tgt_len, dtype, batched):
        """One additive mask broadcastable to (B, H, L, S), or None."""
        extra = int(self.bias_k is not None) + int(self.add_zero_attn)
        mask = additive_mask(attn_mask, dtype, "attn_mask")
        if mask is not None:
            if mask.dim() == 3:
                mask = mask.unflatten(0, (batch, self.num_heads))
            mask = F.pad(mask, (0, extra)) if extra else mask
        pad = additive_mask(key_padding_mask, dtype, "key_padding_mask")
        if pad is not None:
            pad = pad if batched else pad.unsqueeze(0)
            pad = F.pad(pad, (0, extra)) if extra else pad
            pad = pad[:, None, None, :]
            mask = pad if mask is None else mask + pad
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        batched = self._check(query, key, value)
        if is_causal and attn_mask is None:
            raise CompressorError("MultiheadAttention: is_causal=True needs attn_mask (the causal "
                                  "mask it describes), as nn.MultiheadAttention does")
        q_in, k_in, v_in = (self._batch_major(t, batched) for t in (query, key, value))
        q = self._heads(self.q_proj(q_in))
        k, v = self._keys_values(k_in, v_in)
        b, tgt_len = q.shape[0], q.shape[2]
        # torch's rule: a causal hint replaces the mask only when nothing else needs it
        causal = is_causal and key_padding_mask is None and not need_weights
        mask = None if causal else self._merged_mask(attn_mask, key_padding_mask, b, tgt_len,
                                                     q.dtype, batched)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            if p > 0:  # torch returns the weights after dropout
                weights = F.dropout(weights, p)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, p, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not batched:
            return out.squeeze(0), weights
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def export_module(self) -> nn.Module:
        """The export protocol: this module computes with standard torch ops only (its
        projections export themselves), so it exports as it is."""
        return self

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")
