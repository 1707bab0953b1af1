"""training.latent_pack: the DPD's training data packed to travel without the audio, unpacked into folders that
train_dpd trains from, and the trained DPD merged back into the real checkpoint; Run's time-driven schedule."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("librosa")

from melody_edge.errors import ConfigError  # noqa: E402
from melody_edge.models.config import get_config  # noqa: E402
from melody_edge.models.melody import MeLoDy  # noqa: E402
from tests.training.test_train import write_dataset  # noqa: E402
from training import train_dpd  # noqa: E402
from training.common import Run, load_tokens  # noqa: E402
from training.latent_pack import LEVELS, dequantise, extract, merge, pack, quantise, unpack  # noqa: E402
from training.tokenizer import fit_tokenizer  # noqa: E402


def test_quantise_round_trip_is_within_half_a_step():
    z = np.random.default_rng(0).uniform(-1.0, 1.0, (3, 40, 5)).astype(np.float32)
    z[0, 0, 0], z[1, 1, 1] = 1.0, -1.0  # the clipped extremes
    back = dequantise(quantise(z), z.shape)
    assert back.dtype == np.float32 and np.abs(back - z).max() <= 0.5 / LEVELS + 1e-6
    with pytest.raises(ConfigError, match="clipped range"):
        quantise(z * 1.5)


def test_pack_unpack_train_extract_merge(tmp_path):
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    write_dataset(data, n_train=5, n_valid=2)
    cfg = get_config("debug")
    torch.manual_seed(0)
    MeLoDy(cfg).save(ckpt)
    fit_tokenizer(sorted((data / "train").glob("*.wav")), vocab_size=cfg.lm.vocab_size, seed=0,
                  rotations=12).save(ckpt / "tokenizer.npz")
    pack(data, ckpt, tmp_path / "pack", clips=4, valid=1, seed=0, threads=1)

    # unpacked: the chosen clips' latents (on the 1/63 grid), rows and tokens; a stand-in checkpoint whose DPD is
    # the real one (fp16) and whose VAE the latents are keyed to; no audio comes along
    data2, ckpt2 = tmp_path / "there" / "data", tmp_path / "there" / "teacher"
    unpack(tmp_path / "pack", data2, ckpt2)
    assert not list(data2.rglob("*.wav"))
    rows = [json.loads(line) for line in (data2 / "train.jsonl").read_text().splitlines()]
    all_rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["id"] for r in rows} < {r["id"] for r in all_rows}
    by_id = {r["id"]: i for i, r in enumerate(all_rows)}
    z_real = np.load(ckpt / "latents_train.npy")[[by_id[r["id"]] for r in rows]]
    z = np.load(ckpt2 / "latents_train.npy")
    assert z.shape == z_real.shape and np.abs(z - z_real).max() <= 0.5 / LEVELS + 1e-6
    real_tokens = load_tokens(data, ckpt, "train", rows, cfg.window_tokens, cfg.dpd.sem_vocab)
    assert np.array_equal(load_tokens(data2, ckpt2, "train", rows, cfg.window_tokens, cfg.dpd.sem_vocab),
                          real_tokens)
    assert len((data2 / "valid.jsonl").read_text().splitlines()) == 1
    real, there = MeLoDy.load(ckpt), MeLoDy.load(ckpt2)
    for k, v in real.dpd.state_dict().items():
        torch.testing.assert_close(there.dpd.state_dict()[k], v.half().float())

    # train_dpd trains there from the cached latents alone, its schedule run over the time limit
    train_dpd.main(["--data", str(data2), "--out", str(ckpt2), "--preset", str(ckpt2), "--init", str(ckpt2),
                    "--steps", "3", "--batch", "2", "--lr", "1e-3", "--warmup", "1", "--threads", "1",
                    "--device", "cpu", "--log-every", "1", "--time-limit-min", "10", "--lr-by-time"])
    trained = MeLoDy.load(ckpt2)
    assert json.loads((ckpt2 / "config.json").read_text())["training"]["dpd"]["steps"] == 3

    # back here: the real LM and VAE with the trained DPD and the returned config
    extract(ckpt2, tmp_path / "back")
    merged = MeLoDy.load(merge(tmp_path / "back", ckpt, tmp_path / "merged"))
    for part, want in (("lm", real.lm), ("vae", real.vae), ("dpd", trained.dpd)):
        got = getattr(merged, part).state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.state_dict().items()), part
    assert (tmp_path / "merged" / "tokenizer.npz").read_bytes() == (ckpt / "tokenizer.npz").read_bytes()
    assert "dpd" in json.loads((tmp_path / "merged" / "config.json").read_text())["training"]


def test_merge_refuses_other_networks(tmp_path):
    import dataclasses

    cfg = get_config("debug")
    MeLoDy(cfg).save(tmp_path / "ckpt")
    other = dataclasses.replace(cfg, dpd=dataclasses.replace(cfg.dpd, dim=cfg.dpd.dim * 2))
    MeLoDy(other).save(tmp_path / "other")
    extract(tmp_path / "other", tmp_path / "part")
    with pytest.raises(ConfigError, match="other networks"):
        merge(tmp_path / "part", tmp_path / "ckpt", tmp_path / "out")


def test_lr_by_time_runs_the_schedule_over_the_time_limit(tmp_path):
    args = argparse.Namespace(out=tmp_path, preset="debug", seed=0, threads=None, device="cpu", steps=1000,
                              time_limit_min=1.0, lr_by_time=True)
    run = Run(args, "x")
    run._t0 = time.monotonic() - 30.0  # half the limit used
    assert 480 <= run._schedule_step() <= 520
    run.step = 900  # further along by steps than by time
    assert run._schedule_step() == 900
    args.lr_by_time = False
    run.step = 10
    assert run._schedule_step() == 10
