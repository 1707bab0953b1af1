"""Carry the DPD's training data to a machine that has none of the audio (a lent GPU), train there, bring it back.

``python -m training.latent_pack pack --data data/music --checkpoint checkpoints/ctl8 --clips 5000 --out .gpu``
``python -m training.latent_pack unpack --pack .gpu --data /tmp/data --checkpoint /tmp/teacher`` (there)
``python -m training.latent_pack extract --checkpoint /tmp/student --out $OUT/student`` (there)
``python -m training.latent_pack merge --part $OUT/student --checkpoint checkpoints/ctl8 --out checkpoints/gpu4``

``pack`` writes, small enough to travel (about 10 KB a clip):

- ``latents.xz``: the cached VAE latents (``training.train_dpd.latents``, computed here if missing) of ``--clips``
  train clips drawn with ``--seed``. The latents are clipped to [-1, 1] by the VAE (``to_diffusion``), so they are
  quantised to ``round(63 z)`` (a step of 1/63: 40 dB under the latents' own level, far under the DPD's own error of
  about 25 dB), differenced along time and lzma-compressed.
- ``rows.jsonl.xz`` (id, path, the metadata ``dpd_control_ids`` reads) of those clips and of ``--valid`` valid clips;
  ``tokens.npz``: their semantic tokens (int16) and the tokenizer's fingerprint.
- ``dpd.safetensors`` (the checkpoint's DPD in fp16), ``config.json`` and ``tokenizer.npz``.

``unpack`` writes a data folder (``train.jsonl``, ``valid.jsonl``, ``tokens_*.npz``) and a checkpoint folder
(``config.json``, ``tokenizer.npz``, ``model.safetensors``, ``latents_train.npy/json``) that ``training.train_dpd``
and ``conversion.distill dpd`` read as they are. Only the DPD there is real: the LM and the VAE are freshly
initialised stand-ins (the latents are keyed to that VAE, so nothing encodes audio there). ``extract`` writes a
trained folder's DPD (fp32) and its ``config.json`` (with the training or distillation record); ``merge`` puts them
into a copy of the real checkpoint here: its LM and VAE, the trained DPD and the returned config (steps, guidance,
records).
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melody_edge.errors import ConfigError
from melody_edge.models.config import ModelConfig
from melody_edge.models.melody import MeLoDy
from melody_edge.tokenizer import SemanticTokenizer
from training.common import Run, load_rows, load_tokens

log = logging.getLogger(__name__)

LEVELS = 63  # latents in [-1, 1] -> int8 in [-63, 63]; the time differences then fit int8 too
ROW_KEYS = ("id", "split", "path", "piece", "metadata")
META_KEYS = ("tonic_pc", "mode", "bpm", "meter", "ensemble", "programs")  # what training.captions.controls_of reads


def quantise(z: np.ndarray) -> bytes:
    """(N, L, C) float latents in [-1, 1] -> lzma bytes of the int8 time differences of ``round(63 z)``."""
    if np.abs(z).max(initial=0.0) > 1.0 + 1e-6:
        raise ConfigError(f"latents reach {np.abs(z).max():.3f}; expected the VAE's clipped range [-1, 1]")
    q = np.round(np.clip(z, -1.0, 1.0) * LEVELS).astype(np.int16)
    d = np.diff(q, axis=1, prepend=0).astype(np.int8)  # |difference| <= 126
    return lzma.compress(np.ascontiguousarray(d).tobytes(), preset=6)


def dequantise(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``quantise``: float32 (N, L, C) on the 1/63 grid."""
    d = np.frombuffer(lzma.decompress(blob), dtype=np.int8).reshape(shape)
    return (np.cumsum(d.astype(np.int16), axis=1) / LEVELS).astype(np.float32)


