"""Train the semantic LM and its text conditioner on (caption, semantic tokens) pairs.

``python -m training.train_lm --data data/music --out checkpoints/tiny --preset tiny --steps N``

The frozen MiniLM runs once over the captions of every clip (cached in ``<out>/text_states_<split>.pt``; with
controls, ``training.captions`` writes 4 varied phrasings per clip from its metadata); each step picks one caption
per clip, replaces the text prefix by the learned null prefix with probability ``cfg.text.dropout_p`` (for
classifier-free guidance) and minimises the cross-entropy of the window's tokens.

With controls (``cfg.controls.enabled``) every clip also carries its exact controls (``controls_of``: key, BPM,
metre, instrument family), each dropped independently with probability ``cfg.controls.dropout`` (the beat phase goes
with the BPM), and, with ``key_rotation``, its tokens are transposed to tonic C so the LM learns every key's music
as one (the runtime rotates the tokens to the asked tonic).
The LM shipped is the one with the lowest valid loss among this process's validation passes (``shipped_step``).
``--init FOLDER`` starts from the LM weights of a checkpoint of the same config (``training.init_from``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from melody_edge.controls import beat_features, control_ids
from melody_edge.models.config import ModelConfig
from melody_edge.models.lm import SemanticLM
from melody_edge.models.melody import MeLoDy
from melody_edge.models.text import MiniLM
from melody_edge.text import TextTokenizer
from melody_edge.tokenizer import rotate_tokens
from training.captions import controls_of, make_captions
from training.common import Run, load_rows, load_tokens, parse_args, unwrap

N_CAPTIONS = 4

log = logging.getLogger(__name__)


class CaptionLM(nn.Module):
    """The LM with its conditioner in one ``forward`` (so that DDP sees every trained parameter)."""

    def __init__(self, lm: SemanticLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, states: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor, tokens: torch.Tensor,
                controls: tuple[torch.Tensor, ...] | None = None, beat: torch.Tensor | None = None) -> torch.Tensor:
        """Caption states (B, T, 384), mask (B, T), drop (B,) bool (no text), tokens (B, N), controls
        (key, bpm, metre, family) (B,) each with absent ones already set, beat (B, N, F) -> logits (B, N, V)."""
        cond = self.lm.cond
        text = cond.text_prefix(states, mask)
        text = torch.where(drop[:, None, None], cond.null_prefix[None].expand_as(text), text)
        return self.lm(cond.with_controls(text, controls), tokens, beat)


def clip_conditions(cfg: ModelConfig, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Per clip: control ids (``key``, ``bpm``, ``metre``, ``family``), the beat features of its window
    (``beat`` (N, window, F)) and the tonic (``tonic``)."""
    ids = [control_ids(controls_of(r["metadata"]), key_rotation=cfg.controls.key_rotation) for r in rows]
    beat = np.stack([beat_features(cfg.window_tokens, r["metadata"].get("clip_start_s", 0.0) * cfg.token_rate,
                                   r["metadata"]["bpm"], cfg.controls.beat_harmonics, cfg.token_rate) for r in rows])
    out = {k: torch.tensor([i[k] for i in ids], dtype=torch.float32 if k == "bpm" else torch.int64)
           for k in ("key", "bpm", "metre", "family")}
    out["beat"] = torch.from_numpy(beat)
    out["tonic"] = torch.tensor([int(r["metadata"]["tonic_pc"]) % 12 for r in rows])
    return out


def captions_of(rows: list[dict[str, Any]], seed: int, varied: bool) -> list[list[str]]:
    """The captions trained on: ``N_CAPTIONS`` varied phrasings per clip (seeded by clip id), or the rendered 3."""
    if not varied:
        return [r["captions"][:3] for r in rows]
    return [make_captions(r["metadata"], random.Random(f"{seed}:{r['id']}"), N_CAPTIONS) for r in rows]


@torch.no_grad()
def text_states(out: Path, split: str, rows: list[dict[str, Any]], captions_per_row: list[list[str]] | None = None,
                batch: int = 64) -> dict[str, torch.Tensor]:
    """MiniLM token states of the captions of each row (default: its 3 rendered captions), cached in
    ``<out>/text_states_<split>.pt`` keyed by a hash of the captions: ``states`` float16 (N, C, T, 384) and
    ``mask`` bool (N, C, T), T the longest caption's word pieces."""
    path = Path(out) / f"text_states_{split}.pt"
    ids = [r["id"] for r in rows]
    captions_per_row = captions_per_row or [r["captions"][:3] for r in rows]
    n_cap = len(captions_per_row[0])
    key = hashlib.sha256(json.dumps(captions_per_row).encode()).hexdigest()
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["ids"] == ids and cached.get("captions_sha256") == key:
            return cached
        log.info("%s is for other clips or captions; recomputing", path)
    captions = [c for caps in captions_per_row for c in caps]
    tok, encoder = TextTokenizer(), MiniLM()
    states, masks = [], []
    for i in tqdm(range(0, len(captions), batch), desc=f"MiniLM {split}", unit="batch"):
        t_ids, t_mask = (torch.from_numpy(a) for a in tok(captions[i : i + batch]))
        used = int(t_mask.sum(1).max())  # run MiniLM on the used word pieces only: padding is masked anyway
        h = encoder(t_ids[:, :used], t_mask[:, :used])
        states.append(F.pad(h, (0, 0, 0, t_ids.shape[1] - used)).half())
        masks.append(t_mask.bool())
    n, mask = len(rows), torch.cat(masks)
    t = int(mask.sum(1).max())  # drop the word-piece slots no caption uses
    cached = {"ids": ids, "captions_sha256": key, "states": torch.cat(states)[:, :t].reshape(n, n_cap, t, -1),
              "mask": mask[:, :t].reshape(n, n_cap, t)}
    torch.save(cached, path)
    return cached


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", type=Path, default=None, help="start from the LM of this checkpoint (same config)")


