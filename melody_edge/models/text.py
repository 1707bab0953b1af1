"""Text conditioning: the real pretrained MiniLM sentence encoder, then a learned-query resampler that turns its
token states into the soft prefix the semantic LM reads (the role MuLan's 12 RVQ tokens play in MeLoDy)."""

from __future__ import annotations

import torch
from torch import nn

from melody_edge.models.config import TEXT_DIM, TextConfig
from melody_edge.models.layers import CrossAttention, RMSNorm, SwiGLU


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 (sentence-transformers, 22.7M parameters, frozen) loaded offline from its PyPI package."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel

        from melody_edge.text import minilm_dir

        self.bert = AutoModel.from_pretrained(str(minilm_dir()))
        self.bert.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> token states (B, T, 384)."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class TextConditioner(nn.Module):
    """MiniLM token states (B, T, 384) -> soft prefix (B, n_prefix, dim) via learned queries (Perceiver-style)."""

    def __init__(self, cfg: TextConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(TEXT_DIM, dim)
        self.queries = nn.Parameter(torch.randn(cfg.n_prefix, dim) * 0.02)
        self.norm_q = RMSNorm(dim)
        self.attn = CrossAttention(dim, dim, cfg.n_heads)
        self.norm_ff = RMSNorm(dim)
        self.ff = SwiGLU(dim, 2 * dim)
        self.null_prefix = nn.Parameter(torch.randn(cfg.n_prefix, dim) * 0.02)  # the "no text" prefix for CFG

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B = states.shape[0]
        ctx = self.proj(states)  # (B, T, D)
        q = self.queries[None].expand(B, -1, -1)  # (B, P, D)
        x = q + self.attn(self.norm_q(q), ctx, mask)
        return x + self.ff(self.norm_ff(x))  # (B, P, D)

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional prefix (B, P, D) used for dropped captions in training and for CFG."""
        return self.null_prefix[None].expand(batch, -1, -1)
