"""Instrument-family classifier for the evaluation: which family (``melody_edge.controls.FAMILIES``) a clip sounds
like, trained on real renders of the train split.

Features (``clip_features``, 212 values per clip, level-normalised first so loudness does not count): mean and std
over frames of 64 log-mel bands, 20 MFCCs, 7 spectral-contrast bands and five spectral shape descriptors (centroid,
bandwidth, roll-off, flatness, zero-crossing rate), and the std of the MFCCs' frame-to-frame deltas, from one STFT
(n_fft 2048, hop 512), over the frames within 60 dB of the loudest (so padding and pauses do not count).
Classifier: standardised features into a multinomial logistic regression (scikit-learn, lbfgs, L2, balanced class
weights), which is deterministic for a given training set.

Training set: a seeded sample of at most ``max_clips`` train clips whose family is known (``family_of(meta)`` is
not None), drawn round-robin over the families so that rare families are not crowded out. The fitted weights are
cached as plain arrays in an ``.npz`` (no pickle) together with what they were trained on; a cache made from
another dataset, sample or feature version is ignored and rewritten.

``python -m training.instruments --data data/music --out runs/instrument_classifier.npz`` trains (or loads) it and
prints its accuracy on real test renders: the ceiling of every instrument-family figure of ``training.evaluate``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile as sf
from tqdm import tqdm

from melody_edge.controls import FAMILIES
from training.captions import family_of
from training.data import load_split

log = logging.getLogger(__name__)

FEATURE_VERSION = 2
N_FFT, HOP, N_MELS, N_MFCC, N_BANDS = 2048, 512, 64, 20, 6
SILENT_RMS = 1e-4
ACTIVE_DB_FLOOR = 1e-6  # frames more than 60 dB below the loudest are left out (padding, pauses)
DEFAULT_MAX_CLIPS = 1500
DEFAULT_SECONDS = 10.0
C_REG = 1.0  # inverse L2 strength of the logistic regression


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def clip_features(audio: np.ndarray, sr: int) -> np.ndarray:
    """The per-clip feature vector (see the module docstring); finite for any input, including silence."""
    y = np.asarray(audio, dtype=np.float32).ravel()
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    level = _rms(y)
    y = y / level * 0.1 if level > SILENT_RMS else y
    spec = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    power = spec**2
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MELS), ref=1.0,
                                 top_db=None)
    mel_db = np.maximum(mel_db, -100.0)
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)
    delta = np.diff(mfcc, axis=1) if mfcc.shape[1] > 1 else np.zeros_like(mfcc)
    contrast = librosa.feature.spectral_contrast(S=spec, sr=sr, n_bands=N_BANDS)
    shape = np.concatenate([
        librosa.feature.spectral_centroid(S=spec, sr=sr) / 1000.0,
        librosa.feature.spectral_bandwidth(S=spec, sr=sr) / 1000.0,
        librosa.feature.spectral_rolloff(S=spec, sr=sr) / 1000.0,
        np.log10(librosa.feature.spectral_flatness(S=spec) + 1e-6),
        librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)[:, : spec.shape[1]] * 10.0,
    ])
    frames = np.concatenate([mel_db, mfcc, contrast, shape])
    energy = power.sum(axis=0)
    keep = energy > ACTIVE_DB_FLOOR * energy.max() if energy.max() > 0 else np.ones(energy.shape, bool)
    if keep.sum() < 2:
        keep[:] = True
    frames, delta = frames[:, keep], (delta[:, keep[1:]] if keep[1:].any() else delta)
    out = np.concatenate([frames.mean(axis=1), frames.std(axis=1), delta.std(axis=1)]).astype(np.float64)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def load_clip(path: Path, sr: int, seconds: float | None) -> np.ndarray:
    """A clip as mono float32 at ``sr``, cut to ``seconds`` (not padded)."""
    x, file_sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if file_sr != sr:
        x = librosa.resample(x, orig_sr=file_sr, target_sr=sr).astype(np.float32)
    return x if seconds is None else x[: round(seconds * sr)]


def family_rows(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """(row, family) for the rows whose instrument family is known."""
    out = []
    for r in rows:
        fam = family_of(r["metadata"])
        if fam is not None:
            out.append((r, fam))
    return out


def sample_balanced(rows: list[tuple[dict[str, Any], str]], max_clips: int, seed: int
                    ) -> list[tuple[dict[str, Any], str]]:
    """A seeded sample of at most ``max_clips`` (row, family) pairs, taken round-robin over the families (in
    ``FAMILIES`` order, each family's rows in a seeded random order), returned in split order."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[int]] = {f: [] for f in FAMILIES}
    for i, (_, fam) in enumerate(rows):
        by_family.setdefault(fam, []).append(i)
    queues = {f: list(rng.permutation(idx)) for f, idx in by_family.items() if idx}
    picked: list[int] = []
    while len(picked) < max_clips and any(queues.values()):
        for f in list(queues):
            if queues[f] and len(picked) < max_clips:
                picked.append(int(queues[f].pop(0)))
    return [rows[i] for i in sorted(picked)]


class InstrumentClassifier:
    """Standardisation + multinomial logistic regression, held as plain arrays (predicts without scikit-learn)."""

    def __init__(self, classes: list[str], mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                 intercept: np.ndarray, info: dict[str, Any] | None = None) -> None:
        self.classes = list(classes)
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        self.info = dict(info or {})

    @classmethod
    def fit(cls, features: np.ndarray, labels: Sequence[str], info: dict[str, Any] | None = None
            ) -> InstrumentClassifier:
        """Fit on (N, F) features and their family names (at least two families)."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(features, np.float64)
        classes = sorted(set(labels), key=lambda f: FAMILIES.index(f) if f in FAMILIES else len(FAMILIES))
        if len(classes) < 2:
            raise ValueError(f"the instrument classifier needs clips of at least two families, got {classes}")
        mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        y = np.array([classes.index(f) for f in labels])
        lr = LogisticRegression(C=C_REG, max_iter=5000, class_weight="balanced", tol=1e-6)
        lr.fit((x - mean) / scale, y)
        coef, intercept = lr.coef_, lr.intercept_
        if len(classes) == 2:  # binary: sklearn keeps one row (class 1 vs 0); make it a two-row softmax
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        clf = cls(classes, mean, scale, coef, intercept, info)
        clf.info["train_accuracy"] = float(np.mean(np.array(clf.predict_features(x)) == np.array(labels)))
        return clf

    def proba_features(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N, n_classes) probabilities."""
        z = (np.atleast_2d(np.asarray(features, np.float64)) - self.mean) / self.scale @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict_features(self, features: np.ndarray) -> list[str]:
        return [self.classes[i] for i in self.proba_features(features).argmax(axis=1)]

    def predict(self, audios: Sequence[np.ndarray], sr: int) -> list[str]:
        """The family of each clip."""
        if not len(audios):
            return []
        return self.predict_features(np.stack([clip_features(a, sr) for a in audios]))

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, classes=np.array(self.classes), mean=self.mean, scale=self.scale, coef=self.coef,
                 intercept=self.intercept, info=np.array(json.dumps(self.info)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> InstrumentClassifier:
        with np.load(path, allow_pickle=False) as z:
            return cls([str(c) for c in z["classes"]], z["mean"], z["scale"], z["coef"], z["intercept"],
                       json.loads(str(z["info"])))


def _fingerprint(data: Path, split: str, ids: list[str], seconds: float, sr: int) -> str:
    """What a cached classifier was trained on: the feature version, settings, the split file's content (a
    re-rendered dataset keeps its clip ids but not its metadata) and the sampled clip ids."""
    h = hashlib.sha256((Path(data) / f"{split}.jsonl").read_bytes())
    h.update(json.dumps([FEATURE_VERSION, C_REG, split, seconds, sr, ids]).encode())
    return h.hexdigest()[:16]


def train(data: Path, *, split: str = "train", max_clips: int = DEFAULT_MAX_CLIPS, seed: int = 0,
          seconds: float | None = DEFAULT_SECONDS, sr: int = 24_000, cache: Path | None = None
          ) -> InstrumentClassifier:
    """Train on real renders of ``split`` (or load the cached classifier when it was trained on the same sample)."""
    pairs = sample_balanced(family_rows(load_split(data, split)), max_clips, seed)
    ids = [r.get("id", r["path"]) for r, _ in pairs]
    fingerprint = _fingerprint(Path(data), split, ids, seconds or 0.0, sr)
    if cache is not None and Path(cache).is_file():
        try:
            clf = InstrumentClassifier.load(cache)
            if clf.info.get("fingerprint") == fingerprint:
                log.info("instrument classifier: loaded %s (%d clips)", cache, clf.info.get("n_train", 0))
                return clf
            log.info("instrument classifier: %s was trained on another sample; retraining", cache)
        except (OSError, ValueError, KeyError) as e:
            log.warning("instrument classifier: unreadable cache %s (%s); retraining", cache, e)
    feats = np.stack([clip_features(load_clip(Path(data) / r["path"], sr, seconds), sr)
                      for r, _ in tqdm(pairs, desc="instrument features", unit="clip", leave=False)])
    labels = [f for _, f in pairs]
    counts = {f: labels.count(f) for f in FAMILIES if f in labels}
    clf = InstrumentClassifier.fit(feats, labels, {
        "fingerprint": fingerprint, "data": str(data), "split": split, "n_train": len(pairs), "seed": seed,
        "seconds": seconds, "sample_rate": sr, "feature_version": FEATURE_VERSION, "train_counts": counts})
    log.info("instrument classifier: trained on %d clips %s, train accuracy %.3f", len(pairs), counts,
             clf.info["train_accuracy"])
    if cache is not None:
        clf.save(cache)
    return clf


def accuracy(clf: InstrumentClassifier, data: Path, *, split: str = "test", max_clips: int = 400, seed: int = 0,
             seconds: float | None = DEFAULT_SECONDS, sr: int = 24_000) -> dict[str, Any]:
    """Accuracy on real renders of ``split`` (a seeded family-balanced sample of at most ``max_clips`` clips whose
    family is known): {accuracy, n, per_family {family: {n, accuracy}}, confusion {true: {predicted: count}}}."""
    pairs = sample_balanced(family_rows(load_split(data, split)), max_clips, seed)
    if not pairs:
        return {"accuracy": None, "n": 0, "per_family": {}, "confusion": {}}
    audios = [load_clip(Path(data) / r["path"], sr, seconds) for r, _ in pairs]
    pred = clf.predict(audios, sr)
    truth = [f for _, f in pairs]
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, pred, strict=True):
        confusion.setdefault(t, {}).setdefault(p, 0)
        confusion[t][p] += 1
    per_family = {f: {"n": sum(confusion[f].values()), "accuracy": confusion[f].get(f, 0) / sum(confusion[f].values())}
                  for f in FAMILIES if f in confusion}
    return {"accuracy": float(np.mean([t == p for t, p in zip(truth, pred, strict=True)])), "n": len(pairs),
            "per_family": per_family, "confusion": confusion}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--max-clips", type=int, default=DEFAULT_MAX_CLIPS, help="train clips (a balanced sample)")
    p.add_argument("--test-clips", type=int, default=400)
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/instrument_classifier.npz"), help="the cached classifier")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    clf = train(args.data, split=args.train_split, max_clips=args.max_clips, seed=args.seed, seconds=args.seconds,
                cache=args.out)
    result = {"train": {k: clf.info.get(k) for k in ("n_train", "train_counts", "train_accuracy")},
              args.test_split: accuracy(clf, args.data, split=args.test_split, max_clips=args.test_clips,
                                        seed=args.seed, seconds=args.seconds)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
