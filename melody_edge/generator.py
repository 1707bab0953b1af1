"""``Generator``: text (or audio) in, music out. One internal path serves ``generate``, ``stream`` and
``continue_audio``: MeLoDy's Algorithm 1 for the first window and Algorithm 2 (continuation) after it.

Phases of every segment (numbers match the comments below):
  1. text -> MiniLM token states -> LM soft prefix (once per call)
  2. semantic LM writes the segment's 25 Hz tokens (prefill with the kept tokens, then one step per token)
  3. DPD denoises the segment's latents from pi/2 to 0 with the angle schedule; kept chunks stay at angle 0
  4. VAE decoder turns the new latents (with one chunk of left context) into 24 kHz audio
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from melody_edge.audio import Audio
from melody_edge.backends import BACKENDS, Backend
from melody_edge.backends.base import dpd_controls, with_unconditional_row
from melody_edge.controls import (
    Controls,
    beat_features,
    control_ids,
    estimate_key,
    key_fit,
    key_rotation,
    key_token_bias,
    resolve,
    vocabulary,
)
from melody_edge.errors import BundleError, ConfigError, InvalidInputError
from melody_edge.sampling import apply_cfg, get_schedule, guide_within_groups, sample, sample_token
from melody_edge.text import TextTokenizer, clean_prompt, default_tokenizer
from melody_edge.tokenizer import rotate_tokens

log = logging.getLogger(__name__)

MAX_GENERATE_SECONDS = 600.0  # generate() holds the whole song in memory; use stream() for longer or endless music
DEFAULT_STEPS = 8
ASSETS = Path(__file__).parent / "assets"

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class GenerationStats:
    """Work done by one call: exact forward passes and wall seconds per stage (text, lm, dpd, vae)."""

    passes: dict[str, int] = field(default_factory=lambda: {"text": 0, "lm": 0, "dpd": 0, "vae": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"text": 0.0, "lm": 0.0, "dpd": 0.0, "vae": 0.0})
    audio_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per second of audio."""
        return self.total_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def add(self, other: GenerationStats) -> GenerationStats:
        """Accumulate another call's or segment's stats into this one."""
        for k, v in other.passes.items():
            self.passes[k] = self.passes.get(k, 0) + v
        for k, v in other.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        self.audio_seconds += other.audio_seconds
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"passes": dict(self.passes), "seconds": dict(self.seconds), "audio_seconds": self.audio_seconds,
                "rtf": self.rtf}


@dataclass(frozen=True)
class _Settings:
    steps: int
    guidance: float
    lm_guidance: float
    temperature: float
    key_candidates: int
    key_strength: float
    top_k: int | None
    top_p: float | None
    schedule: str


MIN_SECONDS = 0.04  # one 40 ms semantic token frame (25 Hz): the shortest piece the model can make
MAX_STREAM_SECONDS = 366 * 86_400.0  # a year; stream(seconds=None) is the way to stream without end
MAX_SEED = 2**64 - 1
INPAINT_GRANULARITY_SECONDS = MIN_SECONDS  # inpaint() widens its region to whole 40 ms token frames
INPAINT_CROSSFADE_SECONDS = 0.02  # ... and fades the new audio in and out over 20 ms inside that region
# Segment joins: the decoder's last ~4 hops change once it sees what follows them (its right edge is decoded against
# zeros), so each segment holds back its last token (40 ms) and the next segment crossfades it into its own re-decoded
# version of the same samples (raised cosine): no click at the join. A stream's first chunk is 40 ms shorter.
JOIN_CROSSFADE_TOKENS = 1
# generate() knows the whole length up front, so after the first window it advances 2 chunks per segment (keeping
# half a window of context) instead of stream()'s 1: half the DPD passes and LM prefills per second of a long song
# (benchmarks: RTF of 60 s vs 10 s), at the cost of 5.12 s instead of 7.68 s of kept context (tiny)
GENERATE_ADVANCE_CHUNKS = 2
# ... and the DPD of a continuation segment denoises the new frames after one kept chunk (2.56 s at angle 0) rather
# than the whole kept window: a stream chunk's DPD passes cover 2 chunks, not 4 (the LM still reads all kept tokens)
DPD_CONTEXT_CHUNKS = 1
# With a key asked, the LM writes a song's first window KEY_CANDIDATES times and keeps the draft that fits the key
# best (``Generator._lm``, ``controls.key_fit``), DRAFT_WORKERS drafts at once
KEY_CANDIDATES = 2  # 4 measured +5 points key, -6 instrument, at a second wave of drafts on 2 cores
MAX_KEY_CANDIDATES = 16
# With a key asked, the LM's logits get KEY_STRENGTH times each token's fit to the key's scale
# (``controls.key_token_bias``: its chroma's correlation with the scale, -1..1) at every step of every window: key
# guidance on the tokens, as classifier guidance is on diffusion. 0 = off. With transposition-equivariant tokens the
# bias acts within each base code's 12 rotations (``sampling.guide_within_groups``): it picks the transposition, the
# LM keeps its choice of base code (texture, timbre); KEY_GUIDANCE_WITHIN_BASE = False adds it to every logit
# (measured: the instrument family and the Frechet distance pay for it; MODEL_CARD.md, "This version")
KEY_STRENGTH = 16.0  # 5 seeds: free-form key 37.9% -> 46.7%, captions 36.0% -> 48.5%, Frechet 31.9 -> 34.8
KEY_GUIDANCE_WITHIN_BASE = True
MAX_KEY_STRENGTH = 20.0
# With an instrument asked too (and a tokenizer with a family head), a draft's score adds FAMILY_WEIGHT times the
# head's log-probability of that family (``SemanticTokenizer.family_logprobs``) to its key fit (``_draft_score``)
FAMILY_WEIGHT = 0.05
DRAFT_WORKERS = max(1, os.cpu_count() or 1)
PROMPT_MEMORY_BUDGET = 1 << 30  # bytes continue_audio may use for its audio prompt (~23 min at 24 kHz)


def _check_seconds(seconds: object, maximum: float | None, what: str = "seconds",
                   minimum: float = MIN_SECONDS) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{what} must be a number of seconds, got {type(seconds).__name__}")
    s = float(seconds)
    if not math.isfinite(s):
        raise InvalidInputError(f"{what} must be a finite number, got {s}")
    if s <= 0:
        raise InvalidInputError(f"{what} must be > 0, got {s}")
    if s < minimum:
        raise InvalidInputError(f"{what}={s} is shorter than one 40 ms token frame; ask for at least {minimum} s")
    if maximum is not None and s > maximum:
        raise InvalidInputError(f"{what}={s} is above the maximum of {maximum} s for generate(); "
                                "use stream() for longer music")
    return s


