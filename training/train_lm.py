"""Train the semantic LM and its text conditioner on (caption, semantic tokens) pairs.

``python -m training.train_lm --data data/music --out checkpoints/tiny --preset tiny --steps N``

The frozen MiniLM runs once over the 3 captions of every clip (cached in ``<out>/text_states_<split>.pt``);
each step picks one caption per clip, replaces the prefix by the learned null prefix with probability
``cfg.text.dropout_p`` (for classifier-free guidance) and minimises the cross-entropy of the window's tokens.
The LM shipped is the one with the lowest valid loss among this process's validation passes (``shipped_step``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from melody_edge.models.lm import SemanticLM
from melody_edge.models.text import MiniLM
from melody_edge.text import TextTokenizer
from training.common import Run, load_rows, load_tokens, parse_args, unwrap

log = logging.getLogger(__name__)


class CaptionLM(nn.Module):
    """The LM with its conditioner in one ``forward`` (so that DDP sees every trained parameter)."""

    def __init__(self, lm: SemanticLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, states: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor, tokens: torch.Tensor
                ) -> torch.Tensor:
        """Caption states (B, T, 384), mask (B, T), drop (B,) bool, tokens (B, N) -> logits (B, N, V)."""
        prefix = self.lm.cond(states, mask)
        prefix = torch.where(drop[:, None, None], self.lm.cond.null(len(states)), prefix)
        return self.lm(prefix, tokens)


@torch.no_grad()
def text_states(out: Path, split: str, rows: list[dict[str, Any]], batch: int = 64) -> dict[str, torch.Tensor]:
    """MiniLM token states of the 3 captions of each row, cached in ``<out>/text_states_<split>.pt``:
    ``states`` float16 (N, 3, 64, 384) and ``mask`` bool (N, 3, 64)."""
    path = Path(out) / f"text_states_{split}.pt"
    ids = [r["id"] for r in rows]
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["ids"] == ids:
            return cached
        log.info("%s is for other clips; recomputing", path)
    captions = [c for r in rows for c in r["captions"][:3]]
    tok, encoder = TextTokenizer(), MiniLM()
    states, masks = [], []
    for i in tqdm(range(0, len(captions), batch), desc=f"MiniLM {split}", unit="batch"):
        t_ids, t_mask = (torch.from_numpy(a) for a in tok(captions[i : i + batch]))
        used = int(t_mask.sum(1).max())  # run MiniLM on the used word pieces only: padding is masked anyway
        h = encoder(t_ids[:, :used], t_mask[:, :used])
        states.append(F.pad(h, (0, 0, 0, t_ids.shape[1] - used)).half())
        masks.append(t_mask.bool())
    n, t = len(rows), masks[0].shape[1]
    cached = {"ids": ids, "states": torch.cat(states).reshape(n, 3, t, -1), "mask": torch.cat(masks).reshape(n, 3, t)}
    torch.save(cached, path)
    return cached


def main(argv: Sequence[str] | None = None) -> None:
    """Train the LM (with its text conditioner) and ship it into ``--out``."""
    args = parse_args(__doc__.splitlines()[0], argv, batch=32, lr=1e-3, eval_clips=64)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = Run(args, "lm")
    cfg = run.cfg
    data = {}
    with run.main_first():
        for split in ("train", "valid"):
            rows = load_rows(args.data, split)[: None if split == "train" else args.eval_clips]
            if rows:
                data[split] = {**text_states(args.out, split, rows),
                               "tokens": torch.from_numpy(load_tokens(args.data, args.out, split, rows,
                                                                      cfg.window_tokens, cfg.lm.vocab_size))}
    train = data["train"]
    shard = run.shard(len(train["tokens"]))
    log.info("%d train clips on this rank, %d valid clips", len(shard), len(data.get("valid", {}).get("ids", [])))

    model = run.wrap(CaptionLM(SemanticLM(cfg.lm, cfg.text, cfg.lm_max_len)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def batch_loss(split: dict[str, torch.Tensor], idx: torch.Tensor, caption: torch.Tensor, drop: torch.Tensor
                   ) -> torch.Tensor:
        states = split["states"][idx, caption].float().to(run.device)
        mask = split["mask"][idx, caption].to(run.device)
        tokens = split["tokens"][idx].to(run.device)
        logits = model(states, mask, drop.to(run.device), tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def step() -> dict[str, float]:
        idx = torch.from_numpy(run.rng.choice(shard, args.batch))
        caption = torch.from_numpy(run.rng.integers(0, 3, args.batch))
        drop = torch.from_numpy(run.rng.random(args.batch) < cfg.text.dropout_p)
        loss = batch_loss(train, idx, caption, drop)
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
