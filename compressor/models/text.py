"""Transformer text models: a BERT-style encoder classifier (blocks named like
nn.TransformerEncoderLayer, post-norm) and a GPT-style decoder with hand-written causal
self-attention and an LM head over (B, T, V)."""

from collections import OrderedDict

import torch
from torch import nn

from compressor.models._checks import divides, positive, token_shape


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's parameters and names (self_attn, linear1, linear2, norm1,
    norm2), post-norm, GELU, batch first; without its fast path, so compressed weights work."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.self_attn(x, x, x, need_weights=False)
        x = self.norm1(x + self.dropout1(y))
        y = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm2(x + self.dropout2(y))


class BertEncoder(nn.Module):
    def __init__(self, vocab: int, max_len: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, num_labels: int, dropout: float):
        super().__init__()
        self.tok_embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.empty(1, max_len, dim).normal_(std=0.02))
        self.embed_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, mlp_dim, dropout)
                                    for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.tok_embed(tokens) + self.pos_embed[:, :tokens.shape[1]])
        for layer in self.layers:
            x = layer(x)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert(*, num_classes: int = 2, feature_shape=(32,), vocab_size: int = 1000, dim: int = 64,
         depth: int = 2, heads: int = 4, mlp_dim: int = 256, dropout: float = 0.0) -> BertEncoder:
    """BERT-style encoder classifier: token ids (B, T) -> logits (B, num_classes); T up to
    feature_shape[0]."""
    max_len = token_shape("bert", feature_shape)
    positive("bert", num_classes=num_classes, vocab_size=vocab_size, dim=dim, depth=depth,
             heads=heads, mlp_dim=mlp_dim)
    divides("bert", "dim", dim, "heads", heads)
    return BertEncoder(vocab_size, max_len, dim, depth, heads, mlp_dim, num_classes,
                       float(dropout))


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention written out: separate query/key/value projections, heads
    split by view(B, T, num_heads, head_dim); num_heads is this module's own attribute."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        q = self.query(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        k = self.key(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        v = self.value(x).view(b, t, self.num_heads, -1).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        # the mask is made per call, not kept as a buffer: nothing to store or rebuild on load
        future = scores.new_ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(dim, mlp_dim), act=nn.GELU(),
                                      proj=nn.Linear(mlp_dim, dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPTDecoder(nn.Module):
    def __init__(self, vocab: int, max_len: int, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.tok_embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.empty(1, max_len, dim).normal_(std=0.02))
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_dim)
                                    for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embed(tokens) + self.pos_embed[:, :tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt(*, num_classes: int = 256, feature_shape=(32,), dim: int = 64, depth: int = 2,
        heads: int = 4, mlp_dim: int = 256) -> GPTDecoder:
    """GPT-style decoder LM: token ids (B, T) -> logits (B, T, V) with V = num_classes (the
    vocabulary); T up to feature_shape[0]."""
    max_len = token_shape("gpt", feature_shape)
    positive("gpt", num_classes=num_classes, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim)
    divides("gpt", "dim", dim, "heads", heads)
    return GPTDecoder(num_classes, max_len, dim, depth, heads, mlp_dim)
