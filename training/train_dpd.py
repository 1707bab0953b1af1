"""Train the dual-path diffusion model on VAE latents of the training clips, conditioned on their semantic tokens.

``python -m training.train_dpd --data data/music --out checkpoints/tiny --preset tiny --steps N``

Needs the trained VAE in ``<out>/`` (run ``training.train_vae`` first). The latents of all training clips are
computed once and cached in ``<out>/latents_train.npy``. Each step noises a batch of windows with one angle per
chunk (MeLoDy eq. 7); with probability ``--prefix-p`` a sample's first chunks stay clean (angle 0, the
continuation case) and only the noised frames count in the v-prediction MSE. With probability ``--crop-p`` the
batch is a random crop of 1 .. n_chunks - 1 chunks. An EMA of the weights is kept and shipped.
With ``cfg.dpd.token_features`` the DPD's token-feature table is set from ``<out>/tokenizer.npz`` (each token's
chroma, loudness, onset and timbre). With ``cfg.dpd.controlled`` each clip's instrument family and key
(``dpd_control_ids``) condition it, each dropped to "none" with probability ``cfg.controls.dropout`` and both whenever
the tokens are dropped. ``--init FOLDER`` starts from the DPD of a checkpoint of the same config, or of one without
the control embeddings (they start at zero).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from melody_edge.backends.base import dpd_controls, no_dpd_controls
from melody_edge.errors import BundleError
from melody_edge.models.config import ModelConfig
from melody_edge.models.dpd import DPD
from melody_edge.models.melody import MeLoDy
from melody_edge.models.vae import VAE
from melody_edge.tokenizer import SemanticTokenizer
from training.captions import controls_of
from training.common import Run, load_audio, load_rows, load_tokens, parse_args, unwrap

log = logging.getLogger(__name__)


def vae_fingerprint(vae: torch.nn.Module) -> float:
    """The sum of the VAE's weights (6 decimals): which VAE a latent cache was made with."""
    return round(sum(float(p.detach().double().sum()) for p in vae.parameters()), 6)


@torch.no_grad()
def latents(run: Run, vae: VAE, rows: list[dict[str, Any]], batch: int = 8) -> np.ndarray:
    """Diffusion-space latents (N, window_frames, latent_dim) float32 of ``rows``, cached in
    ``<out>/latents_train.npy`` with the clip ids and a fingerprint of the VAE in ``latents_train.json``."""
    npy, meta = run.out / "latents_train.npy", run.out / "latents_train.json"
    key = {"ids": [r["id"] for r in rows], "vae": vae_fingerprint(vae)}
    if npy.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        return np.load(npy)
    samples = round(run.cfg.window_seconds * run.cfg.sample_rate)
    vae = vae.to(run.device).eval()
    out = []
    for i in tqdm(range(0, len(rows), batch), desc="VAE latents", unit="batch"):
        audio = torch.from_numpy(load_audio(Path(run.args.data), rows[i : i + batch], samples)).to(run.device)
        out.append(vae.encode_for_diffusion(audio)[:, : run.cfg.window_frames].cpu().numpy())
    z = np.concatenate(out)
    np.save(npy, z)
    meta.write_text(json.dumps(key))
    return z


def dpd_control_ids(rows: list[dict[str, Any]], cfg: ModelConfig) -> np.ndarray:
    """Each clip's DPD controls (N, 2) int64 ``[family, key]`` (``backends.base.dpd_controls``: none known, or
    not taken by the model, = ``n_families`` / ``n_keys``)."""
    return np.concatenate([dpd_controls(controls_of(r["metadata"]), cfg) for r in rows]).astype(np.int64)


def drop_controls(rng: np.random.Generator, ctl: np.ndarray, cfg: ModelConfig, also: np.ndarray) -> np.ndarray:
    """A copy of controls (B, 2) with each dropped to "none" independently with the controls' probability, and both
    where ``also`` (B,) (the tokens dropped for classifier-free guidance)."""
    ctl = ctl.copy()
    none = no_dpd_controls(len(ctl), cfg)
    drop = (rng.random(ctl.shape) < cfg.controls.dropout) | np.asarray(also, bool)[:, None]
    ctl[drop] = none[drop]
    return ctl


