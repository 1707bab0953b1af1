"""Evaluate a checkpoint on held-out captioned clips: VAE reconstruction and text-conditioned generation.

Rows, all run the same way on the same ``--n`` clips (a seeded sample of the split):

- ``trained``: the checkpoint, prompted with each clip's first caption;
- ``shuffled_captions``: the checkpoint, prompted with another clip's caption (a seeded derangement), scored against
  the true clip's metadata, so it shows how much the text matters;
- ``random_weights``: the same architecture with random weights (``MeLoDy.random``);
- ``real_audio``: the real clips through the same estimators (how good the key and tempo estimators are).

VAE metrics (diffusion-space round trip ``encode_for_diffusion`` -> ``decode_from_diffusion``, as generation
uses it): chroma correlation, log-mel L1, multi-resolution STFT spectral convergence and log-magnitude L1, SI-SDR.

Generation metrics: Krumhansl-Schmuckler key accuracy (exact, tonic, related, MIREX score), tempo accuracy (within
10% of the caption BPM, or of half/double it), RMS level, the fraction of near-silent clips and the Frechet
distance between per-clip feature vectors of generated and real clips (each dimension standardised by the real
clips' mean and std).

Usage: ``python -m training.evaluate --checkpoint checkpoints/tiny --data data/music --split test --n 40
--out runs/eval_tiny.json`` (also writes ``runs/eval_tiny.md`` and prints its tables).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import scipy.linalg
import soundfile as sf
import torch
from tqdm import tqdm

from melody_edge.backends.torch_backend import TorchBackend
from melody_edge.generator import Generator
from melody_edge.models.melody import MeLoDy
from training.data import load_split

log = logging.getLogger(__name__)

#: Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
#: MIREX key score per relation of the estimated to the true key (fifths counted in both directions).
MIREX_WEIGHTS = {"same": 1.0, "fifth": 0.5, "relative": 0.3, "parallel": 0.2, "other": 0.0}
TEMPO_TOLERANCE = 0.10
SILENT_RMS = 0.005  # outputs quieter than this count as silent: no key, no tempo
MRSTFT_FFTS = (512, 1024, 2048)
LOG_EPS = 1e-5
N_FFT, HOP = 2048, 512  # frame analysis for the chroma, log-mel and Frechet features
N_MELS_RECON, N_MFCC = 80, 20
FD_RIDGE = 1e-6
FEATURE_STD_FLOOR = 1e-3  # per-dimension std floor when standardising features by the real clips
ROWS = ("trained", "shuffled_captions", "random_weights", "real_audio")
GEN_METRICS = ("key_match", "tonic_match", "key_related", "key_mirex", "tempo_match", "tempo_strict", "rms_mean",
               "silent_frac", "fd", "rtf")
VAE_METRICS = ("chroma_corr", "logmel_l1", "mrstft_sc", "mrstft_logmag", "si_sdr")


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


def evaluate_vae(model: MeLoDy, clips: list[np.ndarray], sr: int, desc: str) -> dict[str, float]:
    """Mean reconstruction metrics of ``model.vae`` over ``clips`` (each through the diffusion-space round trip)."""
    rows = []
    for x in tqdm(clips, desc=f"vae {desc}", unit="clip", leave=False):
        with torch.inference_mode():
            t = torch.from_numpy(x[None]).to(next(model.parameters()).device)
            y = model.vae.decode_from_diffusion(model.vae.encode_for_diffusion(t))[0, : x.shape[0]].float().cpu()
        rows.append(reconstruction_metrics(x, y.numpy(), sr))
    return {k: float(np.mean([r[k] for r in rows])) for k in VAE_METRICS}


# --- generation -----------------------------------------------------------------------------------------------

def score_clips(audios: list[np.ndarray], metas: list[dict[str, Any]],
                sr: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Key, tempo and level of each clip against its metadata: (summary rates and means, per-clip records)."""
    per_clip = []
    for audio, meta in zip(audios, metas, strict=True):
        key, bpm = estimate_key(audio, sr), estimate_tempo(audio, sr)
        per_clip.append({"true_key": [meta["tonic_pc"], meta["mode"]], "est_key": list(key) if key else None,
                         "key_relation": key_relation(key, meta["tonic_pc"], meta["mode"]),
                         "true_bpm": meta["bpm"], "est_bpm": bpm, "tempo_match": tempo_matches(bpm, meta["bpm"]),
                         "tempo_strict": tempo_matches(bpm, meta["bpm"], octave=False), "rms": rms(audio)})
    rel = [c["key_relation"] for c in per_clip]
    summary = {"key_match": float(np.mean([r == "same" for r in rel])),
               "tonic_match": float(np.mean([r in ("same", "parallel") for r in rel])),
               "key_related": float(np.mean([r in ("fifth", "relative") for r in rel])),
               "key_mirex": float(np.mean([MIREX_WEIGHTS[r] for r in rel])),
               "tempo_match": float(np.mean([c["tempo_match"] for c in per_clip])),
               "tempo_strict": float(np.mean([c["tempo_strict"] for c in per_clip])),
               "rms_mean": float(np.mean([c["rms"] for c in per_clip])),
               "silent_frac": float(np.mean([c["rms"] < SILENT_RMS for c in per_clip]))}
    return summary, per_clip


