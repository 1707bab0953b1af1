"""Dual-path diffusion (DPD) denoiser of MeLoDy (Lam et al. 2023, sec. 3.3): predicts the velocity v of noisy VAE
latents, conditioned on semantic tokens and on one angle per frame (so each chunk can carry its own noise level).

Layout per block: the latent sequence is cut into half-overlapping segments of ``segment`` frames;
- coarse path: each segment is merged to ``segment // merge`` vectors, and a RoFormer (self-attention with rotary
  positions + cross-attention to semantic-token embeddings) runs across all merged vectors of all segments;
- fine path: a bidirectional transformer layer inside each segment. MeLoDy uses a 2-layer bi-SRU here; SRU is not in
  PyTorch and has no ONNX/Core ML op, and a bidirectional GRU runs step by step on a CPU, so we use local
  (in-segment) attention, which exports everywhere and costs O(L * segment);
- both paths are FiLM-modulated by the angle embedding plus the mean semantic embedding.
Segments are overlap-added back to the sequence at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from melody_edge.models.config import DPDConfig
from melody_edge.models.layers import CrossAttention, RMSNorm, apply_rope, attention, rope_angles


class SelfAttention(nn.Module):
    """Bidirectional self-attention with rotary positions over (B, T, D)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).reshape(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        y = attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def mlp(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))


class CoarseLayer(nn.Module):
    """RoFormer layer across merged segments, cross-attending to the semantic tokens."""

    def __init__(self, cfg: DPDConfig) -> None:
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.dim), SelfAttention(cfg.dim, cfg.n_heads)
        self.norm2, self.xattn = RMSNorm(cfg.dim), CrossAttention(cfg.dim, cfg.dim, cfg.n_heads)
        self.norm3, self.ff = RMSNorm(cfg.dim), mlp(cfg.dim, cfg.ffn_mult)

    def forward(self, x, sem, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        x = x + self.xattn(self.norm2(x), sem)
        return x + self.ff(self.norm3(x))


class FineLayer(nn.Module):
    """Bidirectional transformer layer inside each segment (stands in for MeLoDy's bi-SRU)."""

    def __init__(self, cfg: DPDConfig) -> None:
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.dim), SelfAttention(cfg.dim, cfg.n_heads)
        self.norm2, self.ff = RMSNorm(cfg.dim), mlp(cfg.dim, cfg.ffn_mult)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.ff(self.norm2(x))


