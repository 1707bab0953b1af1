"""Fit the semantic tokenizer (filterbanks, feature statistics, k-means codebook) and tokenize a dataset.

The runtime tokenizer (``melody_edge.tokenizer``) needs numpy only; this module computes its filterbanks with
librosa and its codebook with scikit-learn's k-means. CLI::

    python -m training.tokenizer --data data/music --vocab 256 --seed 0 --out checkpoints/tiny/tokenizer.npz \
        [--tokenize train valid]

fits on ``<data>/train/*.wav`` only, logs cluster usage, writes ``tokenizer_report.json`` beside ``--out`` and,
with ``--tokenize``, writes ``<data>/tokens_<split>.npz`` for each named split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from melody_edge.errors import InvalidInputError
from melody_edge.models.config import SAMPLE_RATE, TOKEN_RATE
from melody_edge.tokenizer import (
    FEATURE_DIM,
    FEATURE_GROUPS,
    N_CHROMA,
    FrameFeatureExtractor,
    SemanticTokenizer,
    scale_features,
)

logger = logging.getLogger(__name__)

HOP = SAMPLE_RATE // TOKEN_RATE  # 960 samples = 25 Hz
N_FFT = 4096  # chroma STFT: 5.9 Hz bins, enough to separate semitones from about 100 Hz up
N_FFT_SHORT = 2048  # loudness/onset/timbre STFT: 85 ms, >= 2 hops so that no sample falls between windows
N_MELS = 32

DEFAULT_GROUP_SHARES: dict[str, float] = {
    "chroma": 0.45,
    "loudness": 0.15,
    "onset": 0.15,
    "timbre": 0.15,
    "flatness": 0.10,
}
"""Share of the expected squared k-means distance given to each feature group (standardised dims have unit
variance, so a group of n dims weighted by sqrt(share / n) contributes ``share``). Chroma gets the most: the
key/harmony of a prompt must survive quantization."""


def build_extractor(sample_rate: int = SAMPLE_RATE, hop: int = HOP) -> FrameFeatureExtractor:
    """The feature extractor with librosa's chroma (n_fft 4096) and mel (n_fft 2048, 32 bands) filterbanks."""
    import librosa  # here, not at the top: the token cache's readers (training.common) need no audio stack

    chroma_fb = librosa.filters.chroma(sr=sample_rate, n_fft=N_FFT, n_chroma=N_CHROMA)
    mel_fb = librosa.filters.mel(sr=sample_rate, n_fft=N_FFT_SHORT, n_mels=N_MELS)
    return FrameFeatureExtractor(
        chroma_fb, mel_fb, sample_rate=sample_rate, hop=hop, n_fft=N_FFT, n_fft_short=N_FFT_SHORT
    )


