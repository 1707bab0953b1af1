"""Distillation on the debug preset and a tiny synthetic dataset: a DPD round and an LM student train (losses fall),
resume, keep the continuation invariant, export to a bundle whose manifest records the distillation, and generate
with the student's default steps and without an unconditional LM batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("librosa")

from conversion import distill  # noqa: E402
from conversion.export import export_bundle  # noqa: E402
from melody_edge import Generator  # noqa: E402
from melody_edge.bundle import load_bundle, sha256  # noqa: E402
from melody_edge.errors import ConfigError  # noqa: E402
from melody_edge.models.config import get_config  # noqa: E402
from melody_edge.models.melody import MeLoDy  # noqa: E402
from melody_edge.sampling import get_schedule, paper_schedule, sample  # noqa: E402
from tests.training.test_train import (  # noqa: E402, F401  (_keep_torch_threads: the commands set torch's threads)
    _keep_torch_threads,
    assert_falls,
    read_log,
    write_dataset,
)
from training.tokenizer import fit_tokenizer  # noqa: E402

PROMPT = "a sine melody in G major"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A debug teacher checkpoint (random weights, a tokenizer fitted on the data, 8 DPD steps, LM guidance 3) and
    its dataset."""
    root = tmp_path_factory.mktemp("distill")
    data, folder = root / "data", root / "teacher"
    write_dataset(data)
    cfg = get_config("debug")
    tok = fit_tokenizer(sorted((data / "train").glob("*.wav")), vocab_size=cfg.lm.vocab_size, seed=0, rotations=12)
    model = MeLoDy.random(cfg)
    model.cfg = distill.dataclasses.replace(cfg, lm_guidance=3.0)  # the teacher guides its LM, as tiny does
    model.dpd.set_token_features(tok.token_features())
    model.save(folder, extra={"training": {"dpd": {"steps": 0}}})
    tok.save(folder / "tokenizer.npz")
    return folder, data


def _common(teacher: tuple[Path, Path], out: Path) -> list[str]:
    folder, data = teacher
    return ["--teacher", str(folder), "--data", str(data), "--out", str(out), "--threads", "1", "--device", "cpu",
            "--seed", "0", "--log-every", "1", "--warmup", "3", "--eval-clips", "2"]


