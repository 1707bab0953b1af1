"""Distillation: a few-step DPD student and a guidance-free LM student, each a normal checkpoint folder.

``python -m conversion.distill dpd --teacher CKPT --steps 4 --out DIR``: step distillation of the DPD in MeLoDy's
angle parameterization. ``--method progressive`` (default; Salimans & Ho 2022, "Progressive distillation for fast
sampling of diffusion models", Algorithm 2, in angle form): each round halves the steps (8 -> 4 -> 2 -> 1); the
student, initialised from its teacher, learns to do in ONE DDIM step ``z_s = cos(w) z_t - sin(w) v`` what the teacher
does in two, so its target is ``v* = (cos(w) z_t - z_s^teacher) / sin(w)`` with ``w = delta_t - delta_s``. The
teacher of a round is the previous round's EMA student. ``--method consistency`` (Song et al. 2023, consistency
distillation): one teacher DDIM step on a fine grid and the student's own stop-gradient prediction at the lower angle
give the clean-latent target ``x*``, and ``v* = (cos(delta_t) z_t - x*) / sin(delta_t)``; one round, sampled at
``--steps`` deterministic DDIM steps. DPD guidance (``config.guidance`` != 1) is folded into the teacher's v, so the
student's config says ``guidance = 1`` and it runs one batch per step.

Angles. The students are trained for the ``paper`` schedule (what ``Generator`` runs). Its grid after ``u`` of ``T``
steps, ``phi_T(u) = pi/2 - u pi/(6T) - 2 pi (uT - u(u-1)/2) / (3T(T+1))``, is a quadratic in u, so a step is defined
for any real ``u`` in [0, T-1]: ``phi_T(u) -> phi_T(u+1)`` with the teacher's two steps meeting at ``phi_T(u+1/2)``.
Half of each batch is drawn on the integer grid (the steps sampling takes), half at real ``u``: the paper grids of
T and T/2 steps do not nest (4 steps: 1.571, 1.021, 0.576, 0.236, 0; 2 steps: 1.571, 0.611, 0), so the next round
queries the student between its grid points. Per-chunk angles are kept as in ``training.train_dpd``: a batch may be
cropped to fewer chunks, leading chunks may be clean (angle 0, given, left out of the loss, reset after every teacher
step exactly as ``melody_edge.sampling.sample`` does), so ``stream`` and ``continue_audio`` work with the student.

``python -m conversion.distill lm --teacher CKPT --out DIR [--layers N --dim D] [--steps S]``: an LM student trained,
on teacher-forced real token sequences (the training data of ``training.train_lm``: cached MiniLM states of the
varied captions, controls each dropped with the training probability, beat clock, tokens in C), to match the
teacher's guided distribution ``softmax(cond + (g - 1)(cond - uncond))`` at ``g = config.lm_guidance`` (the formula of
``melody_edge.sampling.apply_cfg``, the unconditional row being the null prefix with no controls and no beat clock, as
``Generator`` builds it): forward KL(teacher-guided || student) per token. Its config has ``lm_guidance = 1``, so
``Generator`` runs one row per LM step instead of two. ``--layers/--dim`` make a smaller student (same width: the
teacher's layers at evenly spaced depths are copied; another width: fresh weights).

``python -m conversion.distill combine --lm A --dpd B --out C``: the LM of student A with the DPD (and default steps)
of student B. ``python -m conversion.distill report --row NAME MODEL STEPS EVAL_JSON ...``: the quality-versus-cost
table and plot (passes and network evaluations per 10 s counted by ``GenerationStats``, RTF timed in this process,
latent SNR to a reference row on the same tokens and noise, key/tempo/Frechet from ``training.evaluate`` JSONs).

Every command is resumable (``training.common.Run``: ``<out>/train_<part>.pt``, JSON-lines ``<out>/train_<part>.log``,
a tqdm bar, ``--time-limit-min``, ``--threads``). The output folder holds ``config.json`` (with the student's
``dpd_steps`` / ``lm_guidance`` and a ``distillation`` record: teacher, sha256 of its weights, method, rounds, steps,
lr, batch, seed, wall time), ``model.safetensors`` and the teacher's ``tokenizer.npz``; ``conversion.export`` copies
the record into the bundle manifest.

Why progressive and not consistency distillation: measured on the shipped tiny model (teacher ``runs/lm1164``, 8 DPD
steps), both methods from the same teacher to 4 steps at the same budget (80 optimizer steps, batch 8, lr 1e-4, one
CPU thread, ~5.5 min each), scored by the latent SNR of the 4-step student against the 8-step teacher on 8 held-out
clips' real tokens and the same noise (the ``valid_snr_db`` of ``train_dpd4.log``): progressive 21.9 dB after 40
steps and 23.0 dB after 80; consistency 13.0 and 12.2 dB; the teacher itself at 4 steps 19.2 dB. Progressive
distillation starts from a student that already solves its task nearly (the teacher at 4 steps) and improves it at
once; consistency distillation first has to turn a v-predictor into a trajectory-endpoint predictor, and at this
budget it makes the 4-step sampler worse than no training at all. The same against the 16-step teacher on 8 test
clips (``training/results/distill_method.md``, written by ``report``): teacher at 8 steps 22.9 dB, at 4 steps 14.8,
progressive student 18.1, consistency student 13.3.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from melody_edge.bundle import sha256
from melody_edge.errors import ConfigError
from melody_edge.models.config import PRESETS, ModelConfig
from melody_edge.models.dpd import DPD
from melody_edge.models.lm import SemanticLM
from melody_edge.models.melody import MeLoDy
from melody_edge.tokenizer import rotate_tokens
from training.common import Run, load_rows, load_tokens, unwrap
from training.train_dpd import dpd_control_ids, drop_controls, vae_fingerprint

log = logging.getLogger("conversion.distill")

METHODS = ("progressive", "consistency")
DEFAULT_DATA = Path("data/music")


# --- shared -----------------------------------------------------------------------------------------------------

def weights_sha256(folder: Path) -> str:
    """sha256 of a checkpoint's ``model.safetensors``: which teacher a student came from, exactly."""
    return sha256(Path(folder) / "model.safetensors")


def _config_json(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())


def save_student(out: Path, model: MeLoDy, teacher: Path, record: dict[str, Any]) -> Path:
    """Write ``model`` as a checkpoint folder ``out`` (config.json with the teacher's training records and the
    ``distillation`` record, model.safetensors, the teacher's tokenizer.npz)."""
    out = Path(out)
    meta = _config_json(teacher)
    model.save(out, extra={"training": meta.get("training", {}), "distillation": record})
    if (Path(teacher) / "tokenizer.npz").is_file() and not (out / "tokenizer.npz").is_file():
        shutil.copyfile(Path(teacher) / "tokenizer.npz", out / "tokenizer.npz")
    log.info("wrote the student %s (%s)", out, record.get("kind"))
    return out


