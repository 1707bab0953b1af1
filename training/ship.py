"""Copy a trained checkpoint into the package (fp16 weights + config + semantic tokenizer):
``python -m training.ship --checkpoint checkpoints/tiny --out melody_edge/assets/tiny``."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch

from melody_edge.models.melody import MeLoDy

log = logging.getLogger("training.ship")


def ship(checkpoint: Path, out: Path) -> Path:
    """Write ``out``/{config.json, model.safetensors (fp16), tokenizer.npz} from a training folder."""
    model = MeLoDy.load(checkpoint)
    meta = json.loads((checkpoint / "config.json").read_text())
    extra = {k: v for k, v in meta.items() if k not in ("format", "config", "parts")}
    out.mkdir(parents=True, exist_ok=True)
    model.save(out, extra=extra, dtype=torch.float16)
    shutil.copyfile(checkpoint / "tokenizer.npz", out / "tokenizer.npz")
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    log.info("shipped %s -> %s (%.1f MB)", checkpoint, out, size)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/tiny"))
    p.add_argument("--out", type=Path, default=Path("melody_edge/assets/tiny"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ship(a.checkpoint, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
