"""Property tests over the public API (issue 11): any prompt, duration, seed, sampling setting or audio prompt either
works or raises the library's own typed error with a message; never a raw exception. Bounded to run in < 60 s."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from melody_edge import Audio, InvalidInputError, MelodyEdgeError
from melody_edge.generator import MAX_GENERATE_SECONDS, MAX_SEED, MIN_SECONDS

FAST = {"seconds": 0.04, "steps": 1}
BOUNDED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                   derandomize=True)

any_text = st.one_of(
    st.text(st.characters(codec=None, categories=None), max_size=40),  # lone surrogates, controls, anything
    st.text(st.characters(categories=["So"]), min_size=1, max_size=20),  # only emoji and symbols
    st.just("x" * 100_000), st.just("\udcff piano"), st.just("\x00\x1b[31m"), st.just("\u200b\u2028"),
)
any_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.just(5e-324), st.just(-0.0), st.just(1e308),
    st.integers(-(2**70), 2**70), st.none(), st.booleans(), st.text(max_size=3), st.just(np.float32(0.5)),
)


def _works_or_typed(fn):
    try:
        return fn()
    except MelodyEdgeError as e:
        assert len(str(e)) > 15, f"message too short to act on: {e!r}"
        return None


@BOUNDED
@given(prompt=st.one_of(any_text, st.none(), st.integers(), st.binary(max_size=8)))
def test_any_prompt_works_or_raises_a_typed_error(debug_gen, prompt):
    audio = _works_or_typed(lambda: debug_gen.generate(prompt, seed=0, **FAST))
    if audio is not None:
        assert len(audio.samples) == 960 and np.isfinite(audio.samples).all()


@BOUNDED
@given(seconds=any_number)
def test_any_generate_duration_works_or_raises_invalid_input(debug_gen, seconds):
    valid = isinstance(seconds, (int, float, np.floating)) and not isinstance(seconds, bool) and (
        math.isfinite(seconds) and MIN_SECONDS <= seconds <= MAX_GENERATE_SECONDS)
    assume(not valid or seconds <= 0.5)  # long valid songs are covered elsewhere; keep the suite fast
    if valid:
        audio = debug_gen.generate("piano", seconds=seconds, seed=0, steps=1)
        assert len(audio.samples) == round(seconds * 24_000)
    else:
        with pytest.raises(InvalidInputError, match="seconds"):
            debug_gen.generate("piano", seconds=seconds, seed=0, steps=1)


@BOUNDED
@given(seconds=any_number)
def test_any_stream_duration_is_checked_before_the_first_chunk(debug_gen, seconds):
    def first():
        return next(iter(debug_gen.stream("piano", seconds=seconds, seed=0, steps=1)))

    chunk = _works_or_typed(first)
    if chunk is not None:
        assert 0 < len(chunk.samples) <= round(debug_gen.chunk_seconds * 24_000)


def test_stream_of_1e308_seconds_is_refused_up_front(debug_gen):
    with pytest.raises(InvalidInputError, match="seconds=None"):
        debug_gen.stream("piano", seconds=1e308)
    with pytest.raises(InvalidInputError, match="token frame"):
        debug_gen.generate("piano", seconds=1e-9)


@BOUNDED
@given(seed=st.one_of(st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=4), st.booleans(), st.none(),
                      st.just(np.uint64(2**64 - 1)), st.just(2**64)))
def test_any_seed_works_or_raises_invalid_input(debug_gen, seed):
    ok = seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                          and 0 <= int(seed) <= MAX_SEED)
    if ok:
        assert len(debug_gen.generate("piano", seed=seed, **FAST).samples) == 960
    else:
        with pytest.raises(InvalidInputError, match="seed"):
            debug_gen.generate("piano", seed=seed, **FAST)


small_or_any = st.one_of(st.integers(-3, 3), any_number)


@BOUNDED
@given(steps=st.one_of(st.integers(-2, 3), st.integers(1001, 2**70), any_number), guidance=small_or_any,
       temperature=small_or_any, top_k=small_or_any, top_p=st.one_of(st.floats(-1, 2), any_number),
       schedule=st.one_of(st.sampled_from(["paper", "uniform", "cosine", ""]), st.none(), st.just([1])))
def test_any_sampling_settings_work_or_raise_invalid_input(debug_gen, steps, guidance, temperature, top_k, top_p,
                                                           schedule):
    audio = _works_or_typed(lambda: debug_gen.generate("piano", seconds=0.04, seed=0, steps=steps, guidance=guidance,
                                                       temperature=temperature, top_k=top_k, top_p=top_p,
                                                       schedule=schedule))
    if audio is not None:
        assert np.isfinite(audio.samples).all()


@BOUNDED
@given(rate=st.one_of(st.integers(-10, 10**7), st.floats(), st.just(float("nan"))),
       length=st.integers(0, 4000), channels=st.integers(1, 3), fill=st.sampled_from([0.1, np.nan, np.inf, 1e30]))
def test_any_audio_prompt_works_or_raises_invalid_input(debug_gen, rate, length, channels, fill):
    samples = np.full((length,) if channels == 1 else (length, channels), fill, np.float32)

    def run():
        return debug_gen.continue_audio(Audio(samples, rate), "piano", seconds=0.04, seed=0, steps=1)

    out = _works_or_typed(run)
    if out is not None:
        assert np.isfinite(out.samples).all() or fill == 1e30


def test_audio_prompt_above_the_memory_budget_is_refused_up_front_with_the_estimate(debug_gen):
    prompt = Audio(np.zeros(1_000_000, np.float32), 1)  # 1e6 samples at 1 Hz = 2.4e10 samples at 24 kHz
    with pytest.raises(InvalidInputError, match=r"GiB.*budget"):
        debug_gen.continue_audio(prompt, "piano", seconds=1)


def test_audio_with_nan_sample_rate_raises_invalid_input():
    with pytest.raises(InvalidInputError, match="sample_rate"):
        Audio(np.zeros(10, np.float32), float("nan"))
    with pytest.raises(InvalidInputError, match="samples"):
        Audio([[1.0], [1.0, 2.0]], 24_000)