class DPDBlock(nn.Module):
    def __init__(self, cfg: DPDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.film = nn.Linear(cfg.dim, 4 * cfg.dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.coarse = nn.ModuleList([CoarseLayer(cfg) for _ in range(cfg.coarse_layers)])
        self.fine = nn.ModuleList([FineLayer(cfg) for _ in range(cfg.fine_layers)])
        self.norm_c = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.norm_f = nn.LayerNorm(cfg.dim, elementwise_affine=False)

    def forward(self, seg, cond, sem, rope_coarse, rope_fine):
        B, S, K, D = seg.shape
        m = self.cfg.merge
        g1, b1, g2, b2 = self.film(cond).chunk(4, dim=-1)  # each (B, S, K, D)
        # coarse path: merge each segment to K // m vectors, attend across all segments
        h = self.norm_c(seg) * (1 + g1) + b1
        merged = h.reshape(B, S, K // m, m, D).mean(3).reshape(B, S * (K // m), D)  # (B, S*K/m, D)
        out = merged
        for layer in self.coarse:
            out = layer(out, sem, *rope_coarse)
        delta = (out - merged).reshape(B, S, K // m, 1, D).expand(B, S, K // m, m, D).reshape(B, S, K, D)
        seg = seg + delta
        # fine path: inside each segment
        h = (self.norm_f(seg) * (1 + g2) + b2).reshape(B * S, K, D)
        out = h
        for layer in self.fine:
            out = layer(out, *rope_fine)
        return seg + (out - h).reshape(B, S, K, D)


def angle_features(angles: torch.Tensor, n: int) -> torch.Tensor:
    """Fourier features of angles (B, L) in [0, pi/2] -> (B, L, 2n)."""
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), n, device=angles.device))
    a = angles[..., None] * freqs  # (B, L, n)
    return torch.cat([a.sin(), a.cos()], dim=-1)


class DPD(nn.Module):
    """v-prediction network: (z (B, L, C), angles (B, L), tokens (B, N)) -> v_hat (B, L, C).

    ``tokens`` are 25 Hz semantic tokens; token ``cfg.sem_vocab`` means "no condition" (classifier-free guidance).
    N must be at least ceil(L / frames_per_token); extra tokens are ignored for the aligned embedding.
    With ``cfg.controlled`` the asked controls (B, 2) int64 ``[family, key]`` (``controls.control_ids``; family
    ``n_families`` / key 24 = none asked, also the default for ``controls=None``) join the FiLM condition of every
    block: the tokens alone carry too little of the timbre and of the key (``training.instrument_stages``: the DPD
    from real tokens kept the family of 49% of clips, the VAE of 87%; ``training.key_stages``: the key of 25%, real
    renders 42%).
    """

    def __init__(self, cfg: DPDConfig, frames_per_token: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.fpt = frames_per_token
        D = cfg.dim
        self.in_proj = nn.Linear(cfg.latent_dim, D)
        self.sem_emb = nn.Embedding(cfg.sem_vocab + 1, D)
        if cfg.token_features:  # each token's tokenizer features (chroma first): the pitch it stands for, given
            self.register_buffer("sem_feats", torch.zeros(cfg.sem_vocab + 1, cfg.token_features))
            self.feat_proj = nn.Linear(cfg.token_features, D, bias=False)
        self.angle_mlp = nn.Sequential(nn.Linear(2 * 32, D), nn.SiLU(), nn.Linear(D, D))
        self.mean_sem = nn.Linear(D, D)
        # zero-initialised: a DPD trained without them starts out unchanged
        if cfg.n_families:
            self.family_emb = nn.Embedding(cfg.n_families + 1, D)
            nn.init.zeros_(self.family_emb.weight)
        if cfg.n_keys:
            self.key_emb = nn.Embedding(cfg.n_keys + 1, D)
            nn.init.zeros_(self.key_emb.weight)
        self.blocks = nn.ModuleList([DPDBlock(cfg) for _ in range(cfg.n_blocks)])
        self.out_norm = RMSNorm(D)
        self.out = nn.Linear(D, cfg.latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def set_token_features(self, feats) -> None:
        """Store the tokenizer's per-token feature vectors (sem_vocab, F); the null token keeps zeros."""
        with torch.no_grad():
            self.sem_feats.zero_()
            self.sem_feats[: self.cfg.sem_vocab] = torch.as_tensor(feats, dtype=torch.float32)

    @property
    def null_token(self) -> int:
        return self.cfg.sem_vocab

    def _segment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Lp, D) with Lp a multiple of K/2 -> half-overlapping segments (B, S, K, D), S = 2 Lp / K - 1."""
        B, Lp, D = x.shape
        h = self.cfg.segment // 2
        halves = x.reshape(B, Lp // h, h, D)
        return torch.cat([halves[:, :-1], halves[:, 1:]], dim=2)

    def _overlap_add(self, seg: torch.Tensor) -> torch.Tensor:
        """Inverse of ``_segment``: average the two segments covering each half."""
        B, S, K, D = seg.shape
        h = K // 2
        y = F.pad(seg[:, :, :h], (0, 0, 0, 0, 0, 1)) + F.pad(seg[:, :, h:], (0, 0, 0, 0, 1, 0))  # (B, S+1, h, D)
        count = F.pad(torch.ones(S, device=seg.device), (0, 1)) + F.pad(torch.ones(S, device=seg.device), (1, 0))
        return (y / count[None, :, None, None]).reshape(B, (S + 1) * h, D)

    def no_controls(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``controls`` input of "none asked" (B, 2): [n_families, n_keys]."""
        return torch.tensor([[self.cfg.n_families, self.cfg.n_keys]], dtype=torch.int64, device=device).expand(batch, 2)

    def forward(self, z: torch.Tensor, angles: torch.Tensor, tokens: torch.Tensor,
                controls: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = z.shape
        K, m, h = self.cfg.segment, self.cfg.merge, self.cfg.segment // 2
        n_tok = (L + self.fpt - 1) // self.fpt
        tokens = tokens[:, :n_tok]
        sem = self.sem_emb(tokens)  # (B, N, D)
        if self.cfg.token_features:
            sem = sem + self.feat_proj(self.sem_feats[tokens])
        aligned = sem[:, :, None].expand(B, n_tok, self.fpt, sem.shape[-1]).reshape(B, n_tok * self.fpt, -1)[:, :L]
        cond = self.angle_mlp(angle_features(angles, 32)) + self.mean_sem(sem.mean(1, keepdim=True))  # (B, L, D)
        if self.cfg.controlled:
            if controls is None:
                controls = self.no_controls(B, z.device)
            if self.cfg.n_families:
                cond = cond + self.family_emb(controls[:, 0])[:, None]
            if self.cfg.n_keys:
                cond = cond + self.key_emb(controls[:, 1])[:, None]
        x = self.in_proj(z) + aligned  # (B, L, D)
        # pad to a whole number of half segments plus one (so there are always >= 2 halves, without a branch
        # on the length: the graph stays one shape-polymorphic graph when exported)
        pad = ((L + h - 1) // h + 1) * h - L
        x = F.pad(x, (0, 0, 0, pad))
        cond = F.pad(cond, (0, 0, 0, pad))
        seg, cseg = self._segment(x), self._segment(cond)  # (B, S, K, D)
        S = seg.shape[1]
        hd = self.cfg.dim // self.cfg.n_heads
        pos_c = (torch.arange(S, device=z.device)[:, None] * (h / m)
                 + torch.arange(K // m, device=z.device)[None, :]).reshape(-1)  # merged-frame units
        rope_coarse = rope_angles(pos_c, hd, 10_000.0)
        rope_fine = rope_angles(torch.arange(K, device=z.device), hd, 10_000.0)
        for blk in self.blocks:
            seg = blk(seg, cseg, sem, rope_coarse, rope_fine)
        y = self._overlap_add(seg)[:, :L]  # (B, L, D)
        return self.out(self.out_norm(y))  # (B, L, C)
