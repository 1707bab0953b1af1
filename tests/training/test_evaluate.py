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
from training import evaluate, instruments  # noqa: E402

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


# --- a tiny fake dataset: three timbres (piano-like decaying partials, brass-like bright sustained saw, woodwind-like
# near-sine with breath), each rendered in a few keys and tempos, with training.data rows -------------------------

FAMILY_PROGRAM = {"piano": 0, "brass": 56, "woodwinds": 73}


def timbre(family: str, midi: int, seconds: float, bpm: float, seed: int) -> np.ndarray:
    """A note repeated on every beat at ``bpm``, in the timbre of ``family``."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    phase_t = t % (60.0 / bpm)
    if family == "piano":
        y = sum(np.sin(2 * np.pi * k * f0 * t) / k**2 for k in range(1, 7)) * np.exp(-phase_t * 6.0)
    elif family == "brass":
        y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 16)) * np.minimum(1.0, phase_t * 20.0)
    else:
        y = np.sin(2 * np.pi * f0 * t) + 0.05 * rng.normal(size=t.size)
        y *= np.minimum(1.0, phase_t * 8.0)
    return (0.2 * y / max(1e-9, float(np.abs(y).max()))).astype(np.float32)


def write_split(root: Path, split: str, specs: list[tuple[str, int, str, float]], seconds: float = 1.5) -> None:
    """Clips of (family, tonic MIDI note, mode, bpm) with ``training.data``-style rows in ``<split>.jsonl``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (family, note, mode, bpm) in enumerate(specs):
        third = 4 if mode == "major" else 3
        audio = sum(timbre(family, m, seconds, bpm, i) for m in (note, note + third, note + 7)) / 3
        clip_id = f"{split}{i:03d}"
        sf.write(root / split / f"{clip_id}.wav", audio, SR, subtype="PCM_16")
        meta = {"tonic_pc": note % 12, "mode": mode, "bpm": bpm, "meter": "4/4",
                "programs": [FAMILY_PROGRAM[family]], "instruments": [family], "ensemble": None,
                "style": "chorale", "texture": "homophonic", "seconds": seconds}
        rows.append({"id": clip_id, "split": split, "path": f"{split}/{clip_id}.wav",
                     "captions": [f"a {family} chorale, key {note % 12} {mode}, {bpm:.0f} BPM", family],
                     "metadata": meta})
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


TRAIN = [(f, note, mode, bpm) for f in FAMILY_PROGRAM
         for note, mode, bpm in ((60, "major", 100.0), (57, "minor", 80.0), (64, "major", 130.0), (55, "minor", 90.0))]
TEST = [("piano", 62, "major", 120.0), ("brass", 59, "minor", 96.0), ("woodwinds", 65, "major", 140.0)]


def write_dataset(root: Path) -> None:
    write_split(root, "train", TRAIN)
    write_split(root, "test", TEST)


