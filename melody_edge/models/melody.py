"""``MeLoDy``: the three trained networks of one model (semantic LM with its text conditioner, DPD, VAE) and
their checkpoint format: a folder with ``config.json`` + ``model.safetensors`` (+ ``tokenizer.npz``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from melody_edge.errors import BundleError
from melody_edge.models.config import ModelConfig
from melody_edge.models.dpd import DPD
from melody_edge.models.lm import SemanticLM
from melody_edge.models.vae import VAE

CHECKPOINT_FORMAT = 1


def random_tokenizer(cfg: ModelConfig):
    """The unfitted semantic tokenizer of a random model (``debug``/``paper`` presets), seed 0."""
    from melody_edge.tokenizer import SemanticTokenizer

    rotations = 12 if cfg.controls.enabled and cfg.controls.key_rotation else 1
    return SemanticTokenizer.random(cfg.lm.vocab_size, seed=0, rotations=rotations)


class MeLoDy(nn.Module):
    """Container of the LM (+ text conditioner), the DPD and the VAE (encoder and decoder; no discriminators)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lm = SemanticLM(cfg.lm, cfg.text, cfg.lm_max_len, cfg.controls)
        self.dpd = DPD(cfg.dpd, cfg.frames_per_token)
        self.vae = VAE(cfg.vae)

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int = 0) -> MeLoDy:
        """Randomly initialised model (deterministic in ``seed``), for tests and cost measurements."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(cfg).eval()
            with torch.no_grad():  # zero-initialised layers (DPD output, FiLM) would make the DPD output constant
                for name, p in model.named_parameters():
                    if name.endswith("weight") and p.dim() > 1 and not p.any():
                        p.normal_(0.0, 0.02)
            if cfg.dpd.token_features:  # the token features of the random tokenizer that goes with random models
                model.dpd.set_token_features(random_tokenizer(cfg).token_features())
            return model

    def save(self, folder: str | Path, parts: tuple[str, ...] = ("lm", "dpd", "vae"),
             extra: dict | None = None, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (only the given parts' weights, cast to ``dtype`` when
        given: fp16 halves the shipped size; loading casts back to float32) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in self.state_dict().items()
                 if k.split(".")[0] in parts}
        meta = {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "parts": list(parts), **(extra or {})}
        # each file under a temporary name, then renamed: an interrupted save leaves the previous file whole
        tmp_w, tmp_c = folder / ".model.safetensors.tmp", folder / ".config.json.tmp"
        try:
            save_file(state, str(tmp_w))
            tmp_c.write_text(json.dumps(meta, indent=2))
            os.replace(tmp_w, folder / "model.safetensors")
            os.replace(tmp_c, folder / "config.json")
        finally:
            tmp_w.unlink(missing_ok=True)
            tmp_c.unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, strict: bool = True) -> MeLoDy:
        """Load a checkpoint folder written by ``save``; raise ``BundleError`` saying what is wrong."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise BundleError(f"checkpoint file missing: {p}; train or export the model first (see README)")
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{cfg_path} is not valid JSON ({e}); the checkpoint is corrupt") from e
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise BundleError(f"{folder} has checkpoint format {meta.get('format')!r}; this version reads "
                              f"{CHECKPOINT_FORMAT}. Upgrade melody-edge or re-save the checkpoint.")
        model = cls(ModelConfig.from_dict(meta["config"]))
        try:
            state = load_file(str(w_path))
        except (SafetensorError, OSError) as e:
            raise BundleError(f"{w_path} is corrupt ({e}); restore it from the package or retrain") from e
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise BundleError(f"{w_path} does not match {cfg_path}: {str(e).splitlines()[1].strip()}... "
                              "the weights belong to another model config") from e
        if unexpected or (strict and missing):
            raise BundleError(f"{w_path} does not match its config: missing {missing[:3]}..., "
                              f"unexpected {unexpected[:3]}...")
        return model.eval()
