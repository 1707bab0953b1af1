"""What the three training scripts (``train_vae``, ``train_dpd``, ``train_lm``) share.

- the common command-line flags (``parse_args``);
- ``Run``: device and threads, DDP under ``torchrun`` (``WORLD_SIZE`` > 1: one process per rank, data sharded by
  rank, only rank 0 writes), seeds, a resumable checkpoint ``<out>/train_<part>.pt``, a JSON-lines log
  ``<out>/train_<part>.log``, the cosine learning-rate schedule and the training loop with its tqdm bar;
- ``ship_part``: put one trained part into the shipped checkpoint folder ``<out>/`` (``MeLoDy.save``), keeping the
  other parts and their training records;
- dataset helpers: clip rows, the audio of a split as one array, semantic tokens of a split.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from melody_edge.errors import ConfigError
from melody_edge.models.config import ModelConfig, get_config
from melody_edge.models.melody import MeLoDy
from melody_edge.tokenizer import SemanticTokenizer

log = logging.getLogger(__name__)


def parse_args(description: str, argv: Sequence[str] | None, *, batch: int, lr: float, eval_clips: int,
               add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse the flags every script has (defaults of ``--batch``, ``--lr``, ``--eval-clips`` per script) plus
    the script's own flags added by ``add_args``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="dataset root (train.jsonl, valid.jsonl, wavs)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder, shared by the three scripts")
    p.add_argument("--preset", default="tiny",
                   help="model preset (debug, tiny or paper), or a checkpoint folder whose config.json to train")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps (the schedule's length)")
    p.add_argument("--batch", type=int, default=batch, help="batch size per process")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps before the cosine decay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--time-limit-min", type=float, default=None, help="stop, save and ship after this many minutes")
    p.add_argument("--lr-by-time", action="store_true",
                   help="run the learning-rate schedule over the time limit too (whichever of steps and time is "
                        "further along), so a run cut by --time-limit-min still ends at the schedule's floor")
    p.add_argument("--save-every", type=int, default=200, help="steps between resumable checkpoints")
    p.add_argument("--log-every", type=int, default=20, help="steps between log lines (losses averaged)")
    p.add_argument("--eval-every", type=int, default=200, help="steps between validation passes")
    p.add_argument("--eval-clips", type=int, default=eval_clips, help="valid clips used by the validation pass")
    if add_args is not None:
        add_args(p)
    return p.parse_args(argv)


def preset_config(preset: str) -> ModelConfig:
    """The config of a preset name (``debug``, ``tiny``, ``paper``) or of the checkpoint folder ``preset`` (its
    ``config.json``): a folder trains networks other than the preset's, such as a DPD with control inputs
    (``training/dpd_controls.sh``)."""
    from melody_edge.models.config import PRESETS

    if preset in PRESETS:
        return get_config(preset)
    path = Path(preset) / "config.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)} or a checkpoint folder "
                          f"with a config.json")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text())["config"]).validate()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a model config: {exc}") from exc


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


class Run:
    """One training run of one part: environment, resumable state, logging and the loop.

    Rank ``r`` of ``W`` draws its batches from the clip indices ``r::W`` (``shard``) with its own generators
    ``rng`` (numpy, ``[seed, r]``) and ``gen`` (torch, on the device). The checkpoint holds the modules and
    optimizers passed to ``train``, the step, the wall time so far and rank 0's generator states; on resume
    the other ranks reseed with ``[seed, r, step]``.
    """

    def __init__(self, args: argparse.Namespace, part: str) -> None:
        self.args, self.part = args, part
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank, self.world = (dist.get_rank(), world) if world > 1 else (0, 1)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        default = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(args.device or default)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)  # model initialisation: identical on every rank
        self.rng = np.random.default_rng([args.seed, self.rank])
        self.gen = torch.Generator(self.device).manual_seed(args.seed * 1_000 + self.rank)
        self.cfg: ModelConfig = preset_config(args.preset)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out / f"train_{part}.pt"
        self.log_path = self.out / f"train_{part}.log"
        self.step, self.seconds_before, self.finished = 0, 0.0, False
        self._t0 = time.monotonic()

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def seconds(self) -> float:
        """Training wall time over all runs of this part so far."""
        return self.seconds_before + time.monotonic() - self._t0

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the other ranks (which then find rank 0's cache files)."""
        if self.world > 1 and not self.is_main:
            dist.barrier()
        yield
        if self.world > 1 and self.is_main:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device and wrap it in DDP when running distributed."""
        module = module.to(self.device)
        if self.world == 1:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, n: int) -> np.ndarray:
        """Indices of the clips this rank trains on."""
        return np.arange(n)[self.rank :: self.world]

    def log_line(self, record: dict[str, Any]) -> None:
        """Append one JSON line (step, seconds and ``record``) to the log (rank 0 only)."""
        if self.is_main:
            line = {"step": self.step, "seconds": round(self.seconds, 2), **record}
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def _resume(self, modules: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer]) -> None:
        if not self.ckpt_path.is_file():
            return
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        for name, module in modules.items():
            unwrap(module).load_state_dict(state["modules"][name])
        for name, opt in optims.items():
            opt.load_state_dict(state["optims"][name])
        self.step, self.seconds_before = state["step"], state["seconds"]
        if self.is_main:
            self.rng.bit_generator.state = state["rng"]
            self.gen.set_state(state["gen"].cpu())
        else:
            self.rng = np.random.default_rng([self.args.seed, self.rank, self.step])
            self.gen.manual_seed(self.args.seed * 1_000 + self.rank + 7_919 * self.step)
        log.info("resumed %s from %s at step %d", self.part, self.ckpt_path, self.step)

    def _save(self, modules: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer]) -> None:
        if not self.is_main:
            return
        state = {"step": self.step, "seconds": self.seconds, "args": {k: str(v) for k, v in vars(self.args).items()},
                 "modules": {n: unwrap(m).state_dict() for n, m in modules.items()},
                 "optims": {n: o.state_dict() for n, o in optims.items()},
                 "rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}
        tmp = self.ckpt_path.with_name(self.ckpt_path.name + ".tmp")
        try:  # under a temporary name, then renamed: a kill mid-save leaves the previous checkpoint whole
            torch.save(state, tmp)
            os.replace(tmp, self.ckpt_path)
        finally:
            tmp.unlink(missing_ok=True)

    def _schedule_step(self) -> int:
        """The step the learning-rate schedule is at: ``step``, or with ``--lr-by-time`` the further along of
        ``step`` and the share of the time limit used (counted from this process's start, as the limit is)."""
        limit = self.args.time_limit_min
        if not getattr(self.args, "lr_by_time", False) or limit is None:
            return self.step
        used = (time.monotonic() - self._t0) / (60.0 * limit)
        return max(self.step, min(self.args.steps, int(used * self.args.steps)))

    def _out_of_time(self) -> bool:
        limit = self.args.time_limit_min
        stop = torch.tensor(float(limit is not None and time.monotonic() - self._t0 > 60.0 * limit))
        if self.world > 1:  # every rank must stop at the same step
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        return bool(stop.item())

    def train(self, step_fn: Callable[[], dict[str, float]], modules: dict[str, nn.Module],
              optims: dict[str, torch.optim.Optimizer], eval_fn: Callable[[], dict[str, float]] | None = None) -> None:
        """Resume if a checkpoint exists, then call ``step_fn`` (one optimizer step, returns its losses) until
        ``--steps`` or the time limit, setting every optimizer's learning rate by ``cosine_lr`` first; log,
        evaluate (``eval_fn``) and save on their intervals and save at the end."""
        self._resume(modules, optims)
        bar = tqdm(total=self.args.steps, initial=self.step, desc=f"train {self.part}", disable=not self.is_main,
                   unit="step", dynamic_ncols=True)
        sums: dict[str, float] = defaultdict(float)
        count = 0
        while self.step < self.args.steps and not self._out_of_time():
            lr = cosine_lr(self._schedule_step(), self.args.steps, self.args.warmup, self.args.lr)
            for opt in optims.values():
                for group in opt.param_groups:
                    group["lr"] = lr
            for k, v in step_fn().items():
                sums[k] += v
            count += 1
            self.step += 1
            bar.update()
            if self.step % self.args.log_every == 0 or self.step == self.args.steps:
                means = {k: round(v / count, 5) for k, v in sums.items()}
                bar.set_postfix(means)
                self.log_line({"lr": lr, **means})
                sums, count = defaultdict(float), 0
            if eval_fn is not None and self.step % self.args.eval_every == 0:
                self.log_line({k: round(v, 5) for k, v in eval_fn().items()})
            if self.step % self.args.save_every == 0:
                self._save(modules, optims)
        bar.close()
        self.finished = self.step >= self.args.steps
        if eval_fn is not None and self.step % self.args.eval_every:
            self.log_line({k: round(v, 5) for k, v in eval_fn().items()})
        self._save(modules, optims)

    def finish(self, module_state: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> None:
        """Ship the trained part (rank 0), recording ``extra`` beside the run's figures, and leave the process
        group."""
        if self.is_main:
            info = {"steps": self.step, "finished": self.finished, "wall_seconds": round(self.seconds, 1),
                    "data": str(self.args.data), "seed": self.args.seed, "batch": self.args.batch * self.world,
                    "lr": self.args.lr, **(extra or {})}
            ship_part(self.out, self.cfg, self.part, module_state, info)
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()


SAMPLING_DEFAULTS = ("guidance", "lm_guidance", "dpd_steps", "temperature")  # ModelConfig fields


def ship_part(out: Path, cfg: ModelConfig, part: str, module_state: dict[str, torch.Tensor],
              info: dict[str, Any]) -> None:
    """Write ``part``'s weights into the checkpoint folder ``out`` (``MeLoDy.save``), keeping the other parts.

    Loads ``out/model.safetensors`` if present (else starts from a fresh ``MeLoDy(cfg)``; its networks must be
    ``cfg``'s, its ``SAMPLING_DEFAULTS`` may differ and are kept), replaces the weights of
    ``part`` (``lm``, ``dpd`` or ``vae``) and records ``info`` under ``training.<part>`` in ``config.json``.
    """
    out = Path(out)
    training: dict[str, Any] = {}
    if (out / "model.safetensors").is_file():
        model = MeLoDy.load(out, strict=False)
        # the folder's sampling defaults (a shipped model's distilled steps, its temperature) are kept: they are
        # settings of the model, not of the networks trained here
        if dataclasses.replace(model.cfg, **{k: getattr(cfg, k) for k in SAMPLING_DEFAULTS}) != cfg:
            raise ConfigError(f"{out} holds a '{model.cfg.name}' model whose config differs from preset "
                              f"'{cfg.name}'; use another --out")
        training = json.loads((out / "config.json").read_text()).get("training", {})
    else:
        model = MeLoDy(cfg)
    getattr(model, part).load_state_dict(module_state)
    training[part] = info
    model.save(out, parts=("lm", "dpd", "vae"), extra={"training": training})
    log.info("shipped %s (%d steps) into %s", part, info["steps"], out)


def load_rows(data: Path, split: str) -> list[dict[str, Any]]:
    """The clip rows of ``<data>/<split>.jsonl`` (empty list when the split file is missing)."""
    path = Path(data) / f"{split}.jsonl"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_audio(data: Path, rows: list[dict[str, Any]], samples: int) -> np.ndarray:
    """The clips of ``rows`` as one float32 array (N, samples): mono, cut or zero-padded to ``samples``."""
    import soundfile as sf

    audio = np.zeros((len(rows), samples), dtype=np.float32)
    for i, row in enumerate(tqdm(rows, desc="load audio", unit="clip", leave=False)):
        x, _ = sf.read(Path(data) / row["path"], dtype="float32", always_2d=True)
        x = x.mean(axis=1)[:samples]
        audio[i, : x.shape[0]] = x
    return audio


def load_tokens(data: Path, out: Path, split: str, rows: list[dict[str, Any]], n_tokens: int,
                vocab: int) -> np.ndarray:
    """Semantic tokens of ``rows`` (N, n_tokens) int64 from ``<data>/tokens_<split>.npz``; if that file is missing
    or was made by another tokenizer than ``<out>/tokenizer.npz`` (its recorded fingerprint differs), tokenize the
    split with ``<out>/tokenizer.npz`` first (and save the file)."""
    from training.tokenizer import FINGERPRINT_KEY, tokenize_dataset, tokenizer_fingerprint

    path = Path(data) / f"tokens_{split}.npz"
    tokenizer = SemanticTokenizer.load(Path(out) / "tokenizer.npz")
    table = None
    if path.is_file():
        with np.load(path) as z:
            table = {k: z[k] for k in z.files}
        if str(table.pop(FINGERPRINT_KEY, "")) != tokenizer_fingerprint(tokenizer):
            log.info("%s was made by another tokenizer; tokenizing %s again", path, split)
            table = None
    if table is None:
        table = tokenize_dataset(tokenizer, Path(data), split)
    tokens = np.zeros((len(rows), n_tokens), dtype=np.int64)
    for i, row in enumerate(rows):
        t = table[Path(row["path"]).stem][:n_tokens]
        tokens[i, : t.shape[0]] = t
    if tokens.max(initial=0) >= vocab:
        raise ConfigError(f"{path} holds token ids up to {tokens.max()} but the model's vocabulary is {vocab}; "
                          f"fit the tokenizer with --vocab {vocab}")
    return tokens
