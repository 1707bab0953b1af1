"""training.family_head: fitting the tokenizer's instrument-family head and putting it into a bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from melody_edge.bundle import load_bundle  # noqa: E402
from melody_edge.controls import FAMILIES  # noqa: E402
from melody_edge.tokenizer import SemanticTokenizer  # noqa: E402
from training.family_head import accuracy, fit, histograms, put_in_bundle  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "melody_edge" / "assets"


def test_fit_learns_families_from_base_code_histograms() -> None:
    tok = SemanticTokenizer.load(ASSETS / "tiny" / "tokenizer.npz")
    rng = np.random.default_rng(0)
    k = tok.centroids.shape[0]
    y = np.arange(60) % 3  # three families, each favouring its own band of base codes
    seqs = [(rng.integers(f * k // 3, (f + 1) * k // 3, 200) * tok.rotations + rng.integers(0, 12, 200))
            for f in y]
    x = histograms(tok, seqs)
    np.testing.assert_allclose(x.sum(axis=1), 1.0)
    w, b = fit(x, y)
    assert w.shape == (k, len(FAMILIES)) and accuracy(w, b, x, y) == 1.0
    assert (b[3:] < -10).all()  # families never seen are never predicted


def test_put_in_bundle_keeps_the_bundle_valid(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(ASSETS / "tiny-bundle", bundle)
    tok = SemanticTokenizer.load(bundle / "semantic_tokenizer.npz")
    k = tok.centroids.shape[0]
    head = SemanticTokenizer(tok.extractor, tok.mean, tok.std, tok.group_weights, tok.centroids, tok.rotations,
                             (np.ones((k, len(FAMILIES)), np.float32), np.zeros(len(FAMILIES)), FAMILIES))
    head.save(tmp_path / "head.npz")
    put_in_bundle(tmp_path / "head.npz", bundle)
    loaded = load_bundle(bundle)  # hashes checked
    assert SemanticTokenizer.load(loaded.file("semantic_tokenizer")).family_head is not None
    other = SemanticTokenizer(tok.extractor, tok.mean, tok.std, tok.group_weights, tok.centroids[::-1].copy(),
                              tok.rotations)
    other.save(tmp_path / "other.npz")
    with pytest.raises(SystemExit, match="other tokens"):
        put_in_bundle(tmp_path / "other.npz", bundle)
