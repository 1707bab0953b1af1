"""``melody-edge`` command line: ``generate``, ``stream``, ``continue``, ``inpaint``, ``info`` and ``verify``,
mirroring the Python API. ``stream -o -`` writes audio to stdout as it is made (an open-length WAV, or ``--raw``
s16le) for a player to read live; ``--steer-stdin`` and ``--script`` change the prompt while it plays.

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
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from melody_edge.errors import ConfigError, InvalidInputError, MelodyEdgeError, OutputPathError

log = logging.getLogger("melody_edge.cli")
USAGE_ERRORS = (InvalidInputError, ConfigError, OutputPathError)  # the arguments are wrong: exit 2


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporary files."""


# Signals received while a command runs. The handlers raise at once (KeyboardInterrupt, Terminated), but Python drops
# an exception raised while a ``__del__`` or a callback runs ("Exception ignored in ..."): an endless stream then
# stops at its next chunk all the same (``_until_signalled``).
_SIGNALLED: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    _raise_for(signum)


def _raise_for(signum: int) -> None:
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _until_signalled(chunks: Iterator[Any]) -> Iterator[Any]:
    """``chunks``, ending with the interrupt of a signal received since the command started, however it was lost."""
    for chunk in chunks:
        if _SIGNALLED:
            _raise_for(_SIGNALLED[0])
        yield chunk


class _WriteFailed(MelodyEdgeError):
    """Writing the result failed after the work was done (disk full, ...): a runtime error, exit 1."""


def _sampling_args(p: argparse.ArgumentParser, stdout: bool = False) -> None:
    p.add_argument("prompt", help="text description of the music")
    p.add_argument("-o", "--output", required=True,
                   help="output file (.wav, .flac or .ogg)" + ("; '-' writes to stdout" if stdout else ""))
    p.add_argument("--preset", "--bundle", dest="bundle", default="tiny",
                   help="'tiny' (bundled model), 'debug', 'paper', or a checkpoint folder")
    p.add_argument("--backend", default="auto", help="auto | torch")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's, 8 unless distilled)")
    p.add_argument("--guidance", type=float, default=None,
                   help="DPD classifier-free guidance (default: the model's; 1 for tiny)")
    p.add_argument("--lm-guidance", type=float, default=None,
                   help="LM classifier-free guidance (default: the model's; 3 for tiny)")
    p.add_argument("--temperature", type=float, default=None, help="LM sampling temperature (default: the model's)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--key", default=None, help='key, overriding the prompt\'s: "A minor", "Bb major", "F#m"')
    p.add_argument("--bpm", type=float, default=None, help="tempo in beats per minute (30-300), overriding the prompt")
    p.add_argument("--metre", "--meter", dest="metre", default=None, help='time signature such as "3/4" or "6/8"')
    p.add_argument("--instrument", default=None,
                   help="instrument or family (piano, organ, strings, fiddle, brass, flute, choir, ...)")
    p.add_argument("--key-strength", type=float, default=None,
                   help="with a key asked: how strongly each sampled semantic token is pulled into the key (0-20; "
                        "within each base code's transpositions; 0 = off; default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _draft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-candidates", type=int, default=None,
                   help="with a key (or, where the model has a family head, an instrument) asked: first-window LM "
                        "drafts, the best fit is kept (default 2; 1 = fastest)")


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
            "metre": a.metre, "instrument": a.instrument, "key_strength": a.key_strength}


def _cmd_generate(a: argparse.Namespace) -> int:
    from melody_edge import Generator
    from melody_edge.audio import check_output_path

    out = check_output_path(a.output)  # fail before loading anything
    gen = Generator(a.bundle, a.backend)
    bar = _Bar(not a.quiet)
    try:
        audio = gen.generate(a.prompt, a.seconds, progress=bar, key_candidates=a.key_candidates, **_kwargs(a))
    finally:
        bar.close()
    return _save(audio, out)


def _save(audio: Any, out: Path) -> int:
    try:
        audio.save(out)
    except OutputPathError as e:
        raise _WriteFailed(str(e)) from e
    s = audio.stats
    print(f"wrote {out} ({audio.seconds:.2f} s; {audio.controls}) in {s.total_seconds:.2f} s, RTF {s.rtf:.3f}, "
          f"passes {s.passes}", file=sys.stderr)
    return 0


