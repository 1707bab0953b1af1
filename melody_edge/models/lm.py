"""Semantic LM: a LLaMA-style decoder (RoPE, RMSNorm, SwiGLU) over 25 Hz semantic tokens, prefixed by text.

The sequence is ``[prefix_1..prefix_P, u_1..u_N]``; position P-1+i predicts u_{i+1}. The KV cache has a static
shape ``(n_layers, 2, B, H, max_len, head_dim)`` so that a decode step is one fixed graph (ONNX, Core ML). Two
decode steps: ``step`` returns the whole updated cache (the torch backend, and the reference), ``step_kv`` reads
the cache and returns only the new position's keys and values, which the caller writes into its own cache in place
(what the exported ``lm_step`` graph computes: no cache copy in or out of the graph).

With controls, the input of the position that predicts token j also gets the beat phase of token j at the asked
tempo (``beat`` features, zeros when no tempo is given), projected to the model width: a clock for the rhythm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from melody_edge.models.config import ControlConfig, LMConfig, TextConfig
from melody_edge.models.layers import RMSNorm, SwiGLU, apply_rope, attention, rope_angles
from melody_edge.models.text import TextConditioner


def rope_matrix(pos: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """The rotary embedding of one position ``pos`` as a (hd, hd) matrix R, ``x @ R == apply_rope(x, cos, sin)``:
    one matmul per q or k in the decode graph instead of a split, four products and a concat (7 graph nodes)."""
    cos, sin = rope_angles(pos.reshape(1), head_dim, theta)  # (1, hd // 2) each
    h = head_dim // 2
    eye = torch.eye(head_dim, device=pos.device)
    rot_half = torch.cat([torch.cat([torch.zeros(h, h), torch.eye(h)], 1),  # x @ rot_half == cat(-x2, x1)
                          torch.cat([-torch.eye(h), torch.zeros(h, h)], 1)]).to(pos.device)
    return eye * torch.cat([cos, cos], -1) + rot_half * torch.cat([sin, sin], -1)  # columns scaled


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

    def decode(self, x, rot, past_mask, cache):
        """One new position x (B, 1, D) against the earlier ones in ``cache`` (keys, values; each (B, H, L, hd)),
        where ``past_mask`` (1, 1, 1, L) is 0 (else -1e9); ``rot`` (hd, hd) is the position's rotary embedding as a
        matrix (``rope_matrix``) -> (out (B, 1, D), its k, v (2, B, H, 1, hd)). Reads the cache and never writes
        it: softmax over [cached scores, own score], the two halves applied to the cached values and to v, so that
        no (B, H, L + 1, hd) concatenation of the cache is made."""
        B, T, D = x.shape
        H, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # each (B, H, 1, hd)
        q, k = q @ rot, k @ rot
        scale = 1.0 / math.sqrt(hd)
        past = q @ cache[0].transpose(-1, -2) * scale + past_mask  # (B, H, 1, L)
        own = q @ k.transpose(-1, -2) * scale  # (B, H, 1, 1)
        p = torch.softmax(torch.cat([past, own], dim=-1), dim=-1)  # (B, H, 1, L + 1)
        y = p[..., :-1] @ cache[1] + p[..., -1:] * v  # (B, H, 1, hd)
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

    def decode(self, x, rot, past_mask, cache):
        h, kv = self.attn.decode(self.norm1(x), rot, past_mask, cache)
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

    def step_kv(self, token: torch.Tensor, pos: torch.Tensor, cache: torch.Tensor | Sequence[Sequence[torch.Tensor]],
                beat: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``step`` without the cache copy: token (B,) at position ``pos`` (0-d int64), ``cache`` holding positions
        < pos (what is at pos and after is ignored) -> (logits (B, V), the new keys and values
        (n_layers, 2, B, H, 1, hd)) for the caller to write at ``pos``; the logits equal ``step``'s.

        ``cache`` is the (n_layers, 2, B, H, L, hd) tensor or, per layer, a (keys, values) pair of (B, H, L, hd)
        tensors: the exported graph takes them as separate inputs, because onnxruntime copies any slice of a tensor
        (measured: slicing one packed cache input per layer copied it whole every step)."""
        x = self.tok_emb(token)[:, None]  # (B, 1, D)
        if self.beat_proj is not None and beat is not None:
            x = x + self.beat_proj(beat)[:, None]
        rot = rope_matrix(pos, self.cfg.head_dim, self.cfg.rope_theta)
        L = cache[0][0].shape[-2]
        past_mask = torch.where(torch.arange(L, device=x.device) < pos, 0.0, -1e9)[None, None, None, :]  # (1,1,1,L)
        kvs = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk.decode(x, rot, past_mask, cache[i])
            kvs.append(kv)
        return self.head(self.norm(x[:, 0])), torch.stack(kvs)

    def empty_cache(self, batch: int) -> torch.Tensor:
        c = self.cfg
        return torch.zeros(c.n_layers, 2, batch, c.n_heads, self.max_len, c.head_dim)