def _train_latents(data: Path, checkpoint: Path, rows: list[dict[str, Any]], threads: int) -> np.ndarray:
    from training.train_dpd import latents

    ns = argparse.Namespace(data=data, out=checkpoint, preset=str(checkpoint), seed=0, threads=threads, device="cpu")
    run = Run(ns, "pack")
    return latents(run, MeLoDy.load(checkpoint, strict=False).vae, rows)


def pack(data: Path, checkpoint: Path, out: Path, clips: int, valid: int, seed: int, threads: int = 2) -> Path:
    """Write the pack (module docstring) of ``clips`` train clips of ``data`` for the DPD of ``checkpoint``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(data, "train")
    if not rows:
        raise ConfigError(f"no training clips in {data}/train.jsonl")
    z_all = _train_latents(data, checkpoint, rows, threads)
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(clips, len(rows)), replace=False))
    z = np.asarray(z_all[pick])
    (out / "latents.xz").write_bytes(quantise(z))
    model = MeLoDy.load(checkpoint, strict=False)
    cfg = model.cfg
    train_rows = [rows[i] for i in pick]
    valid_rows = load_rows(data, "valid")[:valid]
    tokens = {"train": load_tokens(data, checkpoint, "train", train_rows, cfg.window_tokens, cfg.dpd.sem_vocab)}
    if valid_rows:
        tokens["valid"] = load_tokens(data, checkpoint, "valid", valid_rows, cfg.window_tokens, cfg.dpd.sem_vocab)
    from training.tokenizer import tokenizer_fingerprint

    np.savez_compressed(out / "tokens.npz", **{k: v.astype(np.int16) for k, v in tokens.items()},
             fingerprint=tokenizer_fingerprint(SemanticTokenizer.load(checkpoint / "tokenizer.npz")))
    lines = [json.dumps({**{k: r[k] for k in ROW_KEYS if k in r},
                         "metadata": {k: r["metadata"][k] for k in META_KEYS if k in r["metadata"]}})
             for r in [*train_rows, *valid_rows]]
    (out / "rows.jsonl.xz").write_bytes(lzma.compress("\n".join(lines).encode()))
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in model.dpd.state_dict().items()}, str(out / "dpd.safetensors"))
    for name in ("config.json", "tokenizer.npz"):
        shutil.copyfile(checkpoint / name, out / name)
    (out / "pack.json").write_text(json.dumps({"shape": list(z.shape), "levels": LEVELS, "seed": seed,
                                               "checkpoint": str(checkpoint), "data": str(data)}, indent=2))
    size = sum(p.stat().st_size for p in out.iterdir())
    log.info("packed %d clips (%s) into %s: %.1f MB", len(pick), z.shape, out, size / 1e6)
    return out


def unpack(pack_dir: Path, data: Path, checkpoint: Path) -> None:
    """Write the data folder and the stand-in checkpoint folder (module docstring) from ``pack_dir``."""
    from safetensors.torch import load_file

    from training.tokenizer import FINGERPRINT_KEY
    from training.train_dpd import vae_fingerprint

    meta = json.loads((pack_dir / "pack.json").read_text())
    z = dequantise((pack_dir / "latents.xz").read_bytes(), tuple(meta["shape"]))
    lines = lzma.decompress((pack_dir / "rows.jsonl.xz").read_bytes()).decode().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    data.mkdir(parents=True, exist_ok=True)
    checkpoint.mkdir(parents=True, exist_ok=True)
    with np.load(pack_dir / "tokens.npz") as t:
        fingerprint = str(t["fingerprint"])
        for split in ("train", "valid"):
            split_rows = [r for r in rows if r["split"] == split]
            with open(data / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in split_rows)
            if split in t.files:
                np.savez(data / f"tokens_{split}.npz", **{Path(r["path"]).stem: t[split][i].astype(np.int64)
                                                          for i, r in enumerate(split_rows)},
                         **{FINGERPRINT_KEY: fingerprint})
    for name in ("config.json", "tokenizer.npz"):
        shutil.copyfile(pack_dir / name, checkpoint / name)
    cfg = ModelConfig.from_dict(json.loads((pack_dir / "config.json").read_text())["config"])
    torch.manual_seed(0)
    model = MeLoDy(cfg)
    model.dpd.load_state_dict({k: v.float() for k, v in load_file(str(pack_dir / "dpd.safetensors")).items()})
    model.save(checkpoint, extra={"training": {"latent_pack": meta}})
    vae = MeLoDy.load(checkpoint, strict=False).vae  # the fingerprint of the VAE as train_dpd loads it
    train_rows = [r for r in rows if r["split"] == "train"]
    np.save(checkpoint / "latents_train.npy", z)
    key = {"ids": [r["id"] for r in train_rows], "vae": vae_fingerprint(vae)}
    (checkpoint / "latents_train.json").write_text(json.dumps(key))
    log.info("unpacked %d train clips %s into %s and %s", len(train_rows), z.shape, data, checkpoint)


def extract(checkpoint: Path, out: Path) -> None:
    """Write ``checkpoint``'s DPD (fp32 ``dpd.safetensors``) and its ``config.json`` into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model = MeLoDy.load(checkpoint, strict=False)
    save_file({k: v.contiguous() for k, v in model.dpd.state_dict().items()}, str(out / "dpd.safetensors"))
    shutil.copyfile(checkpoint / "config.json", out / "config.json")