def already_done(out: Path, teacher: Path, **expect: Any) -> bool:
    """Whether ``out`` holds a finished student of this teacher's exact weights whose record has the ``expect``ed
    settings (a rerun of the recipe then leaves it, and the bundles made from it, alone)."""
    path = Path(out) / "config.json"
    if not path.is_file() or not (Path(out) / "model.safetensors").is_file():
        return False
    rec = json.loads(path.read_text()).get("distillation") or {}
    rounds = {r.get("train_steps") for r in rec.get("rounds", [])}
    done = (rec.get("finished") is True and rec.get("teacher_sha256") == weights_sha256(teacher)
            and all((rounds == {v}) if k == "round_train_steps" else rec.get(k) == v for k, v in expect.items()))
    if done:
        log.info("%s is already a finished student of %s with these settings; nothing to do", out, teacher)
    return done


def _prepare_out(out: Path, teacher: Path) -> None:
    """The output folder with the teacher's tokenizer (``load_tokens`` reads ``<out>/tokenizer.npz``)."""
    out.mkdir(parents=True, exist_ok=True)
    if (teacher / "tokenizer.npz").is_file():
        shutil.copyfile(teacher / "tokenizer.npz", out / "tokenizer.npz")


def _run(args: argparse.Namespace, part: str, cfg: ModelConfig, steps: int, minutes_left: float | None) -> Run:
    """A ``training.common.Run`` for one distillation part: the teacher's config, ``steps`` optimizer steps."""
    ns = argparse.Namespace(**{**vars(args), "steps": steps, "time_limit_min": minutes_left,
                               "preset": cfg.name if cfg.name in PRESETS else "debug"})
    run = Run(ns, part)
    run.cfg = cfg
    return run


def _cached_latents(run: Run, vae: torch.nn.Module, rows: list[dict[str, Any]], dirs: Sequence[Path]) -> np.ndarray:
    """The diffusion-space latents of ``rows`` from the first of ``dirs`` whose ``latents_train.npy`` was made by this
    VAE for these clips (memory-mapped, read only), else computed into ``<out>`` by ``training.train_dpd.latents``."""
    from training.train_dpd import latents

    key = {"ids": [r["id"] for r in rows], "vae": vae_fingerprint(vae)}
    for d in dirs:
        npy, meta = Path(d) / "latents_train.npy", Path(d) / "latents_train.json"
        if npy.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
            log.info("latents from %s", npy)
            return np.load(npy, mmap_mode="r")
    return latents(run, vae, rows)


def _cached_text_states(dirs: Sequence[Path], out: Path, split: str, rows: list[dict[str, Any]],
                        captions: list[list[str]]) -> dict[str, torch.Tensor]:
    """MiniLM states of ``captions`` from the first of ``dirs`` whose cache holds exactly them (read only), else
    computed into ``<out>`` by ``training.train_lm.text_states``."""
    from training.train_lm import text_states

    ids, key = [r["id"] for r in rows], hashlib.sha256(json.dumps(captions).encode()).hexdigest()
    for d in dirs:
        path = Path(d) / f"text_states_{split}.pt"
        if path.is_file() and Path(d) != out:
            cached = torch.load(path, weights_only=True)
            if cached["ids"] == ids and cached.get("captions_sha256") == key:
                log.info("text states from %s", path)
                return cached
    return text_states(out, split, rows, captions)


def _add_run_args(p: argparse.ArgumentParser, *, batch: int, lr: float) -> None:
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="student checkpoint folder (also holds the resume state)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root (train.jsonl, valid.jsonl, wavs)")
    p.add_argument("--cache", type=Path, action="append", default=None,
                   help="folder with latents / text-state caches to read (repeatable; default: the teacher's)")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (cosine decay to 0.1x)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--time-limit-min", type=float, default=None, help="stop, save and write the student after this")
    p.add_argument("--lr-by-time", action="store_true",
                   help="run the learning-rate schedule over the time limit too (training.common.Run)")
    p.add_argument("--save-every", type=int, default=50, help="steps between resumable checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines (losses averaged)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation passes")
    p.add_argument("--eval-clips", type=int, default=8, help="valid clips of the validation pass")
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the shipped student")


def _cache_dirs(args: argparse.Namespace) -> list[Path]:
    return [Path(args.out), *(args.cache or [Path(args.teacher)])]


def _minutes_left(args: argparse.Namespace, t0: float) -> float | None:
    return None if args.time_limit_min is None else args.time_limit_min - (time.monotonic() - t0) / 60.0


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), unwrap(model).parameters(), strict=True):
            e.lerp_(p, 1.0 - d)


# --- DPD: angles and targets --------------------------------------------------------------------------------------

def schedule_angle(name: str, steps: int, u: np.ndarray | float) -> np.ndarray:
    """The angle after ``u`` (real, in [0, steps]) of ``steps`` sampler steps of schedule ``name``: at integer ``u``
    exactly the grid ``melody_edge.sampling.sample`` walks (``pi/2`` at 0, ``0`` at ``steps``)."""
    u = np.asarray(u, dtype=np.float64)
    T = steps
    if name == "paper":  # cumulative sum of w_T, w_{T-1}, ... (appendix A), continued to real u
        return np.pi / 2 - (u * np.pi / (6 * T) + 2 * np.pi / (3 * T * (T + 1)) * (u * T - u * (u - 1) / 2))
    if name == "uniform":
        return np.pi / 2 * (1.0 - u / T)
    raise ConfigError(f"unknown schedule {name!r}; choose paper or uniform")


