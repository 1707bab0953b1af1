"""pytest-benchmark suites on the ``debug`` preset: ``pytest benchmarks --benchmark-only``.

End to end (generate 2 s) and per network (one LM decode step, one DPD pass with the CFG batch of 2 over a full
window, one VAE decode of a window), each through the torch backend and an exported ONNX bundle. The bundle is
exported once per module (fp32, component parity gate only), or taken from ``MELODY_BENCH_BUNDLE`` when that names one.
``--benchmark-disable`` runs each body once, as a plain test (``tests/benchmarks`` does so to keep them working).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.workloads import PROMPT
from melody_edge import Generator

BACKENDS = ("torch", "onnx")


@pytest.fixture(scope="module")
def debug_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("MELODY_BENCH_BUNDLE")
    if given:
        return Path(given)
    from conversion.export import export_bundle

    return export_bundle("debug", tmp_path_factory.mktemp("debug-fp32"), precision="fp32", e2e=False)


@pytest.fixture(scope="module")
def generators(debug_bundle: Path) -> dict[str, Generator]:
    return {"torch": Generator("debug", backend="torch"), "onnx": Generator(debug_bundle, backend="onnxruntime")}


def _window_latents(gen: Generator, batch: int) -> np.ndarray:
    c = gen.config
    return np.random.default_rng(0).uniform(-1, 1, (batch, c.window_frames, c.vae.latent_dim)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_2s(benchmark, generators, backend):
    gen = generators[backend]
    audio = benchmark(gen.generate, PROMPT, 2.0, seed=0, steps=8)
    assert audio.seconds == pytest.approx(2.0) and audio.stats.passes["dpd"] == 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_lm_step(benchmark, generators, backend):
    be = generators[backend].backend
    c = be.config
    prefix = be.null_prefix(1)
    tokens = np.zeros((1, c.window_tokens // 2), np.int64)
    beat = np.zeros((1, tokens.shape[1] + 1, c.controls.beat_dim), np.float32) if c.controls.enabled else None
    _, cache = be.lm_prefill(prefix, tokens, beat)
    pos = prefix.shape[1] + tokens.shape[1]
    logits, _ = benchmark(be.lm_step, np.zeros(1, np.int64), pos, cache, None if beat is None else beat[:, -1])
    assert logits.shape == (1, c.lm.vocab_size) and np.isfinite(logits).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dpd_pass(benchmark, generators, backend):
    gen = generators[backend]
    c = gen.config
    z = _window_latents(gen, 2)
    angles = np.full(z.shape[:2], 0.7, np.float32)
    tokens = np.stack([np.zeros(c.window_tokens, np.int64), np.full(c.window_tokens, c.dpd.sem_vocab)])
    v = benchmark(gen.backend.dpd, z, angles, tokens)
    assert v.shape == z.shape and np.isfinite(v).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_vae_decode(benchmark, generators, backend):
    gen = generators[backend]
    z = _window_latents(gen, 1)
    audio = benchmark(gen.backend.vae_decode, z)
    assert audio.shape == (1, z.shape[1] * gen.config.vae.hop) and np.isfinite(audio).all()
