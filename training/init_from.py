"""Start a new checkpoint from an older one whose shapes differ (fine-tuning where shapes allow).

``python -m training.init_from --old melody_edge/assets/tiny --tokenizer checkpoints/tiny3/tokenizer.npz
--out checkpoints/tiny3 --preset tiny``

Writes ``<out>/model.safetensors`` + ``config.json`` for the preset: every weight whose name and shape match the old
checkpoint is copied (the VAE whole, the LM's and the DPD's layers); the token embeddings and the LM's output head,
whose vocabulary changed, start from the old token nearest to each new token in the tokenizers' raw feature space;
new layers (the controls' embeddings, the beat projection, the DPD's token-feature projection) keep their fresh
initialisation. The DPD's token-feature table is set from the new tokenizer. An existing ``<out>/model.safetensors``
is never overwritten (the training runs resume from their own files).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from melody_edge.models.config import get_config
from melody_edge.models.melody import MeLoDy
from melody_edge.tokenizer import SemanticTokenizer, group_dim_weights

log = logging.getLogger(__name__)


def _raw(tok: SemanticTokenizer, scaled: np.ndarray) -> np.ndarray:
    return scaled / (group_dim_weights(tok.group_weights) / tok.std) + tok.mean


def token_map(old: SemanticTokenizer, new: SemanticTokenizer) -> np.ndarray:
    """For every token of ``new``, the id of the ``old`` token nearest to it in raw feature space, measured in
    ``old``'s scaled space -> (new.vocab_size,) int64."""
    raw_new = _raw(new, new.token_features())
    canon, r = old.canonical(raw_new)
    scaled = (canon - old.mean) * (group_dim_weights(old.group_weights) / old.std)
    d = ((scaled[:, None, :] - old.centroids[None]) ** 2).sum(-1)  # (V_new, K_old)
    base = d.argmin(1)
    return (base * old.rotations + (r if old.rotations > 1 else 0)).astype(np.int64)


def transfer(new: MeLoDy, old: MeLoDy, mapping: np.ndarray) -> dict[str, int]:
    """Copy matching weights of ``old`` into ``new``; remap the vocabulary-sized ones. Returns counts."""
    old_state, counts = old.state_dict(), {"copied": 0, "remapped": 0, "fresh": 0}
    idx = torch.from_numpy(mapping)
    remap = {"lm.tok_emb.weight", "lm.head.weight", "dpd.sem_emb.weight"}
    with torch.no_grad():
        for name, p in new.state_dict().items():
            q = old_state.get(name)
            if q is not None and q.shape == p.shape and name not in remap:
                p.copy_(q.to(p.dtype))
                counts["copied"] += 1
            elif q is not None and name in remap:
                rows = q.to(p.dtype)[idx]
                p[: len(idx)] = rows
                if p.shape[0] > len(idx):  # the DPD's null token keeps its old row
                    p[len(idx):] = q.to(p.dtype)[-1]
                counts["remapped"] += 1
            else:
                counts["fresh"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write the initial checkpoint of a new model from an old one."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True, help="old checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--tokenizer", type=Path, required=True, help="the new model's semantic tokenizer (.npz)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if (args.out / "model.safetensors").exists():
        log.info("%s already holds a model; leaving it", args.out)
        return
    torch.manual_seed(args.seed)
    old = MeLoDy.load(args.old, strict=False)
    new_tok = SemanticTokenizer.load(args.tokenizer)
    new = MeLoDy(get_config(args.preset))
    mapping = token_map(SemanticTokenizer.load(args.old / "tokenizer.npz"), new_tok)
    counts = transfer(new, old, mapping)
    if new.cfg.dpd.token_features:
        new.dpd.set_token_features(new_tok.token_features())
    old_training = json.loads((args.old / "config.json").read_text()).get("training", {})
    new.save(args.out, extra={"training": {"vae": old_training.get("vae", {}),
                                           "init": {"from": str(args.old), **counts}}})
    log.info("initialised %s from %s: %s", args.out, args.old, counts)


if __name__ == "__main__":
    main()
