"""Tests of the semantic tokenizer: frame alignment, determinism, harmony separation, file format, runtime deps."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melody_edge.errors import BundleError, InvalidInputError
from melody_edge.tokenizer import FEATURE_DIM, FORMAT_VERSION, SemanticTokenizer
from training.tokenizer import FINGERPRINT_KEY, fit_tokenizer, main, tokenize_dataset, tokenizer_fingerprint

SR = 24_000
HOP = 960
REPO = Path(__file__).resolve().parents[1]


def _chord(freqs: list[float], seconds: float = 2.0) -> np.ndarray:
    """A steady chord of harmonic tones (3 partials each)."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(a * np.sin(2 * np.pi * k * f * t) for f in freqs for k, a in ((1, 1.0), (2, 0.4), (3, 0.2)))
    return (0.15 * x).astype(np.float32)


def _clicks(bpm: float, seed: int, seconds: float = 2.0) -> np.ndarray:
    """Decaying 10 ms noise bursts on every beat."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(seconds * SR), dtype=np.float32)
    burst = (rng.standard_normal(240) * np.exp(-np.arange(240) / 40)).astype(np.float32)
    for start in np.arange(0, x.shape[0] - 240, int(SR * 60 / bpm)):
        x[start : start + 240] += 0.5 * burst
    return x


CLIPS = {
    "c_major": _chord([261.63, 329.63, 392.00]),
    "fs_major": _chord([369.99, 466.16, 554.37]),
    "clicks_120": _clicks(120, seed=1),
    "clicks_90": _clicks(90, seed=2),
    "noise": (0.05 * np.random.default_rng(3).standard_normal(2 * SR)).astype(np.float32),
    "silence": np.zeros(SR, dtype=np.float32),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder with the synthetic clips as ``train/*.wav``."""
    root = tmp_path_factory.mktemp("music")
    (root / "train").mkdir()
    for name, audio in CLIPS.items():
        sf.write(root / "train" / f"{name}.wav", audio, SR, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def tokenizer(data_root: Path) -> SemanticTokenizer:
    """An 8-token tokenizer fitted on the synthetic clips."""
    return fit_tokenizer(sorted((data_root / "train").glob("*.wav")), vocab_size=8, seed=0)


def _mode(tokens: np.ndarray) -> int:
    return int(np.bincount(tokens).argmax())


@pytest.mark.parametrize("n_samples", [0, 1, 959, 960, 961, 24_000, 24_001])
def test_one_frame_per_hop(tokenizer: SemanticTokenizer, n_samples: int) -> None:
    audio = np.random.default_rng(n_samples).uniform(-0.5, 0.5, n_samples).astype(np.float32)
    feats = tokenizer.features(audio)
    tokens = tokenizer.encode(audio)
    assert feats.shape == (math.ceil(n_samples / HOP), FEATURE_DIM) and feats.dtype == np.float32
    assert tokens.shape == (math.ceil(n_samples / HOP),) and tokens.dtype == np.int64
    assert ((tokens >= 0) & (tokens < tokenizer.vocab_size)).all()


def test_silence_has_finite_features(tokenizer: SemanticTokenizer) -> None:
    feats = tokenizer.features(np.zeros(SR, dtype=np.float32))
    assert np.isfinite(feats).all()
    assert np.unique(tokenizer.encode(np.zeros(SR, dtype=np.float32))).size == 1


def test_tokens_are_deterministic(tokenizer: SemanticTokenizer, data_root: Path) -> None:
    audio = CLIPS["c_major"] + CLIPS["clicks_120"]
    np.testing.assert_array_equal(tokenizer.encode(audio), tokenizer.encode(audio.copy()))
    refit = fit_tokenizer(sorted((data_root / "train").glob("*.wav")), vocab_size=8, seed=0)
    np.testing.assert_array_equal(refit.centroids, tokenizer.centroids)
    np.testing.assert_array_equal(refit.encode(audio), tokenizer.encode(audio))


def test_vocab_size(tokenizer: SemanticTokenizer) -> None:
    assert tokenizer.vocab_size == 8
    assert tokenizer.centroids.shape == (8, FEATURE_DIM)


def test_chords_in_different_keys_get_different_tokens(tokenizer: SemanticTokenizer) -> None:
    inner = slice(5, -5)  # skip the frames whose windows reach past the clip edges
    c_major = tokenizer.encode(CLIPS["c_major"])[inner]
    fs_major = tokenizer.encode(CLIPS["fs_major"])[inner]
    assert _mode(c_major) != _mode(fs_major)
    # also at another loudness than seen in training: the key, not the level, decides
    assert _mode(tokenizer.encode(0.3 * CLIPS["c_major"])[inner]) == _mode(c_major)


def test_encode_batch_matches_encode(tokenizer: SemanticTokenizer) -> None:
    clips = [CLIPS["c_major"][:5000], CLIPS["noise"], np.zeros(0, dtype=np.float32), CLIPS["clicks_90"][:961]]
    batch = tokenizer.encode_batch(clips)
    assert len(batch) == len(clips)
    for audio, tokens in zip(clips, batch, strict=True):
        np.testing.assert_array_equal(tokens, tokenizer.encode(audio))
    assert tokenizer.encode_batch([]) == []


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros((2, 960), dtype=np.float32),
        np.zeros(960, dtype=np.int16),
        np.array([0.0, np.nan, 0.0], dtype=np.float32),
        [0.0, 0.1],
    ],
    ids=["stereo", "int16", "nan", "list"],
)
def test_bad_audio_is_rejected(tokenizer: SemanticTokenizer, audio: object) -> None:
    with pytest.raises(InvalidInputError):
        tokenizer.encode(audio)  # type: ignore[arg-type]


