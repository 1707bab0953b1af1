"""Building blocks shared by the LM and the DPD: RMSNorm, rotary embeddings, attention, SwiGLU.

Attention is written out with matmuls (no ``nn.MultiheadAttention``, no fused kernels) so that every graph
exports to ONNX and Core ML with dynamic lengths (see DEPENDENCIES.md: MHA bakes the length into a Reshape).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), as in LLaMA."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings (Su et al. 2021) at float ``positions`` (T,) -> (T, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim of x (B, H, T, hd) by the angles (T, hd // 2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for (B, H, Tq, hd) x (B, H, Tk, hd); mask is additive, broadcastable."""
    scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


class SwiGLU(nn.Module):
    """Gated feed-forward block (Shazeer 2020) used by LLaMA."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class CrossAttention(nn.Module):
    """Multi-head attention from queries x (B, T, D) to a context (B, S, Dc) with an optional key mask (B, S)."""

    def __init__(self, dim: int, context_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads
        q = self.q(x).reshape(B, T, H, D // H).transpose(1, 2)  # (B, H, T, hd)
        k, v = self.kv(context).reshape(B, context.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, S, hd)
        mask = None
        if key_mask is not None:
            mask = torch.where(key_mask[:, None, None, :] > 0, 0.0, -1e9)  # (B, 1, 1, S)
        y = attention(q, k, v, mask)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def count_params(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