def main(argv: Sequence[str] | None = None) -> None:
    """Train the LM (with its text conditioner) and ship it into ``--out``."""
    args = parse_args(__doc__.splitlines()[0], argv, batch=32, lr=1e-3, eval_clips=64, add_args=_add_args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = Run(args, "lm")
    cfg = run.cfg
    ctl = cfg.controls
    data = {}
    with run.main_first():
        for split in ("train", "valid"):
            rows = load_rows(args.data, split)[: None if split == "train" else args.eval_clips]
            if rows:
                tokens = load_tokens(args.data, args.out, split, rows, cfg.window_tokens, cfg.lm.vocab_size)
                data[split] = text_states(args.out, split, rows, captions_of(rows, args.seed, ctl.enabled))
                if ctl.enabled:
                    cond = clip_conditions(cfg, rows)
                    if ctl.key_rotation:  # every clip in C: the LM learns one key's music from all 24
                        tokens = rotate_tokens(tokens, -cond["tonic"].numpy()[:, None])
                    data[split].update(cond)
                data[split]["tokens"] = torch.from_numpy(tokens)
    train = data["train"]
    shard = run.shard(len(train["tokens"]))
    log.info("%d train clips on this rank, %d valid clips", len(shard), len(data.get("valid", {}).get("ids", [])))

    lm = SemanticLM(cfg.lm, cfg.text, cfg.lm_max_len, cfg.controls)
    if args.init is not None and not run.ckpt_path.is_file():
        lm.load_state_dict(MeLoDy.load(args.init, strict=False).lm.state_dict())
        log.info("LM initialised from %s", args.init)
    model = run.wrap(CaptionLM(lm))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    n_cap = train["states"].shape[1]

    def batch_loss(split: dict[str, torch.Tensor], idx: torch.Tensor, caption: torch.Tensor, drop: torch.Tensor,
                   drop_ctl: torch.Tensor | None = None) -> torch.Tensor:
        """``drop_ctl`` (B, 4) bool: which of key, bpm, metre, family to drop (None: keep all)."""
        states = split["states"][idx, caption].float().to(run.device)
        mask = split["mask"][idx, caption].to(run.device)
        tokens = split["tokens"][idx].to(run.device)
        controls = beat = None
        if ctl.enabled:
            absent = (ctl.n_keys, 0.0, ctl.n_metres, ctl.n_families)
            controls = tuple(split[k][idx] if drop_ctl is None else
                             torch.where(drop_ctl[:, j], torch.full_like(split[k][idx], absent[j]), split[k][idx])
                             for j, k in enumerate(("key", "bpm", "metre", "family")))
            controls = tuple(c.to(run.device) for c in controls)
            beat = split["beat"][idx]
            if drop_ctl is not None:
                beat = beat * (~drop_ctl[:, 1]).float()[:, None, None]  # the beat clock goes with the tempo
            beat = beat.to(run.device)
        logits = model(states, mask, drop.to(run.device), tokens, controls, beat)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def step() -> dict[str, float]:
        idx = torch.from_numpy(run.rng.choice(shard, args.batch))
        caption = torch.from_numpy(run.rng.integers(0, n_cap, args.batch))
        drop = torch.from_numpy(run.rng.random(args.batch) < cfg.text.dropout_p)
        drop_ctl = torch.from_numpy(run.rng.random((args.batch, 4)) < ctl.dropout)
        drop_ctl |= drop[:, None]  # a dropped caption drops its controls too: the CFG null is "nothing given"
        loss = batch_loss(train, idx, caption, drop, drop_ctl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item()}

    best: dict[str, Any] = {"valid_loss": float("inf"), "step": 0, "state": None}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        """Mean valid cross-entropy (first caption, no dropout); keeps the LM weights of the best one so far."""
        valid, losses = data["valid"], []
        model.eval()
        for i in range(0, len(valid["tokens"]), args.batch):
            idx = torch.arange(i, min(i + args.batch, len(valid["tokens"])))
            zeros = torch.zeros(len(idx), dtype=torch.long)
            losses.append(batch_loss(valid, idx, zeros, zeros.bool()).item() * len(idx))
        model.train()
        loss = sum(losses) / len(valid["tokens"])
        if loss < best["valid_loss"]:
            state = {k: v.detach().clone() for k, v in unwrap(model).lm.state_dict().items()}
            best.update(valid_loss=loss, step=run.step, state=state)
        return {"valid_loss": loss, "best_valid_loss": best["valid_loss"], "best_step": best["step"]}

    run.train(step, {"lm": model}, {"opt": opt}, evaluate if "valid" in data else None)
    if best["state"] is None:
        run.finish(unwrap(model).lm.state_dict())
    else:  # ship the weights with the lowest valid loss seen in this process
        log.info("shipping the LM of step %d (valid loss %.4f)", best["step"], best["valid_loss"])
        run.finish(best["state"], {"shipped_step": best["step"], "valid_loss": round(best["valid_loss"], 5)})


if __name__ == "__main__":
    main()