def test_save_load_round_trip(tokenizer: SemanticTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.npz"
    tokenizer.save(path)
    loaded = SemanticTokenizer.load(path)
    audio = np.concatenate([CLIPS["fs_major"], CLIPS["clicks_90"], CLIPS["noise"][:7777]])
    assert loaded.vocab_size == tokenizer.vocab_size
    np.testing.assert_array_equal(loaded.features(audio), tokenizer.features(audio))
    np.testing.assert_array_equal(loaded.encode(audio), tokenizer.encode(audio))


def test_load_rejects_missing_corrupt_and_foreign_files(tokenizer: SemanticTokenizer, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        SemanticTokenizer.load(tmp_path / "missing.npz")

    good = tmp_path / "good.npz"
    tokenizer.save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:1000])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (truncated, garbage):
        with pytest.raises(BundleError):
            SemanticTokenizer.load(path)

    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    cases = {
        "version": {**arrays, "version": np.array(FORMAT_VERSION + 1)},
        "format": {**arrays, "format": np.array("something-else")},
        "centroids": {k: v for k, v in arrays.items() if k != "centroids"},
        "shape": {**arrays, "mean": arrays["mean"][:-1]},
        "vocab_size": {**arrays, "vocab_size": np.array(9)},
    }
    for name, case in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **case)
        with pytest.raises(BundleError, match=name):
            SemanticTokenizer.load(path)


def test_tokenize_dataset_writes_tokens(tokenizer: SemanticTokenizer, data_root: Path) -> None:
    tokens = tokenize_dataset(tokenizer, data_root, "train")
    assert sorted(tokens) == sorted(CLIPS)
    with np.load(data_root / "tokens_train.npz") as z:
        assert sorted(z.files) == sorted([*CLIPS, FINGERPRINT_KEY])
        assert str(z[FINGERPRINT_KEY]) == tokenizer_fingerprint(tokenizer)
        for clip_id, audio in CLIPS.items():
            np.testing.assert_array_equal(z[clip_id], tokenizer.encode(audio))
            np.testing.assert_array_equal(z[clip_id], tokens[clip_id])


