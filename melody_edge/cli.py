"""``melody-edge`` command line: ``generate``, ``stream`` and ``info``, mirroring the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from melody_edge.errors import MelodyEdgeError


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="text description of the music")
    p.add_argument("-o", "--output", required=True, help="output file (.wav, .flac or .ogg)")
    p.add_argument("--preset", "--bundle", dest="bundle", default="tiny",
                   help="'tiny' (bundled model), 'debug', 'paper', or a checkpoint folder")
    p.add_argument("--backend", default="auto", help="auto | torch")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default 8)")
    p.add_argument("--guidance", type=float, default=None,
                   help="DPD classifier-free guidance (default: the model's; 1 for tiny)")
    p.add_argument("--lm-guidance", type=float, default=None,
                   help="LM classifier-free guidance (default: the model's; 3 for tiny)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _Bar:
    """Progress on stderr (tqdm), one bar per stage."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = self.bars[stage] = tqdm(total=total, desc=f"{stage:>3}", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _kwargs(a: argparse.Namespace) -> dict:
    return {"seed": a.seed, "steps": a.steps, "guidance": a.guidance, "lm_guidance": a.lm_guidance,
            "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p}


def _cmd_generate(a: argparse.Namespace) -> int:
    from melody_edge import Generator
    from melody_edge.audio import check_output_path

    out = check_output_path(a.output)  # fail before loading anything
    gen = Generator(a.bundle, a.backend)
    bar = _Bar(not a.quiet)
    try:
        audio = gen.generate(a.prompt, a.seconds, progress=bar, **_kwargs(a))
    finally:
        bar.close()
    audio.save(out)
    s = audio.stats
    print(f"wrote {out} ({audio.seconds:.2f} s) in {s.total_seconds:.2f} s, RTF {s.rtf:.3f}, "
          f"passes {s.passes}", file=sys.stderr)
    return 0


def _cmd_stream(a: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from melody_edge import Generator
    from melody_edge.audio import SUPPORTED_EXTENSIONS, check_output_path

    out = check_output_path(a.output)
    gen = Generator(a.bundle, a.backend)
    bar = _Bar(not a.quiet)
    fd, tmp = tempfile.mkstemp(prefix=".melody-edge-", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    written = 0.0
    try:
        with sf.SoundFile(tmp, "w", gen.sample_rate, 1, format=SUPPORTED_EXTENSIONS[out.suffix.lower()]) as f:
            for chunk in gen.stream(a.prompt, seconds=a.seconds, progress=bar, **_kwargs(a)):
                f.write(np.clip(chunk.samples, -1, 1))
                written += chunk.seconds
                print(f"{written:.2f} s written (chunk RTF {chunk.stats.rtf:.3f})", file=sys.stderr)
        os.replace(tmp, out)
    except KeyboardInterrupt:
        os.replace(tmp, out)  # what was streamed so far is a valid file
    finally:
        bar.close()
        Path(tmp).unlink(missing_ok=True)
    print(f"wrote {out} ({written:.2f} s)", file=sys.stderr)
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from melody_edge import Generator

    print(json.dumps(Generator(a.bundle, a.backend).info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from melody_edge import __version__

    parser = argparse.ArgumentParser(prog="melody-edge", description="Fast on-device text-to-music (MeLoDy).")
    parser.add_argument("--version", action="version", version=f"melody-edge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a song to a file")
    _sampling_args(g)
    g.add_argument("--seconds", type=float, default=10.0, help="duration (default 10, max 600)")
    g.set_defaults(func=_cmd_generate)
    s = sub.add_parser("stream", help="stream chunks into a file as they are made (Ctrl-C stops, keeps the file)")
    _sampling_args(s)
    s.add_argument("--seconds", type=float, default=None, help="duration (default: endless until Ctrl-C)")
    s.set_defaults(func=_cmd_stream)
    i = sub.add_parser("info", help="describe the model")
    i.add_argument("--preset", "--bundle", dest="bundle", default="tiny")
    i.add_argument("--backend", default="auto")
    i.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``melody-edge`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except MelodyEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