def generate_clips(gen: Generator, prompts: list[str], seconds: float, seeds: list[int], steps: int,
                   guidance: float, desc: str) -> tuple[list[np.ndarray], float]:
    """Generate one clip per prompt (seed ``seeds[i]`` for prompt ``i``); return the clips and the mean RTF."""
    audios, rtfs = [], []
    for prompt, seed in tqdm(list(zip(prompts, seeds, strict=True)), desc=f"generate {desc}", unit="clip",
                             leave=False):
        audio = gen.generate(prompt, seconds, seed=seed, steps=steps, guidance=guidance)
        audios.append(audio.samples)
        rtfs.append(audio.stats.rtf)
    return audios, float(np.mean(rtfs))


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


def evaluate(checkpoint: Path, data: Path, split: str = "test", *, n: int = 40, seconds: float = 10.24,
             steps: int = 8, guidance: float | None = None, seed: int = 0,
             device: str = "cpu") -> dict[str, Any]:
    """Run the whole evaluation and return the report (see ``main`` for the keys)."""
    model = MeLoDy.load(checkpoint)
    guidance = model.cfg.guidance if guidance is None else guidance
    random_model = MeLoDy.random(model.cfg, seed)
    sr = model.cfg.sample_rate
    rows = load_split(data, split)
    items = pick_rows(rows, n, seed)
    samples = round(seconds * sr)
    real = [load_clip(Path(data) / r["path"], sr, samples) for r in tqdm(items, desc="load", unit="clip", leave=False)]
    metas = [r["metadata"] for r in items]
    captions = [r["captions"][0] for r in items]
    shuffled = [captions[j] for j in derangement(len(items), seed + 1)] if len(items) > 1 else captions
    seeds = [seed * 100_003 + i for i in range(len(items))]
    log.info("evaluating %s on %d %s clips of %s, %.2f s, %d steps", checkpoint, len(items), split, data, seconds,
             steps)

    vae = {"trained": evaluate_vae(model, real, sr, "trained"),
           "random_weights": evaluate_vae(random_model, real, sr, "random")}

    trained = Generator.from_backend(TorchBackend(model, device))
    untrained = Generator.from_backend(TorchBackend(random_model, device))
    real_feats = np.stack([clip_features(a, sr) for a in real])
    generation: dict[str, dict[str, float | None]] = {}
    per_clip: dict[str, list[dict[str, Any]]] = {}
    for name, gen, prompts in (("trained", trained, captions), ("shuffled_captions", trained, shuffled),
                               ("random_weights", untrained, captions)):
        audios, rtf = generate_clips(gen, prompts, seconds, seeds, steps, guidance, name)
        summary, clips = score_clips(audios, metas, sr)
        fd = feature_fd(np.stack([clip_features(a, sr) for a in audios]), real_feats)
        generation[name] = {**summary, "fd": fd, "rtf": rtf}
        per_clip[name] = [{"id": r["id"], "prompt": p, **c} for r, p, c in zip(items, prompts, clips, strict=True)]
        log.info("%s: %s", name, {k: round(v, 4) for k, v in generation[name].items()})
    summary, clips = score_clips(real, metas, sr)
    generation["real_audio"] = {**summary, "fd": None, "rtf": None}
    per_clip["real_audio"] = [{"id": r["id"], "prompt": None, **c} for r, c in zip(items, clips, strict=True)]

    config = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "n": len(items), "seconds": seconds,
              "steps": steps, "guidance": guidance, "lm_guidance": model.cfg.lm_guidance, "seed": seed,
              "model": model.cfg.name, "sample_rate": sr,
              "threads": torch.get_num_threads(), "clip_ids": [r["id"] for r in items]}
    return {"config": config, "vae": vae, "generation": generation, "per_clip": per_clip}


