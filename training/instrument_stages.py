"""Where the asked instrument family gets lost: the evaluation's instrument classifier (``training.instruments``)
on real test renders, on their VAE round trip, and on the DPD + VAE run from their real semantic tokens (the LM left
out), on a family-balanced seeded sample of a split.

``python -m training.instrument_stages --bundle tiny --data data/music --classifier runs/instrument_classifier.npz``

Prints one JSON object {stage: [fraction of clips classified as their family, clips]}. The DPD runs the model's
default steps with no drafts; the tokens are the clips' own (``tokens_<split>.npz``, made with the model's
tokenizer), so a drop at that stage is the DPD's, not the LM's.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from melody_edge import Generator
from melody_edge.generator import GenerationStats
from training.captions import controls_of
from training.data import load_split
from training.instruments import InstrumentClassifier, family_rows, load_clip, sample_balanced


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="tiny", help="bundle folder or 'tiny'")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=45, help="clips (a family-balanced seeded sample)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--classifier", type=Path, required=True, help="a cached classifier (training.instruments)")
    args = p.parse_args(argv)
    gen = Generator(args.bundle)
    c = gen.config
    clf = InstrumentClassifier.load(args.classifier)
    pairs = sample_balanced(family_rows(load_split(args.data, args.split)), args.n, args.seed)
    with np.load(args.data / f"tokens_{args.split}.npz") as z:
        toks = {k: z[k] for k in z.files}
    s = gen._settings(None, None, None, None, None, None, "paper", key_candidates=1)
    n_tok = int(10.0 * c.token_rate)
    hits: dict[str, list[bool]] = {"real": [], "vae_round_trip": [], "dpd_from_real_tokens": []}
    for i, (row, fam) in enumerate(pairs):
        x = load_clip(args.data / row["path"], c.sample_rate, 10.0).astype(np.float32)
        z = gen.backend.vae_encode(x[None])[0]
        t = toks[Path(row["path"]).stem][:n_tok]
        zd = gen._dpd(t, np.zeros((0, c.vae.latent_dim), np.float32), len(t) * c.frames_per_token, s,
                      np.random.default_rng(i), GenerationStats(), None, controls_of(row["metadata"]))
        for stage, audio in (("real", x), ("vae_round_trip", gen.backend.vae_decode(z[None])[0]),
                             ("dpd_from_real_tokens", gen.backend.vae_decode(zd[None])[0])):
            hits[stage].append(clf.predict([audio], c.sample_rate)[0] == fam)
    out = {k: [round(float(np.mean(v)), 3), len(v)] for k, v in hits.items()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
