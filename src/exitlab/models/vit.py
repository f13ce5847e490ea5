"""A Vision Transformer for small images, with ViT-T and ViT-S configurations and a configurable patch size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .contract import BlocksBackbone, ExitPoint


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, N, d] each
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    identity_skip = True  # pre-norm residual: skipping the block leaves the token states as they are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Patchify with a strided conv, prepend the CLS token, add learned position embeddings."""

    def __init__(self, in_chans: int, dim: int, patch: int, img_size: int):
        super().__init__()
        if img_size % patch:
            raise ValueError(f"ViT patch size {patch} must divide the image size {img_size}")
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (img_size // patch) ** 2 + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos


class ViTHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x[:, 0]))


class ViT(BlocksBackbone):
    """ViT: patch embedding (stem), ``depth`` transformer blocks, LayerNorm + linear on the CLS token (final)."""

    def __init__(self, *, num_classes: int, in_chans: int = 3, img_size: int = 32, patch_size: int = 4,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.stem = PatchEmbed(in_chans, dim, patch_size, img_size)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.feature_info = [ExitPoint(dim, patch_size, "tokens") for _ in range(depth)]
        self.final = ViTHead(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
