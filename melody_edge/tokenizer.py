"""Semantic tokenizer: hand-made 25 Hz frame features quantized by k-means (runtime part, numpy only).

MeLoDy (Lam et al. 2023) takes its semantic tokens from k-means (1024 clusters) over the 25 Hz features of a
self-supervised music model. No such model is available offline, so the features here are made by hand from
what a text prompt controls, and the k-means codebook is fitted by ``training/tokenizer.py``. The filterbanks
are computed with librosa at fit time and stored in the tokenizer file, so encoding needs numpy only.

One frame per ``hop`` samples (960 at 24 kHz = 25 Hz); frame ``i`` describes samples ``[i * hop, (i + 1) * hop)``
and its windows are centred on the middle of that span, so ``T`` samples give exactly ``ceil(T / hop)`` frames
(the signal is zero-padded at both ends). Features per frame, D = 24, in this order (``FEATURE_GROUPS``):

- ``chroma`` (12): pitch-class energy from a 4096-point STFT (5.9 Hz bins), divided by its frame maximum
  (plus a -80 dB floor, so silence gives zeros): harmony and key.
- ``loudness`` (1): frame energy in dB (floor -100 dB), from a 2048-point Hann window.
- ``onset`` (2): spectral flux (mean positive dB rise of a 32-band log-mel spectrum since the previous frame)
  of the low and the high half of the bands, ``log1p``-compressed: rhythm and tempo.
- ``timbre`` (8): dB energy of 8 coarse mel bands relative to their mean: spectral shape, brightness.
- ``flatness`` (1): spectral flatness in dB: noise-like (drums) against tonal.

Every dimension is standardised with the stored training mean/std, then multiplied by its group's weight,
so that the 12 chroma dimensions are neither drowned out by nor drown out the rest in the k-means distance.

**Transposition-equivariant tokens** (``rotations`` = 12): each frame's chroma is rotated so that its strongest
pitch class comes first, the rotated frame is quantized to one of K *base* codes, and the token is
``base * 12 + r`` where ``r`` is that strongest pitch class. Transposing audio by ``s`` semitones maps token
``(base, r)`` to ``(base, r + s mod 12)`` (``rotate``), so any token sequence can be put in any key exactly by
remapping ids, and a token's chroma is known (``token_features``). ``rotations`` = 1 is the plain k-means tokenizer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from melody_edge.errors import BundleError, ConfigError, InvalidInputError, OutputPathError

logger = logging.getLogger(__name__)

FORMAT_NAME = "melody-edge-semantic-tokenizer"
FORMAT_VERSION = 2  # 2: ``rotations`` (transposition-equivariant codes); version 1 files load as rotations = 1

FEATURE_GROUPS: tuple[tuple[str, int], ...] = (
    ("chroma", 12),
    ("loudness", 1),
    ("onset", 2),
    ("timbre", 8),
    ("flatness", 1),
)
"""Feature groups in the order of the feature vector: (name, number of dimensions)."""

FEATURE_DIM = sum(n for _, n in FEATURE_GROUPS)
N_CHROMA = 12
N_TIMBRE_BANDS = 8

_CHROMA_FLOOR = 1e-8  # -80 dB re a full-scale sine's peak bin (0.25 with the window normalisation below)
_POWER_FLOOR = 1e-10  # -100 dB


def _periodic_hann(n: int) -> np.ndarray:
    """The periodic Hann window (as ``scipy.signal.get_window('hann', n)``), float32."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def _db(power: np.ndarray) -> np.ndarray:
    """``10 log10(power)`` with a -100 dB floor."""
    return 10.0 * np.log10(np.maximum(power, _POWER_FLOOR))


def group_dim_weights(group_weights: np.ndarray) -> np.ndarray:
    """Expand per-group weights (one per ``FEATURE_GROUPS`` entry) to per-dimension weights of shape (D,)."""
    return np.repeat(np.asarray(group_weights, dtype=np.float32), [n for _, n in FEATURE_GROUPS])


def scale_features(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, group_weights: np.ndarray) -> np.ndarray:
    """Standardise raw features (N, D) with ``mean``/``std`` (D,) and scale each group by its weight -> (N, D)."""
    scale = group_dim_weights(group_weights) / std
    return ((raw - mean) * scale).astype(np.float32)


