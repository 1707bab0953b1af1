import math

import numpy as np
import pytest

from melody_edge import Audio, ConfigError, Generator, InvalidInputError, OutputPathError
from melody_edge.generator import GENERATE_ADVANCE_CHUNKS, KEY_CANDIDATES, MAX_GENERATE_SECONDS
from melody_edge.text import MAX_PROMPT_CHARS

PROMPT = "a calm piano waltz in D major"


def test_generate_returns_exact_duration_mono_float32(debug_gen):
    audio = debug_gen.generate(PROMPT, seconds=2, seed=0, steps=2)
    assert isinstance(audio, Audio)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert len(audio.samples) == 2 * debug_gen.sample_rate
    assert audio.seconds == 2.0
    assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() <= 1.0


def test_same_seed_same_audio_other_seed_differs(debug_gen):
    a = debug_gen.generate(PROMPT, seconds=1, seed=3, steps=2)
    b = debug_gen.generate(PROMPT, seconds=1, seed=3, steps=2)
    c = debug_gen.generate(PROMPT, seconds=1, seed=4, steps=2)
    assert np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)


@pytest.mark.parametrize("seconds,steps,guidance", [(2.0, 3, 2.5), (1.3, 1, 1.0), (7.0, 2, 2.5)])
def test_forward_passes_equal_the_analytic_count(debug_gen, seconds, steps, guidance):
    cfg = debug_gen.config
    audio = debug_gen.generate(PROMPT, seconds=seconds, seed=0, steps=steps, guidance=guidance)
    # first segment: one window (Algorithm 1), then GENERATE_ADVANCE_CHUNKS chunks per continuation step
    # (Algorithm 2)
    first = min(seconds, cfg.window_seconds)
    advance = min(GENERATE_ADVANCE_CHUNKS, cfg.n_chunks - 1) * cfg.chunk_tokens
    segments = 1 + math.ceil(max(0.0, seconds - first) / (advance / cfg.token_rate) - 1e-9)
    tokens = math.ceil(seconds * cfg.token_rate - 1e-9)
    drafts = (KEY_CANDIDATES - 1) * min(tokens, cfg.window_tokens)  # the prompt asks a key: first-window drafts
    assert audio.stats.passes == {
        "text": 1,
        "lm": tokens + drafts,  # per draft, the prefill gives the first token, one step per other token
        "dpd": steps * segments,  # CFG batches cond + uncond into one pass
        "vae": segments,
    }
    assert len(audio.samples) == round(seconds * debug_gen.sample_rate)


def test_stream_chunks_concatenate_to_requested_length_without_gaps(debug_gen):
    seconds = 3.3
    chunks = list(debug_gen.stream(PROMPT, seconds=seconds, seed=0, steps=2))
    assert len(chunks) == math.ceil(seconds / debug_gen.chunk_seconds)
    chunk = round(debug_gen.chunk_seconds * debug_gen.sample_rate)
    assert len(chunks[0].samples) == chunk - 960  # its last token waits to be crossfaded into the next chunk
    assert all(len(c.samples) == chunk for c in chunks[1:-1])
    total = np.concatenate([c.samples for c in chunks])
    assert len(total) == round(seconds * debug_gen.sample_rate)
    # no gap: no run of exact zeros at chunk joins
    for c in chunks:
        assert np.abs(c.samples[:100]).max() > 0 and np.abs(c.samples[-100:]).max() > 0
    first = len(chunks[0].samples) // 960 + 1  # the first chunk's tokens, drafted KEY_CANDIDATES times (a key is asked)
    drafts = (KEY_CANDIDATES - 1) * first
    assert sum(c.stats.passes["lm"] for c in chunks) == math.ceil(seconds * debug_gen.frame_rate) + drafts
    assert all(c.stats.passes["vae"] == 1 for c in chunks)


def test_stream_without_seconds_is_endless(debug_gen):
    it = debug_gen.stream(PROMPT, seed=0, steps=1)
    chunks = [next(it) for _ in range(6)]  # more chunks than fit in one window
    chunk = round(debug_gen.chunk_seconds * debug_gen.sample_rate)
    assert [len(c.samples) for c in chunks] == [chunk - 960] + [chunk] * 5


