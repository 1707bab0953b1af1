"""What both exporters share: loading a checkpoint, provenance, and the staged write that makes a folder a bundle
only after its gate ran.

``staged_bundle(out)`` yields a fresh folder next to ``out`` (same file system, so the final rename is atomic); the
exporter writes every file and runs its gate there, then ``publish`` swaps it in for ``out`` whole. An export that
dies or raises before ``publish`` leaves ``out`` as it was and removes its staging folder.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from melody_edge.bundle import MANIFEST
from melody_edge.errors import ConfigError
from melody_edge.models.melody import MeLoDy

log = logging.getLogger("conversion")


def load_checkpoint(checkpoint: str | Path) -> tuple[MeLoDy, Path | None]:
    """A preset name ('tiny' = the shipped checkpoint; 'debug'/'paper' = random) or a checkpoint folder."""
    from melody_edge.generator import ASSETS
    from melody_edge.models.config import PRESETS, get_config

    name = str(checkpoint)
    if name in PRESETS and name != "tiny":
        return MeLoDy.random(get_config(name)), None
    folder = ASSETS / "tiny" if name == "tiny" else Path(checkpoint)
    return MeLoDy.load(folder), folder


def git_commit() -> str:
    """The commit of this source tree, ``-dirty`` when it has uncommitted changes, or ``unknown``."""
    cwd = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=cwd).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=cwd).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))


def _check_replaceable(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise ConfigError(f"{out} exists and is not a bundle folder: refusing to replace it; choose another --out "
                          "or remove it")


def _sibling(out: Path, what: str) -> Path:
    """A new folder ``.<name>.<what>-<random>`` beside ``out``, with the umask's mode (``mkdtemp`` would make it
    0700, and the published bundle with it)."""
    folder = out.with_name(f".{out.name}.{what}-{secrets.token_hex(4)}")
    folder.mkdir()
    return folder


@contextmanager
def staged_bundle(out: str | Path) -> Iterator[Path]:
    """A staging folder ``.<out name>.partial-*`` beside ``out``, removed unless ``publish`` moved it."""
    out = Path(out).absolute()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = _sibling(out, "partial")
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: str | Path) -> Path:
    """Replace ``out`` with ``stage`` by renames: the old bundle moves aside, the new one takes its name, the old
    one is removed. POSIX has no atomic swap of two folders, so between the two renames ``out`` is briefly absent
    (never partial); a crash there leaves the old bundle whole at ``.<name>.old-*``."""
    out = Path(out).absolute()
    _check_replaceable(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def controls_manifest(cfg: Any) -> dict[str, Any] | None:
    """The control vocabulary a bundle's graphs take (``None`` for a model without controls): the classes behind
    each input id, what "absent" is, and how the key is set (rotation of transposition-equivariant tokens)."""
    from melody_edge.controls import vocabulary

    c = cfg.controls
    if not c.enabled:
        return None
    return {**vocabulary(), "key_rotation": c.key_rotation, "beat_harmonics": c.beat_harmonics,
            "inputs": {"key": "mode index (0 major, 1 minor; 2 absent)" if c.key_rotation else
                       "key index 0..23 (tonic + 12 * minor; 24 absent)",
                       "bpm": "beats per minute (0 absent)", "metre": f"index into metres ({c.n_metres} absent)",
                       "family": f"index into families ({c.n_families} absent)",
                       "beat": "per token [sin, cos](2 pi k phase), k = 1..beat_harmonics (zeros: no tempo)",
                       **({"dpd_controls": f"the DPD's (B, 2) [family index ({cfg.dpd.n_families} absent), key index "
                                           f"0..23 (tonic + 12 * minor; {cfg.dpd.n_keys} absent)]"}
                          if cfg.dpd.controlled else {})}}


def distillation_record(folder: Path | None) -> dict[str, Any] | None:
    """The ``distillation`` record of a checkpoint's ``config.json`` (``conversion.distill``: teacher and its weights'
    hash, method, rounds, steps, settings), copied into the bundle manifest; ``None`` for a model not distilled."""
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None
    return json.loads((Path(folder) / "config.json").read_text()).get("distillation")


def write_assets(model: Any, folder: Path | None, stage: Path, files: dict[str, Any]) -> None:
    """The non-graph files of a bundle (ONNX and Core ML alike) into ``stage``, listed in ``files``: the CFG null
    prefix, the MiniLM text tokenizer and the semantic tokenizer (the checkpoint's, or a random preset's)."""
    import numpy as np
    import torch

    from melody_edge.models.melody import random_tokenizer
    from melody_edge.text import minilm_dir

    with torch.inference_mode():  # the CFG null: no text and, for a model with controls, no controls
        null = model.lm.cond.null(1)[0]
    np.save(stage / "null_prefix.npy", null.detach().numpy().astype(np.float32))
    files["null_prefix"] = {"path": "null_prefix.npy"}
    shutil.copyfile(minilm_dir() / "tokenizer.json", stage / "text_tokenizer.json")
    files["text_tokenizer"] = {"path": "text_tokenizer.json"}  # MiniLM word pieces (not semantic)
    if folder is not None and (folder / "tokenizer.npz").is_file():
        shutil.copyfile(folder / "tokenizer.npz", stage / "semantic_tokenizer.npz")
        files["semantic_tokenizer"] = {"path": "semantic_tokenizer.npz"}
    elif folder is None:  # a random preset: the random tokenizer its DPD token features come from
        random_tokenizer(model.cfg).save(stage / "semantic_tokenizer.npz")
        files["semantic_tokenizer"] = {"path": "semantic_tokenizer.npz"}