@pytest.fixture(scope="module")
def dpd_student(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpd4") / "student"
    distill.main(["dpd", *_common(teacher, out), "--steps", "4", "--round-steps", "16", "--batch", "8",
                  "--lr", "1e-3", "--eval-every", "10"])
    return out


@pytest.fixture(scope="module")
def lm_student(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "student"
    distill.main(["lm", *_common(teacher, out), "--steps", "20", "--batch", "8", "--lr", "3e-3",
                  "--eval-every", "10"])
    return out


def test_paper_schedule_continues_the_sampler_grid_to_real_steps():
    for steps in (1, 2, 4, 8, 16):
        grid = np.pi / 2 - np.concatenate([[0.0], np.cumsum(paper_schedule(steps)[::-1])])
        assert np.allclose(distill.schedule_angle("paper", steps, np.arange(steps + 1)), grid)
        u = np.linspace(0, steps, 50)
        assert (np.diff(distill.schedule_angle("paper", steps, u)) < 0).all()  # a step is always forward


def test_rounds_halve_the_steps():
    assert distill.plan_rounds(8, 4) == [(8, 4)]
    assert distill.plan_rounds(8, 1) == [(8, 4), (4, 2), (2, 1)]
    for bad in (3, 8, 0):
        with pytest.raises(ConfigError):
            distill.plan_rounds(8, bad)


def test_dpd_round_loss_falls_and_the_student_records_its_steps(dpd_student, teacher):
    losses = [v for _, v in read_log(dpd_student / "train_dpd4.log", "loss")]
    assert len(losses) == 16
    assert_falls(losses)
    meta = json.loads((dpd_student / "config.json").read_text())
    assert meta["config"]["dpd_steps"] == 4 and meta["config"]["guidance"] == 1.0
    rec = meta["distillation"]
    assert rec["kind"] == "dpd" and rec["method"] == "progressive" and rec["steps"] == 4 and rec["finished"]
    assert rec["teacher"] == str(teacher[0]) and rec["teacher_sha256"] == sha256(teacher[0] / "model.safetensors")
    assert [(r["teacher_steps"], r["student_steps"], r["steps_done"]) for r in rec["rounds"]] == [(8, 4, 16)]
    assert meta["training"] == {"dpd": {"steps": 0}}  # the teacher's records travel with the student
    assert (dpd_student / "tokenizer.npz").read_bytes() == (teacher[0] / "tokenizer.npz").read_bytes()
    # the student is a checkpoint like any other: the generator runs it at its own default steps
    gen = Generator(dpd_student, backend="torch")
    audio = gen.generate(PROMPT, 0.64, seed=0)
    assert audio.stats.passes["dpd"] == 4 and np.isfinite(audio.samples).all()
    assert Generator(teacher[0], backend="torch").generate(PROMPT, 0.64, seed=0).stats.passes["dpd"] == 8


def test_dpd_student_keeps_given_chunks_unchanged(dpd_student):
    model = MeLoDy.load(dpd_student)
    c = model.cfg
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, c.dpd.sem_vocab, (1, c.window_tokens))
    known = rng.uniform(-1, 1, (1, c.window_frames, c.vae.latent_dim)).astype(np.float32)
    fixed = np.arange(c.window_frames) < 3 * c.chunk_frames  # three kept chunks at angle 0, one new chunk
    z0 = np.where(fixed[None, :, None], known, rng.standard_normal(known.shape, dtype=np.float32))
    seen = []

    def denoise(z, angles, guidance):
        seen.append(angles[0, fixed])
        with torch.inference_mode():
            return model.dpd(torch.from_numpy(z), torch.from_numpy(angles), torch.from_numpy(tokens)).numpy()

    z = sample(denoise, z0, get_schedule("paper", c.dpd_steps), fixed=fixed, z_fixed=z0)
    assert len(seen) == 4 and all((a == 0).all() for a in seen)
    assert np.array_equal(z[0, fixed], known[0, fixed])  # bit for bit
    assert np.isfinite(z).all() and not np.allclose(z[0, ~fixed], z0[0, ~fixed])
    # continuation through the generator runs the student at its 4 steps, the prompt's latents kept at angle 0
    gen = Generator(dpd_student, backend="torch")
    prompt = gen.generate(PROMPT, 1.28, seed=1)
    cont = gen.continue_audio(prompt, PROMPT, 0.64, seed=2)
    assert cont.stats.passes["dpd"] == 4 and len(cont.samples) == len(prompt.samples) + round(0.64 * gen.sample_rate)


def test_dpd_distillation_resumes_and_runs_several_rounds(teacher, tmp_path):
    out = tmp_path / "student"
    args = ["dpd", *_common(teacher, out), "--steps", "2", "--batch", "4", "--save-every", "3", "--eval-every", "100"]
    distill.main([*args, "--round-steps", "3", "--time-limit-min", "0"])  # out of time at once: nothing trained
    assert json.loads((out / "config.json").read_text())["distillation"]["finished"] is False
    distill.main([*args, "--round-steps", "3"])
    distill.main([*args, "--round-steps", "5"])  # resumes both rounds from their checkpoints
    for part in ("dpd4", "dpd2"):
        steps = [s for s, _ in read_log(out / f"train_{part}.log", "loss")]
        assert steps == [1, 2, 3, 4, 5], part  # no step repeated, none skipped
        assert torch.load(out / f"train_{part}.pt", weights_only=True)["step"] == 5
    rec = json.loads((out / "config.json").read_text())["distillation"]
    assert rec["finished"] and [(r["teacher_steps"], r["student_steps"]) for r in rec["rounds"]] == [(8, 4), (4, 2)]
    assert MeLoDy.load(out).cfg.dpd_steps == 2
    before = (out / "model.safetensors").stat().st_mtime_ns
    distill.main([*args, "--round-steps", "5"])  # finished with these settings: the student is left as it is
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_consistency_method_trains_a_student(teacher, tmp_path):
    out = tmp_path / "cd"
    distill.main(["dpd", *_common(teacher, out), "--steps", "2", "--method", "consistency", "--round-steps", "6",
                  "--batch", "4", "--eval-every", "100"])
    rec = json.loads((out / "config.json").read_text())["distillation"]
    assert rec["method"] == "consistency" and rec["steps"] == 2 and rec["finished"]
    assert [(r["teacher_steps"], r["student_steps"]) for r in rec["rounds"]] == [(8, 2)]  # one round, any steps
    assert all(np.isfinite(v) for _, v in read_log(out / "train_dpd2.log", "loss"))


def test_lm_distillation_loss_falls_and_the_student_runs_no_unconditional_batch(lm_student, teacher):
    assert_falls([v for _, v in read_log(lm_student / "train_lm.log", "loss")])
    assert read_log(lm_student / "train_lm.log", "valid_kl")
    meta = json.loads((lm_student / "config.json").read_text())
    assert meta["config"]["lm_guidance"] == 1.0
    rec = meta["distillation"]
    assert rec["kind"] == "lm" and rec["teacher_lm_guidance"] == 3.0 and rec["student_lm"]["init"] == "teacher"
    assert rec["teacher_sha256"] == sha256(teacher[0] / "model.safetensors")
    batches = {}
    for name, folder in (("teacher", teacher[0]), ("student", lm_student)):
        gen = Generator(folder, backend="torch")
        prefill = gen.backend.lm_prefill

        def spy(prefix, tokens, beat=None, prefill=prefill, name=name):
            batches[name] = prefix.shape[0]
            return prefill(prefix, tokens, beat)

        gen.backend.lm_prefill = spy
        assert np.isfinite(gen.generate(PROMPT, 0.64, seed=0).samples).all()
    assert batches == {"teacher": 2, "student": 1}


def test_guided_target_is_the_generator_cfg_mixture(teacher):
    from melody_edge.sampling import apply_cfg

    model = MeLoDy.load(teacher[0])
    lm = model.lm
    tokens = torch.randint(0, model.cfg.lm.vocab_size, (2, 5))
    cond = lm.cond.with_controls(torch.randn(2, model.cfg.text.n_prefix, model.cfg.lm.dim), None)
    with torch.no_grad():
        got = distill.guided_log_probs(lm, cond, tokens, None, 3.0)
        c, u = lm(cond, tokens, None), lm(lm.cond.null(2), tokens, None)
    want = torch.log_softmax(torch.from_numpy(apply_cfg(c.numpy(), u.numpy(), 3.0)), dim=-1)
    assert torch.allclose(got, want, atol=1e-5)


def test_smaller_lm_student_copies_the_teacher_layers(teacher):
    cfg = get_config("debug")
    small = distill.student_config(cfg, layers=1)
    assert small.lm.n_layers == 1 and small.lm.dim == cfg.lm.dim and small.lm_guidance == 1.0
    t, s = MeLoDy.random(cfg).lm, MeLoDy(small).lm
    assert distill.init_student_lm(s, t) == "truncated"
    assert torch.equal(s.blocks[0].ff.w1.weight, t.blocks[0].ff.w1.weight)
    assert torch.equal(s.head.weight, t.head.weight) and torch.equal(s.tok_emb.weight, t.tok_emb.weight)
    assert distill.init_student_lm(MeLoDy(distill.student_config(cfg, dim=16)).lm, t) == "fresh"


def test_students_export_and_the_manifest_records_the_distillation(dpd_student, lm_student, tmp_path):
    both = distill.combine(lm_student, dpd_student, tmp_path / "both")
    meta = json.loads((both / "config.json").read_text())
    assert meta["config"]["dpd_steps"] == 4 and meta["config"]["lm_guidance"] == 1.0
    assert meta["distillation"]["kind"] == "combined" and meta["distillation"]["dpd"]["steps"] == 4
    before = (both / "model.safetensors").stat().st_mtime_ns
    distill.combine(lm_student, dpd_student, both)  # the same students again: left as it is
    assert (both / "model.safetensors").stat().st_mtime_ns == before
    bundle = export_bundle(both, tmp_path / "bundle", precision="int8", steps=4)
    manifest = load_bundle(bundle).manifest
    assert manifest["distillation"] == meta["distillation"]
    assert manifest["config"]["dpd_steps"] == 4
    gen = Generator(bundle)
    assert gen.backend.name == "onnxruntime"
    audio = gen.generate(PROMPT, 0.64, seed=0)
    assert audio.stats.passes["dpd"] == 4 and np.isfinite(audio.samples).all()


def test_report_measures_rows_in_one_process_and_writes_table_and_plot(dpd_student, teacher, tmp_path):
    result = distill.report([distill.RowSpec("teacher-8", str(teacher[0]), 8, None),
                             distill.RowSpec("student-4", str(dpd_student), None, None)], teacher[1],
                            tmp_path / "r.md", n_snr=1, snr_split="valid", seconds=0.64, repeats=1,
                            targets=[("dpd", "student-4", "teacher-8")])
    rows = result["rows"]
    assert rows["teacher-8"]["dpd_passes"] == 8 and rows["student-4"]["dpd_passes"] == 4
    assert rows["teacher-8"]["lm_evals"] == 2 * rows["teacher-8"]["lm_passes"]  # LM guidance 3: a batch of 2
    assert rows["teacher-8"]["snr_db"] is None and np.isfinite(rows["student-4"]["snr_db"])
    dpd_cost = [t for t in result["targets"] if t["measure"] == "dpd_evals"]
    assert dpd_cost[0]["met"] is True
    table = (tmp_path / "r.md").read_text()
    assert "| student-4 |" in table and json.loads((tmp_path / "r.json").read_text())["rows"].keys() == rows.keys()
    assert (tmp_path / "r.png").stat().st_size > 0
