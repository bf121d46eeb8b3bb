"""A small Vision Transformer with torchvision's module names (conv_proj, class_token,
encoder.pos_embedding, encoder.layers.encoder_layer_N.{ln_1,self_attention,ln_2,mlp},
encoder.ln, heads.head), so a torchvision ViT state_dict of the same size loads."""

from collections import OrderedDict

import torch
from torch import nn

from compressor.models._checks import divides, image_shape, positive


class MLPBlock(nn.Sequential):
    def __init__(self, dim: int, mlp_dim: int, dropout: float):
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mlp_dim, dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout,
                                                    batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_len: int, layers: int, dim: int, heads: int, mlp_dim: int,
                 dropout: float):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_len, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        # torchvision names the blocks encoder_layer_N
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(dim, heads, mlp_dim, dropout))
            for i in range(layers)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    def __init__(self, image: tuple[int, int, int], patch: int, layers: int, dim: int,
                 heads: int, mlp_dim: int, num_classes: int, dropout: float):
        super().__init__()
        channels, height, width = image
        self.conv_proj = nn.Conv2d(channels, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        seq_len = (height // patch) * (width // patch) + 1
        self.encoder = Encoder(seq_len, layers, dim, heads, mlp_dim, dropout)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # shapes come from the tensors, never from a stored width, so a pruned model still runs
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit(*, num_classes: int = 10, feature_shape=(3, 32, 32), patch_size: int = 4,
        dim: int = 64, depth: int = 2, heads: int = 4, mlp_dim: int = 128,
        dropout: float = 0.0) -> VisionTransformer:
    """ViT encoder: patch embedding conv, class token, position embedding, `depth` pre-norm
    blocks (nn.MultiheadAttention + MLP), head on the class token."""
    image = image_shape("vit", feature_shape)
    positive("vit", num_classes=num_classes, patch_size=patch_size, dim=dim, depth=depth,
             heads=heads, mlp_dim=mlp_dim)
    divides("vit", "dim", dim, "heads", heads)
    divides("vit", "image height", image[1], "patch_size", patch_size)
    divides("vit", "image width", image[2], "patch_size", patch_size)
    return VisionTransformer(image, patch_size, depth, dim, heads, mlp_dim, num_classes,
                             float(dropout))