def test_instrument_classifier_learns_timbres_and_caches(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data")
    cache = tmp_path / "clf.npz"
    clf = instruments.train(tmp_path / "data", max_clips=12, seconds=1.5, cache=cache)
    assert clf.classes == ["piano", "brass", "woodwinds"] and clf.info["n_train"] == 12
    assert clf.info["train_counts"] == {"piano": 4, "brass": 4, "woodwinds": 4}
    result = instruments.accuracy(clf, tmp_path / "data", split="test", seconds=1.5)
    assert result["n"] == 3 and result["accuracy"] == 1.0, result  # unseen pitches and tempos
    # cached: the same sample loads the same weights; another sample retrains and rewrites the cache
    real_features = instruments.clip_features

    def no_features(*args):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(instruments, "clip_features", no_features)
    again = instruments.train(tmp_path / "data", max_clips=12, seconds=1.5, cache=cache)
    assert np.array_equal(again.coef, clf.coef) and again.classes == clf.classes
    monkeypatch.setattr(instruments, "clip_features", real_features)
    fewer = instruments.train(tmp_path / "data", max_clips=6, seconds=1.5, cache=cache)
    assert fewer.info["n_train"] == 6 and instruments.InstrumentClassifier.load(cache).info["n_train"] == 6
    # a re-rendered split (same clip ids, other metadata) is not the cached one
    train_jsonl = tmp_path / "data" / "train.jsonl"
    train_jsonl.write_text(train_jsonl.read_text().replace('"bpm": 100.0', '"bpm": 101.0'))
    rerendered = instruments.train(tmp_path / "data", max_clips=6, seconds=1.5, cache=cache)
    assert rerendered.info["fingerprint"] != fewer.info["fingerprint"]
    # deterministic: refitting from scratch gives the same weights
    refit = instruments.train(tmp_path / "data", max_clips=12, seconds=1.5, cache=None)
    assert np.allclose(refit.coef, clf.coef)


def test_balanced_sample_round_robins_families():
    rows = [({"id": i}, "piano") for i in range(10)] + [({"id": 10 + i}, "brass") for i in range(2)]
    picked = instruments.sample_balanced(rows, 6, seed=0)
    fams = [f for _, f in picked]
    assert fams.count("brass") == 2 and fams.count("piano") == 4
    assert [r["id"] for r, _ in picked] == sorted(r["id"] for r, _ in picked)
    assert picked == instruments.sample_balanced(rows, 6, seed=0)


def test_freeform_prompts_cover_the_vocabulary_and_parse():
    from melody_edge.controls import FAMILIES, parse_controls

    rows = evaluate.load_prompts(evaluate.DEFAULT_PROMPTS)
    assert len(rows) >= 56
    labels = [evaluate.prompt_label(r) for r in rows]
    assert {lab.instrument for lab in labels} == set(FAMILIES)
    assert {lab.tonic for lab in labels} == set(range(12))
    assert {lab.key_index for lab in labels} == set(range(24))
    assert min(lab.bpm for lab in labels) <= 60 and max(lab.bpm for lab in labels) >= 160
    assert all(55 <= lab.bpm <= 170 for lab in labels)
    read = 0
    for r, lab in zip(rows, labels, strict=True):
        got = parse_controls(r["prompt"])
        read += ((got.tonic, got.mode) == (lab.tonic, lab.mode) and got.bpm is not None
                 and abs(got.bpm - lab.bpm) <= 0.5 and got.instrument == lab.instrument)
    assert read >= 48
    check = evaluate.parse_check(rows)
    assert check["all"] * check["n"] == read and len(check["misreads"]) == len(rows) - read
    # the prompts are not the caption templates
    assert not any(r["prompt"].startswith(("a chorale for", "a piece for")) for r in rows)


def test_score_clips_against_labels():
    from melody_edge.controls import Controls

    c_major = chords([[48, 60, 64, 67], [53, 57, 60, 65], [55, 59, 62, 67], [48, 60, 64, 67]])
    silent = np.zeros_like(c_major)

    class Always:
        def predict(self, audios, sr):
            return ["piano"] * len(audios)

    labels = [Controls(0, "major", 120.0, None, "piano"), Controls(0, "major", 120.0, None, "piano"),
              Controls(9, "minor", 120.0, None, None)]
    summary, clips = evaluate.score_clips([c_major, silent, c_major], labels, SR, Always())
    assert [c["key_relation"] for c in clips] == ["same", "other", "relative"]
    assert summary["key_match"] == pytest.approx(1 / 3) and summary["silent_frac"] == pytest.approx(1 / 3)
    # the family counts only labelled clips, and a silent clip matches nothing
    assert [c["instrument_match"] for c in clips] == [True, False, None] and summary["instrument_match"] == 0.5
    assert evaluate.score_clips([c_major], labels[:1], SR, None)[0]["instrument_match"] is None


def test_row_requests():
    from melody_edge.controls import Controls

    items = [evaluate.Item("a", "sad piano in A minor", Controls(9, "minor", 60.0, None, "piano")),
             evaluate.Item("b", "brass", Controls(10, "major", 120.0, None, "brass"))]
    for it in items:
        it.explicit = evaluate.explicit_controls(it.label)
    perm = np.array([1, 0])
    assert evaluate.row_requests("text_plus_controls", items, perm, True)[1] == (
        "brass", {"key": "B-flat major", "bpm": 120.0, "instrument": "brass"})
    assert evaluate.row_requests("shuffled", items, perm, True)[0] == ("brass", {})
    assert evaluate.row_requests("controls_dropped", items, perm, True)[0] == (
        "sad piano in A minor", {"read_controls": False})
    # without the controls API: the controls as text, and no controls_dropped row
    assert evaluate.row_requests("text_plus_controls", items, perm, False)[0] == (
        "sad piano in A minor, in A minor, 60 BPM, piano", {})
    assert evaluate.row_requests("controls_dropped", items, perm, False) == [None, None]


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")  # 1 s clips are short for the CQT
def _evaluate_debug(tmp_path, *extra: str) -> Path:
    """Run ``training.evaluate`` on a random debug checkpoint and a tiny rendered set; returns the report path."""
    data, ckpt, out = tmp_path / "data", tmp_path / "ckpt", tmp_path / "runs" / "eval.json"
    write_dataset(data)
    MeLoDy.random(get_config("debug"), seed=1).save(ckpt)
    evaluate.main(["--checkpoint", str(ckpt), "--data", str(data), "--split", "test", "--n", "2", "--seconds", "1",
                   "--steps", "2", "--n-prompts", "2", "--classifier-clips", "12", "--threads", "1",
                   *extra, "--out", str(out)])
    return out


def test_end_to_end_debug(tmp_path):
    out = _evaluate_debug(tmp_path)
    report = json.loads(out.read_text())
    assert set(report) == {"config", "vae", "captions", "freeform", "parse", "instrument_classifier", "targets",
                           "per_clip", "per_prompt"}
    c = report["config"]
    assert c["n"] == 2 and len(c["clip_ids"]) == 2 and c["n_prompts"] == 2 and c["controls_api"] is True
    assert set(report["vae"]) == {"trained", "random_weights"}
    for metrics in report["vae"].values():
        assert set(metrics) == set(evaluate.VAE_METRICS) and all(math.isfinite(v) for v in metrics.values())

    assert set(report["captions"]) == set(evaluate.CAPTION_ROWS) == set(report["per_clip"])
    for name, metrics in report["captions"].items():
        assert set(metrics) == set(evaluate.GEN_METRICS)
        for k, v in metrics.items():
            if name == "real_audio" and k in ("fd", "rtf"):
                assert v is None
            else:
                assert v is not None and math.isfinite(v), (name, k)
        assert len(report["per_clip"][name]) == 2
    assert set(report["freeform"]) == set(evaluate.FREEFORM_ROWS) == set(report["per_prompt"])
    for metrics in report["freeform"].values():
        assert "fd" not in metrics and all(math.isfinite(metrics[k]) for k in ("key_match", "tempo_match",
                                                                               "instrument_match", "rtf"))

    clips = report["per_clip"]
    # every row scores the same items against the same labels (the rendered clip's controls)
    for row in evaluate.CAPTION_ROWS:
        assert [x["true_key"] for x in clips[row]] == [x["true_key"] for x in clips["real_audio"]]
    assert [x["prompt"] for x in clips["shuffled"]] == [x["prompt"] for x in clips["text_only"]][::-1]
    # the controls each row conditioned on: explicit labels, the text's, or none read from the text
    for x in clips["text_plus_controls"]:
        used, (tonic, mode) = x["controls_used"], x["true_key"]
        assert (used["tonic"], used["mode"], used["bpm"], used["instrument"]) == (
            tonic, mode, x["true_bpm"], x["true_family"])
    for x in clips["controls_dropped"] + report["per_prompt"]["controls_dropped"]:
        assert x["explicit"] == {"read_controls": False}
        assert all(x["controls_used"][k] is None for k in ("tonic", "mode", "bpm", "metre", "instrument"))
    for x in report["per_prompt"]["text_only"]:  # the parser reads the free-form labels
        assert x["controls_used"]["instrument"] == x["true_family"]
    # the classifier ceiling on real test renders, and the real clips' family through it
    k = report["instrument_classifier"]
    assert k["n_train"] == 12 and k["n_test"] == 3 and k["accuracy_real_test"] == 1.0
    assert report["captions"]["real_audio"]["instrument_match"] == 1.0
    assert (out.parent / "instrument_classifier.npz").is_file()
    assert report["parse"]["n"] >= 56 and report["parse"]["all"] >= 48 / report["parse"]["n"]
    assert {t["target"] for t in report["targets"]} >= {"text_only key_match >= 45%",
                                                       "text_only key_match >= shuffled + 25%"}
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in evaluate.CAPTION_ROWS)
    assert "## Free-form prompts" in table and "Instrument-family classifier" in table


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")
def test_rows_option_runs_only_the_rows_asked(tmp_path):
    out = _evaluate_debug(tmp_path, "--rows", "text_only")
    report = json.loads(out.read_text())
    assert report["config"]["rows"] == ["text_only"] and report["config"]["steps_used"] == 2
    assert set(report["captions"]) == set(report["freeform"]) == {"text_only"} and report["vae"] == {}
    assert math.isfinite(report["captions"]["text_only"]["fd"]) and len(report["per_prompt"]["text_only"]) == 2
    with pytest.raises(ValueError, match="unknown rows"):
        evaluate.evaluate(tmp_path / "ckpt", tmp_path / "data", backend="torch", rows=["text_onyl"])


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large:UserWarning")
def test_key_stages_with_controls_debug(tmp_path):
    from melody_edge.tokenizer import SemanticTokenizer
    from training.key_stages import CONTROL_STAGES, STAGES, key_stages

    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    cfg = get_config("debug")
    write_split(data, "test", TEST, seconds=cfg.window_seconds)
    MeLoDy.random(cfg, seed=1).save(ckpt)
    SemanticTokenizer.random(cfg.lm.vocab_size, seed=0).save(ckpt / "tokenizer.npz")
    assert set(key_stages(ckpt, data, "test", n=2, steps=2)) == set(STAGES)  # the plain diagnostic is unchanged
    # a plain tokenizer has no rotations: only the explicit-key generation stage is added
    assert set(key_stages(ckpt, data, "test", n=2, steps=2, controls=True)) == set(STAGES) | {"generation_with_key"}
    SemanticTokenizer.random(cfg.lm.vocab_size, seed=0, rotations=12).save(ckpt / "tokenizer.npz")
    (data / "tokens_test.npz").unlink(missing_ok=True)
    stages = key_stages(ckpt, data, "test", n=2, steps=2, controls=True)
    assert set(stages) == set(STAGES) | set(CONTROL_STAGES)
    assert all(0.0 <= v <= 1.0 for v in stages.values()) and stages["real_audio"] == 1.0
