"""How much the asked controls lower a controlled DPD's v-prediction loss on real training clips.

``python -m training.control_loss --checkpoint checkpoints/ctl8 --data data/music --n 96`` draws ``--n`` train clips
(their cached latents ``<checkpoint>/latents_train.npy`` and real tokens), noises each at seeded random angles and
scores the DPD's v against the true v with the clip's own family and key, with none, with a wrong family or key, and
with only one of the two. A DPD that uses a control scores lower with the true one than with none or a wrong one;
the size of the gaps says how much of the control the tokens did not already carry.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from melody_edge.errors import ConfigError
from melody_edge.models.melody import MeLoDy
from training.common import load_rows, load_tokens
from training.train_dpd import dpd_control_ids

VARIANTS = ("true", "none", "wrong_family", "wrong_key", "family_only", "key_only")


def variants(ctl: torch.Tensor, none: torch.Tensor, n_families: int, n_keys: int) -> dict[str, torch.Tensor]:
    """The controls (B, 2) scored: the clips' own, none, a wrong family (+3) or key (+5), one of the two alone."""
    wrong_f, wrong_k, only_f, only_k = ctl.clone(), ctl.clone(), ctl.clone(), ctl.clone()
    wrong_f[:, 0] = (ctl[:, 0] + 3) % n_families
    wrong_k[:, 1] = (ctl[:, 1] + 5) % n_keys
    only_f[:, 1] = n_keys
    only_k[:, 0] = n_families
    return dict(zip(VARIANTS, (ctl, none, wrong_f, wrong_k, only_f, only_k), strict=True))


def control_loss(checkpoint: Path, data: Path, n: int = 96, seed: int = 0, batch: int = 16,
                 repeats: int = 2) -> dict[str, float]:
    """Mean v-prediction MSE per variant (``VARIANTS``) over ``n`` train clips x ``repeats`` noise draws."""
    model = MeLoDy.load(checkpoint)
    dpd, cfg = model.dpd.eval(), model.cfg
    if not (cfg.dpd.n_families and cfg.dpd.n_keys):
        raise ConfigError(f"{checkpoint} has a DPD without family and key inputs")
    latents = checkpoint / "latents_train.npy"
    if not latents.is_file():
        raise ConfigError(f"no {latents}: run training.train_dpd on {checkpoint} first (it caches the latents)")
    rows = load_rows(data, "train")
    z_all = np.load(latents, mmap_mode="r")
    if len(z_all) != len(rows):
        raise ConfigError(f"{latents} holds {len(z_all)} clips, {data}/train.jsonl {len(rows)}")
    idx = np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)
    picked = [rows[i] for i in idx]
    tokens = torch.from_numpy(load_tokens(data, checkpoint, "train", picked, cfg.window_tokens, cfg.dpd.sem_vocab))
    z = torch.from_numpy(np.stack([z_all[i] for i in idx]).astype(np.float32))
    ctl = torch.from_numpy(dpd_control_ids(picked, cfg))
    cases = variants(ctl, dpd.no_controls(len(idx)), cfg.dpd.n_families, cfg.dpd.n_keys)
    gen = torch.Generator().manual_seed(seed)
    losses: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with torch.inference_mode():
        for b in range(0, len(idx), batch):
            sl = slice(b, b + batch)
            x = z[sl]
            for _ in range(repeats):
                ang = (torch.rand(len(x), 1, generator=gen) * 1.4 + 0.1).expand(len(x), x.shape[1])
                eps = torch.randn(x.shape, generator=gen)
                cos, sin = ang.cos()[..., None], ang.sin()[..., None]
                z_t, target = cos * x + sin * eps, cos * eps - sin * x
                for name, c in cases.items():
                    losses[name].append(float((dpd(z_t, ang, tokens[sl], c[sl]) - target).square().mean()))
    return {k: round(float(np.mean(v)), 6) for k, v in losses.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint whose DPD takes family and key")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--n", type=int, default=96, help="train clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = control_loss(args.checkpoint, args.data, args.n, args.seed)
    print(json.dumps(out))
    if args.out is not None:
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "n": args.n, "seed": args.seed,
                                        "v_loss": out}, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