def test_continue_audio_keeps_prompt_and_appends(debug_gen):
    sr = debug_gen.sample_rate
    prompt_audio = Audio(0.1 * np.sin(2 * np.pi * 440 * np.arange(int(1.5 * sr)) / sr).astype(np.float32), sr)
    out = debug_gen.continue_audio(prompt_audio, PROMPT, seconds=1.0, seed=0, steps=2)
    head = (int(1.5 * sr) // 960) * 960  # the prompt is trimmed to whole 40 ms token frames (37 of 37.5)
    assert len(out.samples) == head + sr
    kept = head - 960  # the prompt's last token crossfades into the continuation
    np.testing.assert_array_equal(out.samples[:kept], prompt_audio.samples[:kept])
    assert out.stats.passes["lm"] == 25


@pytest.mark.parametrize("prompt", ["", "   \n\t", "x" * (MAX_PROMPT_CHARS + 1), None, 42])
def test_bad_prompt_raises_typed_error(debug_gen, prompt):
    with pytest.raises(InvalidInputError) as e:
        debug_gen.generate(prompt, seconds=1)
    assert "prompt" in str(e.value)


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), MAX_GENERATE_SECONDS + 1, "10", True])
def test_bad_seconds_raises_typed_error(debug_gen, seconds):
    with pytest.raises(InvalidInputError) as e:
        debug_gen.generate(PROMPT, seconds=seconds)
    assert "seconds" in str(e.value)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"steps": 2.5}, {"guidance": -1}, {"temperature": 0},
                                    {"top_k": 0}, {"top_p": 1.5}, {"schedule": "cosine"}])
def test_bad_sampling_settings_raise_typed_error(debug_gen, kwargs):
    with pytest.raises(InvalidInputError):
        debug_gen.generate(PROMPT, seconds=0.5, **kwargs)


def test_unknown_preset_and_backend_raise_config_error():
    with pytest.raises(ConfigError, match="preset"):
        Generator("huge")
    with pytest.raises(ConfigError, match="backend"):
        Generator("debug", backend="tensorflow")
    with pytest.raises(ConfigError, match="export"):
        Generator("debug", backend="onnxruntime")


@pytest.mark.parametrize("name", ["missing_dir/out.wav", "out.mp3", "out"])
def test_bad_output_path_raises_and_writes_nothing(debug_gen, tmp_path, name):
    audio = debug_gen.generate(PROMPT, seconds=0.5, seed=0, steps=1)
    with pytest.raises(OutputPathError):
        audio.save(tmp_path / name)
    assert list(tmp_path.rglob("*")) == []


def test_info_describes_the_model(debug_gen):
    info = debug_gen.info
    assert info["model"] == "debug" and info["sample_rate"] == 24_000 and info["token_rate"] == 25


def test_default_guidance_comes_from_the_model_config(debug_gen):
    cfg = debug_gen.config
    default = debug_gen.generate(PROMPT, seconds=1, seed=5, steps=2)
    explicit = debug_gen.generate(PROMPT, seconds=1, seed=5, steps=2, guidance=cfg.guidance,
                                  lm_guidance=cfg.lm_guidance)
    other = debug_gen.generate(PROMPT, seconds=1, seed=5, steps=2, guidance=cfg.guidance + 1.0)
    assert np.array_equal(default.samples, explicit.samples)
    assert not np.array_equal(default.samples, other.samples)


def test_model_config_guidance_round_trips_and_old_configs_keep_the_paper_defaults():
    from melody_edge.models.config import ModelConfig, get_config

    tiny = get_config("tiny")
    assert (tiny.guidance, tiny.lm_guidance) == (1.0, 3.0)
    assert ModelConfig.from_dict(tiny.to_dict()) == tiny
    old = {k: v for k, v in tiny.to_dict().items() if k not in ("guidance", "lm_guidance")}
    restored = ModelConfig.from_dict(old)
    assert (restored.guidance, restored.lm_guidance) == (2.5, 1.0)