def merge(part: Path, checkpoint: Path, out: Path) -> Path:
    """A checkpoint folder ``out``: the LM and VAE of ``checkpoint``, the DPD and config of ``part`` (``extract``)."""
    from safetensors.torch import load_file

    meta = json.loads((part / "config.json").read_text())
    cfg = ModelConfig.from_dict(meta["config"])
    real = MeLoDy.load(checkpoint)
    if real.cfg.lm != cfg.lm or real.cfg.vae != cfg.vae or real.cfg.dpd != cfg.dpd:
        raise ConfigError(f"{part} was trained for other networks than those of {checkpoint}")
    model = MeLoDy(cfg)
    model.lm.load_state_dict(real.lm.state_dict())
    model.vae.load_state_dict(real.vae.state_dict())
    model.dpd.load_state_dict(load_file(str(part / "dpd.safetensors")))
    extra = {k: v for k, v in meta.items() if k not in ("format", "config", "parts")}
    model.save(out, extra=extra)
    shutil.copyfile(checkpoint / "tokenizer.npz", out / "tokenizer.npz")
    log.info("merged the DPD of %s into %s -> %s", part, checkpoint, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``pack``, ``unpack``, ``extract`` and ``merge`` (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="latents, tokens, rows and the DPD of a checkpoint, to carry")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--checkpoint", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--clips", type=int, default=5000, help="train clips to carry (drawn with --seed)")
    a.add_argument("--valid", type=int, default=16, help="valid clips (tokens only) for distillation checks")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=2)
    b = sub.add_parser("unpack", help="a data folder and a stand-in checkpoint folder from a pack")
    b.add_argument("--pack", type=Path, required=True)
    b.add_argument("--data", type=Path, required=True)
    b.add_argument("--checkpoint", type=Path, required=True)
    c = sub.add_parser("extract", help="a trained folder's DPD and config.json")
    c.add_argument("--checkpoint", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    d = sub.add_parser("merge", help="an extracted DPD into a copy of the real checkpoint")
    d.add_argument("--part", type=Path, required=True)
    d.add_argument("--checkpoint", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "pack":
        pack(args.data, args.checkpoint, args.out, args.clips, args.valid, args.seed, args.threads)
    elif args.command == "unpack":
        unpack(args.pack, args.data, args.checkpoint)
    elif args.command == "extract":
        extract(args.checkpoint, args.out)
    else:
        merge(args.part, args.checkpoint, args.out)


if __name__ == "__main__":
    main()
