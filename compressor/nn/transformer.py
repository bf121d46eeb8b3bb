"""Transformer encoder / decoder layers and stacks built on compressor's MultiheadAttention.

torch's nn.TransformerEncoderLayer (and nn.TransformerEncoder) take a fused fast path in eval
mode that reads `self_attn.in_proj_weight`, `linear1.weight`, ... as tensors, so a layer whose
Linear was swapped for a compressed module fails with "object has no attribute 'weight'". These
classes compute torch's slow path (the same function: post- or pre-norm, ReLU/GELU, dropout)
and only ever *call* their children, so every child may be compressed. Attribute and parameter
names are torch's (self_attn, linear1, linear2, norm1..3, dropout1..3), apart from the attention
projections (see compressor.nn.attention); `from_torch` converts torch's modules, sharing every
parameter except the split attention projections.

The activation is a child module (nn.ReLU / nn.GELU or the caller's module) rather than a
function attribute, so a layer is described by plain attributes and children (model files).
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import CompressorError
from compressor.nn.attention import MultiheadAttention

_SHARED = ("linear1", "dropout", "linear2", "norm1", "norm2", "dropout1", "dropout2")


def activation_module(activation, where: str = "activation") -> nn.Module:
    """'relu' / 'gelu' / F.relu / F.gelu / an nn.Module as a module."""
    if isinstance(activation, nn.Module):
        return activation
    if activation in ("relu", F.relu):
        return nn.ReLU()
    if activation in ("gelu", F.gelu):
        return nn.GELU()
    raise CompressorError(f"{where}: activation {activation!r} is neither 'relu', 'gelu' nor an "
                          "nn.Module; wrap it in an nn.Module to convert this layer")


def _shell(cls):
    """An instance of `cls` with nn.Module's state only, for from_torch to fill."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    return obj


class _Layer(nn.Module):
    """What the encoder and decoder layers share: the feed-forward block and from_torch."""

    _attentions: tuple[str, ...] = ()
    _extra: tuple[str, ...] = ()

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation="relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True,
                 device=None, dtype=None):
        """torch's constructor signature: the children a subclass's _attentions and _extra
        name, built as torch builds them."""
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        for name in self._attentions:
            setattr(self, name, MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                   batch_first=batch_first, **kw))
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = norm_first
        for name in ("norm1", "norm2", *(n for n in self._extra if n.startswith("norm"))):
            setattr(self, name, nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw))
        for name in ("dropout1", "dropout2", *(n for n in self._extra if n.startswith("drop"))):
            setattr(self, name, nn.Dropout(dropout))
        self.activation = activation_module(activation, type(self).__name__)

    @classmethod
    def from_torch(cls, layer: nn.Module):
        """The equivalent layer, sharing the torch layer's children (its Linears, norms and
        dropouts are the same objects) and converting its attention modules."""
        new = _shell(cls)
        for name in cls._attentions:
            setattr(new, name, MultiheadAttention.from_torch(getattr(layer, name)))
        for name in (*_SHARED, *cls._extra):
            setattr(new, name, getattr(layer, name))
        new.norm_first = layer.norm_first
        new.activation = activation_module(layer.activation, type(layer).__name__)
        new.train(layer.training)
        return new

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def _attend(self, attn, x, mem, attn_mask, key_padding_mask, is_causal):
        return attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                    need_weights=False, is_causal=is_causal)[0]


class TransformerEncoderLayer(_Layer):
    """nn.TransformerEncoderLayer's computation (its slow path) with swappable children."""

    _attentions = ("self_attn",)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        x = src
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.dropout1(self._attend(self.self_attn, y, y, src_mask,
                                               src_key_padding_mask, is_causal))
            return x + self.dropout2(self._ff_block(self.norm2(x)))
        x = self.norm1(x + self.dropout1(self._attend(self.self_attn, x, x, src_mask,
                                                      src_key_padding_mask, is_causal)))
        return self.norm2(x + self.dropout2(self._ff_block(x)))


class TransformerDecoderLayer(_Layer):
    """nn.TransformerDecoderLayer's computation with swappable children."""

    _attentions = ("self_attn", "multihead_attn")
    _extra = ("norm3", "dropout3")

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False) -> torch.Tensor:
        x = tgt
        if self.norm_first:
            y = self.norm1(x)
            x = x + self.dropout1(self._attend(self.self_attn, y, y, tgt_mask,
                                               tgt_key_padding_mask, tgt_is_causal))
            x = x + self.dropout2(self._attend(self.multihead_attn, self.norm2(x), memory,
                                               memory_mask, memory_key_padding_mask,
                                               memory_is_causal))
            return x + self.dropout3(self._ff_block(self.norm3(x)))
        x = self.norm1(x + self.dropout1(self._attend(self.self_attn, x, x, tgt_mask,
                                                      tgt_key_padding_mask, tgt_is_causal)))
        x = self.norm2(x + self.dropout2(self._attend(self.multihead_attn, x, memory,
                                                      memory_mask, memory_key_padding_mask,
                                                      memory_is_causal)))
        return self.norm3(x + self.dropout3(self._ff_block(x)))


class _Stack(nn.Module):
    """A stack of layers and an optional final norm (nn.TransformerEncoder / Decoder)."""

    _layer_type: type = nn.Module

    def __init__(self, layer: nn.Module, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        if not isinstance(layer, self._layer_type):
            raise CompressorError(f"{type(self).__name__} needs a {self._layer_type.__name__}, "
                                  f"got {type(layer).__name__} (convert torch's with "
                                  "from_torch)")
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    @classmethod
    def from_torch(cls, stack: nn.Module):
        new = _shell(cls)
        new.layers = nn.ModuleList(cls._layer_type.from_torch(layer) for layer in stack.layers)
        new.num_layers = stack.num_layers
        new.norm = stack.norm
        new.train(stack.training)
        return new

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm is None else self.norm(x)


class TransformerEncoder(_Stack):
    """nn.TransformerEncoder without the nested-tensor fast path. `is_causal=None` does not
    inspect the mask (a data-dependent check that breaks torch.export): the mask is applied as
    given, which computes the same result."""

    _layer_type = TransformerEncoderLayer

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None,
                src_key_padding_mask: torch.Tensor | None = None,
                is_causal: bool | None = None) -> torch.Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=bool(is_causal))
        return self._finish(x)


class TransformerDecoder(_Stack):
    """nn.TransformerDecoder over compressor's decoder layers (causal hints as in the
    encoder)."""

    _layer_type = TransformerDecoderLayer

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                tgt_is_causal: bool | None = None, memory_is_causal: bool = False
                ) -> torch.Tensor:
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return self._finish(x)
