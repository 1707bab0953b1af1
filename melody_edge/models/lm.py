"""Semantic LM: a LLaMA-style decoder (RoPE, RMSNorm, SwiGLU) over 25 Hz semantic tokens, prefixed by text.

The sequence is ``[prefix_1..prefix_P, u_1..u_N]``; position P-1+i predicts u_{i+1}. The KV cache has a static
shape ``(n_layers, 2, B, H, max_len, head_dim)`` so that a decode step is one fixed graph (ONNX, Core ML).

With controls, the input of the position that predicts token j also gets the beat phase of token j at the asked
tempo (``beat`` features, zeros when no tempo is given), projected to the model width: a clock for the rhythm.
"""

from __future__ import annotations

import torch
from torch import nn

from melody_edge.models.config import ControlConfig, LMConfig, TextConfig
from melody_edge.models.layers import RMSNorm, SwiGLU, apply_rope, attention, rope_angles
from melody_edge.models.text import TextConditioner


class LMAttention(nn.Module):
    """Causal self-attention that reads and writes a static KV cache."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, pos=None):
        B, T, D = x.shape
        H, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # decode: write k, v at `pos` (T == 1) and attend over the whole static cache
            sel = (torch.arange(cache.shape[-2], device=x.device) == pos)[None, None, :, None]  # (1, 1, L, 1)
            k = torch.where(sel, k, cache[0])
            v = torch.where(sel, v, cache[1])
        y = attention(q, k, v, mask)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, D)), torch.stack([k, v])


class LMBlock(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = LMAttention(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ff = SwiGLU(cfg.dim, cfg.ffn_dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, cache=None, pos=None):
        h, kv = self.attn(self.norm1(x), cos, sin, mask, cache, pos)
        x = x + self.drop(h)
        return x + self.drop(self.ff(self.norm2(x))), kv


class SemanticLM(nn.Module):
    """Decoder-only transformer over semantic tokens, with the text conditioner that writes its prefix."""

    def __init__(self, cfg: LMConfig, text_cfg: TextConfig, max_len: int, controls: ControlConfig | None = None
                 ) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_len = max_len  # static KV-cache length: prefix + one window of tokens
        self.cond = TextConditioner(text_cfg, cfg.dim, controls)
        self.beat_dim = controls.beat_dim if controls is not None else 0
        self.beat_proj = nn.Linear(self.beat_dim, cfg.dim, bias=False) if self.beat_dim else None
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList([LMBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, prefix: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None or tokens.shape[1] == 0:
            return prefix
        return torch.cat([prefix, self.tok_emb(tokens)], dim=1)  # (B, P + N, D)

    def _add_beat(self, x: torch.Tensor, beat: torch.Tensor | None) -> torch.Tensor:
        """Add the projected beat features (B, M, F) to the last M positions of x (B, T, D)."""
        if self.beat_proj is None or beat is None:
            return x
        M = beat.shape[1]
        return torch.cat([x[:, : x.shape[1] - M], x[:, x.shape[1] - M:] + self.beat_proj(beat)], dim=1)

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor, beat: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, N, V): entry i predicts tokens[:, i] from the prefix and tokens[:, :i];
        ``beat`` (B, N, F): the beat features of each predicted token."""
        x = self._add_beat(self._embed(prefix, tokens[:, :-1]), beat)
        T = x.shape[1]
        cos, sin = rope_angles(torch.arange(T, device=x.device), self.cfg.head_dim, self.cfg.rope_theta)
        mask = torch.triu(torch.full((T, T), -1e9, device=x.device), diagonal=1)
        for blk in self.blocks:
            x, _ = blk(x, cos, sin, mask)
        P = prefix.shape[1]
        return self.head(self.norm(x[:, P - 1:]))  # (B, N, V)

    def prefill(self, prefix: torch.Tensor, tokens: torch.Tensor | None = None, beat: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt (prefix + given tokens (B, K)) at once -> (logits of the next token (B, V), KV cache);
        ``beat`` (B, K + 1, F): beat features of the given tokens and of the next one."""
        x = self._add_beat(self._embed(prefix, tokens), beat)
        B, T, _ = x.shape
        cos, sin = rope_angles(torch.arange(T, device=x.device), self.cfg.head_dim, self.cfg.rope_theta)
        mask = torch.triu(torch.full((T, T), -1e9, device=x.device), diagonal=1)
        kvs = []
        for blk in self.blocks:
            x, kv = blk(x, cos, sin, mask)
            kvs.append(kv)
        cache = torch.stack(kvs)  # (n_layers, 2, B, H, T, hd)
        cache = nn.functional.pad(cache, (0, 0, 0, self.max_len - T))  # (n_layers, 2, B, H, max_len, hd)
        return self.head(self.norm(x[:, -1])), cache

    def step(self, token: torch.Tensor, pos: torch.Tensor, cache: torch.Tensor, beat: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step: token (B,) at position ``pos`` (0-d int64) -> (logits (B, V), updated cache);
        ``beat`` (B, F): the beat features of the token this step predicts."""
        x = self.tok_emb(token)[:, None]  # (B, 1, D)
        if self.beat_proj is not None and beat is not None:
            x = x + self.beat_proj(beat)[:, None]
        cos, sin = rope_angles(pos.reshape(1), self.cfg.head_dim, self.cfg.rope_theta)
        L = cache.shape[-2]
        mask = torch.where(torch.arange(L, device=x.device) <= pos, 0.0, -1e9)[None, None, None, :]  # (1,1,1,L)
        kvs = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, cos, sin, mask, cache[i], pos)
            kvs.append(kv)
        return self.head(self.norm(x[:, 0])), torch.stack(kvs)

    def empty_cache(self, batch: int) -> torch.Tensor:
        c = self.cfg
        return torch.zeros(c.n_layers, 2, batch, c.n_heads, self.max_len, c.head_dim)
