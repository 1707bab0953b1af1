"""Evaluate a model (a torch checkpoint or the exported bundle users get) on how well its music follows the prompt:
VAE reconstruction, and key, tempo and instrument-family adherence on (a) held-out test captions and (b) a committed
set of free-form prompts written unlike the caption templates (``training/prompts_freeform.jsonl``).

Generation rows, all on the same items with the same seed per item (so rows differ only in what conditions them):

- ``text_only``: the prompt as is (the caption, or the free-form prompt); the controls are what the text says;
- ``text_plus_controls``: the same prompt plus the labelled key, tempo and instrument family as explicit
  ``key=``/``bpm=``/``instrument=`` arguments;
- ``shuffled``: another item's prompt (a seeded derangement), scored against this item's labels: the chance level
  of a model that makes plausible music whatever it is asked;
- ``controls_dropped``: the prompt with ``read_controls=False``: nothing is parsed from it, the model gets the text
  alone (the path a control-free model would take);
- ``random_weights`` (captions only): the same architecture with random weights, prompted with the captions;
- ``real_audio`` (captions only): the real clips through the same estimators: the estimators' ceiling.

Labels: a caption item is scored against the exact controls its clip was rendered with
(``training.captions.controls_of``); a free-form prompt against the key, bpm and family written beside it.

Metrics: Krumhansl-Schmuckler key accuracy (exact, tonic, related, MIREX score), tempo accuracy (librosa's beat
tracker within 10% of the labelled BPM, or of half/double it; ``tempo_strict`` without the octave allowance),
instrument-family accuracy (``training.instruments``, a classifier trained on real train renders; its accuracy on
real test renders is reported as the ceiling), RMS level, the fraction of near-silent clips, and for the captions
the Frechet distance between per-clip feature vectors of generated and real clips (each dimension standardised by
the real clips' mean and std). VAE (diffusion-space round trip ``vae_encode`` -> ``vae_decode``, as generation
uses it): chroma correlation, log-mel L1, multi-resolution STFT spectral convergence and log-magnitude L1, SI-SDR.

Usage: ``python -m training.evaluate --bundle tiny --data data/music --split test --n 40
--prompts training/prompts_freeform.jsonl --out runs/eval_tiny.json`` (or ``--checkpoint checkpoints/tiny``); also
writes ``runs/eval_tiny.md`` and prints it. Defaults: 10 s per clip and the model's default generation settings.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import scipy.linalg
import soundfile as sf
from tqdm import tqdm

from melody_edge.controls import FAMILIES, Controls, parse_controls, resolve
from melody_edge.generator import Generator
from training.captions import controls_of
from training.data import load_split

log = logging.getLogger(__name__)

#: Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
#: MIREX key score per relation of the estimated to the true key (fifths counted in both directions).
MIREX_WEIGHTS = {"same": 1.0, "fifth": 0.5, "relative": 0.3, "parallel": 0.2, "other": 0.0}
TEMPO_TOLERANCE = 0.10
SILENT_RMS = 0.005  # outputs quieter than this count as silent: no key, no tempo, no instrument
MRSTFT_FFTS = (512, 1024, 2048)
LOG_EPS = 1e-5
N_FFT, HOP = 2048, 512  # frame analysis for the chroma, log-mel and Frechet features
N_MELS_RECON, N_MFCC = 80, 20
FD_RIDGE = 1e-6
FEATURE_STD_FLOOR = 1e-3  # per-dimension std floor when standardising features by the real clips
DEFAULT_PROMPTS = Path(__file__).with_name("prompts_freeform.jsonl")
DEFAULT_SECONDS = 10.0
CAPTION_ROWS = ("text_only", "text_plus_controls", "shuffled", "controls_dropped", "random_weights", "real_audio")
FREEFORM_ROWS = ("text_only", "text_plus_controls", "shuffled", "controls_dropped")
ROWS = CAPTION_ROWS
SELECTABLE = (*CAPTION_ROWS, "vae")  # what ``--rows`` may name ("vae": the reconstruction table)
GEN_METRICS = ("key_match", "tonic_match", "key_related", "key_mirex", "tempo_match", "tempo_strict",
               "instrument_match", "rms_mean", "silent_frac", "fd", "rtf")
VAE_METRICS = ("chroma_corr", "logmel_l1", "mrstft_sc", "mrstft_logmag", "si_sdr")
#: Issue 9's targets on the free-form prompts (row, metric, minimum); "above shuffled" targets are margins.
TARGETS = (("text_only", "key_match", 0.45), ("text_only", "tempo_match", 0.60),
           ("text_only", "instrument_match", 0.50), ("text_plus_controls", "key_match", 0.55),
           ("text_plus_controls", "tempo_match", 0.70))
MARGIN_TARGETS = (("key_match", 0.25), ("tempo_match", 0.25))  # text_only minus shuffled


# --- estimators -----------------------------------------------------------------------------------------------

def rms(audio: np.ndarray) -> float:
    """Root-mean-square level of ``audio``."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays (flattened); 0.0 when either is constant."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else 0.0