def _check_seed(seed: object) -> None:
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInputError(f"seed must be an integer in [0, 2**64 - 1] or None, got {type(seed).__name__} "
                                f"{seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise InvalidInputError(f"seed must be in [0, 2**64 - 1], got {seed}")


def _check_args(prompt: object, seed: object, top_k: object, top_p: object, progress: object,
                schedule: object = "paper", stream_seconds: object = None) -> None:
    """Checks every public call makes before any work: prompt text, seed, top-k/top-p, progress, schedule."""
    if isinstance(prompt, str):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInputError(f"prompt is not valid Unicode text: it has a lone surrogate "
                                    f"{prompt[e.start]!r} at character {e.start}; pass decoded text") from None
    _check_seed(seed)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InvalidInputError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating))
                              or not 0 < float(top_p) <= 1):
        raise InvalidInputError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
    if progress is not None and not callable(progress):
        raise InvalidInputError(f"progress must be a callable (stage, done, total) or None, got "
                                f"{type(progress).__name__}")
    if not isinstance(schedule, str):
        raise InvalidInputError(f"schedule must be 'paper' or 'uniform', got {schedule!r}")
    if stream_seconds is not None and _check_seconds(stream_seconds, None) > MAX_STREAM_SECONDS:
        raise InvalidInputError(f"seconds={float(stream_seconds)} is above the stream() maximum of "
                                f"{MAX_STREAM_SECONDS:.0f} s (a year); pass seconds=None to stream without end")


def prompt_memory_bytes(n_samples: int, sample_rate: int, target_rate: int) -> int:
    """Estimated peak bytes ``continue_audio`` needs for an audio prompt of ``n_samples`` at ``sample_rate``: the
    resampled copy and the resampler's buffers (budgeted at 28 B per output sample, an upper bound for libsoxr),
    8 B per input sample of headroom and the prompt's copy in the result (4 B per output sample)."""
    n_out = round(n_samples * target_rate / sample_rate)
    return 32 * n_out + 8 * n_samples


