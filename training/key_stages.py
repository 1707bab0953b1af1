"""Where the caption's key gets lost: key match of real clips, their VAE round trip, the DPD run from their real
semantic tokens, and full generation from their captions, on the same seeded sample of a split.

``python -m training.key_stages --checkpoint checkpoints/tiny --data data/music --split test --n 24``

Prints one JSON object {stage: fraction of clips whose estimated key (tonic + mode) matches the caption's}.
Uses the estimator and the clip sample of ``training.evaluate`` (same seed, same clips).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from melody_edge.backends.torch_backend import TorchBackend
from melody_edge.generator import Generator
from melody_edge.models.melody import MeLoDy
from melody_edge.sampling import get_schedule, sample
from training.common import load_audio, load_rows, load_tokens
from training.evaluate import estimate_key, pick_rows


def key_stages(checkpoint: Path, data: Path, split: str = "test", n: int = 24, steps: int = 8,
               seed: int = 0) -> dict[str, float]:
    """Key-match fraction per stage (see the module docstring)."""
    model = MeLoDy.load(checkpoint)
    backend, cfg = TorchBackend(model, "cpu"), model.cfg
    gen = Generator.from_backend(backend)
    rows = pick_rows(load_rows(data, split), n, seed)
    tokens = load_tokens(data, checkpoint, split, rows, cfg.window_tokens, cfg.lm.vocab_size)
    real = load_audio(data, rows, round(cfg.window_seconds * cfg.sample_rate))
    hits = dict.fromkeys(("real_audio", "vae_round_trip", "dpd_from_real_tokens", "generation"), 0)
    for i, row in enumerate(rows):
        truth = (row["metadata"]["tonic_pc"], row["metadata"]["mode"])
        noise = np.random.default_rng(seed + i).standard_normal((1, cfg.window_frames, cfg.vae.latent_dim))
        cond = tokens[i][None]
        z = sample(lambda z, a, g, cond=cond: backend.dpd(z, a, cond), noise.astype(np.float32),
                   get_schedule("paper", steps))
        audios = {"real_audio": real[i],
                  "vae_round_trip": backend.vae_decode(backend.vae_encode(real[i][None]))[0],
                  "dpd_from_real_tokens": backend.vae_decode(z)[0],
                  "generation": gen.generate(row["captions"][0], cfg.window_seconds, seed=seed + i,
                                             steps=steps).samples}
        for stage, audio in audios.items():
            hits[stage] += estimate_key(audio, cfg.sample_rate) == truth
    return {stage: round(h / len(rows), 4) for stage, h in hits.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = key_stages(args.checkpoint, args.data, args.split, args.n, args.steps, args.seed)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