def _cmd_continue(a: argparse.Namespace) -> int:
    from melody_edge import Audio, Generator
    from melody_edge.audio import check_output_path

    out = check_output_path(a.output)
    audio = Audio.load(a.input)  # a missing or unreadable input is a usage error, found before the model loads
    gen = Generator(a.bundle, a.backend)
    bar = _Bar(not a.quiet)
    try:
        result = gen.continue_audio(audio, a.prompt, a.seconds, progress=bar, **_kwargs(a))
    finally:
        bar.close()
    return _save(result, out)


def _cmd_inpaint(a: argparse.Namespace) -> int:
    from melody_edge import Audio, Generator
    from melody_edge.audio import check_output_path

    out = check_output_path(a.output)
    audio = Audio.load(a.input)
    gen = Generator(a.bundle, a.backend)
    bar = _Bar(not a.quiet)
    try:
        result = gen.inpaint(audio, a.start, a.end, a.prompt, progress=bar, **_kwargs(a))
    finally:
        bar.close()
    return _save(result, out)


def _cmd_stream(a: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from melody_edge import Generator
    from melody_edge.audio import _umask, check_output_path

    to_stdout = a.output == "-"
    if a.raw and not to_stdout:
        raise InvalidInputError("--raw writes headerless s16le to stdout; use it with -o -")
    if to_stdout and sys.stdout.isatty():
        raise InvalidInputError("-o - writes audio to stdout, which is a terminal; pipe it into a player "
                                "(| ffplay -nodisp -, | aplay, | play -) or give a file name")
    if a.steer_stdin and sys.stdin.isatty():
        print("--steer-stdin: type a new prompt and press Enter to steer the music", file=sys.stderr)
    script = _read_script(a.script) if a.script else []
    out = None if to_stdout else check_output_path(a.output)
    gen = Generator(a.bundle, a.backend)
    for _, prompt in script:  # every scripted prompt is checked before any work
        gen.controls(prompt)
    bar = _Bar(not a.quiet)
    stream = gen.stream(a.prompt, seconds=a.seconds, progress=bar, key_candidates=a.key_candidates,
                        **_kwargs(a))  # checks arguments first
    if a.steer_stdin:
        threading.Thread(target=_steer_from_stdin, args=(stream,), daemon=True).start()
    chunks = _until_signalled(_steered(stream, script))
    if out is None:
        try:
            return _stream_to_stdout(chunks, a.raw, gen.sample_rate)
        finally:
            bar.close()
            stream.close()
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


def _read_script(path: str) -> list[tuple[float, str]]:
    """``--script`` lines ``SECONDS PROMPT`` (blank lines and ``#`` comments skipped), sorted by time."""
    from melody_edge.text import clean_prompt

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read --script {path!r}: {e}") from e
    script = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        head, _, prompt = line.strip().partition(" ")
        try:
            t = float(head)
        except ValueError:
            t = float("nan")
        if not t >= 0 or t == float("inf"):
            raise InvalidInputError(f"{path}:{n}: expected 'SECONDS PROMPT' with SECONDS a number >= 0, got {line!r}")
        try:
            script.append((t, clean_prompt(prompt)))
        except InvalidInputError as e:
            raise InvalidInputError(f"{path}:{n}: {e}") from None
    return sorted(script, key=lambda e: e[0])


def _steered(stream: Any, script: list[tuple[float, str]]) -> Iterator[Any]:
    """The stream's chunks; steered when the song reaches each scripted time (at the next chunk boundary), with a
    line on stderr whenever the prompt that made the chunks changes."""
    done, i, last = 0.0, 0, stream.prompt
    while True:
        while i < len(script) and script[i][0] <= done + 1e-9:
            stream.steer(script[i][1])
            i += 1
        chunk = next(stream, None)
        if chunk is None:
            return
        if chunk.prompt != last:
            print(f"{done:.2f} s: steered to {chunk.prompt!r} ({chunk.controls})", file=sys.stderr)
            last = chunk.prompt
        done += chunk.seconds
        yield chunk


def _steer_from_stdin(stream: Any) -> None:
    """Steer the stream with each non-empty line of stdin until EOF (a thread; reads the raw fd so that no Python
    stream lock is held when the interpreter exits)."""
    buf = b""
    while True:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except (OSError, ValueError):
            return
        if not data:
            lines, buf = [buf], b""
        else:
            *lines, buf = (buf + data).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                stream.steer(line)
            except InvalidInputError as e:
                print(f"error: {e}; the music goes on with the current prompt", file=sys.stderr)
        if not data:
            return


WAV_OPEN_LENGTH = 0xFFFFFFFF  # RIFF and data sizes of a WAV of unknown length, as ffmpeg writes to a pipe


def _wav_header(sample_rate: int) -> bytes:
    """A 44-byte PCM s16le mono WAV header whose lengths say "unknown": readers play until EOF."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)
    return (b"RIFF" + struct.pack("<I", WAV_OPEN_LENGTH) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", WAV_OPEN_LENGTH))


def _s16le(samples: Any) -> bytes:
    import numpy as np

    # round to nearest (libsndfile 1.2 floors x * 0x8000 when it writes a file: the two differ by at most 1 LSB)
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _stream_to_stdout(chunks: Iterator[Any], raw: bool, sample_rate: int) -> int:
    """Write the chunks to stdout as they come; the reader closing the pipe ends the stream with exit 0."""
    out = sys.stdout.buffer
    written = 0.0
    try:
        try:
            if not raw:
                out.write(_wav_header(sample_rate))
            for chunk in chunks:
                out.write(_s16le(chunk.samples))
                out.flush()
                written += chunk.seconds
                print(f"{written:.2f} s streamed (chunk RTF {chunk.stats.rtf:.3f})", file=sys.stderr)
        except BrokenPipeError:
            _stdout_to_devnull()  # nothing more can reach the reader; the exit flush must not fail again
            print(f"the reader closed the pipe; stopped after {written:.2f} s", file=sys.stderr)
            return 0
    except (KeyboardInterrupt, Terminated):
        print(f"streamed {written:.2f} s to stdout", file=sys.stderr)
        raise
    print(f"streamed {written:.2f} s to stdout", file=sys.stderr)
    return 0


def _stdout_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


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
    _draft_args(g)
    g.set_defaults(func=_cmd_generate)
    s = sub.add_parser("stream", help="stream chunks into a file or a player as they are made (Ctrl-C stops, keeps "
                                      "the file)")
    _sampling_args(s, stdout=True)
    s.add_argument("--seconds", type=float, default=None, help="duration (default: endless until Ctrl-C)")
    _draft_args(s)
    s.add_argument("--raw", action="store_true", help="with -o -: headerless s16le mono at 24 kHz instead of WAV")
    s.add_argument("--steer-stdin", action="store_true",
                   help="each line read from stdin becomes the prompt from the next chunk on")
    s.add_argument("--script", default=None, metavar="FILE",
                   help="lines 'SECONDS PROMPT': follow PROMPT from the first chunk at or after SECONDS of music")
    s.set_defaults(func=_cmd_stream)
    c = sub.add_parser("continue", help="continue an audio file, following a prompt")
    c.add_argument("input", help="audio file to continue (any rate and channel count)")
    _sampling_args(c)
    c.add_argument("--seconds", type=float, default=10.0, help="seconds to add (default 10, max 600)")
    c.set_defaults(func=_cmd_continue)
    n = sub.add_parser("inpaint", help="regenerate a region of an audio file, keeping the audio around it")
    n.add_argument("input", help="audio file (any rate and channel count)")
    n.add_argument("--start", type=float, required=True, help="region start in seconds")
    n.add_argument("--end", type=float, required=True, help="region end in seconds")
    _sampling_args(n)
    n.set_defaults(func=_cmd_inpaint)
    i = sub.add_parser("info", help="describe the model")
    i.add_argument("--preset", "--bundle", dest="bundle", default="tiny")
    i.add_argument("--backend", default="auto")
    i.set_defaults(func=_cmd_info)
    from melody_edge import verify

    v = sub.add_parser("verify", help="check a model bundle and report everything that is wrong (exit 1 if so)")
    verify.add_arguments(v)
    v.set_defaults(func=verify.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``melody-edge`` command; returns the exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    previous: dict[int, Any] = {}
    _SIGNALLED.clear()
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