def estimate_key(audio: np.ndarray, sr: int) -> tuple[int, str] | None:
    """Krumhansl-Schmuckler key of ``audio``: the mean CQT chroma correlated with the 24 rotated major/minor
    profiles. Returns (tonic pitch class 0-11 with 0 = C, 'major'|'minor'), or ``None`` for near-silent audio."""
    if rms(audio) < SILENT_RMS:
        return None
    chroma = librosa.feature.chroma_cqt(y=audio.astype(np.float32), sr=sr, hop_length=HOP).mean(axis=1)
    scores = [(pearson(chroma, np.roll(profile, pc)), pc, mode)
              for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)) for pc in range(12)]
    _, pc, mode = max(scores)
    return pc, mode


def key_relation(est: tuple[int, str] | None, true_pc: int, true_mode: str) -> str:
    """Relation of an estimated key to the true one: 'same', 'fifth' (same mode, tonic a fifth above or below),
    'relative' (C major <-> A minor), 'parallel' (same tonic, other mode) or 'other' (also for ``None``)."""
    if est is None:
        return "other"
    pc, mode = est
    diff = (pc - true_pc) % 12
    if mode == true_mode:
        return "same" if diff == 0 else "fifth" if diff in (5, 7) else "other"
    if diff == 0:
        return "parallel"
    relative = 9 if true_mode == "major" else 3  # relative minor 3 semitones below the major tonic
    return "relative" if diff == relative else "other"


def estimate_tempo(audio: np.ndarray, sr: int) -> float | None:
    """Global tempo in BPM from the onset-strength envelope (librosa's autocorrelation estimator with its default
    log-normal prior around 120 BPM), or ``None`` for near-silent audio."""
    if rms(audio) < SILENT_RMS:
        return None
    onset = librosa.onset.onset_strength(y=audio.astype(np.float32), sr=sr, hop_length=HOP)
    return float(librosa.feature.tempo(onset_envelope=onset, sr=sr, hop_length=HOP)[0])


def tempo_matches(est: float | None, bpm: float, octave: bool = True) -> bool:
    """Whether ``est`` is within 10% of ``bpm`` (or, with ``octave``, of half or double it)."""
    if est is None:
        return False
    targets = (bpm, bpm / 2, bpm * 2) if octave else (bpm,)
    return any(abs(est - t) <= TEMPO_TOLERANCE * t for t in targets)


def clip_features(audio: np.ndarray, sr: int) -> np.ndarray:
    """Per-clip vector for the Frechet distance (68 values): mean and std over frames of 20 MFCCs, 12 STFT chroma,
    the spectral centroid in kHz and the onset strength (n_fft 2048, hop 512)."""
    y = audio.astype(np.float32)
    power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)) ** 2
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    frames = np.concatenate([
        librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC),
        librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0),
        librosa.feature.spectral_centroid(S=np.sqrt(power), sr=sr) / 1000.0,
        librosa.onset.onset_strength(S=mel_db, sr=sr)[None, :],
    ])
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]).astype(np.float64)


