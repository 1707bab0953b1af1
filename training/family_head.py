"""Fit the semantic tokenizer's instrument-family head: which family (``melody_edge.controls.FAMILIES``) the music
of a token sequence sounds like, from the tokens alone.

The runtime uses it to choose among the LM's drafts of a song's first window when an instrument is asked
(``Generator``: ``key_candidates``), as the key profiles choose by key. It is fitted on the tokens of real renders
of the train split, so it is independent of the evaluation's instrument classifier (``training.instruments``:
librosa features of the generated audio, another model on other inputs).

Features: the histogram of base codes of the clip's tokens (the token id // ``rotations``: the transposition does
not count), normalised to sum to 1. Model: a multinomial logistic regression (scikit-learn, lbfgs, L2, balanced
class weights), whose weights (K, F) and bias (F,) are stored in the tokenizer file (``family_weights``,
``family_bias``, ``family_names``), so the runtime needs numpy only. Clips of mixed ensembles (no single family) are
left out.

``python -m training.family_head --tokenizer melody_edge/assets/tiny/tokenizer.npz --data data/music
--out runs/tokenizer_family.npz`` prints its accuracy on the tokens of real test renders.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from melody_edge.controls import FAMILIES
from melody_edge.tokenizer import SemanticTokenizer
from training.captions import family_of
from training.data import load_split
from training.tokenizer import tokenize_dataset, tokenizer_fingerprint

log = logging.getLogger(__name__)

C_REG = 1.0  # inverse L2 strength


def histograms(tokenizer: SemanticTokenizer, tokens: Sequence[np.ndarray]) -> np.ndarray:
    """(N, K) normalised base-code histograms of token sequences (``SemanticTokenizer.base_histogram``)."""
    return np.stack([tokenizer.base_histogram(t) for t in tokens])


def labelled(tokenizer: SemanticTokenizer, data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(histograms, family indices) of the clips of ``split`` whose family is known (tokenizing the split first
    when ``tokens_<split>.npz`` is missing)."""
    path = Path(data) / f"tokens_{split}.npz"
    if path.is_file():
        with np.load(path) as z:
            table = {k: z[k] for k in z.files}
    else:
        table = tokenize_dataset(tokenizer, Path(data), split)
    rows = [(r, family_of(r["metadata"])) for r in load_split(Path(data), split)]
    rows = [(r, f) for r, f in rows if f is not None and Path(r["path"]).stem in table]
    x = histograms(tokenizer, [table[Path(r["path"]).stem] for r, _ in rows])
    y = np.array([FAMILIES.index(f) for _, f in rows], np.int64)
    return x, y


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K, F) and bias (F,) over all ``FAMILIES`` (a family absent from ``y`` gets a very low bias)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C_REG, max_iter=2000, class_weight="balanced")
    clf.fit(x, y)
    w = np.zeros((x.shape[1], len(FAMILIES)), np.float32)
    b = np.full(len(FAMILIES), -30.0, np.float32)
    for j, c in enumerate(clf.classes_):
        w[:, c] = clf.coef_[j]
        b[c] = clf.intercept_[j]
    return w, b


def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ w + b).argmax(axis=1) == y).mean()) if len(y) else float("nan")


def put_in_bundle(tokenizer: Path, bundle: Path) -> None:
    """Replace the semantic tokenizer of an exported bundle by ``tokenizer`` (same codebook: its graphs stay
    valid) and record the new file's sha256 and size in the manifest (written atomically)."""
    from melody_edge.bundle import read_manifest, sha256

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    entry = manifest["files"]["semantic_tokenizer"]
    old = SemanticTokenizer.load(bundle / entry["path"])
    new = SemanticTokenizer.load(tokenizer)
    if tokenizer_fingerprint(old) != tokenizer_fingerprint(new):
        raise SystemExit(f"{tokenizer} makes other tokens than the tokenizer of {bundle}")
    dst = bundle / entry["path"]
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(tokenizer, tmp)
    os.replace(tmp, dst)
    entry.update(sha256=sha256(dst), bytes=dst.stat().st_size)
    tmp = bundle / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, bundle / "manifest.json")
    log.info("put %s into %s", tokenizer, bundle)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", type=Path, required=True, help="semantic tokenizer (.npz) to add the head to")
    p.add_argument("--data", type=Path, required=True, help="dataset root (train/test .jsonl, tokens_<split>.npz)")
    p.add_argument("--out", type=Path, required=True, help="the tokenizer with its family head (.npz)")
    p.add_argument("--report", type=Path, default=None, help="write the accuracies here (.json)")
    p.add_argument("--bundle", type=Path, action="append", default=[],
                   help="also put the new tokenizer into this exported bundle (its manifest's hash updated); "
                        "repeatable")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tok = SemanticTokenizer.load(args.tokenizer)
    if tok.rotations == 1:
        log.info("a tokenizer without rotations: the head reads the plain codes")
    x, y = labelled(tok, args.data, "train")
    w, b = fit(x, y)
    report = {"train_clips": int(len(y)), "train_accuracy": round(accuracy(w, b, x, y), 4),
              "train_counts": {f: int((y == i).sum()) for i, f in enumerate(FAMILIES)}}
    for split in ("valid", "test"):
        if (Path(args.data) / f"{split}.jsonl").is_file():
            xs, ys = labelled(tok, args.data, split)
            report[f"{split}_clips"] = int(len(ys))
            report[f"{split}_accuracy"] = round(accuracy(w, b, xs, ys), 4)
    SemanticTokenizer(tok.extractor, tok.mean, tok.std, tok.group_weights, tok.centroids, tok.rotations,
                      (w, b, FAMILIES)).save(args.out)
    for bundle in args.bundle:
        put_in_bundle(args.out, bundle)
    print(json.dumps(report, indent=1))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
