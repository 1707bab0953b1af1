"""A training run killed mid-way (SIGINT to the process) leaves its last good checkpoint, and a rerun resumes from
its step counter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("librosa")

from melody_edge.models.config import get_config  # noqa: E402
from tests.training.test_train import write_dataset  # noqa: E402
from training.tokenizer import fit_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_lm_training_killed_by_sigint_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "ckpt"
    write_dataset(data)
    out.mkdir()
    fit_tokenizer(sorted((data / "train").glob("*.wav")), vocab_size=get_config("debug").lm.vocab_size, seed=0,
                  rotations=12).save(out / "tokenizer.npz")
    cmd = [sys.executable, "-m", "training.train_lm", "--data", str(data), "--out", str(out), "--preset", "debug",
           "--steps", "100000", "--batch", "2", "--threads", "1", "--device", "cpu", "--save-every", "5",
           "--log-every", "5", "--eval-every", "1000000", "--warmup", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "train_lm.pt"
    deadline = time.monotonic() + 240
    while not ckpt.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.is_file(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
    time.sleep(1.0)  # a few more steps, possibly mid-save
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0  # interrupted, not finished
    assert not list(out.glob("*.tmp"))  # no half-written checkpoint left behind
    saved = torch.load(ckpt, weights_only=True)["step"]
    assert saved >= 5 and saved % 5 == 0
    # rerun to a few steps past the saved one: it resumes there instead of starting over
    rerun = [*cmd[: cmd.index("--steps") + 1], str(saved + 3), *cmd[cmd.index("--steps") + 2:]]
    log = out / "train_lm.log"
    before = len(log.read_text().splitlines()) if log.is_file() else 0  # the killed run may have logged past its save
    subprocess.run(rerun, cwd=ROOT, env=env, check=True, capture_output=True, timeout=240)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()[before:]]
    assert torch.load(ckpt, weights_only=True)["step"] == saved + 3
    assert steps and min(steps) > saved and max(steps) == saved + 3 and (out / "model.safetensors").is_file()