def markdown(report: dict[str, Any]) -> str:
    """The report's two tables (VAE, generation) as markdown."""
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    c = report["config"]
    lines = [f"# Evaluation of `{c['checkpoint']}` ({c['model']})", "",
             f"{c['n']} `{c['split']}` clips of `{c['data']}`, {c['seconds']} s, {c['steps']} steps, "
             f"guidance {c['guidance']}, LM guidance {c.get('lm_guidance', 1.0)}, seed {c['seed']}.", "",
             "## VAE reconstruction (diffusion-space round trip)",
             "", "| model | " + " | ".join(VAE_METRICS) + " |", "|---" * (len(VAE_METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(m[k]) for k in VAE_METRICS) + " |" for name, m in report["vae"].items()]
    lines += ["", "## Generation from held-out captions", "", "| row | " + " | ".join(GEN_METRICS) + " |",
              "|---" * (len(GEN_METRICS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(m[k]) for k in GEN_METRICS) + " |"
              for name, m in report["generation"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; writes ``--out`` (JSON) and the markdown beside it, prints the markdown.

    JSON keys: ``config`` (arguments, model name, ``clip_ids``); ``vae`` -> {trained, random_weights} ->
    {chroma_corr, logmel_l1, mrstft_sc, mrstft_logmag, si_sdr}; ``generation`` -> {trained, shuffled_captions,
    random_weights, real_audio} -> {key_match, tonic_match, key_related, key_mirex, tempo_match, tempo_strict,
    rms_mean, silent_frac, fd, rtf} (``fd`` on standardised features; ``fd`` and ``rtf`` are null for real_audio);
    ``per_clip`` -> row -> list of {id, prompt, true_key, est_key, key_relation, true_bpm, est_bpm, tempo_match,
    tempo_strict, rms}.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (config.json, model.safetensors)")
    p.add_argument("--data", type=Path, required=True, help="dataset root with <split>.jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=40, help="clips to evaluate (a seeded sample of the split)")
    p.add_argument("--seconds", type=float, default=10.24, help="seconds generated (and of real audio compared)")
    p.add_argument("--steps", type=int, default=8, help="diffusion steps")
    p.add_argument("--guidance", type=float, default=None,
                   help="DPD classifier-free guidance scale (default: the checkpoint's config.guidance)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/eval.json"), help="JSON report; the .md goes beside it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    report = evaluate(args.checkpoint, args.data, args.split, n=args.n, seconds=args.seconds, steps=args.steps,
                      guidance=args.guidance, seed=args.seed, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".md"))
    return report


if __name__ == "__main__":
    main()