def frechet_distance(x: np.ndarray, y: np.ndarray, ridge: float = FD_RIDGE) -> float:
    """Frechet distance between Gaussians fitted to the rows of ``x`` and ``y`` (covariances plus ``ridge * I``):
    ``|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2))``. A set of one row gets a zero covariance."""
    def fit(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cov = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((a.shape[1], a.shape[1]))
        return a.mean(axis=0), cov + ridge * np.eye(a.shape[1])

    (mu_x, s_x), (mu_y, s_y) = fit(np.asarray(x, np.float64)), fit(np.asarray(y, np.float64))
    covmean = np.real(scipy.linalg.sqrtm(s_x @ s_y))
    return float(np.sum((mu_x - mu_y) ** 2) + np.trace(s_x) + np.trace(s_y) - 2.0 * np.trace(covmean))


def feature_fd(features: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance between two sets of clip features after standardising every dimension by the reference
    set's mean and std (floored at 1e-3), so each feature counts in units of its spread over real clips instead of
    MFCC 0's decibels dominating."""
    center, scale = reference.mean(axis=0), np.maximum(reference.std(axis=0), FEATURE_STD_FLOOR)
    return frechet_distance((features - center) / scale, (reference - center) / scale)


# --- VAE reconstruction ---------------------------------------------------------------------------------------

def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio of ``est`` against ``ref`` in dB."""
    ref, est = ref.astype(np.float64), est.astype(np.float64)
    target = np.dot(est, ref) / max(np.dot(ref, ref), 1e-12) * ref
    noise = est - target
    return float(10 * np.log10(max(np.dot(target, target), 1e-12) / max(np.dot(noise, noise), 1e-12)))


def reconstruction_metrics(ref: np.ndarray, est: np.ndarray, sr: int) -> dict[str, float]:
    """Compare a reconstruction with its input: STFT-chroma Pearson correlation (flattened (12, frames)), log-mel L1
    (80 bands, ``log(1e-5 + mel)``), multi-resolution STFT (FFT 512/1024/2048, hop n_fft/4) spectral convergence and
    log-magnitude L1, each averaged over the three resolutions, and SI-SDR."""
    ref, est = ref.astype(np.float32), est.astype(np.float32)
    chroma = [librosa.feature.chroma_stft(y=a, sr=sr, n_fft=N_FFT, hop_length=HOP, tuning=0.0) for a in (ref, est)]
    mels = [np.log(LOG_EPS + librosa.feature.melspectrogram(y=a, sr=sr, n_fft=N_FFT, hop_length=HOP,
                                                              n_mels=N_MELS_RECON)) for a in (ref, est)]
    sc, logmag = [], []
    for n_fft in MRSTFT_FFTS:
        m_ref, m_est = (np.abs(librosa.stft(a, n_fft=n_fft, hop_length=n_fft // 4)) for a in (ref, est))
        sc.append(float(np.linalg.norm(m_ref - m_est) / max(np.linalg.norm(m_ref), 1e-12)))
        logmag.append(float(np.mean(np.abs(np.log(LOG_EPS + m_ref) - np.log(LOG_EPS + m_est)))))
    return {"chroma_corr": pearson(*chroma), "logmel_l1": float(np.mean(np.abs(mels[0] - mels[1]))),
            "mrstft_sc": float(np.mean(sc)), "mrstft_logmag": float(np.mean(logmag)), "si_sdr": si_sdr(ref, est)}


def evaluate_vae(backend: Any, clips: list[np.ndarray], sr: int, desc: str) -> dict[str, float]:
    """Mean reconstruction metrics of a backend's VAE over ``clips`` (each through the diffusion-space round trip
    ``vae_encode`` -> ``vae_decode``, cropped to the input length)."""
    rows = []
    for x in tqdm(clips, desc=f"vae {desc}", unit="clip", leave=False):
        y = np.asarray(backend.vae_decode(backend.vae_encode(x[None].astype(np.float32))), np.float32)[0]
        y = np.pad(y, (0, max(0, x.shape[0] - y.shape[0])))[: x.shape[0]]
        rows.append(reconstruction_metrics(x, y, sr))
    return {k: float(np.mean([r[k] for r in rows])) for k in VAE_METRICS}


# --- items, labels, prompts -----------------------------------------------------------------------------------

@dataclass
class Item:
    """One thing to generate: its id, prompt, the labels it is scored against and the explicit controls of the
    ``text_plus_controls`` row."""

    id: str
    prompt: str
    label: Controls
    explicit: dict[str, Any] = field(default_factory=dict)


def explicit_controls(label: Controls) -> dict[str, Any]:
    """``key=``/``bpm=``/``instrument=`` arguments stating a label (only the parts it has)."""
    out: dict[str, Any] = {}
    if label.tonic is not None and label.mode is not None:
        out["key"] = label.key
    if label.bpm is not None:
        out["bpm"] = float(label.bpm)
    if label.instrument is not None:
        out["instrument"] = label.instrument
    return out


def caption_items(rows: list[dict[str, Any]]) -> list[Item]:
    """Held-out clips prompted with their first caption, labelled with the controls they were rendered with."""
    items = []
    for r in rows:
        label = controls_of(r["metadata"])
        items.append(Item(str(r.get("id", r["path"])), r["captions"][0], label, explicit_controls(label)))
    return items


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """The free-form prompt file: one JSON object a line with ``prompt``, ``key`` ("A minor"), ``bpm`` (a number)
    and ``instrument`` (a family of ``FAMILIES``). Raises ``ValueError`` naming the first bad line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"prompt", "key", "bpm", "instrument"} - set(row)
            if missing or row["instrument"] not in FAMILIES:
                raise ValueError(f"{path}:{n}: needs prompt, key, bpm and an instrument family of {FAMILIES}; "
                                 f"got {row}")
            out.append(row)
    return out


def prompt_label(row: dict[str, Any]) -> Controls:
    """The labels of a free-form prompt as ``Controls`` (validated like explicit arguments)."""
    return resolve("", key=row["key"], bpm=row["bpm"], instrument=row["instrument"])