def _check_region(start: object, end: object, seconds: float, c: Any) -> tuple[int, int]:
    """The token frames [a, b) that cover the region [start, end] of audio ``seconds`` long, or InvalidInputError."""
    for name, v in (("start", start), ("end", end)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise InvalidInputError(f"{name} must be a finite number of seconds, got {v!r}")
    start, end = float(start), float(end)
    if end <= start:
        raise InvalidInputError(f"the region must have end > start, got start={start} and end={end}")
    if start < 0 or end > seconds + 1e-9:
        raise InvalidInputError(f"the region [{start}, {end}] s is outside the audio, which is {seconds:.3f} s long")
    if end - start < INPAINT_GRANULARITY_SECONDS - 1e-9:
        raise InvalidInputError(f"the region is {end - start:.4f} s long, shorter than one "
                                f"{INPAINT_GRANULARITY_SECONDS * 1000:.0f} ms token frame; make it longer")
    spt = c.sample_rate // c.token_rate
    a = int(math.floor(start * c.sample_rate / spt + 1e-9))
    b = int(math.ceil(end * c.sample_rate / spt - 1e-9))
    longest = c.window_tokens - c.chunk_tokens
    if b - a > longest:
        raise InvalidInputError(f"the region covers {b - a} token frames ({(b - a) / c.token_rate:.2f} s); at most "
                                f"{longest} ({longest / c.token_rate:.2f} s, one window less one chunk) fit in one "
                                "call: inpaint a longer stretch in several calls")
    return a, b


def _check_audio_prompt(audio: object, target_rate: int) -> None:
    if not isinstance(audio, Audio):
        raise InvalidInputError(f"audio must be a melody_edge.Audio, got {type(audio).__name__}")
    need = prompt_memory_bytes(len(audio.samples), audio.sample_rate, target_rate)
    if need > PROMPT_MEMORY_BUDGET:
        n_out = round(len(audio.samples) * target_rate / audio.sample_rate)
        raise InvalidInputError(
            f"audio prompt of {len(audio.samples)} samples at {audio.sample_rate} Hz is {n_out / target_rate:.0f} s "
            f"at {target_rate} Hz and would need about {need / 2**30:.1f} GiB, above the prompt memory budget of "
            f"{PROMPT_MEMORY_BUDGET / 2**30:.1f} GiB; pass only the last seconds of the prompt "
            "(the model keeps at most one window of it as context)")


class Generator:
    """Text-to-music generator (MeLoDy: semantic LM + dual-path diffusion + VAE-GAN decoder).

    Args:
        bundle: ``"tiny"`` (the bundled trained model), ``"debug"`` or ``"paper"`` (random weights, for tests and
            cost measurements), or a path to a checkpoint folder (``config.json`` + ``model.safetensors``).
        backend: ``"auto"`` (an ONNX bundle runs on onnxruntime, a Core ML bundle on Core ML, a checkpoint on
            torch), ``"onnxruntime"``, ``"coreml"`` (macOS 14+) or ``"torch"``.
        device: torch device for the torch backend (``"cpu"``, ``"cuda"``).

    Example::

        gen = Generator()
        audio = gen.generate("a calm piano waltz in D major", seconds=10, seed=0)
        audio.save("waltz.wav")
    """

    def __init__(self, bundle: str | os.PathLike = "tiny", backend: str = "auto", *, device: str = "cpu") -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        self.backend: Backend = _load_backend(bundle, backend, device)
        self.config = self.backend.config
        self.bundle = str(bundle)

    @classmethod
    def from_backend(cls, backend: Backend) -> Generator:
        """Wrap an already-built backend (used by conversion and tests)."""
        gen = cls.__new__(cls)
        gen.backend, gen.config, gen.bundle = backend, backend.config, backend.name
        return gen

    # read-only properties -------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (24 kHz)."""
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        """Semantic token rate in Hz (25)."""
        return float(self.config.token_rate)

    @property
    def chunk_seconds(self) -> float:
        """Seconds of audio per streamed chunk (a quarter of the model's window)."""
        return self.config.chunk_tokens / self.config.token_rate

    @property
    def info(self) -> dict[str, Any]:
        """What is loaded: preset, rates, window, backend."""
        c = self.config
        return {"model": c.name, "bundle": self.bundle, "sample_rate": self.sample_rate,
                "token_rate": c.token_rate, "latent_rate": c.vae.frame_rate, "window_seconds": c.window_seconds,
                "chunk_seconds": self.chunk_seconds, "max_generate_seconds": MAX_GENERATE_SECONDS,
                "controls": vocabulary() if c.controls.enabled else None,
                **self.backend.info()}

    # public API -------------------------------------------------------------------------------------------
    def generate(self, prompt: str, seconds: float = 10.0, *, seed: int | None = None, key: str | None = None,
                 bpm: float | None = None, metre: str | None = None, instrument: str | None = None,
                 read_controls: bool = True, steps: int | None = None,
                 guidance: float | None = None, lm_guidance: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, schedule: str = "paper",
                 key_candidates: int | None = None, key_strength: float | None = None,
                 progress: Progress | None = None) -> Audio:
        """Generate ``seconds`` of music from a text prompt.

        Args:
            prompt: a description such as "a slow chorale for string ensemble in G major" (<= 500 characters).
            seconds: duration, 0 < seconds <= 600.
            seed: makes the result reproducible; ``None`` draws fresh entropy.
            key, bpm, metre, instrument: explicit controls ("A minor", 72, "3/4", "violin") that override what the
                prompt says (see ``controls``); read_controls: read the controls from the prompt text too.
            steps: diffusion steps (default: the model's ``config.dpd_steps``, 8 unless step-distilled);
                guidance: DPD CFG scale (default: the model's ``config.guidance``, 1 for tiny, 2.5 for the paper
                preset); lm_guidance: LM CFG scale (default: ``config.lm_guidance``, 3 for tiny, 1 = off for the
                others);
                temperature: LM sampling temperature (default: the model's ``config.temperature``); top_k/top_p:
                semantic token sampling filters; schedule: 'paper'|'uniform'.
            key_candidates: with a key asked (and a transposing model), the LM writes the first window this many
                times (on parallel threads) and keeps the draft that fits the key best (``controls.key_fit``),
                which is then transposed to the key; with an instrument asked too, or alone, and a tokenizer with a
                family head, the draft's family log-probability counts as well (``_draft_score``) (default
                ``KEY_CANDIDATES``; 1 = no drafts, the fastest).
            key_strength: with a key asked, how strongly every semantic token the LM samples is pulled into
                the key: ``key_strength`` times the token's fit to the key's scale (``controls.key_token_bias``,
                -1..1) is added to its logit, within the transpositions of each base code for a transposing model
                (``sampling.guide_within_groups``) (default ``KEY_STRENGTH``; 0 = off, 0-20).
            progress: optional callback ``(stage, done, total)``.

        Returns:
            ``Audio`` (mono float32 at ``sample_rate``); ``audio.stats`` holds a ``GenerationStats`` and
            ``audio.controls`` the ``Controls`` the model was conditioned on.
        """
        _check_args(prompt, seed, top_k, top_p, progress, schedule)
        seconds = _check_seconds(seconds, MAX_GENERATE_SECONDS)
        settings = self._settings(steps, guidance, lm_guidance, temperature, top_k, top_p, schedule,
                                  key_candidates, key_strength)
        text = clean_prompt(prompt)
        ctl = self.controls(text, key=key, bpm=bpm, metre=metre, instrument=instrument, read_controls=read_controls)
        stats = GenerationStats()
        c = self.config
        pieces = _collect(self._segments(text, ctl, seconds, settings, seed, progress, c.window_tokens,
                                         advance_tokens=min(GENERATE_ADVANCE_CHUNKS, c.n_chunks - 1) * c.chunk_tokens),
                          stats)
        return _with_stats(Audio(np.concatenate(pieces), self.sample_rate), stats, ctl)

    def controls(self, prompt: str, *, key: str | None = None, bpm: float | None = None, metre: str | None = None,
                 instrument: str | None = None, read_controls: bool = True) -> Controls:
        """What the model will be conditioned on for this prompt: the key, tempo, metre and instrument family read
        from the text (``melody_edge.controls.parse_controls``), each overridden by an explicit value.

        Raises:
            InvalidInputError: an explicit value is not accepted (bpm outside [30, 300], "H major", an unknown
                instrument...); the message lists what is.
        """
        return resolve(prompt if read_controls else "", key=key, bpm=bpm, metre=metre, instrument=instrument)

    def stream(self, prompt: str, *, seconds: float | None = None, seed: int | None = None, key: str | None = None,
               bpm: float | None = None, metre: str | None = None, instrument: str | None = None,
               read_controls: bool = True, steps: int | None = None, guidance: float | None = None,
               lm_guidance: float | None = None,
               temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
               schedule: str = "paper", key_candidates: int | None = None, key_strength: float | None = None,
               progress: Progress | None = None) -> Stream:
        """Yield music chunk by chunk (``chunk_seconds`` each; the first is 40 ms shorter, since each chunk's last
        40 ms wait to be crossfaded into the next (``JOIN_CROSSFADE_TOKENS``); the last one of a bounded stream takes
        what remains) with constant memory.

        ``seconds=None`` streams forever (MeLoDy's Algorithm 2: drop the oldest chunk, append noise, the LM writes
        the new chunk's tokens, kept chunks stay at angle 0). Each chunk carries ``.stats`` for that chunk,
        ``.controls`` and ``.prompt`` (the cleaned prompt that made it). Controls as in ``generate``.

        Returns a ``Stream``: an iterator of ``Audio`` chunks whose prompt can be changed between chunks with
        ``Stream.steer("a stormy string tremolo in D minor")``.
        """
        _check_args(prompt, seed, top_k, top_p, progress, schedule, stream_seconds=seconds)
        if seconds is not None:
            seconds = _check_seconds(seconds, None)
        settings = self._settings(steps, guidance, lm_guidance, temperature, top_k, top_p, schedule,
                                  key_candidates, key_strength)
        text = clean_prompt(prompt)
        ctl = self.controls(text, key=key, bpm=bpm, metre=metre, instrument=instrument, read_controls=read_controls)
        return Stream(self, text, ctl, seconds, settings, seed, progress)

    def continue_audio(self, audio: Audio, prompt: str, seconds: float = 10.0, *, seed: int | None = None,
                       key: str | None = None, bpm: float | None = None, metre: str | None = None,
                       instrument: str | None = None, read_controls: bool = True,
                       steps: int | None = None, guidance: float | None = None, lm_guidance: float | None = None,
                       temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                       schedule: str = "paper", key_strength: float | None = None,
                       progress: Progress | None = None) -> Audio:
        """Continue ``audio`` for ``seconds`` more, following ``prompt``. Returns the prompt audio (trimmed to whole
        40 ms token frames; its last 40 ms crossfade into the continuation, as every segment join does) followed by
        the continuation. The prompt is encoded by the VAE and tokenized by the
        semantic tokenizer; its last window is kept as context (Algorithm 2). Controls as in ``generate``; with a
        transposition-equivariant model and no key given, the continuation keeps the key estimated from the prompt
        audio's tokens."""
        _check_args(prompt, seed, top_k, top_p, progress, schedule)
        _check_audio_prompt(audio, self.config.sample_rate)
        if not isinstance(audio, Audio):
            raise InvalidInputError(f"audio must be a melody_edge.Audio, got {type(audio).__name__}")
        seconds = _check_seconds(seconds, MAX_GENERATE_SECONDS)
        settings = self._settings(steps, guidance, lm_guidance, temperature, top_k, top_p, schedule,
                                  key_strength=key_strength)
        text = clean_prompt(prompt)
        ctl = self.controls(text, key=key, bpm=bpm, metre=metre, instrument=instrument, read_controls=read_controls)
        x = self._audio_input(audio, "continue")
        c = self.config
        samples_per_token = c.sample_rate // c.token_rate
        n_tok = min(len(x) // samples_per_token, c.window_tokens - c.chunk_tokens)
        if n_tok < 1:
            raise InvalidInputError(f"audio prompt is shorter than one token frame ({samples_per_token} samples)")
        total_tok = len(x) // samples_per_token
        head = x[: total_tok * samples_per_token]
        ctx = head[len(head) - n_tok * samples_per_token:]
        stats = GenerationStats()
        t0 = time.perf_counter()
        z = self.backend.vae_encode(ctx[None])[0]  # (n_tok * fpt, C)
        tokens = self.backend.semantic_tokenizer.encode(ctx)[:n_tok].astype(np.int64)
        stats.passes["vae"] += 1
        stats.seconds["vae"] += time.perf_counter() - t0
        state = {"tokens": tokens, "latents": z[: n_tok * c.frames_per_token], "pos": n_tok}
        if c.controls.enabled and c.controls.key_rotation:  # the LM writes in C: transpose the context to C
            tonic = ctl.tonic if ctl.tonic is not None else self._tonic_of(tokens)
            state.update(tokens=rotate_tokens(tokens, -tonic), tonic=tonic)
        hold = min(JOIN_CROSSFADE_TOKENS, n_tok) * samples_per_token  # the prompt's end joins as a segment's would
        state["tail"] = head[len(head) - hold:]
        pieces = _collect(self._segments(text, ctl, seconds + hold / c.sample_rate, settings, seed, progress,
                                         c.chunk_tokens, state), stats)
        return _with_stats(Audio(np.concatenate([head[: len(head) - hold], *pieces]), c.sample_rate), stats, ctl)

    def inpaint(self, audio: Audio, start: float, end: float, prompt: str, *, seed: int | None = None,
                key: str | None = None, bpm: float | None = None, metre: str | None = None,
                instrument: str | None = None, read_controls: bool = True, steps: int | None = None,
                guidance: float | None = None, lm_guidance: float | None = None, temperature: float | None = None,
                top_k: int | None = None, top_p: float | None = None, schedule: str = "paper",
                key_strength: float | None = None, progress: Progress | None = None) -> Audio:
        """Regenerate ``audio`` from ``start`` to ``end`` seconds following ``prompt``; the audio around the region
        is kept (MeLoDy's per-chunk angles: the known frames on both sides stay at angle 0 while the region's frames
        are denoised from pi/2, so the DPD fits the new music between them).

        Granularity: the region is widened to whole 40 ms token frames (``INPAINT_GRANULARITY_SECONDS``); the new
        audio is crossfaded in over ``INPAINT_CROSSFADE_SECONDS`` (20 ms) at each edge *inside* that widened region.
        Every sample more than 40 ms outside ``[start, end]`` (in fact every sample outside the widened region) is
        the input's, bit for bit. The LM writes the region's tokens after up to one window of left context; up to
        one chunk of right context is given to the DPD. The region may be at most ``window - chunk`` tokens long
        (7.68 s for tiny); inpaint longer stretches in several calls.

        Args:
            audio: any sample rate (resampled with a real resampler to ``sample_rate``), mono (``Audio.load``
                averages channels).
            start, end: the region in seconds, ``0 <= start < end <= audio.seconds``, at least one token frame.
            prompt and the other arguments: as in ``generate``. With a transposition-equivariant model and no key
                given, the region keeps the key estimated from the surrounding audio's tokens.

        Returns:
            ``Audio`` at ``sample_rate`` with the input's length (after resampling).

        Raises:
            InvalidInputError: a bad region (end <= start, outside the audio, shorter than one token frame or longer
                than ``window - chunk`` tokens) or a bad audio prompt.
        """
        _check_args(prompt, seed, top_k, top_p, progress, schedule)
        _check_audio_prompt(audio, self.config.sample_rate)
        settings = self._settings(steps, guidance, lm_guidance, temperature, top_k, top_p, schedule,
                                  key_strength=key_strength)
        text = clean_prompt(prompt)
        ctl = self.controls(text, key=key, bpm=bpm, metre=metre, instrument=instrument, read_controls=read_controls)
        x = self._audio_input(audio, "inpaint")
        c = self.config
        spt, fpt, hop = c.sample_rate // c.token_rate, c.frames_per_token, c.vae.hop
        a, b = _check_region(start, end, len(x) / c.sample_rate, c)  # token frames [a, b)
        n_all = -(-len(x) // spt)
        xp = np.pad(x, (0, n_all * spt - len(x)))  # a last partial token frame is encoded with zeros after it
        n = b - a
        right = min(c.chunk_tokens, n_all - b)
        left = min(a, c.window_tokens - n - right)
        w0, w1 = a - left, b + right
        stats = GenerationStats()
        t0 = time.perf_counter()
        win = xp[w0 * spt: w1 * spt]
        z = self.backend.vae_encode(win[None])[0][: (w1 - w0) * fpt]  # (tokens * fpt, C)
        tokens = self.backend.semantic_tokenizer.encode(win)[: w1 - w0].astype(np.int64)
        stats.passes["vae"] += 1
        stats.seconds["vae"] += time.perf_counter() - t0
        rng = np.random.default_rng(seed)
        prefix = self._prefix(text, ctl, settings.lm_guidance, stats)
        kept = tokens[:left]
        rotate = c.controls.enabled and c.controls.key_rotation
        if rotate:  # the LM writes in C: the context is transposed to C, the new tokens back to the tonic
            tonic = ctl.tonic if ctl.tonic is not None else self._tonic_of(np.delete(tokens, np.s_[left:left + n])
                                                                           if left + right else tokens)
            kept = rotate_tokens(kept, -tonic)
        beat = None
        if c.controls.enabled:
            beat = beat_features(left + n, w0, ctl.bpm, c.controls.beat_harmonics, c.token_rate)
        bias = self._key_bias(ctl, 0 if rotate else ctl.tonic, settings.key_strength)  # rotate: the LM writes in C
        new = self._lm(prefix, kept, n, settings, rng, stats, progress, beat, bias=bias)
        tokens[left:left + n] = rotate_tokens(new, tonic) if rotate else new
        z = self._dpd(tokens, z[: left * fpt], n * fpt, settings, rng, stats, progress, ctl,
                      right_z=z[(left + n) * fpt:])
        t0 = time.perf_counter()
        lo = max(0, left * fpt - c.chunk_frames)  # the decoder sees one chunk of context on each side
        dec = self.backend.vae_decode(z[None, lo:])[0]
        new_audio = np.clip(dec[(left * fpt - lo) * hop:][: n * spt], -1.0, 1.0).astype(np.float32)
        stats.passes["vae"] += 1
        stats.seconds["vae"] += time.perf_counter() - t0
        stats.audio_seconds += n * spt / c.sample_rate
        out = xp.copy()
        old = out[a * spt: b * spt]
        fade = int(round(INPAINT_CROSSFADE_SECONDS * c.sample_rate))
        w = np.ones(n * spt, np.float32)  # weight of the new audio: raised-cosine ramps at the region's edges
        ramp = raised_cosine(fade)
        if a > 0:
            w[:fade] = ramp
        if b < n_all:
            w[len(w) - fade:] = ramp[::-1]
        out[a * spt: b * spt] = w * new_audio + (1 - w) * old
        return _with_stats(Audio(out[: len(x)], c.sample_rate), stats, ctl)

    # internals --------------------------------------------------------------------------------------------
    def _audio_input(self, audio: Audio, what: str) -> np.ndarray:
        """The samples of an audio input (continue, inpaint) at the model's rate, after the checks both need."""
        if self.backend.semantic_tokenizer is None:
            raise BundleError(f"this model has no semantic tokenizer (tokenizer.npz), so it cannot {what} audio")
        if not np.isfinite(audio.samples).all():
            raise InvalidInputError("audio contains NaN or inf samples")
        return audio.resample(self.config.sample_rate).samples

    def _settings(self, steps, guidance, lm_guidance, temperature, top_k, top_p, schedule,
                  key_candidates: int | None = None, key_strength: float | None = None) -> _Settings:
        steps = self.config.dpd_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 1000:
            raise InvalidInputError(f"steps must be an integer in [1, 1000], got {steps!r}")
        get_schedule(schedule, int(steps))
        guidance = self.config.guidance if guidance is None else guidance
        lm_guidance = self.config.lm_guidance if lm_guidance is None else lm_guidance
        temperature = self.config.temperature if temperature is None else temperature
        for name, val in (("guidance", guidance), ("lm_guidance", lm_guidance), ("temperature", temperature)):
            if not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0 or val > 100:
                raise InvalidInputError(f"{name} must be a number in (0, 100], got {val!r}")
        key_candidates = KEY_CANDIDATES if key_candidates is None else key_candidates
        if (isinstance(key_candidates, bool) or not isinstance(key_candidates, (int, np.integer))
                or not 1 <= key_candidates <= MAX_KEY_CANDIDATES):
            raise InvalidInputError(f"key_candidates must be an integer in [1, {MAX_KEY_CANDIDATES}], got "
                                    f"{key_candidates!r}")
        key_strength = KEY_STRENGTH if key_strength is None else key_strength
        if (isinstance(key_strength, bool) or not isinstance(key_strength, (int, float, np.integer, np.floating))
                or not 0 <= key_strength <= MAX_KEY_STRENGTH):
            raise InvalidInputError(f"key_strength must be a number in [0, {MAX_KEY_STRENGTH:g}], got {key_strength!r}")
        return _Settings(int(steps), float(guidance), float(lm_guidance), float(temperature), int(key_candidates),
                         float(key_strength), top_k, top_p, schedule)

    def _text_tokenizer(self) -> TextTokenizer:
        path = getattr(self.backend, "text_tokenizer_path", None)
        return _tokenizer_at(str(path)) if path else default_tokenizer()

    def _key_bias(self, controls: Controls, lm_tonic: int | None, strength: float) -> np.ndarray | None:
        """``strength`` x each token's fit to the asked mode at ``lm_tonic`` (the asked key as the LM writes it: the
        asked tonic, or for a transposing model the tonic before its rotation), padded with zeros to the LM's
        vocabulary; None with no key asked, strength 0 or no semantic tokenizer."""
        tok = self.backend.semantic_tokenizer
        if not strength or lm_tonic is None or controls.tonic is None or tok is None:
            return None
        fit = key_token_bias(tok.token_features()[:, :12], lm_tonic, controls.mode)
        out = np.zeros(max(self.config.lm.vocab_size, len(fit)), np.float32)
        out[: len(fit)] = strength * fit
        return out

    def _tonic_of(self, tokens: np.ndarray) -> int:
        """Tonic of semantic tokens: Krumhansl-Kessler on the mean chroma of the tokens' feature vectors."""
        feats = self.backend.semantic_tokenizer.token_features()[tokens]
        return estimate_key(feats[:, :12].mean(axis=0))[0]

    def _prefix(self, text: str, controls: Controls, lm_guidance: float, stats: GenerationStats) -> np.ndarray:
        # phase 1: text (+ controls) -> prefix (+ the null prefix when the LM uses CFG: one batched pass)
        t0 = time.perf_counter()
        ids, mask = self._text_tokenizer()([text])
        if self.config.controls.enabled:
            cid = control_ids(controls, key_rotation=self.config.controls.key_rotation)
            arrays = {k: np.array([v], dtype=np.float32 if k == "bpm" else np.int64) for k, v in cid.items()}
            prefix = self.backend.encode_text(ids, mask, arrays)
        else:
            prefix = self.backend.encode_text(ids, mask)
        if lm_guidance != 1.0:
            prefix = np.concatenate([prefix, self.backend.null_prefix(1)])
        stats.passes["text"] += 1
        stats.seconds["text"] += time.perf_counter() - t0
        return prefix

    def _lm(self, prefix, kept: np.ndarray, n_new: int, s: _Settings, rng, stats, progress,
            beat: np.ndarray | None = None, fit: Callable[[np.ndarray], float] | None = None,
            bias: np.ndarray | None = None) -> np.ndarray:
        # phase 2: prefill with the kept tokens, then one decode step per new token (n_new passes in all);
        # beat (len(kept) + n_new, F): the beat clock of every token (the CFG null row gets none).
        # fit (a score of tokens, higher = better) with s.key_candidates > 1: the LM writes the segment that many
        # times (drafts, each with its own random stream spawned from rng and its own cache, DRAFT_WORKERS at once
        # where the backend allows) and the draft that scores best is kept; bias (V,) is added to every step's
        # logits after CFG (key guidance, ``_key_bias``)
        t0 = time.perf_counter()
        B = prefix.shape[0]
        tok = self.backend.semantic_tokenizer
        group = tok.rotations if KEY_GUIDANCE_WITHIN_BASE and tok is not None else 1
        if beat is not None:
            beat = np.stack([beat] + [np.zeros_like(beat)] * (B - 1))  # (B, K + n_new, F)

        def decode(r: np.random.Generator, report: Progress | None) -> np.ndarray:
            kept_b = np.repeat(kept[None], B, axis=0)
            if beat is not None:
                logits, cache = self.backend.lm_prefill(prefix, kept_b, beat[:, : len(kept) + 1])
            else:
                logits, cache = self.backend.lm_prefill(prefix, kept_b)
            pos = prefix.shape[1] + len(kept)
            out = np.empty(n_new, dtype=np.int64)
            for i in range(n_new):
                if i:
                    token = np.repeat(out[i - 1:i], B)
                    if beat is not None:
                        logits, cache = self.backend.lm_step(token, pos, cache, beat[:, len(kept) + i])
                    else:
                        logits, cache = self.backend.lm_step(token, pos, cache)
                    pos += 1
                lg = apply_cfg(logits[:1], logits[1:], s.lm_guidance) if B == 2 else logits
                if bias is not None:
                    lg = (guide_within_groups(lg, bias, group, s.temperature) if group > 1
                          else lg + bias[: lg.shape[-1]])
                out[i] = sample_token(lg, r, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)[0]
                if report:
                    report("lm", i + 1, n_new)
            return out

        k = s.key_candidates if fit is not None else 1
        if k == 1:
            out = decode(rng, progress)
        else:  # progress is reported from this thread, one draft at a time as they finish
            workers = min(k, DRAFT_WORKERS) if self.backend.concurrent_lm else 1
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(decode, r, None) for r in rng.spawn(k)]
                for n, _ in enumerate(as_completed(futures), 1):
                    if progress:
                        progress("lm", n * n_new, k * n_new)
                drafts = [f.result() for f in futures]
            out = max(drafts, key=fit)  # the first of equal scores
        stats.passes["lm"] += k * n_new
        stats.seconds["lm"] += time.perf_counter() - t0
        return out

    def _dpd(self, tokens, kept_z, n_new_frames, s: _Settings, rng, stats, progress, controls: Controls,
             right_z: np.ndarray | None = None) -> np.ndarray:
        # phase 3: v-diffusion from pi/2 to 0 on the new frames; kept frames (before them, and right_z after them
        # when inpainting) are given (angle 0, Algorithm 2). A DPD with a controls input hears the asked instrument
        # family and key; its unconditional row (DPD guidance) has neither
        t0 = time.perf_counter()
        C = self.config.vae.latent_dim
        null = np.full_like(tokens, self.config.dpd.sem_vocab)
        ctl = dpd_controls(controls, self.config)
        ctl2 = with_unconditional_row(ctl, self.config)
        n_kept = len(kept_z)
        right_z = np.zeros((0, C), np.float32) if right_z is None else right_z
        z0 = np.concatenate([kept_z, rng.standard_normal((n_new_frames, C), dtype=np.float32), right_z])[None]
        frame = np.arange(z0.shape[1])
        fixed = (frame < n_kept) | (frame >= n_kept + n_new_frames)

        def denoise(z, angles, guidance):
            stats.passes["dpd"] += 1
            if guidance == 1.0:
                return self.backend.dpd(z, angles, tokens[None], ctl)
            v = self.backend.dpd(np.concatenate([z, z]), np.concatenate([angles, angles]), np.stack([tokens, null]),
                                 ctl2)
            return v[1:] + guidance * (v[:1] - v[1:])

        z = sample(denoise, z0, get_schedule(s.schedule, s.steps), fixed=fixed, z_fixed=z0, guidance=s.guidance,
                   progress=(lambda d, t: progress("dpd", d, t)) if progress else None)
        stats.seconds["dpd"] += time.perf_counter() - t0
        return z[0]

    def _vae(self, z_ctx: np.ndarray, n_new_frames: int, n_samples: int, n_before: int, stats) -> np.ndarray:
        # phase 4: decode new frames with left context; keep the new frames' samples and the n_before samples just
        # before them (re-decoded with right context now: the join crossfades into them)
        t0 = time.perf_counter()
        audio = self.backend.vae_decode(z_ctx[None])[0]
        start = len(audio) - n_new_frames * self.config.vae.hop
        new = audio[start - n_before:][: n_before + n_samples]
        stats.passes["vae"] += 1
        stats.seconds["vae"] += time.perf_counter() - t0
        return np.clip(new, -1.0, 1.0).astype(np.float32)

    def _segments(self, text: str, controls: Controls, seconds: float | None, s: _Settings,
                  seed: int | np.random.Generator | None, progress: Progress | None, first_tokens: int,
                  state: dict[str, Any] | None = None, advance_tokens: int | None = None) -> Iterator[Audio]:
        """Yield consecutive pieces of audio, each with its own ``.stats``. The state (a plain dict, updated in
        place so that a ``Stream`` can restart the loop with a new prompt) holds the window's kept tokens (as the LM
        writes them: in C for a transposing model) and latents, the song position in tokens (for the beat clock),
        the tonic and, per kept token, the tonic its DPD rotation used ("tonics"); a new segment keeps at most
        ``window - advance`` of them (``advance_tokens``: new tokens per segment after the first, default one
        chunk), so memory stays constant however long the stream."""
        c = self.config
        rng = np.random.default_rng(seed)  # a Generator passes through as it is
        spt = c.sample_rate // c.token_rate  # samples per token (960)
        remaining = None if seconds is None else int(round(seconds * c.sample_rate))
        stats = GenerationStats()
        prefix = self._prefix(text, controls, s.lm_guidance, stats)
        state = {} if state is None else state
        state.setdefault("tokens", np.zeros(0, np.int64))
        state.setdefault("latents", np.zeros((0, c.vae.latent_dim), np.float32))
        rotate = c.controls.enabled and c.controls.key_rotation
        if rotate and "tonic" not in state:  # no key asked: a tonic drawn from the seed
            state["tonic"] = controls.tonic if controls.tonic is not None else int(rng.integers(12))
        state.setdefault("pos", len(state["tokens"]))
        advance = c.chunk_tokens if advance_tokens is None else advance_tokens
        keep_tok = c.window_tokens - advance
        seg_tokens = first_tokens
        hold = JOIN_CROSSFADE_TOKENS * spt
        state.setdefault("tail", np.zeros(0, np.float32))
        if remaining is not None:  # the held-back tail was made but not yet yielded
            remaining -= len(state["tail"])
            if remaining <= 0 and len(state["tail"]):
                stats.audio_seconds = len(state["tail"]) / c.sample_rate
                yield _with_stats(Audio(state.pop("tail"), c.sample_rate), stats, controls)
                return
        while remaining is None or remaining > 0:
            n_samples = seg_tokens * spt if remaining is None else min(seg_tokens * spt, remaining)
            n_tok = -(-n_samples // spt)
            n_frames = -(-n_samples // c.vae.hop)
            kept_tok = state["tokens"][max(0, len(state["tokens"]) - keep_tok):]
            kept_z = state["latents"][len(state["latents"]) - len(kept_tok) * c.frames_per_token:]
            beat = None
            if c.controls.enabled:
                beat = beat_features(len(kept_tok) + n_tok, state["pos"] - len(kept_tok), controls.bpm,
                                     c.controls.beat_harmonics, c.token_rate)
            tok = self.backend.semantic_tokenizer  # its token features give the tokens' chroma
            in_key = rotate and not len(kept_tok) and controls.tonic is not None and tok is not None
            fit = _draft_score(tok, controls, in_key) if not len(kept_tok) and tok is not None else None
            # the key as the LM writes it: for a transposing model the asked tonic less the rotation its tokens get
            # (C in the first window, whose rotation is chosen after it)
            lm_tonic = controls.tonic
            if rotate and lm_tonic is not None:
                lm_tonic = (lm_tonic - state["tonic"]) % 12
            bias = self._key_bias(controls, lm_tonic, s.key_strength)
            new_tok = self._lm(prefix, kept_tok, n_tok, s, rng, stats, progress, beat, fit, bias)
            if in_key:
                # the first window of a song in an asked key: rotate the LM's tokens so that their pitch content
                # fits that key. The LM writes "in C" only as nearly as it learned to (its own tokens' chroma most
                # often read a fifth above, or the relative minor); measured on the shipped model, 2 seeds x 75
                # free-form prompts: key 20.0% -> 39.3%, tempo and instrument unchanged. Later segments keep this
                # rotation, so a song never jumps key at a join
                chroma = self.backend.semantic_tokenizer.token_features()[new_tok][:, :12].mean(axis=0)
                state["tonic"] = key_rotation(chroma, controls.tonic, controls.mode)
                state["key_offset"] = (state["tonic"] - controls.tonic) % 12
            tokens = np.concatenate([kept_tok, new_tok])
            if rotate:  # kept tokens keep the tonic they were made in (a steer may have changed the key since)
                tonics = state.get("tonics", np.full(len(state["tokens"]), state["tonic"], np.int64))
                tonics = np.concatenate([tonics[len(tonics) - len(kept_tok):], np.full(n_tok, state["tonic"])])
                state["tonics"] = tonics
            # the DPD sees at most DPD_CONTEXT_CHUNKS of the kept latents (angle 0) before the new ones
            d_tok = min(len(kept_tok), DPD_CONTEXT_CHUNKS * c.chunk_tokens)
            d_z = d_tok * c.frames_per_token
            z_new = self._dpd((rotate_tokens(tokens, tonics) if rotate else tokens)[len(kept_tok) - d_tok:],
                              kept_z[len(kept_z) - d_z:], n_frames, s, rng, stats, progress, controls)
            z = np.concatenate([kept_z[: len(kept_z) - d_z], z_new])
            ctx = min(len(kept_z), c.chunk_frames)
            tail = state["tail"]
            audio = self._vae(z[len(kept_z) - ctx:], n_frames, n_samples, len(tail), stats)
            if len(tail):  # the join: the last segment's held-back tail fades into its re-decoded version
                w = raised_cosine(len(tail))
                audio[: len(tail)] = (1 - w) * tail + w * audio[: len(tail)]
            if remaining is not None:
                remaining -= n_samples
            last = remaining is not None and remaining <= 0
            cut = len(audio) if last else len(audio) - hold
            audio, state["tail"] = audio[:cut], audio[cut:]
            stats.audio_seconds += len(audio) / c.sample_rate
            state.update(tokens=tokens, latents=z, pos=state["pos"] + n_tok)
            seg_tokens = advance
            yield _with_stats(Audio(audio, c.sample_rate), stats, controls)
            stats = GenerationStats()


def _draft_score(tok, controls: Controls, key: bool) -> Callable[[np.ndarray], float] | None:
    """How well a draft of a song's first window (tokens) does what was asked, higher = better: with ``key``, its
    fit to the asked mode (``controls.key_fit`` of the tokens' mean chroma); with an instrument asked and a family
    head in the tokenizer, plus ``FAMILY_WEIGHT`` times the head's log-probability of that family. None when
    neither applies (then the LM writes one draft)."""
    family = controls.instrument if getattr(tok, "family_head", None) is not None else None
    if not key and family is None:
        return None
    feats = tok.token_features() if key else None

    def score(tokens: np.ndarray) -> float:
        total = key_fit(feats[tokens][:, :12].mean(axis=0), controls.mode) if key else 0.0
        if family is not None:
            total += FAMILY_WEIGHT * tok.family_logprobs(tokens).get(family, 0.0)
        return total

    return score


class Stream:
    """An endless or bounded stream of ``Audio`` chunks (what ``Generator.stream`` returns) whose prompt and
    controls can be changed between chunks with ``steer``.

    A steer takes effect at the next chunk: the new prompt's controls are resolved and the LM's prefix is rebuilt
    (phase 1) while the window's state is kept (kept tokens and latents, song position, tonic), so the kept chunks
    stay exactly as they were (Algorithm 2) and the DPD joins the new music to them. If the new prompt asks another
    key, the new chunks are in that key (a transposing model keeps the LM's tokens in C, so the music modulates at
    the join). Each chunk's ``.prompt`` says which prompt made it. ``steer`` may be called from another thread.

    Example::

        s = gen.stream("a calm piano waltz in D major", seed=0)
        for i, chunk in enumerate(s):
            play(chunk.samples)
            if i == 10:
                s.steer("a stormy string tremolo in D minor")
    """

    def __init__(self, gen: Generator, text: str, controls: Controls, seconds: float | None, settings: _Settings,
                 seed: int | None, progress: Progress | None) -> None:
        self._gen, self._settings, self._progress = gen, settings, progress
        self._rng = np.random.default_rng(seed)  # one random stream across steers: an unsteered stream is unchanged
        self._remaining = None if seconds is None else int(round(seconds * gen.sample_rate))
        self._state: dict[str, Any] = {}
        self._pending: tuple[str, Controls] | None = None
        self._lock = threading.Lock()
        self.prompt, self.controls = text, controls
        self._loop = gen._segments(text, controls, seconds, settings, self._rng, progress, gen.config.chunk_tokens,
                                   self._state)

    def steer(self, prompt: str, *, key: str | None = None, bpm: float | None = None, metre: str | None = None,
              instrument: str | None = None, read_controls: bool = True) -> Controls:
        """Follow ``prompt`` from the next chunk on; controls as in ``Generator.generate`` (the stream's earlier
        explicit controls do not carry over). Returns the resolved ``Controls``.

        Raises:
            InvalidInputError: the prompt is empty, too long or not text, or a control is not accepted; the stream
                goes on with its current prompt.
        """
        _check_args(prompt, None, None, None, None)
        text = clean_prompt(prompt)
        ctl = self._gen.controls(text, key=key, bpm=bpm, metre=metre, instrument=instrument,
                                 read_controls=read_controls)
        with self._lock:
            self._pending = (text, ctl)
        return ctl

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Audio:
        if self._remaining == 0:
            raise StopIteration
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._restart(*pending)
        chunk = next(self._loop)
        if self._remaining is not None:
            self._remaining -= len(chunk.samples)
        object.__setattr__(chunk, "prompt", self.prompt)
        return chunk

    def close(self) -> None:
        """Stop the stream (no more chunks)."""
        self._loop.close()
        self._remaining = 0

    def _restart(self, text: str, controls: Controls) -> None:
        # the same segment loop with the same state and random stream, a new prefix (and tonic, if a key is asked)
        self._loop.close()
        c = self._gen.config
        if controls.tonic is not None and "tonic" in self._state:  # the first window's key alignment carries over
            self._state["tonic"] = (controls.tonic + self._state.get("key_offset", 0)) % 12
        seconds = None if self._remaining is None else self._remaining / c.sample_rate
        self.prompt, self.controls = text, controls
        self._loop = self._gen._segments(text, controls, seconds, self._settings, self._rng, self._progress,
                                         c.chunk_tokens, self._state)


def raised_cosine(n: int) -> np.ndarray:
    """A fade-in ramp of ``n`` samples from just above 0 to just below 1 (its reverse fades out; the two sum to 1)."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


@lru_cache(maxsize=4)
def _tokenizer_at(path: str) -> TextTokenizer:
    return TextTokenizer(Path(path))


def _collect(segments: Iterator[Audio], stats: GenerationStats) -> list[np.ndarray]:
    pieces = []
    for a in segments:
        stats.add(a.stats)
        pieces.append(a.samples)
    return pieces


def _with_stats(audio: Audio, stats: GenerationStats, controls: Controls | None = None) -> Audio:
    object.__setattr__(audio, "stats", stats)
    object.__setattr__(audio, "controls", controls)
    return audio


def _load_backend(bundle: str | os.PathLike, backend: str, device: str) -> Backend:
    from melody_edge.bundle import is_bundle
    from melody_edge.models.config import PRESETS

    name = str(bundle)
    if isinstance(bundle, str) and name in PRESETS and name != "tiny":
        if backend == "onnxruntime":
            raise ConfigError(f"preset {name!r} has random weights and runs on the torch backend; export it first "
                              "(python -m conversion.export) to run it with onnxruntime")
        return _torch_backend_random(name, device)
    if name == "tiny":  # the shipped model: the exported bundle (no torch needed), or its torch checkpoint
        folder = ASSETS / ("tiny" if backend == "torch" else "tiny-bundle")
        if backend == "auto" and not folder.exists():
            folder = ASSETS / "tiny"
        if not folder.exists():
            raise BundleError(f"the bundled 'tiny' model is missing from this install ({folder}); reinstall "
                              "melody-edge, or pass bundle='debug' for a random test model")
    else:
        folder = Path(bundle)
        if not folder.exists():
            raise ConfigError(f"unknown bundle {name!r}: neither a preset ({sorted(PRESETS)}) nor an existing folder")
    if is_bundle(folder) and backend != "torch":
        from melody_edge.bundle import load_bundle

        fmt = load_bundle(folder, verify=False).format
        if fmt == "coreml" and backend in ("auto", "coreml"):
            from melody_edge.backends.coreml_backend import CoreMLBackend

            return CoreMLBackend(load_bundle(folder, verify=False))  # hashes its .mlpackage folders itself
        if fmt == "onnx" and backend in ("auto", "onnxruntime"):
            from melody_edge.backends.onnx_backend import OnnxBackend

            return OnnxBackend(load_bundle(folder))
        raise ConfigError(f"{folder} is a {fmt} bundle; it cannot run on backend {backend!r}")
    if is_bundle(folder):
        raise ConfigError(f"{folder} is an exported bundle; run it with backend='auto'")
    if backend in ("onnxruntime", "coreml"):
        raise ConfigError(f"{folder} is a torch checkpoint, not a bundle; export it with python -m conversion.export")
    return _torch_backend_checkpoint(folder, device)


def _torch_backend_random(name: str, device: str) -> Backend:
    from melody_edge.backends.torch_backend import TorchBackend, _import_torch

    _import_torch()
    from melody_edge.models.config import get_config
    from melody_edge.models.melody import MeLoDy, random_tokenizer

    cfg = get_config(name)
    return TorchBackend(MeLoDy.random(cfg), device, random_tokenizer(cfg))


def _torch_backend_checkpoint(folder: Path, device: str) -> Backend:
    from melody_edge.backends.torch_backend import TorchBackend, _import_torch

    _import_torch()
    from melody_edge.models.melody import MeLoDy
    from melody_edge.tokenizer import SemanticTokenizer

    if not folder.is_dir():
        raise BundleError(f"{folder} is not a folder; pass a checkpoint folder (config.json + model.safetensors)")
    model = MeLoDy.load(folder)
    tok_path = folder / "tokenizer.npz"
    tokenizer = SemanticTokenizer.load(tok_path) if tok_path.exists() else None
    return TorchBackend(model, device, tokenizer)