def group_weights_from_shares(shares: Mapping[str, float]) -> np.ndarray:
    """Per-group weights sqrt(share / n_dims) in ``FEATURE_GROUPS`` order.

    Raises:
        InvalidInputError: a group is missing or a share is negative.
    """
    missing = [name for name, _ in FEATURE_GROUPS if name not in shares]
    if missing or any(shares[name] < 0 for name, _ in FEATURE_GROUPS):
        raise InvalidInputError(f"group shares need a value >= 0 for each of {[n for n, _ in FEATURE_GROUPS]}")
    return np.array([np.sqrt(shares[name] / n) for name, n in FEATURE_GROUPS], dtype=np.float32)


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at ``sample_rate`` (channels averaged, resampled if needed)."""
    import librosa
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = librosa.resample(audio, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
    return audio


def extract_features(extractor: FrameFeatureExtractor, audio_paths: Sequence[Path]) -> np.ndarray:
    """Raw frame features of audio files, concatenated -> (total frames, D) float32 (one file in memory at a time)."""
    feats = [extractor.extract(load_audio(p, extractor.sample_rate)) for p in audio_paths]
    return np.concatenate(feats, axis=0) if feats else np.zeros((0, FEATURE_DIM), dtype=np.float32)


def fit_from_features(
    extractor: FrameFeatureExtractor,
    raw: np.ndarray,
    vocab_size: int,
    seed: int,
    max_frames: int = 200_000,
    group_shares: Mapping[str, float] = DEFAULT_GROUP_SHARES,
    rotations: int = 1,
) -> SemanticTokenizer:
    """Fit the statistics and codebook on raw frame features (N, D) made by ``extractor``.

    With ``rotations`` = 12 (transposition-equivariant tokens) every frame's chroma is first rotated so that its
    maximum comes first, the 12 chroma dimensions share one mean/std, and k-means fits ``vocab_size // 12`` base
    codes.

    If there are more than ``max_frames`` frames, a random subset of that many (drawn with ``seed``) is used.
    Then the per-dimension mean/std, the group weights from ``group_shares`` and k-means (k-means++ seeded with
    ``seed``, one run of Lloyd) in the scaled space. The result depends only on the inputs.

    Raises:
        InvalidInputError: fewer distinct frames than ``vocab_size``, or bad arguments.
    """
    if vocab_size < 1 or max_frames < 1 or vocab_size % rotations:
        raise InvalidInputError(f"vocab_size ({vocab_size}) and max_frames ({max_frames}) must be >= 1 and "
                                f"vocab_size a multiple of rotations ({rotations})")
    n_codes = vocab_size // rotations
    if raw.shape[0] > max_frames:
        rng = np.random.default_rng(seed)
        raw = raw[np.sort(rng.choice(raw.shape[0], size=max_frames, replace=False))]
    if rotations > 1:
        raw = SemanticTokenizer(extractor, np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM),
                                np.ones(len(FEATURE_GROUPS)), np.zeros((1, FEATURE_DIM)), rotations).canonical(raw)[0]
    n_distinct = np.unique(raw, axis=0).shape[0]
    if n_distinct < n_codes:
        raise InvalidInputError(f"only {n_distinct} distinct frames to fit {n_codes} clusters; give more audio")
    mean = raw.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = raw.std(axis=0, dtype=np.float64).astype(np.float32)
    if rotations > 1:  # one statistic for all pitch classes keeps the scaling equivariant
        mean[:N_CHROMA] = mean[:N_CHROMA].mean()
        std[:N_CHROMA] = np.sqrt(np.mean(np.square(raw[:, :N_CHROMA] - mean[0])))
    std[std < 1e-6] = 1.0  # a constant dimension carries no information; leave it unscaled
    group_weights = group_weights_from_shares(group_shares)
    scaled = scale_features(raw, mean, std, group_weights)
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=n_codes, init="k-means++", n_init=1, max_iter=100, random_state=seed)
    kmeans.fit(scaled)
    logger.info(
        "k-means on %d frames x %d dims: %d iterations, inertia %.1f", *scaled.shape, kmeans.n_iter_, kmeans.inertia_
    )
    return SemanticTokenizer(extractor, mean, std, group_weights, kmeans.cluster_centers_.astype(np.float32),
                             rotations)


def fit_tokenizer(
    audio_paths: list[Path],
    vocab_size: int,
    seed: int,
    max_frames: int = 200_000,
    group_shares: Mapping[str, float] = DEFAULT_GROUP_SHARES,
    rotations: int = 1,
) -> SemanticTokenizer:
    """Fit a tokenizer on audio files (any rate and channel count; converted to mono 24 kHz).

    See ``fit_from_features`` for the arguments.

    Raises:
        InvalidInputError: no files, or too little audio for ``vocab_size`` clusters.
    """
    if not audio_paths:
        raise InvalidInputError("no audio files to fit the tokenizer on")
    logger.info("fitting a %d-token tokenizer on %d files (seed %d)", vocab_size, len(audio_paths), seed)
    extractor = build_extractor()
    raw = extract_features(extractor, audio_paths)
    return fit_from_features(extractor, raw, vocab_size, seed, max_frames, group_shares, rotations)


def _entropy_bits(counts: np.ndarray) -> float:
    """Entropy in bits of the distribution given by ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def usage_report(tokenizer: SemanticTokenizer, raw: np.ndarray) -> dict[str, float | int]:
    """Cluster usage over raw frame features (N, D) and how much pitch-class information the tokens keep.

    ``chroma_info`` is I(token; dominant pitch class) / H(dominant pitch class) over frames louder than -60 dB:
    1 means the token determines the frame's strongest chroma bin, 0 that it says nothing about it.
    """
    tokens = tokenizer.tokens_from_raw(raw)
    counts = np.bincount(tokens, minlength=tokenizer.vocab_size)
    loud = raw[:, N_CHROMA] > -60.0  # the loudness dimension follows the 12 chroma dimensions
    pitch = raw[loud, :N_CHROMA].argmax(axis=1)
    joint = np.zeros((tokenizer.vocab_size, N_CHROMA))
    np.add.at(joint, (tokens[loud], pitch), 1.0)
    h_pitch = _entropy_bits(joint.sum(axis=0))
    # I(T; P) = H(T) + H(P) - H(T, P)
    mutual = _entropy_bits(joint.sum(axis=1)) + h_pitch - _entropy_bits(joint.ravel())
    return {
        "vocab_size": tokenizer.vocab_size,
        "frames": int(tokens.shape[0]),
        "used_clusters": int((counts > 0).sum()),
        "entropy_bits": _entropy_bits(counts),
        "max_entropy_bits": float(np.log2(tokenizer.vocab_size)),
        "chroma_info": float(mutual / h_pitch) if h_pitch > 0 else 0.0,
    }


