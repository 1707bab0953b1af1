"""PyTorch backend: runs a ``MeLoDy`` checkpoint (or a random preset) with torch on the CPU or a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from melody_edge.backends.base import Backend
from melody_edge.errors import BackendUnavailableError


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailableError(
            "the torch backend needs PyTorch: pip install 'melody-edge[torch]' (or use an exported bundle)") from e
    return torch


class TorchBackend(Backend):
    """Wraps a ``melody_edge.models.melody.MeLoDy`` and the MiniLM text encoder; numpy in, numpy out."""

    name = "torch"

    def __init__(self, model: Any, device: str = "cpu", semantic_tokenizer: Any = None) -> None:
        torch = _import_torch()
        from melody_edge.models.text import MiniLM

        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.cfg
        self.text_encoder = MiniLM().to(self.device)
        self.semantic_tokenizer = semantic_tokenizer

    def _t(self, a: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @staticmethod
    def _np(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    def encode_text(self, input_ids, attention_mask, controls=None):
        with self._torch.inference_mode():
            states = self.text_encoder(self._t(input_ids), self._t(attention_mask))
            ctl = None
            if controls is not None and self.model.lm.cond.controls is not None:
                ctl = tuple(self._t(np.asarray(controls[k])) for k in ("key", "bpm", "metre", "family"))
            return self._np(self.model.lm.cond(states, self._t(attention_mask), ctl))

    def null_prefix(self, batch):
        with self._torch.inference_mode():
            return self._np(self.model.lm.cond.null(batch))

    def lm_prefill(self, prefix, tokens, beat=None):
        with self._torch.inference_mode():
            beat_t = None if beat is None else self._t(beat.astype(np.float32))
            logits, cache = self.model.lm.prefill(self._t(prefix), self._t(tokens.astype(np.int64)), beat_t)
            return self._np(logits), cache

    def lm_step(self, token, pos, cache, beat=None):
        with self._torch.inference_mode():
            pos_t = self._torch.tensor(pos, dtype=self._torch.int64, device=self.device)
            beat_t = None if beat is None else self._t(beat.astype(np.float32))
            logits, cache = self.model.lm.step(self._t(token.astype(np.int64)), pos_t, cache, beat_t)
            return self._np(logits), cache

    def dpd(self, z, angles, tokens, controls=None):
        with self._torch.inference_mode():
            ctl = None if controls is None else self._t(np.asarray(controls, np.int64).reshape(len(z), 2))
            return self._np(self.model.dpd(self._t(z), self._t(angles), self._t(tokens.astype(np.int64)), ctl))

    def vae_decode(self, z):
        with self._torch.inference_mode():
            return self._np(self.model.vae.decode_from_diffusion(self._t(z)))

    def vae_encode(self, audio):
        with self._torch.inference_mode():
            return self._np(self.model.vae.encode_for_diffusion(self._t(audio)))

    def info(self):
        return {"backend": self.name, "device": str(self.device), "threads": self._torch.get_num_threads()}
