"""The one small interface between the numpy generation loop and whatever runs the networks.

A backend knows nothing about sampling: it maps numpy arrays to numpy arrays. The LM cache it returns is opaque to
the loop (torch tensors, or numpy arrays for ONNX Runtime) and is only handed back to ``lm_step``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from melody_edge.controls import Controls, control_ids
from melody_edge.models.config import ModelConfig


def no_dpd_controls(batch: int, config: ModelConfig) -> np.ndarray:
    """The DPD's ``controls`` input (B, 2) int64 of "none asked": [n_families, n_keys]."""
    return np.tile(np.array([[config.dpd.n_families, config.dpd.n_keys]], np.int64), (batch, 1))


def dpd_controls(controls: Controls | None, config: ModelConfig) -> np.ndarray | None:
    """The DPD's ``controls`` input (1, 2) int64 ``[family, key]`` of one ``Controls`` (an absent one, or one the
    model does not take, is "none"), or None for a DPD without that input."""
    if not config.dpd.controlled:
        return None
    row = no_dpd_controls(1, config)
    if controls is not None:
        ids = control_ids(controls, key_rotation=False)
        if config.dpd.n_families:
            row[0, 0] = ids["family"]
        if config.dpd.n_keys:
            row[0, 1] = ids["key"]
    return row


def with_unconditional_row(controls: np.ndarray | None, config: ModelConfig) -> np.ndarray | None:
    """``dpd_controls`` (1, 2) followed by the unconditional row of classifier-free guidance, which hears none."""
    return None if controls is None else np.concatenate([controls, no_dpd_controls(1, config)])


def dpd_feeds(z: np.ndarray, angles: np.ndarray, tokens: np.ndarray, controls: np.ndarray | None,
              config: ModelConfig) -> dict[str, np.ndarray]:
    """The exported DPD graph's inputs: z, angles, tokens and, for a controlled DPD, ``controls`` (B, 2) int64 (as
    given, or "none asked")."""
    feeds = {"z": z, "angles": angles, "tokens": tokens}
    if config.dpd.controlled:
        feeds["controls"] = (no_dpd_controls(len(z), config) if controls is None
                             else np.asarray(controls, np.int64).reshape(len(z), 2))
    return feeds


class Backend(ABC):
    """Runs the text encoder + conditioner, LM prefill, LM step, DPD denoiser and VAE on numpy arrays."""

    name: str = "base"
    config: ModelConfig
    semantic_tokenizer: Any = None  # melody_edge.tokenizer.SemanticTokenizer when the model ships one
    # whether independent LM decodes (each with its own cache) may run at once on several threads: the Generator's
    # key drafts do where it is set (onnxruntime releases the GIL in a run and its sessions take concurrent runs)
    concurrent_lm: bool = False

    @abstractmethod
    def encode_text(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                    controls: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(B, T) int64 ids and mask (+ for a model with controls: ``key``, ``metre``, ``family`` (B,) int64 and
        ``bpm`` (B,) float32, absent ones as ``melody_edge.controls.control_ids`` writes them) -> LM prefix
        (B, P, D) float32."""

    @abstractmethod
    def null_prefix(self, batch: int) -> np.ndarray:
        """The unconditional prefix (B, P, D) used by classifier-free guidance."""

    @abstractmethod
    def lm_prefill(self, prefix: np.ndarray, tokens: np.ndarray, beat: np.ndarray | None = None
                   ) -> tuple[np.ndarray, Any]:
        """prefix (B, P, D) + given tokens (B, N) int64 (N may be 0) [+ beat features (B, N + 1, F) for a model
        with controls] -> (next-token logits (B, V), cache)."""

    @abstractmethod
    def lm_step(self, token: np.ndarray, pos: int, cache: Any, beat: np.ndarray | None = None
                ) -> tuple[np.ndarray, Any]:
        """token (B,) int64 at sequence position ``pos`` [+ beat features (B, F) of the predicted token]
        -> (logits (B, V), cache). A backend may update ``cache`` in place (the ONNX one does): pass the returned
        cache to the next step and do not reuse an earlier one."""

    @abstractmethod
    def dpd(self, z: np.ndarray, angles: np.ndarray, tokens: np.ndarray, controls: np.ndarray | None = None
            ) -> np.ndarray:
        """Noisy latents (B, L, C), per-frame angles (B, L), semantic tokens (B, N) [+ the asked controls (B, 2)
        int64 ``[family, key]`` (``dpd_controls``) for a model whose ``config.dpd.controlled``; None = none asked]
        -> v_hat (B, L, C)."""

    @abstractmethod
    def vae_decode(self, z: np.ndarray) -> np.ndarray:
        """Diffusion-space latents (B, L, C) in [-1, 1] -> audio (B, L * hop) float32."""

    @abstractmethod
    def vae_encode(self, audio: np.ndarray) -> np.ndarray:
        """Audio (B, T) float32 at 24 kHz -> diffusion-space latents (B, ceil(T / hop), C)."""

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}

    def _load_bundle_assets(self, bundle: Any) -> None:
        """The non-graph files of a bundle: null prefix (CFG), semantic tokenizer (if shipped), text tokenizer."""
        from melody_edge.tokenizer import SemanticTokenizer

        self._null = np.load(bundle.file("null_prefix"))
        self.semantic_tokenizer = (SemanticTokenizer.load(bundle.file("semantic_tokenizer"))
                                   if "semantic_tokenizer" in bundle.manifest["files"] else None)
        self.text_tokenizer_path = bundle.file("text_tokenizer")