FINGERPRINT_KEY = "__tokenizer_sha256__"  # the token cache records which tokenizer made it


def tokenizer_fingerprint(tokenizer: SemanticTokenizer) -> str:
    """sha256 of the arrays that decide the tokens (statistics, weights, codebook, rotations, filterbanks)."""
    h = hashlib.sha256()
    ex = tokenizer.extractor
    for a in (tokenizer.mean, tokenizer.std, tokenizer.group_weights, tokenizer.centroids, ex.chroma_fb, ex.mel_fb,
              np.array([tokenizer.rotations, ex.hop, ex.n_fft, ex.n_fft_short, ex.sample_rate])):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tokenize_dataset(tokenizer: SemanticTokenizer, data_root: Path, split: str) -> dict[str, np.ndarray]:
    """Encode every ``<data_root>/<split>/*.wav`` and save ``<data_root>/tokens_<split>.npz`` (key: file stem).

    Returns:
        Clip id (wav file stem) -> tokens (ceil(samples / hop),) int64.

    Raises:
        InvalidInputError: the split folder holds no wav files.
    """
    paths = sorted((Path(data_root) / split).glob("*.wav"))
    if not paths:
        raise InvalidInputError(f"no wav files in {Path(data_root) / split}")
    tokens = {p.stem: tokenizer.encode(load_audio(p, tokenizer.sample_rate)) for p in paths}
    out = Path(data_root) / f"tokens_{split}.npz"
    np.savez_compressed(out, **tokens, **{FINGERPRINT_KEY: np.array(tokenizer_fingerprint(tokenizer))})
    logger.info(
        "tokenized %d clips of %s (%d tokens) -> %s", len(tokens), split, sum(t.shape[0] for t in tokens.values()), out
    )
    return tokens


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: fit on ``<data>/train/*.wav``, save the tokenizer and ``tokenizer_report.json``, tokenize splits."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root holding train/*.wav")
    parser.add_argument("--vocab", type=int, required=True, help="number of tokens (k-means clusters)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="tokenizer .npz to write")
    parser.add_argument("--max-frames", type=int, default=200_000, help="frames sampled for k-means")
    parser.add_argument("--rotations", type=int, default=1, choices=(1, 12),
                        help="12: transposition-equivariant tokens (vocab = base codes x 12)")
    parser.add_argument(
        "--tokenize",
        nargs="*",
        default=[],
        metavar="SPLIT",
        help="splits to encode into <data>/tokens_<split>.npz after fitting",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    paths = sorted((args.data / "train").glob("*.wav"))
    if not paths:
        raise InvalidInputError(f"no wav files in {args.data / 'train'}")
    extractor = build_extractor()
    per_file = [extractor.extract(load_audio(p, extractor.sample_rate)) for p in paths]
    raw = np.concatenate(per_file, axis=0)
    tokenizer = fit_from_features(extractor, raw, args.vocab, args.seed, args.max_frames, rotations=args.rotations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(args.out)

    report = {
        "train_files": len(paths),
        "rotations": args.rotations,
        "seed": args.seed,
        "frames_fitted": min(raw.shape[0], args.max_frames),
        **usage_report(tokenizer, raw),
    }
    logger.info(
        "train split: %d/%d clusters used, token entropy %.2f of %.2f bits, chroma info %.2f",
        report["used_clusters"],
        report["vocab_size"],
        report["entropy_bits"],
        report["max_entropy_bits"],
        report["chroma_info"],
    )
    (args.out.parent / "tokenizer_report.json").write_text(json.dumps(report, indent=2) + "\n")
    for split in args.tokenize:
        if split == "train":  # the features are in memory already
            tokens = {p.stem: tokenizer.tokens_from_raw(f) for p, f in zip(paths, per_file, strict=True)}
            np.savez_compressed(args.data / "tokens_train.npz", **tokens,
                                **{FINGERPRINT_KEY: np.array(tokenizer_fingerprint(tokenizer))})
        else:
            tokenize_dataset(tokenizer, args.data, split)


if __name__ == "__main__":
    main()
