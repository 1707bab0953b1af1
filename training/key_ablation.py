"""The key-design ablation of issue 9: transposition-equivariant tokens (``key_rotation``: 64 base codes x 12
rotations, the LM writes in C and the runtime rotates its tokens to the asked tonic) against plain k-means tokens with
the key as 24 learned classes. Both LMs are trained from scratch for the same steps on the same data, seed, batch and
learning rate, and rendered by the shipped DPD and VAE, so only the key design differs (``training/key_ablation.sh``
runs it all; the results are in ``MODEL_CARD.md``).

    python -m training.key_ablation prepare --out checkpoints/abl_rot --rotation
    python -m training.key_ablation prepare --out checkpoints/abl_plain --no-rotation \
        --tokenizer checkpoints/abl_plain/tokenizer.npz
    python -m training.key_ablation token-keys --checkpoint checkpoints/abl_rot checkpoints/abl_plain --seeds 0 1 2

``token-keys`` scores the LM alone, before any DPD: the key (Krumhansl-Kessler) of the mean chroma of the semantic
tokens the generator hands the DPD (its own tokenizer's token features), against the free-form prompts' labelled
keys. The end-to-end evaluation (``training.evaluate``) also renders them, with a DPD trained on the
transposition-equivariant tokens' features, so it favours that design; this score does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from melody_edge.controls import estimate_key, resolve
from melody_edge.models.melody import MeLoDy

log = logging.getLogger(__name__)


def prepare(out: Path, rotation: bool, source: Path, tokenizer: Path | None = None, seed: int = 0) -> Path:
    """A checkpoint folder at ``out``: ``source``'s DPD and VAE, a fresh LM (seeded) and the controls' ``key_rotation``
    set to ``rotation``; ``tokenizer`` (default: ``source``'s) is copied beside it unless it is already there."""
    ship = MeLoDy.load(source)
    cfg = dataclasses.replace(ship.cfg, controls=dataclasses.replace(ship.cfg.controls, key_rotation=rotation))
    torch.manual_seed(seed)
    model = MeLoDy(cfg.validate())
    model.dpd.load_state_dict(ship.dpd.state_dict())
    model.vae.load_state_dict(ship.vae.state_dict())
    model.save(out, extra={"ablation": {"key_rotation": rotation, "dpd_vae_from": str(source)}})
    tok = Path(tokenizer) if tokenizer else Path(source) / "tokenizer.npz"
    if tok.resolve() != (Path(out) / "tokenizer.npz").resolve():
        shutil.copy(tok, Path(out) / "tokenizer.npz")
    log.info("prepared %s (key_rotation %s, tokenizer %s)", out, rotation, tok)
    return Path(out)


class _Captured(Exception):
    """Raised by the patched DPD once it has the segment's tokens: nothing after the LM needs to run."""


def token_keys(checkpoint: Path, prompts: Path, seeds: Sequence[int], seconds: float = 10.0) -> dict[str, float]:
    """Share of the free-form ``prompts`` (JSONL with ``prompt`` and ``key``) whose generated semantic tokens read in
    the labelled key, over ``seeds``; LM only: no key drafts, no key guidance, the torch backend."""
    import json

    from melody_edge import Generator

    gen = Generator(str(checkpoint), backend="torch")
    feats = gen.backend.semantic_tokenizer.token_features()[:, :12]
    seen: list[np.ndarray] = []

    def capture(tokens, *args, **kwargs):
        seen.append(np.asarray(tokens))
        raise _Captured

    gen._dpd = capture
    items = [json.loads(line) for line in Path(prompts).read_text().splitlines() if line.strip()]
    hits, tonic_hits, n = 0, 0, 0
    for seed in seeds:
        for i, it in enumerate(items):
            want = resolve(it["prompt"], key=it["key"])
            try:
                gen.generate(it["prompt"], seconds=seconds, seed=seed * 100_003 + i, key=it["key"],
                             key_candidates=1, key_strength=0.0)
            except _Captured:
                pass
            est = estimate_key(feats[seen[-1]].mean(axis=0))
            hits += est == (want.tonic, want.mode)
            tonic_hits += est[0] == want.tonic
            n += 1
    return {"token_key_match": hits / n, "token_tonic_match": tonic_hits / n, "n": n}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("prepare", help="a checkpoint folder for one side of the ablation")
    q.add_argument("--out", type=Path, required=True, help="checkpoint folder to prepare")
    q.add_argument("--rotation", action=argparse.BooleanOptionalAction, required=True,
                   help="--rotation: transposition-equivariant tokens; --no-rotation: 24 key classes")
    q.add_argument("--source", type=Path, default=Path("melody_edge/assets/tiny"),
                   help="checkpoint whose DPD, VAE and config are kept (default: the shipped model)")
    q.add_argument("--tokenizer", type=Path, default=None, help="semantic tokenizer (default: the source's)")
    q.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("token-keys", help="key of the LM's tokens against the free-form prompts' keys")
    t.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    t.add_argument("--prompts", type=Path, default=Path(__file__).with_name("prompts_freeform.jsonl"))
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "prepare":
        prepare(args.out, args.rotation, args.source, args.tokenizer, args.seed)
    else:
        for ckpt in args.checkpoint:
            print(ckpt, token_keys(ckpt, args.prompts, args.seeds, args.seconds), flush=True)


if __name__ == "__main__":
    main()
