"""Text conditioning: the real pretrained MiniLM sentence encoder, then a learned-query resampler that turns its
token states into the soft prefix the semantic LM reads (the role MuLan's 12 RVQ tokens play in MeLoDy)."""

from __future__ import annotations

import torch
from torch import nn

from melody_edge.models.config import TEXT_DIM, ControlConfig, TextConfig
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


def tempo_features(bpm: torch.Tensor, n: int = 4) -> torch.Tensor:
    """Fourier features of log2(bpm / 100) (B,) -> (B, 2n); the tempo control's continuous embedding input."""
    x = torch.log2(bpm.clamp(min=1.0) / 100.0)[:, None] * (torch.arange(1, n + 1, device=bpm.device) * 1.5)
    return torch.cat([x.sin(), x.cos()], dim=-1)


class ControlEmbedding(nn.Module):
    """Controls -> 4 prefix vectors (key or mode, tempo, metre, instrument family), each with a learned "absent"
    vector: ids equal to the class count (or bpm <= 0) mean "not given"."""

    def __init__(self, cfg: ControlConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.key = nn.Embedding(cfg.n_keys + 1, dim)
        self.tempo = nn.Sequential(nn.Linear(8, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_tempo = nn.Parameter(torch.randn(dim) * 0.02)
        self.metre = nn.Embedding(cfg.n_metres + 1, dim)
        self.family = nn.Embedding(cfg.n_families + 1, dim)

    def forward(self, key: torch.Tensor, bpm: torch.Tensor, metre: torch.Tensor, family: torch.Tensor
                ) -> torch.Tensor:
        """key, metre, family (B,) int64, bpm (B,) float -> (B, 4, D)."""
        tempo = torch.where((bpm > 0)[:, None], self.tempo(tempo_features(bpm)), self.null_tempo[None])
        return torch.stack([self.key(key), tempo, self.metre(metre), self.family(family)], dim=1)

    def absent(self, batch: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
        """The ids of "no control given" for a batch: (key, bpm, metre, family)."""
        c = self.cfg
        full = lambda n: torch.full((batch,), n, dtype=torch.int64, device=device)  # noqa: E731
        return full(c.n_keys), torch.zeros(batch, device=device), full(c.n_metres), full(c.n_families)


class TextConditioner(nn.Module):
    """MiniLM token states (B, T, 384) -> soft prefix (B, n_prefix, dim) via learned queries (Perceiver-style),
    followed by the 4 control vectors when the model has controls."""

    def __init__(self, cfg: TextConfig, dim: int, controls: ControlConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.controls = ControlEmbedding(controls, dim) if controls is not None and controls.enabled else None
        self.proj = nn.Linear(TEXT_DIM, dim)
        self.queries = nn.Parameter(torch.randn(cfg.n_prefix, dim) * 0.02)
        self.norm_q = RMSNorm(dim)
        self.attn = CrossAttention(dim, dim, cfg.n_heads)
        self.norm_ff = RMSNorm(dim)
        self.ff = SwiGLU(dim, 2 * dim)
        self.null_prefix = nn.Parameter(torch.randn(cfg.n_prefix, dim) * 0.02)  # the "no text" prefix for CFG

    def text_prefix(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text part of the prefix (B, n_prefix, D)."""
        B = states.shape[0]
        ctx = self.proj(states)  # (B, T, D)
        q = self.queries[None].expand(B, -1, -1)  # (B, P, D)
        x = q + self.attn(self.norm_q(q), ctx, mask)
        return x + self.ff(self.norm_ff(x))  # (B, P, D)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, controls: tuple[torch.Tensor, ...] | None = None
                ) -> torch.Tensor:
        """Token states and mask -> prefix (B, P, D); ``controls`` = (key, bpm, metre, family) (B,) each, or
        ``None`` for none given."""
        return self.with_controls(self.text_prefix(states, mask), controls)

    def with_controls(self, text: torch.Tensor, controls: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        """Append the control vectors (absent ones when ``controls`` is None) to a text prefix (B, n_prefix, D)."""
        if self.controls is None:
            return text
        if controls is None:
            controls = self.controls.absent(text.shape[0], text.device)
        return torch.cat([text, self.controls(*controls)], dim=1)

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional prefix (B, P, D): no text and no controls (dropped captions in training, CFG)."""
        return self.with_controls(self.null_prefix[None].expand(batch, -1, -1), None)
