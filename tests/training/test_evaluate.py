"""Evaluation estimators on synthetic audio (key, tempo, Frechet distance, reconstruction metrics) and one end-to-end
run of ``training.evaluate`` on the debug preset with a tiny synthetic split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("librosa")

from melody_edge.models.config import SAMPLE_RATE, get_config  # noqa: E402
from melody_edge.models.melody import MeLoDy  # noqa: E402
from training import evaluate  # noqa: E402

SR = SAMPLE_RATE


def chords(progression: list[list[int]], seconds: float = 1.0) -> np.ndarray:
    """Sine chords (MIDI note numbers), ``seconds`` each, at amplitude 0.3."""
    t = np.arange(round(seconds * SR)) / SR
    out = [sum(np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * t) for m in chord) / len(chord)
           for chord in progression]
    return (0.3 * np.concatenate(out)).astype(np.float32)


def clicks(bpm: float, seconds: float = 8.0) -> np.ndarray:
    """Short Hann-windowed clicks at ``bpm``."""
    audio = np.zeros(round(seconds * SR), dtype=np.float32)
    burst = 0.8 * np.hanning(240).astype(np.float32)
    for start in np.arange(0.0, seconds - 0.05, 60.0 / bpm):
        i = round(start * SR)
        audio[i : i + burst.size] += burst
    return audio


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """``main`` sets torch's thread count; give other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_key_estimator_c_major_and_a_minor():
    c_major = chords([[48, 60, 64, 67], [53, 57, 60, 65], [55, 59, 62, 67], [60, 62, 64, 65, 67, 69, 71, 72],
                      [48, 60, 64, 67]])
    a_minor = chords([[45, 57, 60, 64], [50, 57, 62, 65], [52, 56, 59, 64], [45, 57, 60, 64]])
    assert evaluate.estimate_key(c_major, SR) == (0, "major")
    assert evaluate.estimate_key(a_minor, SR) == (9, "minor")
    assert evaluate.estimate_key(np.zeros(SR, np.float32), SR) is None


def test_key_relation():
    assert evaluate.key_relation((0, "major"), 0, "major") == "same"
    assert evaluate.key_relation((7, "major"), 0, "major") == "fifth"
    assert evaluate.key_relation((5, "minor"), 0, "minor") == "fifth"
    assert evaluate.key_relation((9, "minor"), 0, "major") == "relative"
    assert evaluate.key_relation((0, "major"), 9, "minor") == "relative"
    assert evaluate.key_relation((0, "minor"), 0, "major") == "parallel"
    assert evaluate.key_relation((2, "major"), 0, "major") == "other"
    assert evaluate.key_relation(None, 0, "major") == "other"


def test_tempo_estimator_finds_120_bpm():
    est = evaluate.estimate_tempo(clicks(120.0), SR)
    assert evaluate.tempo_matches(est, 120.0), est
    assert evaluate.tempo_matches(60.5, 120.0) and evaluate.tempo_matches(235.0, 120.0)
    assert not evaluate.tempo_matches(60.5, 120.0, octave=False)
    assert not evaluate.tempo_matches(90.0, 120.0) and not evaluate.tempo_matches(None, 120.0)


def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    x = np.random.default_rng(0).normal(size=(30, 8))
    assert abs(evaluate.frechet_distance(x, x)) < 1e-6
    shifts = [evaluate.frechet_distance(x, x + s) for s in (0.5, 1.0, 2.0)]
    assert shifts[0] > 0.1 and shifts[0] < shifts[1] < shifts[2]
    assert math.isclose(shifts[1], 8.0, rel_tol=1e-4)  # a pure mean shift of 1 in 8 dims
    assert math.isfinite(evaluate.frechet_distance(x[:1], x))
    # standardised by the reference set: ~0 for identical sets, blind to per-dimension units
    y = x + np.linspace(0.0, 1.0, 8)
    scales = np.array([1e-2, 1.0, 1e3, 5.0, 1.0, 1.0, 2.0, 1e2])
    assert abs(evaluate.feature_fd(x, x)) < 1e-6
    assert math.isclose(evaluate.feature_fd(y * scales, x * scales), evaluate.feature_fd(y, x), rel_tol=1e-6)


def test_clip_features_and_reconstruction_metrics():
    audio = chords([[60, 64, 67], [65, 69, 72]])
    assert evaluate.clip_features(audio, SR).shape == (68,)
    same = evaluate.reconstruction_metrics(audio, audio, SR)
    assert same["chroma_corr"] > 0.999 and same["logmel_l1"] < 1e-6 and same["mrstft_sc"] < 1e-6
    noisy = audio + 0.05 * np.random.default_rng(0).normal(size=audio.size).astype(np.float32)
    worse = evaluate.reconstruction_metrics(audio, noisy, SR)
    assert worse["mrstft_sc"] > same["mrstft_sc"] and worse["si_sdr"] < 30.0


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 7):
        perm = evaluate.derangement(n, seed=0)
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))


def write_split(root: Path, seconds: float = 1.5) -> None:
    """Three chord clips with ``training.data`` rows in ``test.jsonl``."""
    (root / "test").mkdir(parents=True)
    rows = []
    for i, (root_note, mode, bpm) in enumerate([(60, "major", 120.0), (57, "minor", 90.0), (62, "major", 140.0)]):
        third = 4 if mode == "major" else 3
        audio = chords([[root_note, root_note + third, root_note + 7]], seconds)
        clip_id = f"test{i:03d}"
        sf.write(root / "test" / f"{clip_id}.wav", audio, SR, subtype="PCM_16")
        meta = {"tonic_pc": root_note % 12, "mode": mode, "bpm": bpm, "instruments": ["piano"],
                "style": "chorale", "seconds": seconds}
        rows.append({"id": clip_id, "split": "test", "path": f"test/{clip_id}.wav",
                     "captions": [f"a piano chorale in key {i}, {bpm:.0f} BPM", "piano", "chorale"],
                     "metadata": meta})
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")  # 1 s clips are short for the CQT
def test_end_to_end_debug(tmp_path):
    data, ckpt, out = tmp_path / "data", tmp_path / "ckpt", tmp_path / "runs" / "eval.json"
    write_split(data)
    MeLoDy.random(get_config("debug"), seed=1).save(ckpt)
    evaluate.main(["--checkpoint", str(ckpt), "--data", str(data), "--split", "test", "--n", "2", "--seconds", "1",
                   "--steps", "2", "--threads", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report) == {"config", "vae", "generation", "per_clip"}
    assert report["config"]["n"] == 2 and len(report["config"]["clip_ids"]) == 2
    assert set(report["vae"]) == {"trained", "random_weights"}
    for metrics in report["vae"].values():
        assert set(metrics) == set(evaluate.VAE_METRICS) and all(math.isfinite(v) for v in metrics.values())
    assert set(report["generation"]) == set(evaluate.ROWS) == set(report["per_clip"])
    for name, metrics in report["generation"].items():
        assert set(metrics) == set(evaluate.GEN_METRICS)
        assert all(math.isfinite(v) for k, v in metrics.items() if not (name == "real_audio" and k in ("fd", "rtf")))
        assert len(report["per_clip"][name]) == 2
    shuffled = [c["prompt"] for c in report["per_clip"]["shuffled_captions"]]
    assert shuffled == [c["prompt"] for c in report["per_clip"]["trained"]][::-1]
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in evaluate.ROWS)