class FrameFeatureExtractor:
    """Raw (unstandardised) 25 Hz frame features from fixed filterbanks; numpy only.

    Args:
        chroma_fb: (12, n_fft // 2 + 1) chroma filterbank, e.g. ``librosa.filters.chroma(sr, n_fft=n_fft)``.
        mel_fb: (n_mels, n_fft_short // 2 + 1) mel filterbank, e.g. ``librosa.filters.mel(sr, n_fft=n_fft_short)``;
            ``n_mels`` must be a multiple of 8 (the coarse timbre bands).
        sample_rate: audio sample rate in Hz.
        hop: samples per frame.
        n_fft: STFT size of the chroma path (long, for pitch resolution).
        n_fft_short: STFT size of the loudness/onset/timbre path (short, for time resolution; >= 2 * hop so
            that the Hann windows leave no sample unweighted).

    Raises:
        ConfigError: the filterbank shapes or sizes do not fit together.
    """

    def __init__(
        self,
        chroma_fb: np.ndarray,
        mel_fb: np.ndarray,
        *,
        sample_rate: int,
        hop: int,
        n_fft: int,
        n_fft_short: int,
    ) -> None:
        chroma_fb = np.asarray(chroma_fb, dtype=np.float32)
        mel_fb = np.asarray(mel_fb, dtype=np.float32)
        if sample_rate <= 0 or hop <= 0:
            raise ConfigError(f"sample_rate ({sample_rate}) and hop ({hop}) must be positive")
        if n_fft < n_fft_short or n_fft_short < 2 * hop:
            raise ConfigError(f"need n_fft >= n_fft_short >= 2 * hop, got {n_fft}, {n_fft_short}, {hop}")
        if chroma_fb.shape != (N_CHROMA, n_fft // 2 + 1):
            raise ConfigError(f"chroma_fb has shape {chroma_fb.shape}, expected {(N_CHROMA, n_fft // 2 + 1)}")
        if mel_fb.ndim != 2 or mel_fb.shape[1] != n_fft_short // 2 + 1 or mel_fb.shape[0] % N_TIMBRE_BANDS:
            raise ConfigError(
                f"mel_fb has shape {mel_fb.shape}, expected (a multiple of {N_TIMBRE_BANDS}, {n_fft_short // 2 + 1})"
            )
        if not (np.isfinite(chroma_fb).all() and np.isfinite(mel_fb).all()):
            raise ConfigError("filterbanks contain NaN or inf")
        self.chroma_fb = chroma_fb
        self.mel_fb = mel_fb
        self.sample_rate = int(sample_rate)
        self.hop = int(hop)
        self.n_fft = int(n_fft)
        self.n_fft_short = int(n_fft_short)
        n_mels = mel_fb.shape[0]
        self._band_fb = mel_fb.reshape(N_TIMBRE_BANDS, n_mels // N_TIMBRE_BANDS, -1).sum(axis=1)
        self._window = _periodic_hann(self.n_fft)
        self._window_short = _periodic_hann(self.n_fft_short)
        # Power spectra are divided by (sum of window)^2: a full-scale sine's peak bin is then 0.25.
        self._power_norm = np.float32(1.0 / self._window.sum() ** 2)
        self._power_norm_short = np.float32(1.0 / self._window_short.sum() ** 2)
        self._energy_norm = np.float32(1.0 / np.square(self._window_short).sum())

    def n_frames(self, n_samples: int) -> int:
        """Frames for ``n_samples`` samples: ``ceil(n_samples / hop)``."""
        return -(-n_samples // self.hop)

    def extract(self, audio: np.ndarray) -> np.ndarray:
        """Raw features of mono ``audio`` (T,) at ``sample_rate`` -> (ceil(T / hop), D) float32.

        Raises:
            InvalidInputError: ``audio`` is not a 1-D float array or holds NaN/inf.
        """
        audio = _check_audio(audio)
        n = self.n_frames(audio.shape[0])
        if n == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        # Long window of frame i covers padded[i * hop : i * hop + n_fft], centred on sample i * hop + hop // 2.
        left = self.n_fft // 2 - self.hop // 2
        right = (n - 1) * self.hop + self.n_fft - left - audio.shape[0]
        padded = np.pad(audio, (left, right))
        long_frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop]
        offset = (self.n_fft - self.n_fft_short) // 2
        short_span = padded[offset : offset + (n - 1) * self.hop + self.n_fft_short]
        short_frames = np.lib.stride_tricks.sliding_window_view(short_span, self.n_fft_short)[:: self.hop]

        # Small products go through einsum, not BLAS: OpenBLAS thread start-up costs more than the work here,
        # and the result does not depend on the thread count.
        spec = np.fft.rfft(long_frames * self._window, axis=1)
        power = (spec.real**2 + spec.imag**2) * self._power_norm
        chroma = np.einsum("nf,cf->nc", power, self.chroma_fb)
        chroma /= chroma.max(axis=1, keepdims=True) + _CHROMA_FLOOR

        windowed = short_frames * self._window_short
        loudness = _db(np.einsum("ij,ij->i", windowed, windowed) * self._energy_norm)
        spec = np.fft.rfft(windowed, axis=1)
        power = (spec.real**2 + spec.imag**2) * self._power_norm_short
        log_mel = _db(np.einsum("nf,mf->nm", power, self.mel_fb))
        rise = np.maximum(np.diff(log_mel, axis=0, prepend=log_mel[:1]), 0.0)
        half = log_mel.shape[1] // 2
        onset = np.log1p(np.stack([rise[:, :half].mean(axis=1), rise[:, half:].mean(axis=1)], axis=1))
        bands = _db(np.einsum("nf,bf->nb", power, self._band_fb))
        timbre = bands - bands.mean(axis=1, keepdims=True)
        log_power = np.log(np.maximum(power, _POWER_FLOOR))
        flatness = (10.0 / np.log(10.0)) * (log_power.mean(axis=1) - np.log(power.mean(axis=1) + _POWER_FLOOR))

        return np.concatenate([chroma, loudness[:, None], onset, timbre, flatness[:, None]], axis=1, dtype=np.float32)


def _check_audio(audio: np.ndarray) -> np.ndarray:
    """Validate mono float audio and return it as contiguous float32."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        shape = getattr(audio, "shape", None)
        dtype = getattr(audio, "dtype", type(audio).__name__)
        raise InvalidInputError(f"audio must be a 1-D float numpy array (mono samples), got shape {shape}, {dtype}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise InvalidInputError("audio contains NaN or inf samples")
    return audio


class SemanticTokenizer:
    """Audio -> 25 Hz semantic tokens: frame features, standardisation, group weights, nearest k-means centroid.

    Build it with ``training.tokenizer.fit_tokenizer`` or ``SemanticTokenizer.load``.

    Args:
        extractor: the raw frame feature extractor (filterbanks and STFT sizes).
        mean: (D,) per-dimension mean of the raw training features.
        std: (D,) per-dimension standard deviation of the raw training features (> 0).
        group_weights: (len(FEATURE_GROUPS),) weight of each feature group after standardisation.
        centroids: (K, D) k-means centroids in the scaled feature space (of chroma-rotated frames when
            ``rotations`` is 12); the vocabulary size is ``K * rotations``.
        rotations: 1 (plain k-means) or 12 (transposition-equivariant tokens, see the module docstring).
        family_head: optional (weights (K, F), bias (F,), F family names): an instrument-family classifier over
            the histogram of base codes (``family_logprobs``), fitted by ``training.family_head``.

    Raises:
        ConfigError: the arrays do not fit together or hold NaN/inf.
    """

    def __init__(
        self,
        extractor: FrameFeatureExtractor,
        mean: np.ndarray,
        std: np.ndarray,
        group_weights: np.ndarray,
        centroids: np.ndarray,
        rotations: int = 1,
        family_head: tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None = None,
    ) -> None:
        if rotations not in (1, N_CHROMA):
            raise ConfigError(f"rotations must be 1 or {N_CHROMA}, got {rotations!r}")
        mean = np.asarray(mean, dtype=np.float32)
        std = np.asarray(std, dtype=np.float32)
        group_weights = np.asarray(group_weights, dtype=np.float32)
        centroids = np.asarray(centroids, dtype=np.float32)
        if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
            raise ConfigError(f"mean/std have shapes {mean.shape}/{std.shape}, expected ({FEATURE_DIM},)")
        if group_weights.shape != (len(FEATURE_GROUPS),):
            raise ConfigError(f"group_weights has shape {group_weights.shape}, expected ({len(FEATURE_GROUPS)},)")
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] != FEATURE_DIM:
            raise ConfigError(f"centroids have shape {centroids.shape}, expected (vocab_size, {FEATURE_DIM})")
        arrays = (mean, std, group_weights, centroids)
        if not all(np.isfinite(a).all() for a in arrays) or (std <= 0).any() or (group_weights < 0).any():
            raise ConfigError("mean/std/group_weights/centroids must be finite, std > 0 and weights >= 0")
        self.extractor = extractor
        self.mean = mean
        self.std = std
        self.group_weights = group_weights
        self.centroids = centroids
        self.rotations = int(rotations)
        if self.rotations > 1 and not (np.ptp(mean[:N_CHROMA]) < 1e-5 and np.ptp(std[:N_CHROMA]) < 1e-5 * std[0]):
            raise ConfigError("a rotating tokenizer needs the same mean/std for all 12 chroma dimensions")
        self._centroid_sq = np.einsum("kd,kd->k", centroids, centroids)
        self.family_head = None
        if family_head is not None:
            w, b, names = family_head
            w, b, names = np.asarray(w, np.float32), np.asarray(b, np.float32), tuple(str(n) for n in names)
            if w.shape != (centroids.shape[0], len(names)) or b.shape != (len(names),) or not names:
                raise ConfigError(f"family head weights/bias have shapes {w.shape}/{b.shape}, expected "
                                  f"({centroids.shape[0]}, F)/(F,) for F = {len(names)} family names")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise ConfigError("family head weights/bias must be finite")
            self.family_head = (w, b, names)

    @classmethod
    def random(cls, vocab_size: int, seed: int = 0, sample_rate: int = 24_000, hop: int = 960,
               rotations: int = 1) -> SemanticTokenizer:
        """An unfitted tokenizer (numpy filterbanks, random centroids) for the random ``debug``/``paper`` models."""
        n_fft, n_short = 4096, 2048
        freqs = np.arange(1, n_fft // 2 + 1) * sample_rate / n_fft
        pc = np.round(12 * np.log2(freqs / 440.0) + 9).astype(int) % N_CHROMA
        chroma_fb = np.zeros((N_CHROMA, n_fft // 2 + 1), np.float32)
        chroma_fb[pc, np.arange(1, n_fft // 2 + 1)] = 1.0
        edges = np.linspace(0, n_short // 2 + 1, 33).astype(int)
        mel_fb = np.zeros((32, n_short // 2 + 1), np.float32)
        for i in range(32):
            mel_fb[i, edges[i]:edges[i + 1]] = 1.0
        ex = FrameFeatureExtractor(chroma_fb, mel_fb, sample_rate=sample_rate, hop=hop, n_fft=n_fft,
                                   n_fft_short=n_short)
        rng = np.random.default_rng(seed)
        if vocab_size % rotations:
            raise ConfigError(f"vocab_size {vocab_size} is not a multiple of rotations {rotations}")
        centroids = rng.standard_normal((vocab_size // rotations, FEATURE_DIM)).astype(np.float32)
        return cls(ex, np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM), np.ones(len(FEATURE_GROUPS)), centroids,
                   rotations)

    @property
    def vocab_size(self) -> int:
        """Number of tokens (k-means clusters times ``rotations``)."""
        return int(self.centroids.shape[0]) * self.rotations

    def rotate(self, tokens: np.ndarray, semitones: int | np.ndarray) -> np.ndarray:
        """Transpose tokens by ``semitones`` (exact for a rotating tokenizer: ``(base, r) -> (base, r + s)``).

        Raises:
            ConfigError: the tokenizer does not rotate (``rotations`` = 1).
        """
        if self.rotations == 1:
            raise ConfigError("this semantic tokenizer is not transposition-equivariant (rotations = 1)")
        return rotate_tokens(tokens, semitones)

    def token_features(self) -> np.ndarray:
        """Scaled feature vector of every token (vocab_size, D): its base centroid with the chroma rotated by r."""
        if self.rotations == 1:
            return self.centroids.copy()
        out = np.repeat(self.centroids[:, None], N_CHROMA, axis=1)  # (K, 12, D)
        for r in range(N_CHROMA):
            out[:, r, :N_CHROMA] = np.roll(self.centroids[:, :N_CHROMA], r, axis=1)
        return out.reshape(-1, FEATURE_DIM)

    def base_histogram(self, tokens: np.ndarray) -> np.ndarray:
        """(K,) float64 share of each base code (token // ``rotations``) among ``tokens``; zeros for no tokens."""
        tokens = np.asarray(tokens, dtype=np.int64).ravel()
        k = self.centroids.shape[0]
        if not tokens.size:
            return np.zeros(k)
        return np.bincount(tokens // self.rotations, minlength=k)[:k] / tokens.size

    def family_logprobs(self, tokens: np.ndarray) -> dict[str, float] | None:
        """Log-probability of each instrument family that the music of ``tokens`` sounds like, by the tokenizer's
        family head (a multinomial logistic regression on the histogram of base codes, fitted on the tokens of
        real renders: ``training.family_head``); None for a tokenizer without one or no tokens."""
        tokens = np.asarray(tokens, dtype=np.int64).ravel()
        if self.family_head is None or not tokens.size:
            return None
        w, b, names = self.family_head
        logits = self.base_histogram(tokens) @ w + b
        logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        return dict(zip(names, logp.tolist(), strict=True))

    def canonical(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw features (N, D) -> (features with each frame's chroma rotated so its maximum comes first, that
        maximum's pitch class (N,)); the identity and zeros for a tokenizer that does not rotate."""
        if self.rotations == 1:
            return raw, np.zeros(raw.shape[0], dtype=np.int64)
        r = raw[:, :N_CHROMA].argmax(axis=1)
        idx = (np.arange(N_CHROMA)[None, :] + r[:, None]) % N_CHROMA
        out = raw.copy()
        out[:, :N_CHROMA] = np.take_along_axis(raw[:, :N_CHROMA], idx, axis=1)
        return out, r.astype(np.int64)

    def tokens_from_raw(self, raw: np.ndarray) -> np.ndarray:
        """Tokens of raw (unscaled) frame features (N, D) -> (N,) int64."""
        canon, r = self.canonical(raw)
        base = self.quantize(scale_features(canon, self.mean, self.std, self.group_weights))
        return base * self.rotations + r

    @property
    def sample_rate(self) -> int:
        """Sample rate in Hz the tokenizer expects."""
        return self.extractor.sample_rate

    @property
    def hop(self) -> int:
        """Samples per token."""
        return self.extractor.hop

    def features(self, audio: np.ndarray) -> np.ndarray:
        """Scaled features of mono float ``audio`` (T,) at ``sample_rate`` -> (ceil(T / hop), D) float32.

        Raises:
            InvalidInputError: ``audio`` is not a 1-D float array or holds NaN/inf.
        """
        return scale_features(self.extractor.extract(audio), self.mean, self.std, self.group_weights)

    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Nearest centroid (the base code when rotating) of each scaled feature row (N, D) -> (N,) int64
        (ties go to the lower id)."""
        # argmin_k ||a - c_k||^2 = argmin_k (||c_k||^2 - 2 a.c_k); ||a||^2 is the same for every k.
        dist = self._centroid_sq - 2.0 * np.einsum("nd,kd->nk", features, self.centroids)
        return dist.argmin(axis=1).astype(np.int64)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Tokens of mono float ``audio`` (T,) at ``sample_rate`` -> (ceil(T / hop),) int64 in [0, vocab_size).

        Raises:
            InvalidInputError: ``audio`` is not a 1-D float array or holds NaN/inf.
        """
        return self.tokens_from_raw(self.extractor.extract(audio))

    def encode_batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """``encode`` each clip of a list (lengths may differ); one nearest-centroid search for all frames.

        Raises:
            InvalidInputError: a clip is not a 1-D float array or holds NaN/inf.
        """
        feats = [self.extractor.extract(a) for a in audios]
        if not feats:
            return []
        tokens = self.tokens_from_raw(np.concatenate(feats, axis=0))
        return np.split(tokens, np.cumsum([f.shape[0] for f in feats])[:-1])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to one ``.npz`` file (format name and version, config, filterbanks, statistics).

        Raises:
            OutputPathError: the file cannot be written.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        ex = self.extractor
        try:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    format=np.array(FORMAT_NAME),
                    version=np.array(FORMAT_VERSION),
                    vocab_size=np.array(self.vocab_size),
                    sample_rate=np.array(ex.sample_rate),
                    hop=np.array(ex.hop),
                    n_fft=np.array(ex.n_fft),
                    n_fft_short=np.array(ex.n_fft_short),
                    feature_groups=np.array([name for name, _ in FEATURE_GROUPS]),
                    chroma_fb=ex.chroma_fb,
                    mel_fb=ex.mel_fb,
                    mean=self.mean,
                    std=self.std,
                    group_weights=self.group_weights,
                    centroids=self.centroids,
                    rotations=np.array(self.rotations),
                    **({} if self.family_head is None else {
                        "family_weights": self.family_head[0], "family_bias": self.family_head[1],
                        "family_names": np.array(self.family_head[2])}),
                )
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise OutputPathError(f"cannot write tokenizer to {path}: {e}") from e
        logger.info("saved semantic tokenizer (vocab %d) to %s", self.vocab_size, path)

    @classmethod
    def load(cls, path: str | Path) -> SemanticTokenizer:
        """Read a tokenizer written by ``save``.

        Raises:
            BundleError: the file is missing, corrupt, of another format or version, or inconsistent.
        """
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"tokenizer file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as e:  # np.load raises many types on corrupt zips (BadZipFile, ValueError, OSError, ...)
            raise BundleError(f"tokenizer file {path} is corrupt or not an .npz file: {e}") from e
        try:
            return cls._from_arrays(data)
        except KeyError as e:
            raise BundleError(f"tokenizer file {path} lacks the array {e}") from e
        except (TypeError, ValueError) as e:  # ConfigError is a ValueError
            raise BundleError(f"tokenizer file {path} is not a valid tokenizer: {e}") from e

    @classmethod
    def _from_arrays(cls, data: dict[str, np.ndarray]) -> SemanticTokenizer:
        """Check the format, version and config of the arrays of a saved tokenizer and build it."""
        if str(data["format"]) != FORMAT_NAME:
            raise ValueError(f"format is {str(data['format'])!r}, not a melody-edge semantic tokenizer")
        version = int(data["version"])
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"format version is {version}; this melody-edge reads versions 1-{FORMAT_VERSION}")
        groups = [str(g) for g in data["feature_groups"]]
        if groups != [name for name, _ in FEATURE_GROUPS]:
            raise ValueError(f"feature groups are {groups}, expected {[n for n, _ in FEATURE_GROUPS]}")
        extractor = FrameFeatureExtractor(
            data["chroma_fb"],
            data["mel_fb"],
            sample_rate=int(data["sample_rate"]),
            hop=int(data["hop"]),
            n_fft=int(data["n_fft"]),
            n_fft_short=int(data["n_fft_short"]),
        )
        rotations = int(data["rotations"]) if version >= 2 else 1
        head = None
        if "family_weights" in data:  # optional (training.family_head)
            head = (data["family_weights"], data["family_bias"], tuple(str(n) for n in data["family_names"]))
        tokenizer = cls(extractor, data["mean"], data["std"], data["group_weights"], data["centroids"], rotations,
                        head)
        if tokenizer.vocab_size != int(data["vocab_size"]):
            raise ValueError(f"vocab_size is {int(data['vocab_size'])} but there are {tokenizer.vocab_size} centroids")
        return tokenizer


def rotate_tokens(tokens: np.ndarray, semitones: int | np.ndarray) -> np.ndarray:
    """Transpose tokens of a rotating (12-rotation) tokenizer by ``semitones``: ``base * 12 + (r + s) mod 12``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    return tokens - tokens % N_CHROMA + (tokens % N_CHROMA + np.asarray(semitones, dtype=np.int64)) % N_CHROMA