def test_cli_writes_tokenizer_and_report(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt" / "tokenizer.npz"
    main(["--data", str(data_root), "--vocab", "4", "--seed", "1", "--out", str(out)])
    assert SemanticTokenizer.load(out).vocab_size == 4
    report = json.loads((out.parent / "tokenizer_report.json").read_text())
    assert report["vocab_size"] == 4 and report["train_files"] == len(CLIPS)
    assert report["frames_fitted"] == sum(math.ceil(a.shape[0] / HOP) for a in CLIPS.values())
    assert 1 <= report["used_clusters"] <= 4 and 0.0 < report["entropy_bits"] <= 2.0 + 1e-9
    assert 0.0 <= report["chroma_info"] <= 1.0


def test_runtime_module_needs_numpy_only() -> None:
    source = (REPO / "melody_edge" / "tokenizer.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "logging", "os", "pathlib", "numpy", "melody_edge"}

    code = (
        "import sys, melody_edge.tokenizer; "
        "bad = sorted({'librosa', 'sklearn'} & set(sys.modules)); "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_rotating_tokenizer_transposes_exactly_by_remapping_ids(data_root: Path) -> None:
    tok = fit_tokenizer(sorted((data_root / "train").glob("*.wav")), vocab_size=36, seed=0, rotations=12)
    assert tok.vocab_size == 36 and tok.rotations == 12
    sr = tok.sample_rate
    t = np.arange(sr) / sr
    for semitones in (1, 5, 11):
        a = (0.3 * np.sin(2 * np.pi * 261.63 * t) + 0.2 * np.sin(2 * np.pi * 392.0 * t)).astype(np.float32)
        f = 2 ** (semitones / 12)
        b = (0.3 * np.sin(2 * np.pi * 261.63 * f * t) + 0.2 * np.sin(2 * np.pi * 392.0 * f * t)).astype(np.float32)
        ta, tb = tok.encode(a), tok.encode(b)
        assert (tok.rotate(ta, semitones) == tb)[2:-2].mean() > 0.9  # edges: windows half outside the signal
        assert not (ta == tb)[2:-2].any()
    feats = tok.token_features()
    assert feats.shape == (36, 24)
    base = np.arange(3) * 12
    np.testing.assert_allclose(feats[base + 4, :12], np.roll(feats[base, :12], 4, axis=1))  # chroma rotates with r


def test_token_cache_is_redone_for_another_tokenizer(tokenizer: SemanticTokenizer, data_root: Path,
                                                      tmp_path: Path) -> None:
    from training.common import load_tokens

    out = tmp_path / "ckpt"
    out.mkdir()
    tokenizer.save(out / "tokenizer.npz")
    rows = [{"path": f"train/{k}.wav"} for k in sorted(CLIPS)]
    first = load_tokens(data_root, out, "train", rows, 8, tokenizer.vocab_size)
    other = fit_tokenizer(sorted((data_root / "train").glob("*.wav")), vocab_size=tokenizer.vocab_size, seed=1)
    other.centroids = other.centroids[::-1].copy()
    other._centroid_sq = np.einsum("kd,kd->k", other.centroids, other.centroids)
    other.save(out / "tokenizer.npz")
    again = load_tokens(data_root, out, "train", rows, 8, tokenizer.vocab_size)
    with np.load(data_root / "tokens_train.npz") as z:
        assert str(z[FINGERPRINT_KEY]) == tokenizer_fingerprint(SemanticTokenizer.load(out / "tokenizer.npz"))
    assert not np.array_equal(first, again)


def test_family_head_round_trips_scores_histograms_and_is_checked(tokenizer: SemanticTokenizer,
                                                                  tmp_path: Path) -> None:
    from melody_edge.controls import FAMILIES

    k = tokenizer.centroids.shape[0]
    w = np.zeros((k, len(FAMILIES)), np.float32)
    w[0, FAMILIES.index("organ")] = 5.0  # base code 0 means organ
    head = SemanticTokenizer(tokenizer.extractor, tokenizer.mean, tokenizer.std, tokenizer.group_weights,
                             tokenizer.centroids, tokenizer.rotations, (w, np.zeros(len(FAMILIES)), FAMILIES))
    assert tokenizer.family_logprobs(np.array([0, 1])) is None  # no head
    path = tmp_path / "head.npz"
    head.save(path)
    loaded = SemanticTokenizer.load(path)
    lp = loaded.family_logprobs(np.array([0, 0, 1, 0]) * tokenizer.rotations)
    assert set(lp) == set(FAMILIES) and math.isclose(sum(math.exp(v) for v in lp.values()), 1.0, rel_tol=1e-9)
    assert max(lp, key=lp.get) == "organ"
    assert max(lp.values()) > loaded.family_logprobs(np.array([1, 1]) * tokenizer.rotations)["organ"]
    assert loaded.family_logprobs(np.zeros(0, np.int64)) is None
    np.testing.assert_array_equal(loaded.encode(CLIPS["c_major"]), tokenizer.encode(CLIPS["c_major"]))
    with np.load(path) as z:
        arrays = {n: z[n] for n in z.files}
    for name, bad in (("shapes", {"family_weights": w[:-1]}), ("finite", {"family_bias": np.full(9, np.nan)}),
                      ("shapes", {"family_names": np.array(FAMILIES[:3])})):
        np.savez(tmp_path / "bad.npz", **{**arrays, **bad})
        with pytest.raises(BundleError, match=name):
            SemanticTokenizer.load(tmp_path / "bad.npz")
