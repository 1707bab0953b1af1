"""Training scripts on the debug preset and a tiny synthetic dataset: losses fall, checkpoints resume, the shipped
folder loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("sklearn")
pytest.importorskip("librosa")

from melody_edge.models.config import SAMPLE_RATE, get_config  # noqa: E402
from melody_edge.models.melody import MeLoDy  # noqa: E402
from training import train_dpd, train_lm, train_vae  # noqa: E402
from training.control_loss import VARIANTS, control_loss  # noqa: E402
from training.key_stages import key_stages  # noqa: E402
from training.tokenizer import fit_tokenizer  # noqa: E402

KEYS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9}  # tonic pitch class
# melodies that state their major key (tonic, third, fifth, leading tone): training.evaluate.estimate_key names all
# 12 tonics right on each (8 random scale notes, as before, were named right 4 times in 24)
MELODIES = ([0, 4, 7, 4, 5, 2, 11, 0], [0, 2, 4, 5, 7, 4, 2, 0], [0, 4, 7, 12, 7, 4, 0, 0])


def write_dataset(root: Path, n_train: int = 6, n_valid: int = 2, seconds: float = 2.56, seed: int = 0) -> None:
    """Clips of sine-note melodies in the key their rows say, with data.py-style rows in ``train.jsonl`` /
    ``valid.jsonl``."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    for split, n in (("train", n_train), ("valid", n_valid)):
        (root / split).mkdir(parents=True)
        rows = []
        for i in range(n):
            key, pc = list(KEYS.items())[i % len(KEYS)]
            notes = 261.63 * 2 ** ((pc + np.array(MELODIES[rng.integers(len(MELODIES))])) / 12)
            freq = np.repeat(notes, -(-t.size // 8))[: t.size]
            audio = 0.3 * np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * (0.6 + 0.4 * np.cos(8 * np.pi * t))
            clip_id = f"{split}{i:03d}"
            sf.write(root / split / f"{clip_id}.wav", audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            rows.append({"id": clip_id, "split": split, "path": f"{split}/{clip_id}.wav",
                         "captions": [f"a sine melody in {key} major", f"{key} major tones", f"simple tune, {key}"],
                         "metadata": {"tonic": key, "tonic_pc": pc, "mode": "major", "bpm": 120.0,
                                      "seconds": seconds}})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_log(path: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every log line that has ``key``."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r[key]) for r in lines if key in r]


def assert_falls(values: list[float]) -> None:
    assert all(np.isfinite(values))
    assert np.mean(values[-5:]) < np.mean(values[:5]), values


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The scripts set torch's thread count (``--threads 1``); give other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data, out = root / "data", root / "ckpt"
    write_dataset(data)
    out.mkdir()
    cfg = get_config("debug")
    fit_tokenizer(sorted((data / "train").glob("*.wav")), vocab_size=cfg.lm.vocab_size, seed=0,
                  rotations=12).save(out / "tokenizer.npz")
    common = ["--data", str(data), "--out", str(out), "--preset", "debug", "--seed", "0", "--threads", "1",
              "--device", "cpu", "--log-every", "1", "--warmup", "3"]
    return data, out, common


def test_vae_lm_dpd_train_resume_and_ship(setup):
    data, out, common = setup
    # VAE, STFT phase, in two runs: 20 steps, then resumed to 30
    vae_args = common + ["--batch", "4", "--lr", "2e-3", "--gan-start", "1000", "--save-every", "10",
                         "--eval-every", "10", "--eval-clips", "1"]
    train_vae.main(vae_args + ["--steps", "20"])
    train_vae.main(vae_args + ["--steps", "30"])
    stft = read_log(out / "train_vae.log", "stft")
    assert [s for s, _ in stft] == list(range(1, 31))  # resumed at step 20, no step repeated
    assert_falls([v for _, v in stft])
    assert len(read_log(out / "train_vae.log", "valid_stft")) == 3
    assert all(-1.0 <= v <= 1.0 for _, v in read_log(out / "train_vae.log", "valid_chroma"))

    assert torch.load(out / "train_vae.pt", weights_only=True)["step"] == 30

    # LM: tokenizes the splits with <out>/tokenizer.npz and caches the MiniLM states
    train_lm.main(common + ["--steps", "30", "--batch", "8", "--lr", "3e-3", "--eval-every", "15"])
    assert (data / "tokens_train.npz").is_file() and (out / "text_states_train.pt").is_file()
    assert_falls([v for _, v in read_log(out / "train_lm.log", "loss")])
    valid = read_log(out / "train_lm.log", "valid_loss")
    assert len(valid) == 2
    # the shipped LM is the best of the validation passes, and config.json says which step it is
    lm_info = json.loads((out / "config.json").read_text())["training"]["lm"]
    best_step, best_loss = min(valid, key=lambda sv: sv[1])
    assert lm_info["shipped_step"] == best_step and lm_info["valid_loss"] == pytest.approx(best_loss, abs=1e-4)

    # DPD: latents from the shipped VAE
    train_dpd.main(common + ["--steps", "30", "--batch", "8", "--lr", "2e-3"])
    assert (out / "latents_train.npy").is_file()
    assert_falls([v for _, v in read_log(out / "train_dpd.log", "loss")])

    model = MeLoDy.load(out)
    assert model.cfg == get_config("debug")
    meta = json.loads((out / "config.json").read_text())
    assert {k: v["steps"] for k, v in meta["training"].items()} == {"vae": 30, "lm": 30, "dpd": 30}
    state = torch.load(out / "train_dpd.pt", weights_only=True)["modules"]["ema"]
    assert all(torch.equal(model.dpd.state_dict()[k], v) for k, v in state.items())  # the EMA is what ships

    # the DPD's key embedding (zero at the start) was trained on the clips' keys; the controls' share of its loss
    # is scored for every variant
    assert model.dpd.key_emb.weight.abs().sum() > 0
    losses = control_loss(out, data, n=4, batch=2, repeats=1)
    assert set(losses) == set(VARIANTS) and all(np.isfinite(v) and v > 0 for v in losses.values())

    # the per-stage key diagnostic runs on the trained checkpoint and reports a fraction per stage
    stages = key_stages(out, data, "valid", n=2, steps=2)
    assert set(stages) == {"real_audio", "vae_round_trip", "dpd_from_real_tokens", "generation"}
    assert all(0.0 <= v <= 1.0 for v in stages.values())
    assert stages["real_audio"] == 1.0  # the clips state their key: a wrong label, clip or estimator shows here


def test_vae_gan_phase_runs(tmp_path):
    data, out = tmp_path / "data", tmp_path / "ckpt"
    write_dataset(data, n_train=3, n_valid=0)
    train_vae.main(["--data", str(data), "--out", str(out), "--preset", "debug", "--steps", "4", "--gan-start", "1",
                    "--batch", "2", "--threads", "1", "--device", "cpu", "--log-every", "1"])
    lines = [json.loads(line) for line in (out / "train_vae.log").read_text().splitlines()]
    assert "gan" not in lines[0] and all(k in lines[-1] for k in ("gan", "fm", "disc", "stft", "kl"))
    assert all(np.isfinite(v) for r in lines for v in r.values())
    MeLoDy.load(out, strict=False)


def test_ship_part_keeps_the_folders_sampling_defaults(tmp_path):
    """A part trained into a shipped model's folder keeps that model's sampling defaults (a distilled student's
    steps, its temperature); networks of another shape are refused."""
    import dataclasses

    from melody_edge.errors import ConfigError
    from training.common import ship_part

    cfg = get_config("debug")
    shipped = dataclasses.replace(cfg, dpd_steps=4, temperature=0.8)
    torch.manual_seed(0)
    MeLoDy(shipped).save(tmp_path, parts=("lm", "dpd", "vae"))
    lm = MeLoDy(cfg).lm.state_dict()
    ship_part(tmp_path, cfg, "lm", lm, {"steps": 3})
    loaded = MeLoDy.load(tmp_path)
    assert (loaded.cfg.dpd_steps, loaded.cfg.temperature) == (4, 0.8)
    assert all(torch.equal(loaded.lm.state_dict()[k], v) for k, v in lm.items())
    assert json.loads((tmp_path / "config.json").read_text())["training"]["lm"]["steps"] == 3
    other = dataclasses.replace(cfg, window_tokens=cfg.window_tokens * 2)
    with pytest.raises(ConfigError, match="config differs"):
        ship_part(tmp_path, other, "lm", lm, {"steps": 3})


def test_a_checkpoint_folder_serves_as_the_preset(tmp_path):
    from melody_edge.errors import ConfigError
    from training.common import preset_config

    assert preset_config("debug") == get_config("debug")
    cfg = get_config("tiny")
    assert cfg.dpd.controlled  # the shipped networks: the DPD hears the asked family and key
    folder = tmp_path / "ctl"
    MeLoDy(get_config("debug")).save(folder)
    assert preset_config(str(folder)) == get_config("debug")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    for bad in ("nope", str(tmp_path / "bad")):
        with pytest.raises(ConfigError):
            preset_config(bad)