def prompt_items(rows: list[dict[str, Any]]) -> list[Item]:
    items = []
    for i, r in enumerate(rows):
        label = prompt_label(r)
        items.append(Item(f"prompt{i:03d}", r["prompt"], label, explicit_controls(label)))
    return items


def parse_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How well ``parse_controls`` reads the free-form labels: fractions with the key (tonic and mode), the bpm
    (within 0.5) and the family right, all three, and the prompts it misreads."""
    checks, misreads = [], []
    for r in rows:
        label, got = prompt_label(r), parse_controls(r["prompt"])
        ok = {"key": (got.tonic, got.mode) == (label.tonic, label.mode),
              "bpm": got.bpm is not None and abs(got.bpm - label.bpm) <= 0.5,
              "instrument": got.instrument == label.instrument}
        checks.append(ok)
        if not all(ok.values()):
            misreads.append({"prompt": r["prompt"], "parsed": str(got), "wrong": [k for k, v in ok.items() if not v]})
    n = max(1, len(checks))
    return {**{k: sum(c[k] for c in checks) / n for k in ("key", "bpm", "instrument")},
            "all": sum(all(c.values()) for c in checks) / n, "n": len(checks), "misreads": misreads}


# --- scoring --------------------------------------------------------------------------------------------------

def _rate(values: list[bool | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def score_clips(audios: list[np.ndarray], labels: list[Controls], sr: int, classifier: Any = None
                ) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """Key, tempo, instrument family and level of each clip against its labels: (summary, per-clip records).

    A rate counts only the clips whose label has that attribute (a mixed ensemble has no family), and is ``None``
    when none has it (or, for the family, without a classifier). Near-silent clips match nothing."""
    fams = classifier.predict(audios, sr) if classifier is not None else [None] * len(audios)
    per_clip = []
    for audio, label, fam in zip(audios, labels, fams, strict=True):
        level = rms(audio)
        key, bpm = estimate_key(audio, sr), estimate_tempo(audio, sr)
        fam = fam if level >= SILENT_RMS else None
        has_key = label.tonic is not None and label.mode is not None
        per_clip.append({
            "true_key": [label.tonic, label.mode] if has_key else None, "est_key": list(key) if key else None,
            "key_relation": key_relation(key, label.tonic, label.mode) if has_key else None,
            "true_bpm": label.bpm, "est_bpm": bpm,
            "tempo_match": tempo_matches(bpm, label.bpm) if label.bpm else None,
            "tempo_strict": tempo_matches(bpm, label.bpm, octave=False) if label.bpm else None,
            "true_family": label.instrument, "est_family": fam,
            "instrument_match": (fam == label.instrument) if label.instrument and classifier is not None else None,
            "rms": level})
    rel = [c["key_relation"] for c in per_clip]
    summary = {"key_match": _rate([None if r is None else r == "same" for r in rel]),
               "tonic_match": _rate([None if r is None else r in ("same", "parallel") for r in rel]),
               "key_related": _rate([None if r is None else r in ("fifth", "relative") for r in rel]),
               "key_mirex": (float(np.mean([MIREX_WEIGHTS[r] for r in rel if r is not None]))
                             if any(r is not None for r in rel) else None),
               "tempo_match": _rate([c["tempo_match"] for c in per_clip]),
               "tempo_strict": _rate([c["tempo_strict"] for c in per_clip]),
               "instrument_match": _rate([c["instrument_match"] for c in per_clip]),
               "rms_mean": float(np.mean([c["rms"] for c in per_clip])) if per_clip else None,
               "silent_frac": float(np.mean([c["rms"] < SILENT_RMS for c in per_clip])) if per_clip else None}
    return summary, per_clip


# --- generation -----------------------------------------------------------------------------------------------

def controls_api(gen: Generator) -> bool:
    """Whether ``gen.generate`` takes explicit controls and ``read_controls`` (issue 9's API)."""
    params = inspect.signature(gen.generate).parameters
    return all(p in params for p in ("key", "bpm", "instrument", "read_controls"))


def controls_text(explicit: dict[str, Any]) -> str:
    """The explicit controls written as text ("in A minor, 60 BPM, piano"), for generators without the API."""
    parts = [f"in {explicit['key']}" if "key" in explicit else "",
             f"{explicit['bpm']:g} BPM" if "bpm" in explicit else "", explicit.get("instrument", "")]
    return ", ".join(p for p in parts if p)


def row_requests(row: str, items: list[Item], perm: np.ndarray, api: bool
                 ) -> list[tuple[str, dict[str, Any]] | None]:
    """(prompt, extra ``generate`` arguments) per item for a generation row; ``None`` where the row cannot run
    (``controls_dropped`` on a generator without ``read_controls``)."""
    out: list[tuple[str, dict[str, Any]] | None] = []
    for i, item in enumerate(items):
        if row in ("text_only", "random_weights"):
            out.append((item.prompt, {}))
        elif row == "text_plus_controls":
            out.append((item.prompt, dict(item.explicit)) if api else
                       (f"{item.prompt}, {controls_text(item.explicit)}", {}))
        elif row == "shuffled":
            out.append((items[int(perm[i])].prompt, {}))
        elif row == "controls_dropped":
            out.append((item.prompt, {"read_controls": False}) if api else None)
        else:
            raise ValueError(f"unknown generation row {row!r}")
    return out


def generate_row(gen: Generator, requests: list[tuple[str, dict[str, Any]]], seconds: float, seeds: list[int],
                 settings: dict[str, Any], desc: str) -> tuple[list[np.ndarray], list[dict[str, Any] | None], float]:
    """One clip per request (seed ``seeds[i]`` for request ``i``): (clips, the controls each used, mean RTF)."""
    audios, used, rtfs = [], [], []
    for (prompt, kwargs), seed in tqdm(list(zip(requests, seeds, strict=True)), desc=f"generate {desc}",
                                       unit="clip", leave=False):
        audio = gen.generate(prompt, seconds, seed=seed, **settings, **kwargs)
        audios.append(np.asarray(audio.samples, np.float32))
        controls = getattr(audio, "controls", None)
        used.append(controls.as_dict() if hasattr(controls, "as_dict") else None)
        rtfs.append(audio.stats.rtf)
    return audios, used, float(np.mean(rtfs)) if rtfs else float("nan")


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point (n >= 2): a cyclic shift of a random order."""
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, -1)
    return perm


def load_clip(path: Path, sr: int, samples: int) -> np.ndarray:
    """Read a clip as mono float32 at ``sr``, cut or zero-padded to ``samples``."""
    x, file_sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if file_sr != sr:
        x = librosa.resample(x, orig_sr=file_sr, target_sr=sr).astype(np.float32)
    out = np.zeros(samples, dtype=np.float32)
    out[: min(samples, x.shape[0])] = x[:samples]
    return out


def pick_rows(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """The seeded sample of ``n`` rows (in split order) that the evaluation scores."""
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False))
    return [rows[i] for i in pick]


def run_rows(gen: Generator, items: list[Item], rows: Sequence[str], *, seconds: float, seeds: list[int],
             settings: dict[str, Any], perm: np.ndarray, api: bool, classifier: Any, sr: int,
             real_feats: np.ndarray | None, random_gen: Generator | None, tag: str
             ) -> tuple[dict[str, dict[str, Any] | None], dict[str, list[dict[str, Any]]]]:
    """Generate and score every row but ``real_audio`` on ``items``: (row summaries, per-clip records)."""
    summaries: dict[str, dict[str, Any] | None] = {}
    per_clip: dict[str, list[dict[str, Any]]] = {}
    labels = [it.label for it in items]
    for row in rows:
        if row == "real_audio":
            continue
        requests = row_requests(row, items, perm, api)
        runner = random_gen if row == "random_weights" else gen
        if runner is None or any(r is None for r in requests):
            summaries[row], per_clip[row] = None, []
            continue
        audios, used, rtf = generate_row(runner, requests, seconds, seeds, settings, f"{tag} {row}")
        summary, clips = score_clips(audios, labels, sr, classifier)
        fd = (feature_fd(np.stack([clip_features(a, sr) for a in audios]), real_feats)
              if real_feats is not None else None)
        summaries[row] = {**summary, "fd": fd, "rtf": rtf}
        per_clip[row] = [{"id": it.id, "prompt": p, "explicit": kw or None, "controls_used": u, **c}
                         for it, (p, kw), u, c in zip(items, requests, used, clips, strict=True)]
        log.info("%s %s: %s", tag, row, {k: (round(v, 4) if isinstance(v, float) else v)
                                         for k, v in summaries[row].items()})
    return summaries, per_clip


def targets(freeform: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Issue 9's targets on the free-form rows: [{target, value, met}] (value ``None`` when a row is missing)."""
    out = []
    for row, metric, minimum in TARGETS:
        v = (freeform.get(row) or {}).get(metric)
        out.append({"target": f"{row} {metric} >= {minimum:.0%}", "value": v,
                    "met": None if v is None else v >= minimum})
    for metric, margin in MARGIN_TARGETS:
        a, b = (freeform.get("text_only") or {}).get(metric), (freeform.get("shuffled") or {}).get(metric)
        v = None if a is None or b is None else a - b
        out.append({"target": f"text_only {metric} >= shuffled + {margin:.0%}", "value": v,
                    "met": None if v is None else v >= margin - 1e-9})
    return out


def evaluate(model: str | Path, data: Path, split: str = "test", *, backend: str = "auto", n: int = 40,
             prompts: Path | None = DEFAULT_PROMPTS, n_prompts: int | None = None,
             seconds: float = DEFAULT_SECONDS, steps: int | None = None, guidance: float | None = None,
             lm_guidance: float | None = None, seed: int = 0, device: str = "cpu", random_baseline: bool = True,
             classifier_cache: Path | None = None, classifier_split: str = "train", classifier_clips: int = 1500,
             classifier_test_clips: int = 400, rows: Sequence[str] | None = None, classifier_seed: int = 0,
             temperature: float | None = None, top_k: int | None = None,
             key_candidates: int | None = None, key_strength: float | None = None) -> dict[str, Any]:
    """Run the whole evaluation and return the report (see ``main`` for the keys).

    ``model``: a bundle folder or ``"tiny"`` (``backend="auto"``: what ``Generator()`` users get) or a torch
    checkpoint folder (``backend="torch"``). ``steps``/``guidance``/``lm_guidance`` ``None``: the model's defaults.
    ``rows``: only these rows (of ``SELECTABLE``; e.g. ``["text_only"]`` for a quick comparison of models: the
    captions' Frechet distance and both prompt sets' key and tempo); ``None``: every row and the VAE table.
    ``classifier_seed``: the sample of real renders the instrument classifier is trained and tested on, fixed apart
    from ``seed`` (which draws the clips and the generation seeds) so that runs at several seeds share one measuring
    instrument (``training.eval_seeds`` pools them). ``temperature``/``top_k``: LM sampling (``None``: the API's).
    """
    from training import instruments

    unknown = sorted(set(rows or ()) - set(SELECTABLE))
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose among {list(SELECTABLE)}")
    selected = None if rows is None else list(rows)  # (``rows`` is reused for the split's clips below)
    wanted = (lambda row: True) if selected is None else (lambda row: row in selected)  # noqa: E731
    random_baseline = random_baseline and wanted("random_weights")
    gen = Generator(str(model), backend=backend, device=device)
    api = controls_api(gen)
    if not api:
        log.warning("this Generator has no explicit controls: text_plus_controls appends them to the prompt as "
                    "text and controls_dropped is not run")
    sr = gen.sample_rate
    settings = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("lm_guidance", lm_guidance),
                                  ("temperature", temperature), ("top_k", top_k),
                                  ("key_candidates", key_candidates), ("key_strength", key_strength))
                if v is not None}
    samples = round(seconds * sr)

    clf = instruments.train(data, split=classifier_split, max_clips=classifier_clips, seed=classifier_seed,
                            seconds=seconds, sr=sr, cache=classifier_cache)
    clf_test = instruments.accuracy(clf, data, split=split, max_clips=classifier_test_clips, seed=classifier_seed,
                                    seconds=seconds, sr=sr)
    classifier = {"accuracy_real_test": clf_test["accuracy"], "n_test": clf_test["n"],
                  "per_family": clf_test["per_family"], "confusion": clf_test["confusion"],
                  **{k: clf.info.get(k) for k in ("n_train", "train_counts", "train_accuracy", "feature_version")},
                  "classes": clf.classes, "cache": str(classifier_cache) if classifier_cache else None}
    log.info("instrument classifier: accuracy %s on %d real %s renders", clf_test["accuracy"], clf_test["n"], split)

    rows = pick_rows(load_split(data, split), n, seed)
    items = caption_items(rows)
    real = [load_clip(Path(data) / r["path"], sr, samples) for r in tqdm(rows, desc="load", unit="clip", leave=False)]
    seeds = [seed * 100_003 + i for i in range(len(items))]
    perm = derangement(len(items), seed + 1) if len(items) > 1 else np.arange(len(items))
    log.info("evaluating %s on %d %s clips of %s, %.2f s, settings %s", model, len(items), split, data, seconds,
             settings or "default")

    random_gen = None
    vae = {"trained": evaluate_vae(gen.backend, real, sr, "trained")} if wanted("vae") else {}
    if random_baseline:
        from melody_edge.backends.torch_backend import TorchBackend
        from melody_edge.models.melody import MeLoDy

        random_gen = Generator.from_backend(TorchBackend(MeLoDy.random(gen.config, seed), device,
                                                         gen.backend.semantic_tokenizer))
        if wanted("vae"):
            vae["random_weights"] = evaluate_vae(random_gen.backend, real, sr, "random")

    real_feats = np.stack([clip_features(a, sr) for a in real]) if real else None
    captions, per_clip = run_rows(gen, items, [r for r in CAPTION_ROWS if wanted(r)], seconds=seconds, seeds=seeds,
                                  settings=settings,
                                  perm=perm, api=api, classifier=clf, sr=sr, real_feats=real_feats,
                                  random_gen=random_gen, tag="captions")
    if wanted("real_audio"):
        summary, clips = score_clips(real, [it.label for it in items], sr, clf)
        captions["real_audio"] = {**summary, "fd": None, "rtf": None}
        per_clip["real_audio"] = [{"id": it.id, "prompt": None, **c} for it, c in zip(items, clips, strict=True)]

    freeform: dict[str, Any] = {}
    per_prompt: dict[str, list[dict[str, Any]]] = {}
    parse, p_items = None, []
    if prompts is not None:
        prompt_rows = load_prompts(Path(prompts))
        parse = parse_check(prompt_rows)
        if n_prompts is not None and n_prompts < len(prompt_rows):
            prompt_rows = pick_rows(prompt_rows, n_prompts, seed)
        p_items = prompt_items(prompt_rows)
        p_seeds = [seed * 100_003 + 50_000 + i for i in range(len(p_items))]
        p_perm = derangement(len(p_items), seed + 2) if len(p_items) > 1 else np.arange(len(p_items))
        freeform, per_prompt = run_rows(gen, p_items, [r for r in FREEFORM_ROWS if wanted(r)], seconds=seconds,
                                        seeds=p_seeds, settings=settings, perm=p_perm, api=api, classifier=clf, sr=sr,
                                        real_feats=None, random_gen=None, tag="free-form")
        for v in freeform.values():
            if v is not None:
                v.pop("fd", None)

    cfg = gen.config
    config = {"model": str(model), "backend": gen.info.get("backend"), "model_name": cfg.name, "data": str(data),
              "split": split, "n": len(items), "prompts": str(prompts) if prompts else None,
              "n_prompts": len(p_items), "seconds": seconds,
              "steps": steps, "steps_used": cfg.dpd_steps if steps is None else steps,
              "guidance": cfg.guidance if guidance is None else guidance,
              "lm_guidance": cfg.lm_guidance if lm_guidance is None else lm_guidance, "seed": seed,
              "classifier_seed": classifier_seed, "temperature": temperature, "top_k": top_k,
              "key_candidates": key_candidates, "key_strength": key_strength,
              "sample_rate": sr, "controls_api": api,
              "rows": selected, "threads": _threads(),
              "clip_ids": [it.id for it in items],
              "info": {k: v for k, v in gen.info.items() if isinstance(v, (str, int, float, bool, type(None)))}}
    return {"config": config, "vae": vae, "captions": captions, "freeform": freeform, "parse": parse,
            "instrument_classifier": classifier, "targets": targets(freeform) if freeform else [],
            "per_clip": per_clip, "per_prompt": per_prompt}


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def markdown(report: dict[str, Any]) -> str:
    """The report's tables (VAE, captions, free-form prompts, targets, instrument classifier) as markdown."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    def table(rows: dict[str, dict[str, Any] | None], metrics: Sequence[str], head: str = "row") -> list[str]:
        out = [f"| {head} | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        out += [f"| {name} | " + " | ".join(cell((m or {}).get(k)) for k in metrics) + " |"
                for name, m in rows.items()]
        return out

    c = report["config"]
    steps = "default" if c["steps"] is None else c["steps"]
    lines = [f"# Evaluation of `{c['model']}` ({c['model_name']}, {c['backend']})", "",
             f"{c['n']} `{c['split']}` clips of `{c['data']}` and {c['n_prompts']} free-form prompts "
             f"(`{c['prompts']}`), {c['seconds']} s, {steps} steps, DPD guidance {c['guidance']}, "
             f"LM guidance {c['lm_guidance']}, seed {c['seed']} (per item: the same seed in every row).", ""]
    if not c["controls_api"]:
        lines += ["This generator has no explicit controls: `text_plus_controls` appends them to the prompt as "
                  "text, `controls_dropped` is not run.", ""]
    if report["vae"]:
        lines += ["## VAE reconstruction (diffusion-space round trip)", ""]
        lines += table(report["vae"], VAE_METRICS, "model") + [""]
    lines += ["## Held-out test captions (scored against the controls each clip was rendered with)", ""]
    lines += table(report["captions"], GEN_METRICS)
    if report["freeform"]:
        ff_metrics = [m for m in GEN_METRICS if m != "fd"]
        lines += ["", "## Free-form prompts (`training/prompts_freeform.jsonl`)", ""]
        lines += table(report["freeform"], ff_metrics)
        lines += ["", "### Targets (issue 9, free-form prompts)", "", "| target | value | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {cell(t['value'])} | {cell(t['met'])} |" for t in report["targets"]]
    if report.get("parse"):
        p = report["parse"]
        lines += ["", f"Parser on the free-form labels ({p['n']} prompts): key {p['key']:.3f}, bpm {p['bpm']:.3f}, "
                  f"instrument {p['instrument']:.3f}, all three {p['all']:.3f}."]
        lines += [f"- misread: \"{m['prompt']}\" -> {m['parsed']} (wrong: {', '.join(m['wrong'])})"
                  for m in p["misreads"]]
    k = report["instrument_classifier"]
    lines += ["", "## Instrument-family classifier (the ceiling of `instrument_match`)", "",
              f"Trained on {k['n_train']} real `train` renders {k['train_counts']} (train accuracy "
              f"{cell(k['train_accuracy'])}); accuracy on {k['n_test']} real `{c['split']}` renders: "
              f"**{cell(k['accuracy_real_test'])}**.", "", "| family | n | accuracy |", "|---|---|---|"]
    lines += [f"| {f} | {v['n']} | {v['accuracy']:.3f} |" for f, v in k["per_family"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; writes ``--out`` (JSON) and the markdown beside it, prints the markdown.

    JSON keys: ``config``; ``vae`` -> {trained, random_weights} -> VAE_METRICS; ``captions`` -> CAPTION_ROWS ->
    GEN_METRICS (``fd``/``rtf`` null for real_audio; a row that could not run is null); ``freeform`` ->
    FREEFORM_ROWS -> GEN_METRICS less ``fd``; ``parse`` (how the parser reads the free-form labels);
    ``instrument_classifier`` (its accuracy on real test renders, per family, confusion); ``targets`` (issue 9's,
    on the free-form rows); ``per_clip`` / ``per_prompt`` -> row -> list of {id, prompt, explicit, controls_used,
    true_key, est_key, key_relation, true_bpm, est_bpm, tempo_match, tempo_strict, true_family, est_family,
    instrument_match, rms}.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="torch checkpoint folder (config.json, model.safetensors), or 'tiny'")
    which.add_argument("--bundle", help="exported bundle folder, or 'tiny' (the shipped default of Generator())")
    p.add_argument("--data", type=Path, required=True, help="dataset root with <split>.jsonl and train.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=40, help="held-out clips (a seeded sample of the split)")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="free-form prompts (.jsonl), or 'none'")
    p.add_argument("--n-prompts", type=int, default=None, help="a seeded sample of the prompts (default: all)")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="seconds generated (and of real audio)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="DPD CFG scale (default: the model's)")
    p.add_argument("--lm-guidance", type=float, default=None, help="LM CFG scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="draws the clips and the per-item generation seeds")
    p.add_argument("--classifier-seed", type=int, default=0, help="the instrument classifier's train/test sample")
    p.add_argument("--temperature", type=float, default=None, help="LM sampling temperature (default: the API's)")
    p.add_argument("--top-k", type=int, default=None, help="LM top-k sampling (default: none)")
    p.add_argument("--key-candidates", type=int, default=None,
                   help="first-window LM drafts scored by their fit to the asked key (default: the API's)")
    p.add_argument("--key-strength", type=float, default=None,
                   help="key guidance on the LM's tokens (default: the API's)")
    p.add_argument("--no-random", action="store_true", help="skip the random-weights rows")
    p.add_argument("--rows", default=None,
                   help=f"comma-separated rows to run (of {','.join(SELECTABLE)}; default: all), e.g. text_only")
    p.add_argument("--classifier-clips", type=int, default=1500, help="train renders for the instrument classifier")
    p.add_argument("--classifier-test-clips", type=int, default=400, help="test renders for its ceiling")
    p.add_argument("--classifier", type=Path, default=None,
                   help="instrument classifier cache (default: instrument_classifier.npz beside --out)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and onnxruntime)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/eval.json"), help="JSON report; the .md goes beside it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("MELODY_EDGE_THREADS", str(args.threads))
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
    except ImportError:
        pass
    model, backend = (args.checkpoint, "torch") if args.checkpoint else (args.bundle, "auto")
    prompts = None if str(args.prompts).lower() == "none" else Path(args.prompts)
    report = evaluate(model, args.data, args.split, backend=backend, n=args.n, prompts=prompts,
                      n_prompts=args.n_prompts, seconds=args.seconds, steps=args.steps, guidance=args.guidance,
                      lm_guidance=args.lm_guidance, seed=args.seed, device=args.device,
                      random_baseline=not args.no_random,
                      classifier_cache=args.classifier or args.out.parent / "instrument_classifier.npz",
                      classifier_clips=args.classifier_clips, classifier_test_clips=args.classifier_test_clips,
                      rows=None if args.rows is None else [r for r in args.rows.split(",") if r],
                      classifier_seed=args.classifier_seed, temperature=args.temperature, top_k=args.top_k,
                      key_candidates=args.key_candidates, key_strength=args.key_strength)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return report


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


if __name__ == "__main__":
    main()