def plan_rounds(teacher_steps: int, steps: int) -> list[tuple[int, int]]:
    """(teacher steps, student steps) per progressive round from ``teacher_steps`` down to ``steps`` by halving."""
    if steps < 1 or steps >= teacher_steps:
        raise ConfigError(f"--steps {steps} must be in [1, {teacher_steps - 1}] (the teacher samples in "
                          f"{teacher_steps} steps)")
    rounds, t = [], teacher_steps
    while t > steps:
        if t % 2:
            break
        rounds.append((t, t // 2))
        t //= 2
    if t != steps:
        raise ConfigError(f"progressive distillation halves the steps: {teacher_steps} -> {steps} is not a power-of-"
                          f"two ratio; ask for {', '.join(str(teacher_steps >> k) for k in range(1, 4))} steps")
    return rounds


def guided_v(net: DPD, z: torch.Tensor, angles: torch.Tensor, tokens: torch.Tensor, guidance: float,
             controls: torch.Tensor | None = None) -> torch.Tensor:
    """The DPD's v with classifier-free guidance folded in (``Generator._dpd``: uncond + g (cond - uncond)); the
    unconditional row has neither tokens nor controls (family, key)."""
    if guidance == 1.0:
        return net(z, angles, tokens, controls)
    null = torch.full_like(tokens, net.null_token)
    ctl = None if controls is None else torch.cat([controls, net.no_controls(len(controls), controls.device)])
    both = net(torch.cat([z, z]), torch.cat([angles, angles]), torch.cat([tokens, null]), ctl)
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


def _ddim(z: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``cos(w) z - sin(w) v`` with a per-sample angle step w (B,)."""
    w = w[:, None, None]
    return torch.cos(w) * z - torch.sin(w) * v


def progressive_target(teacher: DPD, z_t: torch.Tensor, x: torch.Tensor, fixed: torch.Tensor, d_t: torch.Tensor,
                       d_m: torch.Tensor, d_s: torch.Tensor, tokens: torch.Tensor, guidance: float,
                       controls: torch.Tensor | None = None) -> torch.Tensor:
    """The v that takes ``z_t`` (angle ``d_t`` (B,) on the noised frames) in one DDIM step to where the teacher's two
    steps ``d_t -> d_m -> d_s`` take it; fixed frames (B, L) stay at angle 0 and at ``x``."""
    keep = fixed[..., None]
    at = lambda d: torch.where(fixed, torch.zeros_like(d)[:, None], d[:, None].expand_as(fixed))  # noqa: E731
    z_m = torch.where(keep, x, _ddim(z_t, guided_v(teacher, z_t, at(d_t), tokens, guidance, controls), d_t - d_m))
    z_s = torch.where(keep, x, _ddim(z_m, guided_v(teacher, z_m, at(d_m), tokens, guidance, controls), d_m - d_s))
    w = (d_t - d_s)[:, None, None]
    return (torch.cos(w) * z_t - z_s) / torch.sin(w)


def consistency_target(teacher: DPD, student: DPD, z_t: torch.Tensor, x: torch.Tensor, fixed: torch.Tensor,
                       d_t: torch.Tensor, d_s: torch.Tensor, tokens: torch.Tensor, guidance: float,
                       controls: torch.Tensor | None = None) -> torch.Tensor:
    """Consistency distillation in v form: one teacher DDIM step ``d_t -> d_s``, then the student's own (no-grad)
    clean-latent estimate there, ``x* = cos(d_s) z_s - sin(d_s) v(z_s)`` (``z_s`` itself at ``d_s = 0``); the target
    is the v whose clean estimate at ``z_t`` is ``x*``: ``(cos(d_t) z_t - x*) / sin(d_t)``."""
    keep = fixed[..., None]
    at = lambda d: torch.where(fixed, torch.zeros_like(d)[:, None], d[:, None].expand_as(fixed))  # noqa: E731
    z_s = torch.where(keep, x, _ddim(z_t, guided_v(teacher, z_t, at(d_t), tokens, guidance, controls), d_t - d_s))
    v_s = student(z_s, at(d_s), tokens, controls)
    c, s = torch.cos(d_s)[:, None, None], torch.sin(d_s)[:, None, None]
    x_star = c * z_s - s * v_s
    ct, st = torch.cos(d_t)[:, None, None], torch.sin(d_t)[:, None, None]
    return (ct * z_t - x_star) / st


@torch.no_grad()
def sample_latents(net: DPD, tokens: torch.Tensor, noise: torch.Tensor, steps: int, schedule: str,
                   guidance: float, controls: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM from ``noise`` (B, L, C) at pi/2 to 0 in ``steps`` steps (the ``melody_edge.sampling.sample`` loop, in
    torch): the held-out check of a round."""
    grid = torch.from_numpy(schedule_angle(schedule, steps, np.arange(steps + 1))).float().to(noise.device)
    z = noise
    for i in range(steps):
        ang = torch.full(z.shape[:2], float(grid[i]), device=z.device)
        z = _ddim(z, guided_v(net, z, ang, tokens, guidance, controls), (grid[i] - grid[i + 1]).repeat(z.shape[0]))
    return z


def snr_db(ref: np.ndarray | torch.Tensor, est: np.ndarray | torch.Tensor) -> float:
    """10 log10(|ref|^2 / |ref - est|^2), in dB."""
    ref, est = (x.detach().cpu() if isinstance(x, torch.Tensor) else x for x in (ref, est))
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    return float(10 * np.log10(max(np.sum(ref**2), 1e-20) / max(np.sum((ref - est) ** 2), 1e-20)))


# --- DPD: the command -------------------------------------------------------------------------------------------

def distill_dpd(args: argparse.Namespace) -> Path:
    """Distill the teacher's DPD to ``args.steps`` sampling steps (see the module docstring); returns ``args.out``."""
    t_start = time.monotonic()
    teacher_dir, out = Path(args.teacher), Path(args.out)
    if already_done(out, teacher_dir, kind="dpd", method=args.method, steps=args.steps, lr=args.lr, batch=args.batch,
                    seed=args.seed, round_train_steps=args.round_steps):
        return out
    model = MeLoDy.load(teacher_dir)
    cfg = model.cfg
    if args.method == "progressive":
        rounds = plan_rounds(cfg.dpd_steps, args.steps)
    else:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        rounds = [(cfg.dpd_steps, args.steps)]
    _prepare_out(out, teacher_dir)
    guidance = cfg.guidance
    rows = load_rows(args.data, "train")
    if not rows:
        raise ConfigError(f"no training clips in {args.data}/train.jsonl")
    W = cfg.window_tokens
    tok_all = load_tokens(args.data, out, "train", rows, W, cfg.dpd.sem_vocab)
    ctl_all = dpd_control_ids(rows, cfg) if cfg.dpd.controlled else None
    valid_rows = load_rows(args.data, "valid")[: args.eval_clips]
    valid_tok = (torch.from_numpy(load_tokens(args.data, out, "valid", valid_rows, W, cfg.dpd.sem_vocab))
                 if valid_rows else None)
    teacher = model.dpd.eval().requires_grad_(False)
    records: list[dict[str, Any]] = []
    z_all = None
    for t_steps, s_steps in rounds:
        minutes = _minutes_left(args, t_start)
        run = _run(args, f"dpd{s_steps}", cfg, args.round_steps, minutes)
        teacher = teacher.to(run.device)  # the students are copies of it: on the run's device too
        if z_all is None:
            z_all = _cached_latents(run, model.vae, rows, _cache_dirs(args))
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        ema = copy.deepcopy(teacher).requires_grad_(False)
        opt = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
        valid = _valid_check(teacher, valid_tok, t_steps, s_steps, args, cfg, guidance, run,
                             torch.from_numpy(dpd_control_ids(valid_rows, cfg)) if cfg.dpd.controlled else None)

        step = _round_step(args, run, cfg, z_all, tok_all, teacher, student, ema, opt, s_steps, guidance, ctl_all)
        evaluate = (lambda ema=ema, valid=valid: valid(ema)) if valid is not None else None
        run.train(step, {"student": student, "ema": ema}, {"opt": opt}, evaluate)
        rec = {"teacher_steps": t_steps, "student_steps": s_steps, "train_steps": args.round_steps,
               "steps_done": run.step, "finished": run.finished, "wall_seconds": round(run.seconds, 1)}
        if valid is not None:
            rec.update({k: round(v, 3) for k, v in valid(ema).items()})
        records.append(rec)
        teacher = ema.eval()
        if not run.finished:
            log.warning("round %d -> %d steps stopped at step %d of %d (time limit); the student is written as it "
                        "is, rerun the same command to resume", t_steps, s_steps, run.step, args.round_steps)
            break
    s_steps = records[-1]["student_steps"]
    student_cfg = dataclasses.replace(cfg, dpd_steps=s_steps, guidance=1.0)
    model.cfg = student_cfg
    model.dpd.cpu().load_state_dict(teacher.state_dict())  # the teacher of round 1 was model.dpd, moved
    record = {"kind": "dpd", "method": args.method, "teacher": str(teacher_dir),
              "teacher_sha256": weights_sha256(teacher_dir), "teacher_steps": cfg.dpd_steps, "steps": s_steps,
              "schedule": args.schedule, "guidance_folded": guidance,
              "rounds": records, "finished": all(r["finished"] for r in records) and s_steps == args.steps,
              "lr": args.lr, "batch": args.batch, "seed": args.seed, "ema": args.ema, "crop_p": args.crop_p,
              "prefix_p": args.prefix_p, "data": str(args.data),
              **({"grid_p": args.grid_p} if args.method == "progressive" else {"cd_grid": args.cd_grid}),
              "wall_seconds": round(sum(r["wall_seconds"] for r in records), 1),
              "teacher_distillation": _config_json(teacher_dir).get("distillation")}
    return save_student(out, model, teacher_dir, record)


def window_batch(rng: np.random.Generator, z_all: np.ndarray, tok_all: np.ndarray, cfg: ModelConfig, batch: int,
                 crop_p: float, prefix_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Training windows as ``training.train_dpd`` draws them: clean latents (B, L, C), their tokens (B, N), the
    frames given at angle 0 (B, L) (with probability ``prefix_p`` 1 .. n-1 clean leading chunks: the continuation
    case of Algorithm 2) and the clips drawn (B,); with probability ``crop_p`` a crop of 1 .. n_chunks - 1 chunks."""
    fpt, M, chunk_tok, W = cfg.frames_per_token, cfg.n_chunks, cfg.chunk_tokens, cfg.window_tokens
    n_chunks = int(rng.integers(1, M)) if M > 1 and rng.random() < crop_p else M
    n_tok = n_chunks * chunk_tok
    idx = rng.choice(len(tok_all), batch)
    starts = rng.integers(0, W - n_tok + 1, batch)
    x = np.stack([np.asarray(z_all[i, s * fpt:(s + n_tok) * fpt]) for i, s in zip(idx, starts, strict=True)])
    tokens = np.stack([tok_all[i, s:s + n_tok] for i, s in zip(idx, starts, strict=True)])
    fixed_chunks = np.zeros((batch, n_chunks), bool)
    if n_chunks > 1:
        clean = rng.integers(1, n_chunks, batch) * (rng.random(batch) < prefix_p)
        fixed_chunks = np.arange(n_chunks)[None, :] < clean[:, None]
    fixed = np.repeat(fixed_chunks, chunk_tok * fpt, axis=1)
    return torch.from_numpy(x), torch.from_numpy(tokens), torch.from_numpy(fixed), idx


def _round_step(args: argparse.Namespace, run: Run, cfg: ModelConfig, z_all: np.ndarray, tok_all: np.ndarray,
                teacher: DPD, student: DPD, ema: DPD, opt: torch.optim.Optimizer, s_steps: int, guidance: float,
                ctl_all: np.ndarray | None = None) -> Callable[[], dict[str, float]]:
    """One optimizer step of a distillation round (``args.method``), for ``Run.train``. With ``ctl_all`` (each
    clip's DPD controls, (N, 2)) teacher and student see the window's family and key, each dropped to "none" with the
    controls' probability as in ``training.train_dpd``."""
    dev = run.device

    def angles_of(u: np.ndarray, steps: int) -> torch.Tensor:
        return torch.from_numpy(schedule_angle(args.schedule, steps, u)).float().to(dev)

    def step() -> dict[str, float]:
        B, rng = args.batch, run.rng
        x, tokens, fixed, idx = window_batch(rng, z_all, tok_all, cfg, B, args.crop_p, args.prefix_p)
        x, tokens, fixed = x.to(dev), tokens.to(dev), fixed.to(dev)
        controls = None
        if ctl_all is not None:
            controls = torch.from_numpy(drop_controls(rng, ctl_all[idx], cfg, np.zeros(B, bool))).to(dev)
        if args.method == "progressive":  # half on the integer grid, half between its points
            u = np.where(rng.random(B) < args.grid_p, rng.integers(0, s_steps, B), rng.uniform(0.0, s_steps - 1, B))
            d_t, d_m, d_s = angles_of(u, s_steps), angles_of(u + 0.5, s_steps), angles_of(u + 1.0, s_steps)
        else:
            n = rng.integers(0, args.cd_grid, B)
            d_t, d_s = angles_of(n, args.cd_grid), angles_of(n + 1, args.cd_grid)
        angles = torch.where(fixed, torch.zeros_like(x[..., 0]), d_t[:, None].expand_as(fixed))
        eps = torch.randn(x.shape, generator=run.gen, device=dev)
        z_t = torch.cos(angles)[..., None] * x + torch.sin(angles)[..., None] * eps
        with torch.no_grad():
            if args.method == "progressive":
                target = progressive_target(teacher, z_t, x, fixed, d_t, d_m, d_s, tokens, guidance, controls)
            else:
                target = consistency_target(teacher, student, z_t, x, fixed, d_t, d_s, tokens, guidance, controls)
        v_hat = student(z_t, angles, tokens, controls)
        noised = (~fixed).float()[..., None]  # given frames are not in the loss
        loss = ((v_hat - target).square() * noised).sum() / (noised.sum() * x.shape[-1]).clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        _ema_update(ema, student, args.ema, run.step)
        return {"loss": loss.item(), "grad_norm": grad_norm.item()}

    return step


def _valid_check(teacher: DPD, valid_tok: torch.Tensor | None, t_steps: int, s_steps: int,
                 args: argparse.Namespace, cfg: ModelConfig, guidance: float, run: Run,
                 valid_ctl: torch.Tensor | None = None) -> Callable[[DPD], dict[str, float]] | None:
    """A function student -> {valid_snr_db, valid_snr_db_teacher_at_student_steps}: latent SNR of the student at its
    steps against the teacher at its own, from the same noise and real valid tokens (the second figure is what the
    teacher itself reaches at the student's steps: the baseline distillation has to beat)."""
    if valid_tok is None:
        return None
    g = torch.Generator().manual_seed(args.seed + 12_345)
    noise = torch.randn((len(valid_tok), cfg.window_frames, cfg.vae.latent_dim), generator=g).to(run.device)
    tokens = valid_tok.to(run.device)
    ctl = None if valid_ctl is None else valid_ctl.to(run.device)
    ref = sample_latents(teacher, tokens, noise, t_steps, args.schedule, guidance, ctl)
    base = snr_db(ref, sample_latents(teacher, tokens, noise, s_steps, args.schedule, guidance, ctl))

    def check(student: DPD) -> dict[str, float]:
        was = student.training
        student.eval()
        got = snr_db(ref, sample_latents(student, tokens, noise, s_steps, args.schedule, 1.0, ctl))
        student.train(was)
        return {"valid_snr_db": got, "valid_snr_db_teacher_at_student_steps": base}

    return check


# --- LM ---------------------------------------------------------------------------------------------------------

def student_config(cfg: ModelConfig, layers: int | None = None, dim: int | None = None) -> ModelConfig:
    """The LM student's model config: the teacher's, with ``lm_guidance = 1`` and, when asked, fewer layers or
    another width (the teacher's head size kept, the SwiGLU ratio kept, rounded to 16)."""
    lm = cfg.lm
    if layers is not None or dim is not None:
        d = dim or lm.dim
        heads = max(1, d // lm.head_dim)
        ffn = max(16, int(round(d * lm.ffn_dim / lm.dim / 16)) * 16)
        lm = dataclasses.replace(lm, n_layers=layers or lm.n_layers, dim=d, n_heads=heads, ffn_dim=ffn)
    return dataclasses.replace(cfg, lm=lm, lm_guidance=1.0).validate()


def init_student_lm(student: SemanticLM, teacher: SemanticLM) -> str:
    """Initialise the student from the teacher where the shapes allow; returns 'teacher' (a copy), 'truncated' (same
    width, the teacher's layers at evenly spaced depths) or 'fresh' (another width)."""
    if student.cfg == teacher.cfg:
        student.load_state_dict(teacher.state_dict())
        return "teacher"
    if student.cfg.dim != teacher.cfg.dim:
        return "fresh"
    t_state = teacher.state_dict()
    picks = np.linspace(0, teacher.cfg.n_layers - 1, student.cfg.n_layers).round().astype(int)
    state = {}
    for k, v in student.state_dict().items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            src = t_state.get(f"blocks.{picks[int(i)]}.{rest}")
        else:
            src = t_state.get(k)
        state[k] = src if src is not None and src.shape == v.shape else v
    student.load_state_dict(state)
    return "truncated"


def guided_log_probs(teacher: SemanticLM, cond_prefix: torch.Tensor, tokens: torch.Tensor, beat: torch.Tensor | None,
                     guidance: float) -> torch.Tensor:
    """log softmax of the teacher's CFG mixture ``cond + (g - 1)(cond - uncond)`` (``apply_cfg``) over
    teacher-forced ``tokens`` (B, N): the unconditional row is the null prefix, no controls, no beat clock."""
    B = tokens.shape[0]
    if guidance == 1.0:
        return F.log_softmax(teacher(cond_prefix, tokens, beat), dim=-1)
    prefix = torch.cat([cond_prefix, teacher.cond.null(B).to(cond_prefix)])
    beat2 = None if beat is None else torch.cat([beat, torch.zeros_like(beat)])
    cond, uncond = teacher(prefix, torch.cat([tokens, tokens]), beat2).chunk(2)
    return F.log_softmax(cond + (guidance - 1.0) * (cond - uncond), dim=-1)


def distill_lm(args: argparse.Namespace) -> Path:
    """Train the guidance-free LM student (see the module docstring); returns ``args.out``."""
    from training.train_lm import CaptionLM, captions_of, clip_conditions

    teacher_dir, out = Path(args.teacher), Path(args.out)
    if already_done(out, teacher_dir, kind="lm", train_steps=args.steps, lr=args.lr, batch=args.batch,
                    seed=args.seed, student_size=[args.layers, args.dim]):
        return out
    model = MeLoDy.load(teacher_dir)
    tcfg = model.cfg
    guidance = tcfg.lm_guidance
    scfg = student_config(tcfg, args.layers, args.dim)
    _prepare_out(out, teacher_dir)
    run = _run(args, "lm", scfg, args.steps, args.time_limit_min)
    ctl = scfg.controls
    dirs = _cache_dirs(args)
    data: dict[str, dict[str, torch.Tensor]] = {}
    for split in ("train", "valid"):
        rows = load_rows(args.data, split)[: None if split == "train" else args.eval_clips]
        if not rows:
            continue
        tokens = load_tokens(args.data, out, split, rows, scfg.window_tokens, scfg.lm.vocab_size)
        data[split] = dict(_cached_text_states(dirs, out, split, rows, captions_of(rows, args.seed, ctl.enabled)))
        if ctl.enabled:
            cond = clip_conditions(scfg, rows)
            if ctl.key_rotation:
                tokens = rotate_tokens(tokens, -cond["tonic"].numpy()[:, None])
            data[split].update(cond)
        data[split]["tokens"] = torch.from_numpy(tokens)
    train = data["train"]
    n_cap = train["states"].shape[1]

    teacher = model.lm.eval().requires_grad_(False)
    student_lm = SemanticLM(scfg.lm, scfg.text, scfg.lm_max_len, scfg.controls)
    init = init_student_lm(student_lm, teacher)
    log.info("LM student %d layers x %d (%s), teacher %d x %d, teacher guidance %.2f", scfg.lm.n_layers,
             scfg.lm.dim, init, tcfg.lm.n_layers, tcfg.lm.dim, guidance)
    student = run.wrap(CaptionLM(student_lm))
    teacher = teacher.to(run.device)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def batch(split: dict[str, torch.Tensor], idx: torch.Tensor, caption: torch.Tensor, drop: torch.Tensor,
              drop_ctl: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(student log-probs, teacher-guided log-probs), each (B, N, V)."""
        states = split["states"][idx, caption].float().to(run.device)
        mask = split["mask"][idx, caption].to(run.device)
        tokens = split["tokens"][idx].to(run.device)
        drop = drop.to(run.device)
        controls = beat = None
        if ctl.enabled:
            absent = (ctl.n_keys, 0.0, ctl.n_metres, ctl.n_families)
            controls = tuple((split[k][idx] if drop_ctl is None else
                              torch.where(drop_ctl[:, j], torch.full_like(split[k][idx], absent[j]), split[k][idx]))
                             .to(run.device) for j, k in enumerate(("key", "bpm", "metre", "family")))
            beat = split["beat"][idx]
            if drop_ctl is not None:
                beat = beat * (~drop_ctl[:, 1]).float()[:, None, None]  # the beat clock goes with the tempo
            beat = beat.to(run.device)
        with torch.no_grad():
            text = teacher.cond.text_prefix(states, mask)
            text = torch.where(drop[:, None, None], teacher.cond.null_prefix[None].expand_as(text), text)
            target = guided_log_probs(teacher, teacher.cond.with_controls(text, controls), tokens, beat, guidance)
        return F.log_softmax(student(states, mask, drop, tokens, controls, beat), dim=-1), target

    def kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """Forward KL(p || q) per token, averaged."""
        V = log_p.shape[-1]
        return F.kl_div(log_q.reshape(-1, V), log_p.reshape(-1, V), log_target=True, reduction="batchmean")

    def step() -> dict[str, float]:
        B = args.batch
        idx = torch.from_numpy(run.rng.choice(len(train["tokens"]), B))
        caption = torch.from_numpy(run.rng.integers(0, n_cap, B))
        drop = torch.from_numpy(run.rng.random(B) < scfg.text.dropout_p)
        drop_ctl = torch.from_numpy(run.rng.random((B, 4)) < ctl.dropout) | drop[:, None]
        log_q, log_p = batch(train, idx, caption, drop, drop_ctl)
        loss = kl(log_q, log_p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        agree = (log_q.argmax(-1) == log_p.argmax(-1)).float().mean()
        return {"loss": loss.item(), "agree": agree.item()}

    best: dict[str, Any] = {"valid_kl": float("inf"), "step": 0, "state": None}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        """Valid KL to the guided teacher and argmax agreement (first caption, every control given)."""
        valid, kls, agree = data["valid"], [], []
        student.eval()
        for i in range(0, len(valid["tokens"]), args.batch):
            idx = torch.arange(i, min(i + args.batch, len(valid["tokens"])))
            zeros = torch.zeros(len(idx), dtype=torch.long)
            log_q, log_p = batch(valid, idx, zeros, zeros.bool(), None)
            kls.append(kl(log_q, log_p).item() * len(idx))
            agree.append((log_q.argmax(-1) == log_p.argmax(-1)).float().mean().item() * len(idx))
        student.train()
        n = len(valid["tokens"])
        value = sum(kls) / n
        if value < best["valid_kl"]:
            state = {k: v.detach().clone() for k, v in unwrap(student).lm.state_dict().items()}
            best.update(valid_kl=value, step=run.step, state=state)
        return {"valid_kl": value, "valid_agree": sum(agree) / n, "best_valid_kl": best["valid_kl"]}

    run.train(step, {"lm": student}, {"opt": opt}, evaluate if "valid" in data else None)
    state = best["state"] if best["state"] is not None else unwrap(student).lm.state_dict()
    out_model = MeLoDy(scfg)
    out_model.lm.load_state_dict(state)
    out_model.dpd.load_state_dict(model.dpd.state_dict())
    out_model.vae.load_state_dict(model.vae.state_dict())
    record = {"kind": "lm", "method": "kl-to-cfg-mixture", "teacher": str(teacher_dir),
              "teacher_sha256": weights_sha256(teacher_dir), "teacher_lm_guidance": guidance, "lm_guidance": 1.0,
              "student_lm": {"n_layers": scfg.lm.n_layers, "dim": scfg.lm.dim, "init": init},
              "student_size": [args.layers, args.dim],
              "teacher_lm": {"n_layers": tcfg.lm.n_layers, "dim": tcfg.lm.dim},
              "steps": run.step, "train_steps": args.steps, "finished": run.finished,
              "shipped_step": best["step"] if best["state"] is not None else run.step,
              "valid_kl": None if best["state"] is None else round(best["valid_kl"], 5),
              "lr": args.lr, "batch": args.batch, "seed": args.seed, "data": str(args.data),
              "wall_seconds": round(run.seconds, 1), "teacher_distillation": _config_json(teacher_dir).get(
                  "distillation")}
    return save_student(out, out_model, teacher_dir, record)


def combine(lm_dir: Path, dpd_dir: Path, out: Path) -> Path:
    """A checkpoint with the LM (and LM guidance) of ``lm_dir`` and everything else of ``dpd_dir`` (its DPD, default
    steps and VAE); both must come from one teacher's VAE and tokenizer. An ``out`` already made from these exact
    weights is left as it is."""
    if (Path(out) / "config.json").is_file() and (Path(out) / "model.safetensors").is_file():
        rec = _config_json(out).get("distillation") or {}
        if rec.get("lm_sha256") == weights_sha256(lm_dir) and rec.get("dpd_sha256") == weights_sha256(dpd_dir):
            log.info("%s already combines these students; nothing to do", out)
            return Path(out)
    a, b = MeLoDy.load(lm_dir), MeLoDy.load(dpd_dir)
    for name in ("vae",):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
            raise ConfigError(f"{lm_dir} and {dpd_dir} have different {name} weights: not students of one teacher")
    ta, tb = (Path(d) / "tokenizer.npz" for d in (lm_dir, dpd_dir))
    if ta.is_file() and tb.is_file() and sha256(ta) != sha256(tb):
        raise ConfigError(f"{lm_dir} and {dpd_dir} have different semantic tokenizers")
    cfg = dataclasses.replace(b.cfg, lm=a.cfg.lm, lm_guidance=a.cfg.lm_guidance).validate()
    model = MeLoDy(cfg)
    model.lm.load_state_dict(a.lm.state_dict())
    model.dpd.load_state_dict(b.dpd.state_dict())
    model.vae.load_state_dict(b.vae.state_dict())
    record = {"kind": "combined", "lm": _config_json(lm_dir).get("distillation"), "lm_from": str(lm_dir),
              "lm_sha256": weights_sha256(lm_dir), "dpd": _config_json(dpd_dir).get("distillation"),
              "dpd_from": str(dpd_dir), "dpd_sha256": weights_sha256(dpd_dir), "steps": cfg.dpd_steps}
    return save_student(out, model, Path(dpd_dir), record)


# --- report -----------------------------------------------------------------------------------------------------

REPORT_PROMPT = "a slow chorale for string ensemble in G major"  # benchmarks.workloads.PROMPT


@dataclasses.dataclass
class RowSpec:
    """One row of the report: a model (bundle or checkpoint), its DPD steps (None: the model's default) and the
    ``training.evaluate`` JSON of that model at those steps (None: no quality columns)."""

    name: str
    model: str
    steps: int | None
    eval_json: Path | None


def _dpd_latents(gen: Any, tokens: list[np.ndarray], steps: int, seed: int) -> list[np.ndarray]:
    """The latents ``gen``'s DPD samples at ``steps`` for each token sequence, from seeded noise (the denoiser of
    ``Generator._dpd``, with the model's DPD guidance)."""
    from melody_edge.sampling import get_schedule, sample

    c = gen.config
    out = []
    for i, tok in enumerate(tokens):
        null = np.full_like(tok, c.dpd.sem_vocab)
        z0 = np.random.default_rng([seed, i]).standard_normal((1, len(tok) * c.frames_per_token, c.vae.latent_dim),
                                                               dtype=np.float32)

        def denoise(z, angles, guidance, tok=tok, null=null):
            if guidance == 1.0:
                return gen.backend.dpd(z, angles, tok[None])
            v = gen.backend.dpd(np.concatenate([z, z]), np.concatenate([angles, angles]), np.stack([tok, null]))
            return v[1:] + guidance * (v[:1] - v[1:])

        out.append(sample(denoise, z0, get_schedule("paper", steps), guidance=c.guidance)[0])
    return out


def gate_of(model: str, gen: Any) -> str:
    """The bundle's parity gate as a table cell: 'passed', 'failed: ...', or, for a bundle exported with
    ``--no-check`` after the gate refused it, 'refused: <figures>' (from ``<bundle>.failed/parity.json``, where
    ``conversion.export`` leaves a refused bundle); '-' for a torch checkpoint."""
    bundle = getattr(gen.backend, "bundle", None)
    if bundle is None:
        return "-"
    passed = (bundle.manifest.get("gate") or {}).get("passed")
    if passed is True:
        return "passed"
    if passed is False:
        return "failed: " + ", ".join(bundle.manifest["gate"].get("failed", []))
    refused = Path(model).with_name(Path(model).name + ".failed") / "parity.json"
    if refused.is_file():
        return "refused: " + ", ".join(json.loads(refused.read_text()).get("failed", []))
    return "not run"


def measure_row(spec: RowSpec, tokens: list[np.ndarray], *, seconds: float, repeats: int, seed: int
                ) -> dict[str, Any]:
    """Cost of one row in this process: forward passes and network evaluations per ``seconds`` of audio (one
    ``generate``), the median wall time over ``repeats`` after a warm-up, and the DPD latents for ``tokens``."""
    from melody_edge.generator import Generator

    gen = Generator(spec.model)
    steps = spec.steps or gen.config.dpd_steps
    gen.generate(REPORT_PROMPT, seconds, seed=seed, steps=steps)  # warm-up: sessions, caches
    walls, stats = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        audio = gen.generate(REPORT_PROMPT, seconds, seed=seed, steps=steps)
        walls.append(time.perf_counter() - t0)
        stats = audio.stats
    c = gen.config
    batch = {"text": 1, "lm": 2 if c.lm_guidance != 1.0 else 1, "dpd": 2 if c.guidance != 1.0 else 1, "vae": 1}
    passes = dict(stats.passes)
    evals = {k: v * batch.get(k, 1) for k, v in passes.items()}
    return {"name": spec.name, "model": spec.model, "steps": steps, "backend": gen.info.get("backend"),
            "precision": getattr(getattr(gen.backend, "bundle", None), "precision", "fp32"),
            "lm_guidance": c.lm_guidance, "guidance": c.guidance, "lm_layers": c.lm.n_layers, "lm_dim": c.lm.dim,
            "passes": passes, "evaluations": evals, "passes_total": sum(passes.values()),
            "evaluations_total": sum(evals.values()), "wall_seconds": walls, "rtf": statistics.median(walls) / seconds,
            "stage_seconds": dict(stats.seconds), "gate": gate_of(spec.model, gen),
            "latents": _dpd_latents(gen, tokens, steps, seed)}


QUALITY = (("key_ff", "freeform", "key_match"), ("tempo_ff", "freeform", "tempo_match"),
           ("key_cap", "captions", "key_match"), ("tempo_cap", "captions", "tempo_match"),
           ("fd_cap", "captions", "fd"))
COLUMNS = (("steps", "DPD steps"), ("lm_guidance", "LM CFG"), ("lm_passes", "LM passes"),
           ("dpd_passes", "DPD passes"), ("passes_total", "passes / 10 s"), ("evaluations_total", "net evals / 10 s"),
           ("lm_evals", "LM evals"), ("dpd_evals", "DPD evals"), ("rtf", "RTF"),
           ("key_ff", "key (free-form)"), ("tempo_ff", "tempo (free-form)"), ("key_cap", "key (captions)"),
           ("tempo_cap", "tempo (captions)"), ("fd_cap", "Frechet (captions)"), ("snr_db", "latent SNR dB"),
           ("gate", "int8 parity gate"))


def quality_of(eval_json: Path | None) -> dict[str, Any]:
    """The text_only key/tempo match (free-form prompts and captions) and the captions' Frechet distance of a
    ``training.evaluate`` report, with its settings."""
    if eval_json is None:
        return {}
    rep = json.loads(Path(eval_json).read_text())
    out: dict[str, Any] = {"eval": str(eval_json), "eval_steps": rep["config"].get("steps_used"),
                           "eval_n": rep["config"]["n"], "eval_n_prompts": rep["config"]["n_prompts"]}
    for col, section, metric in QUALITY:
        out[col] = ((rep.get(section) or {}).get("text_only") or {}).get(metric)
    return out


def check_targets(rows: dict[str, dict[str, Any]], pairs: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Issue 12's targets: a DPD student within 10% of its teacher row on key, tempo (higher is better) and Frechet
    distance (lower is better) at half its DPD evaluations or less; an LM student within 10% on key and tempo at half
    the LM evaluations or less. ``pairs``: (kind 'dpd'|'lm', student row, teacher row)."""
    out = []
    for kind, s_name, t_name in pairs:
        s, t = rows[s_name], rows[t_name]
        metrics = ["key_ff", "tempo_ff", "key_cap", "tempo_cap"] + (["fd_cap"] if kind == "dpd" else [])
        for m in metrics:
            a, b = s.get(m), t.get(m)
            ok = None if a is None or b is None else (a <= 1.1 * b if m == "fd_cap" else a >= 0.9 * b)
            out.append({"student": s_name, "teacher": t_name, "measure": m, "student_value": a, "teacher_value": b,
                        "target": "<= 1.1 x teacher" if m == "fd_cap" else ">= 0.9 x teacher", "met": ok})
        stage = "dpd_evals" if kind == "dpd" else "lm_evals"
        a, b = s[stage], t[stage]
        out.append({"student": s_name, "teacher": t_name, "measure": stage, "student_value": a, "teacher_value": b,
                    "target": "<= 0.5 x teacher", "met": a <= 0.5 * b})
    return out


def report(specs: Sequence[RowSpec], data: Path, out: Path, *, reference: str | None = None, n_snr: int = 8,
           snr_split: str = "test", seconds: float = 10.0, repeats: int = 3, seed: int = 0,
           targets: Sequence[tuple[str, str, str]] = (), title: str = "Distillation: quality versus cost"
           ) -> dict[str, Any]:
    """Measure every row in this process (see ``measure_row``), join the evaluation JSONs, and write ``out`` (.md),
    ``out`` with .json and .png (the plot, if matplotlib is installed); returns the report."""
    from conversion.common import git_commit
    from melody_edge.generator import Generator
    from training.evaluate import load_clip, pick_rows

    ref_name = reference or specs[0].name
    ref_spec = next(s for s in specs if s.name == ref_name)
    ref_gen = Generator(ref_spec.model)
    c = ref_gen.config
    test = pick_rows(load_rows(data, snr_split), n_snr, seed)
    if not test:
        raise ConfigError(f"no {snr_split} clips in {data} for the latent SNR")
    samples = c.window_tokens * (c.sample_rate // c.token_rate)
    tokens = [ref_gen.backend.semantic_tokenizer.encode(load_clip(Path(data) / r["path"], c.sample_rate, samples))
              [: c.window_tokens].astype(np.int64) for r in test]
    del ref_gen
    measured = {}
    for spec in specs:
        log.info("measuring %s (%s, steps %s)", spec.name, spec.model, spec.steps or "default")
        measured[spec.name] = measure_row(spec, tokens, seconds=seconds, repeats=repeats, seed=seed)
    ref_z = measured[ref_name]["latents"]
    rows: dict[str, dict[str, Any]] = {}
    for name, m in measured.items():
        z = m.pop("latents")
        row = {**m, "lm_passes": m["passes"]["lm"], "dpd_passes": m["passes"]["dpd"],
               "lm_evals": m["evaluations"]["lm"], "dpd_evals": m["evaluations"]["dpd"],
               "snr_db": None if name == ref_name else float(np.mean([snr_db(r, e) for r, e in zip(ref_z, z,
                                                                                                   strict=True)])),
               **quality_of(next(s for s in specs if s.name == name).eval_json)}
        if row.get("eval_steps") not in (None, row["steps"]):
            log.warning("row %s: the evaluation JSON ran %s steps, the row %s", name, row["eval_steps"], row["steps"])
        rows[name] = row
    result = {"title": title, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "threads": torch.get_num_threads()},
              "method": {"seconds": seconds, "repeats": repeats, "prompt": REPORT_PROMPT, "seed": seed,
                         "snr_reference": ref_name, "snr_clips": len(tokens), "snr_data": str(data),
                         "snr_split": snr_split},
              "rows": rows, "targets": check_targets(rows, targets)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    plotted = plot(result, out.with_suffix(".png"))
    out.write_text(report_markdown(result, out.with_suffix(".png").name if plotted else None))
    log.info("wrote %s", out)
    return result


def _cell(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def report_markdown(result: dict[str, Any], png: str | None) -> str:
    """The report as markdown: method note, the table, the targets."""
    m, mach = result["method"], result["machine"]
    rows = result["rows"]
    first = next(iter(rows.values()))
    lines = [f"# {result['title']}", "",
             f"Generated by `python -m conversion.distill report` on {result['date']}, commit `{result['commit']}`, "
             f"{mach['processor']} ({mach['platform']}), {mach['threads']} torch thread(s); never typed by hand.", "",
             f"- Cost: one `Generator.generate` of {m['seconds']:g} s (\"{m['prompt']}\", seed {m['seed']}) per row, "
             f"all rows in one process; passes are `GenerationStats.passes` (calls), network evaluations count a "
             f"classifier-free-guidance batch of 2 as 2; RTF is the median wall time of {m['repeats']} run(s) after "
             "a warm-up over the audio seconds.",
             f"- Latent SNR: each row's DPD at its steps against `{m['snr_reference']}` on the semantic tokens of "
             f"{m['snr_clips']} real {m['snr_split']} clips of `{m['snr_data']}` (the same seeded noise per clip in "
             "every row), mean over clips.",
             "- Quality: `training.evaluate --rows text_only` (key and tempo match on the free-form prompts and on "
             "held-out captions; Frechet distance of the captions' clips to the real clips), per row at its steps"
             + (f" ({first.get('eval_n')} captions, {first.get('eval_n_prompts')} free-form prompts)."
                if first.get("eval_n") is not None else "."),
             "- int8 parity gate: what `conversion.export` measured for the bundle against torch; 'refused' means the "
             "gate failed and the bundle was exported again with `--no-check` so that it could be measured here.", ""]
    head = ["row", *(h for _, h in COLUMNS)]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in rows.items():
        cells = [_cell(r.get(k), 4 if k == "rtf" else 2 if k == "snr_db" else 3) for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result["targets"]:
        lines += ["", "## Targets", "", "| student | teacher | measure | student | teacher | target | met |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['student']} | {t['teacher']} | {t['measure']} | {_cell(t['student_value'])} | "
                  f"{_cell(t['teacher_value'])} | {t['target']} | {_cell(t['met'])} |" for t in result["targets"]]
    if png:
        lines += ["", f"![quality versus cost]({png})"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Quality (key match on the free-form prompts, captions' Frechet distance, latent SNR) against RTF, one point
    per row, as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'melody-edge[train]'): no plot")
        return False
    panels = (("key_ff", "key match (free-form)"), ("fd_cap", "Frechet distance (captions, lower is better)"),
              ("snr_db", f"latent SNR to {result['method']['snr_reference']} (dB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, r in result["rows"].items():
            if r.get(key) is None:
                continue
            ax.scatter(r["rtf"], r[key], color="C1" if "student" in name else "C0")
            ax.annotate(name, (r["rtf"], r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("RTF (wall s per audio s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(result["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- CLI --------------------------------------------------------------------------------------------------------

def _parse_row(values: list[str]) -> RowSpec:
    name, model, steps, ev = values
    return RowSpec(name, model, None if steps == "default" else int(steps), None if ev == "-" else Path(ev))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``dpd``, ``lm``, ``combine`` or ``report``."""
    p = argparse.ArgumentParser(prog="python -m conversion.distill", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dpd", help="step-distill the DPD")
    _add_run_args(d, batch=8, lr=1e-4)
    d.add_argument("--steps", type=int, required=True, help="DPD sampling steps of the student")
    d.add_argument("--round-steps", type=int, default=400, help="optimizer steps per round")
    d.add_argument("--method", choices=METHODS, default="progressive")
    d.add_argument("--schedule", choices=("paper", "uniform"), default="paper")
    d.add_argument("--crop-p", type=float, default=0.25, help="probability of a batch of 1 .. n_chunks-1 chunks")
    d.add_argument("--prefix-p", type=float, default=0.3, help="probability of clean leading chunks in a sample")
    d.add_argument("--grid-p", type=float, default=0.5, help="progressive: fraction of steps on the integer grid")
    d.add_argument("--cd-grid", type=int, default=16, help="consistency: the teacher's step grid (paper schedule)")
    lm = sub.add_parser("lm", help="distill the LM's classifier-free guidance into a student")
    _add_run_args(lm, batch=16, lr=3e-4)
    lm.add_argument("--steps", type=int, default=400, help="optimizer steps")
    lm.add_argument("--layers", type=int, default=None, help="student layers (default: the teacher's)")
    lm.add_argument("--dim", type=int, default=None, help="student width (default: the teacher's)")
    cb = sub.add_parser("combine", help="the LM of one student with the DPD of another")
    cb.add_argument("--lm", type=Path, required=True)
    cb.add_argument("--dpd", type=Path, required=True)
    cb.add_argument("--out", type=Path, required=True)
    rp = sub.add_parser("report", help="the quality-versus-cost table and plot")
    rp.add_argument("--row", nargs=4, action="append", required=True, metavar=("NAME", "MODEL", "STEPS", "EVAL"),
                    help="a row: name, bundle or checkpoint, DPD steps (or 'default'), evaluate JSON (or '-')")
    rp.add_argument("--reference", default=None, help="row the latent SNR is measured against (default: the first)")
    rp.add_argument("--target", nargs=3, action="append", default=[], metavar=("KIND", "STUDENT", "TEACHER"),
                    help="check issue 12's target for a student row against a teacher row (KIND dpd or lm)")
    rp.add_argument("--data", type=Path, default=DEFAULT_DATA)
    rp.add_argument("--snr-clips", type=int, default=8, help="real clips whose tokens the latent SNR uses")
    rp.add_argument("--snr-split", default="test")
    rp.add_argument("--seconds", type=float, default=10.0)
    rp.add_argument("--repeats", type=int, default=3)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--threads", type=int, default=1)
    rp.add_argument("--title", default="Distillation: quality versus cost")
    rp.add_argument("--out", type=Path, required=True, help="markdown table; .json and .png beside it")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.command == "dpd":
        distill_dpd(a)
    elif a.command == "lm":
        distill_lm(a)
    elif a.command == "combine":
        combine(a.lm, a.dpd, a.out)
    else:
        import os

        os.environ.setdefault("MELODY_EDGE_THREADS", str(a.threads))
        torch.set_num_threads(a.threads)
        report([_parse_row(r) for r in a.row], a.data, a.out, reference=a.reference, n_snr=a.snr_clips,
               snr_split=a.snr_split,
               seconds=a.seconds, repeats=a.repeats, seed=a.seed, targets=[tuple(t) for t in a.target],
               title=a.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
