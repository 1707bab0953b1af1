"""Where the caption's key gets lost: key match of real clips, their VAE round trip, the DPD run from their real
semantic tokens, and full generation from their captions, on the same seeded sample of a split.

``python -m training.key_stages --checkpoint checkpoints/tiny --data data/music --split test --n 24``

Prints one JSON object {stage: fraction of clips whose estimated key (tonic + mode) matches the clip's key}
(``training.captions.controls_of``: the key it was rendered in). Uses the estimator and the clip sample of
``training.evaluate`` (same seed, same clips).

With ``--controls`` (the default of the command line; ``key_stages(..., controls=True)``) two more stages, for a
model with the explicit controls of issue 9:

- ``generation_with_key``: the caption plus the clip's key as an explicit ``key=`` argument;
- ``dpd_from_rotated_tokens`` (transposition-equivariant tokenizers only, ``rotations`` = 12): the clip's real tokens
  transposed by a seeded 1-11 semitones (``rotate_tokens``), through the DPD and the VAE, scored against the
  transposed key: whether the DPD renders a rotation of the tokens as the transposition it stands for.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from melody_edge.backends.base import dpd_controls
from melody_edge.controls import Controls
from melody_edge.generator import Generator
from melody_edge.sampling import get_schedule, sample
from training.captions import controls_of
from training.common import load_audio, load_rows, load_tokens
from training.evaluate import estimate_key, pick_rows

STAGES = ("real_audio", "vae_round_trip", "dpd_from_real_tokens", "generation")
CONTROL_STAGES = ("generation_with_key", "dpd_from_rotated_tokens")


def key_stages(checkpoint: Path, data: Path, split: str = "test", n: int = 24, steps: int = 8,
               seed: int = 0, *, controls: bool = False) -> dict[str, float]:
    """Key-match fraction per stage (see the module docstring); ``controls`` adds ``CONTROL_STAGES`` where the
    model supports them."""
    gen = Generator(str(checkpoint), backend="torch")
    backend, cfg = gen.backend, gen.config
    rows = pick_rows(load_rows(data, split), n, seed)
    tokens = load_tokens(data, checkpoint, split, rows, cfg.window_tokens, cfg.lm.vocab_size)
    real = load_audio(data, rows, round(cfg.window_seconds * cfg.sample_rate))
    stages = list(STAGES)
    if controls and "key" in inspect.signature(gen.generate).parameters:
        stages.append("generation_with_key")
    if controls and getattr(backend.semantic_tokenizer, "rotations", 1) == 12:
        from melody_edge.tokenizer import rotate_tokens

        stages.append("dpd_from_rotated_tokens")
    hits = dict.fromkeys(stages, 0)
    schedule = get_schedule("paper", steps)

    def dpd_audio(toks: np.ndarray, i: int, asked: Controls) -> np.ndarray:
        # a DPD with a controls input hears the clip's own family and key
        noise = np.random.default_rng(seed + i).standard_normal((1, cfg.window_frames, cfg.vae.latent_dim))
        cond, ctl = toks[None], dpd_controls(asked, cfg)
        z = sample(lambda z, a, g: backend.dpd(z, a, cond, ctl), noise.astype(np.float32), schedule)
        return backend.vae_decode(z)[0]

    for i, row in enumerate(rows):
        label = controls_of(row["metadata"])
        truth = (label.tonic, label.mode)
        caption = row["captions"][0]
        audios = {"real_audio": real[i],
                  "vae_round_trip": backend.vae_decode(backend.vae_encode(real[i][None]))[0],
                  "dpd_from_real_tokens": dpd_audio(tokens[i], i, label),
                  "generation": gen.generate(caption, cfg.window_seconds, seed=seed + i, steps=steps).samples}
        truths = dict.fromkeys(audios, truth)
        if "generation_with_key" in hits:
            audios["generation_with_key"] = gen.generate(caption, cfg.window_seconds, seed=seed + i, steps=steps,
                                                         key=label.key).samples
            truths["generation_with_key"] = truth
        if "dpd_from_rotated_tokens" in hits:
            shift = int(np.random.default_rng(seed + 1000 + i).integers(1, 12))
            audios["dpd_from_rotated_tokens"] = dpd_audio(rotate_tokens(tokens[i], shift), i,
                                                          replace(label, tonic=(label.tonic + shift) % 12))
            truths["dpd_from_rotated_tokens"] = ((label.tonic + shift) % 12, label.mode)
        for stage, audio in audios.items():
            hits[stage] += estimate_key(audio, cfg.sample_rate) == truths[stage]
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
    p.add_argument("--no-controls", action="store_true", help="only the four stages of a model without controls")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = key_stages(args.checkpoint, args.data, args.split, args.n, args.steps, args.seed,
                        controls=not args.no_controls)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