def init_dpd(net: DPD, folder: Path) -> None:
    """Load the DPD of checkpoint ``folder`` into ``net``; only the control embeddings (family, key) may be missing
    (they keep their zero start)."""
    missing, unexpected = net.load_state_dict(MeLoDy.load(folder, strict=False).dpd.state_dict(), strict=False)
    if unexpected or set(missing) - {"family_emb.weight", "key_emb.weight"}:
        raise BundleError(f"the DPD of {folder} does not fit this config (missing {missing}, unexpected "
                          f"{unexpected})")


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-p", type=float, default=0.25, help="probability of a batch of 1 .. n_chunks-1 chunks")
    p.add_argument("--prefix-p", type=float, default=0.3, help="probability of clean leading chunks in a sample")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--init", type=Path, default=None, help="start from the DPD of this checkpoint (same config)")


def main(argv: Sequence[str] | None = None) -> None:
    """Train the DPD and ship its EMA weights into ``--out``."""
    args = parse_args(__doc__.splitlines()[0], argv, batch=16, lr=3e-4, eval_clips=0, add_args=_add_args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = Run(args, "dpd")
    cfg = run.cfg
    if not (run.out / "model.safetensors").is_file():
        raise BundleError(f"no trained VAE in {run.out}; run training.train_vae --out {run.out} first")
    rows = load_rows(args.data, "train")
    with run.main_first():
        z_all = torch.from_numpy(latents(run, MeLoDy.load(run.out, strict=False).vae, rows))
        tok_all = torch.from_numpy(load_tokens(args.data, args.out, "train", rows, cfg.window_tokens,
                                               cfg.dpd.sem_vocab))
    ctl_all = dpd_control_ids(rows, cfg) if cfg.dpd.controlled else None
    shard = run.shard(len(rows))
    fpt, M, chunk_tok = cfg.frames_per_token, cfg.n_chunks, cfg.chunk_tokens
    log.info("%d train clips on this rank, latents %s", len(shard), tuple(z_all.shape[1:]))

    net = DPD(cfg.dpd, fpt)
    if args.init is not None and not run.ckpt_path.is_file():
        init_dpd(net, args.init)
        log.info("DPD initialised from %s", args.init)
    if cfg.dpd.token_features:
        net.set_token_features(SemanticTokenizer.load(run.out / "tokenizer.npz").token_features())
    dpd = run.wrap(net)
    ema = copy.deepcopy(unwrap(dpd)).requires_grad_(False)
    opt = torch.optim.AdamW(dpd.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)

    def step() -> dict[str, float]:
        B, rng = args.batch, run.rng
        n_chunks = int(rng.integers(1, M)) if M > 1 and rng.random() < args.crop_p else M
        n_tok = n_chunks * chunk_tok
        idx = rng.choice(shard, B)
        starts = rng.integers(0, cfg.window_tokens - n_tok + 1, B)
        z = torch.stack([z_all[i, s * fpt : (s + n_tok) * fpt] for i, s in zip(idx, starts, strict=True)])
        tokens = torch.stack([tok_all[i, s : s + n_tok] for i, s in zip(idx, starts, strict=True)])
        drop = rng.random(B) < cfg.dpd.cond_dropout
        tokens[torch.from_numpy(drop)] = cfg.dpd.sem_vocab  # CFG: no condition
        ctl = None if ctl_all is None else torch.from_numpy(drop_controls(rng, ctl_all[idx], cfg, drop)).to(run.device)
        chunk_angles = rng.uniform(0.0, np.pi / 2, (B, n_chunks))
        if n_chunks > 1:
            clean = rng.integers(1, n_chunks, B) * (rng.random(B) < args.prefix_p)  # clean leading chunks
            chunk_angles[np.arange(n_chunks)[None, :] < clean[:, None]] = 0.0
        angles = torch.from_numpy(chunk_angles).float().repeat_interleave(chunk_tok * fpt, dim=1).to(run.device)
        z, tokens = z.to(run.device), tokens.to(run.device)
        eps = torch.randn(z.shape, generator=run.gen, device=run.device)
        cos, sin = angles.cos()[..., None], angles.sin()[..., None]
        v_hat = dpd(cos * z + sin * eps, angles, tokens, ctl)
        noised = (angles > 0).float()[..., None]
        loss = ((v_hat - (cos * eps - sin * z)).square() * noised).sum() / (noised.sum() * z.shape[-1]).clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(dpd.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + run.step) / (10 + run.step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unwrap(dpd).parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
        return {"loss": loss.item(), "grad_norm": grad_norm.item()}

    run.train(step, {"dpd": dpd, "ema": ema}, {"opt": opt})
    run.finish(ema.state_dict())


if __name__ == "__main__":
    main()
