"""``melody-edge`` command line: ``generate``, ``stream``, ``info`` and ``verify``, mirroring the Python API.

Exit status: 0 done; 1 a runtime error (bad bundle, missing backend, failed write, an unexpected error); 2 a usage
error (bad arguments, prompt or output path); 130 interrupted by Ctrl-C; 143 terminated (SIGTERM). Errors are one
line on stderr, never a traceback (``-v`` adds the traceback of unexpected errors for bug reports).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from melody_edge.errors import ConfigError, InvalidInputError, MelodyEdgeError, OutputPathError

log = logging.getLogger("melody_edge.cli")
USAGE_ERRORS = (InvalidInputError, ConfigError, OutputPathError)  # the arguments are wrong: exit 2


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporary files."""


class _WriteFailed(MelodyEdgeError):
    """Writing the result failed after the work was done (disk full, ...): a runtime error, exit 1."""


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
    p.add_argument("--key", default=None, help='key, overriding the prompt\'s: "A minor", "Bb major", "F#m"')
    p.add_argument("--bpm", type=float, default=None, help="tempo in beats per minute (30-300), overriding the prompt")
    p.add_argument("--metre", "--meter", dest="metre", default=None, help='time signature such as "3/4" or "6/8"')
    p.add_argument("--instrument", default=None,
                   help="instrument or family (piano, organ, strings, fiddle, brass, flute, choir, ...)")
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
            "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p, "key": a.key, "bpm": a.bpm,
            "metre": a.metre, "instrument": a.instrument}


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
    try:
        audio.save(out)
    except OutputPathError as e:
        raise _WriteFailed(str(e)) from e
    s = audio.stats
    print(f"wrote {out} ({audio.seconds:.2f} s; {audio.controls}) in {s.total_seconds:.2f} s, RTF {s.rtf:.3f}, "
          f"passes {s.passes}", file=sys.stderr)
    return 0


def _cmd_stream(a: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from melody_edge import Generator
    from melody_edge.audio import _umask, check_output_path

    out = check_output_path(a.output)
    gen = Generator(a.bundle, a.backend)
    bar = _Bar(not a.quiet)
    chunks = gen.stream(a.prompt, seconds=a.seconds, progress=bar, **_kwargs(a))  # checks arguments first
    try:
        fd, tmp = tempfile.mkstemp(prefix=".melody-edge-", suffix=out.suffix, dir=out.parent)
    except OSError as e:
        raise _WriteFailed(f"cannot write in {str(out.parent)!r}: {e}") from e
    os.close(fd)
    written = 0.0
    stopped: BaseException | None = None
    try:
        try:
            with _soundfile(sf, tmp, out, gen.sample_rate) as f:
                for chunk in chunks:
                    try:
                        f.write(np.clip(chunk.samples, -1, 1))
                    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
                        raise _WriteFailed(f"could not write {str(out)!r}: {e}") from e
                    written += chunk.seconds
                    print(f"{written:.2f} s written (chunk RTF {chunk.stats.rtf:.3f})", file=sys.stderr)
        except (KeyboardInterrupt, Terminated) as e:
            stopped = e  # the with block closed the file: what was streamed so far is a valid file
        if written > 0:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
            os.replace(tmp, out)  # an interrupt before the first chunk leaves any previous file as it was
    finally:
        bar.close()
        Path(tmp).unlink(missing_ok=True)
    print(f"wrote {out} ({written:.2f} s)" if written else f"nothing written; {out} left as it was", file=sys.stderr)
    if stopped is not None:
        raise stopped
    return 0


def _soundfile(sf: Any, tmp: str, out: Path, sample_rate: int) -> Any:
    from melody_edge.audio import SUPPORTED_EXTENSIONS

    try:
        return sf.SoundFile(tmp, "w", sample_rate, 1, format=SUPPORTED_EXTENSIONS[out.suffix.lower()])
    except (OSError, RuntimeError) as e:
        raise _WriteFailed(f"could not write {str(out)!r}: {e}") from e


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
    from melody_edge import verify

    v = sub.add_parser("verify", help="check a model bundle and report everything that is wrong (exit 1 if so)")
    verify.add_arguments(v)
    v.set_defaults(func=verify.run)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``melody-edge`` command; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an app calling main()): leave signals alone
        pass
    try:
        return args.func(args)
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MelodyEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`); nothing left to say
        return 1
    except Exception as e:  # a bug: one line, and the traceback only with -v
        log.debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {e} (run with -v for details and report it)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
