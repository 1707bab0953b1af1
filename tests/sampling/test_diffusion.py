"""Tests of the angle-parameterized v-diffusion sampler (MeLoDy appendix A) against exact Gaussian denoisers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from melody_edge.errors import InvalidInputError
from melody_edge.sampling import (
    add_noise,
    angles_per_frame,
    get_schedule,
    paper_schedule,
    sample,
    uniform_schedule,
    v_target,
)

GAUSSIANS = [(0.5, 0.3), (-1.0, 2.0)]  # (mean, std) per dim: data std well below and well above the noise std 1
SHAPE = (2, 10_000, 4)  # 80k samples per case


def _exact_denoiser(mu: float, s: float):
    """The exact v-prediction for data z ~ N(mu, s^2) per dim, noised as z_delta = cos(delta) z + sin(delta) eps."""

    def denoise(z: np.ndarray, angles: np.ndarray, guidance: float) -> np.ndarray:
        a = np.cos(angles.astype(np.float64))[..., None]
        b = np.sin(angles.astype(np.float64))[..., None]
        y = z - a * mu
        var = a * a * s * s + b * b
        z_hat = mu + a * s * s * y / var
        eps_hat = b * y / var
        return (a * eps_hat - b * z_hat).astype(np.float32)

    return denoise


def _ddim_gain(s: float, schedule: np.ndarray) -> float:
    """Closed-form DDIM on N(mu, s^2): the output is mu + gain * z_start, with gain the product of per-step ratios.

    A step maps the centred latent y = z_delta - cos(delta) mu to y (cos d cos d' s^2 + sin d sin d') / (cos^2 d s^2
    + sin^2 d), so the output std is gain <= s (Cauchy-Schwarz), with equality only in the limit of many steps.
    """
    gain, delta = 1.0, math.pi / 2
    for w in schedule[::-1]:
        a, b, a2, b2 = math.cos(delta), math.sin(delta), math.cos(delta - w), math.sin(delta - w)
        gain *= (a * a2 * s * s + b * b2) / (a * a * s * s + b * b)
        delta -= w
    return gain


@pytest.mark.parametrize("steps", [1, 4, 8, 20, 50])
@pytest.mark.parametrize("name", ["paper", "uniform"])
def test_schedules_sum_to_half_pi(name: str, steps: int) -> None:
    w = get_schedule(name, steps)
    assert w.shape == (steps,)
    assert (w > 0).all()
    assert abs(w.sum() - math.pi / 2) < 1e-12


def test_paper_schedule_values() -> None:
    w = paper_schedule(4)
    t = np.arange(1, 5)
    np.testing.assert_allclose(w, math.pi / 24 + 2 * math.pi * t / 60, rtol=0, atol=1e-15)
    assert (np.diff(w) > 0).all()  # w_T, the first step taken, is the largest
    np.testing.assert_array_equal(uniform_schedule(4), np.full(4, math.pi / 8))


@pytest.mark.parametrize(("name", "steps"), [("cosine", 8), ("paper", 0), ("uniform", -3)])
def test_bad_schedule_settings_raise(name: str, steps: int) -> None:
    with pytest.raises(InvalidInputError):
        get_schedule(name, steps)


@pytest.mark.parametrize("steps", [4, 8, 20])
@pytest.mark.parametrize("name", ["paper", "uniform"])
@pytest.mark.parametrize(("mu", "s"), GAUSSIANS)
def test_exact_denoiser_gives_closed_form_ddim(mu: float, s: float, name: str, steps: int) -> None:
    """Mean within 2% of s of mu; std within 2% of the closed-form DDIM std, which is below s for few steps."""
    schedule = get_schedule(name, steps)
    z0 = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    out = sample(_exact_denoiser(mu, s), z0, schedule)
    gain = _ddim_gain(s, schedule)
    assert abs(out.mean() - mu) < 0.02 * s
    assert abs(out.std() / gain - 1) < 0.02
    np.testing.assert_allclose(out, mu + gain * z0, rtol=1e-4, atol=1e-4 * s)  # and exactly, sample by sample


@pytest.mark.parametrize("name", ["paper", "uniform"])
@pytest.mark.parametrize(("mu", "s"), GAUSSIANS)
def test_exact_denoiser_recovers_data_distribution(mu: float, s: float, name: str) -> None:
    """With enough steps the deterministic sampler reproduces the data mean and std within 2%."""
    z0 = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    out = sample(_exact_denoiser(mu, s), z0, get_schedule(name, 200))
    assert abs(out.mean() - mu) < 0.02 * s
    assert abs(out.std() / s - 1) < 0.02


def test_steps_run_from_largest_to_smallest() -> None:
    """The paper schedule taken w_T first gives another (here: the closed-form) result than taken w_1 first."""
    schedule = paper_schedule(4)
    z0 = np.random.default_rng(0).standard_normal((1, 1000, 2)).astype(np.float32)
    out = sample(_exact_denoiser(0.5, 0.3), z0, schedule)
    np.testing.assert_allclose(out, 0.5 + _ddim_gain(0.3, schedule) * z0, rtol=1e-4, atol=1e-5)
    assert abs(_ddim_gain(0.3, schedule) / _ddim_gain(0.3, schedule[::-1]) - 1) > 0.05


def test_ddim_step_with_true_velocity_moves_along_the_noising_path() -> None:
    rng = np.random.default_rng(2)
    z, eps = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    delta, w = rng.uniform(0.3, 1.5, (2, 3)), 0.2
    z_delta = add_noise(z, eps, delta)
    v = v_target(z, eps, delta)
    np.testing.assert_allclose(math.cos(w) * z_delta - math.sin(w) * v, add_noise(z, eps, delta - w), atol=1e-12)
    c, s = np.cos(delta)[..., None], np.sin(delta)[..., None]
    np.testing.assert_allclose(c * z_delta - s * v, z, atol=1e-12)
    np.testing.assert_allclose(s * z_delta + c * v, eps, atol=1e-12)


@pytest.mark.parametrize("mask_shape", ["batch", "frames"])
def test_fixed_frames_are_bit_identical_and_get_angle_zero(mask_shape: str) -> None:
    rng = np.random.default_rng(3)
    z0 = rng.standard_normal((2, 12, 3)).astype(np.float32)
    z_fixed = rng.standard_normal((2, 12, 3)).astype(np.float32)
    fixed = np.zeros(12, dtype=bool)
    fixed[:3] = fixed[9:] = True  # a continuation prefix and an inpainting suffix
    if mask_shape == "batch":
        fixed = np.stack([fixed, np.roll(fixed, 2)])
    full = np.broadcast_to(fixed, (2, 12))
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def denoise(z: np.ndarray, angles: np.ndarray, guidance: float) -> np.ndarray:
        calls.append((z.copy(), angles.copy()))
        assert z.dtype == angles.dtype == np.float32
        assert angles.shape == (2, 12)
        return 0.7 * z + 0.1

    schedule = paper_schedule(5)
    out = sample(denoise, z0, schedule, fixed=fixed, z_fixed=z_fixed)
    assert np.array_equal(out[full], z_fixed[full])
    assert not np.isclose(out[~full], z0[~full]).any()
    deltas = math.pi / 2 - np.concatenate([[0.0], np.cumsum(schedule[::-1])[:-1]])
    assert len(calls) == 5
    for (z, angles), delta in zip(calls, deltas, strict=True):
        assert np.array_equal(z[full], z_fixed[full])
        assert (angles[full] == 0).all()
        np.testing.assert_allclose(angles[~full], delta, rtol=0, atol=1e-6)


def test_deterministic_given_start_and_does_not_modify_inputs() -> None:
    z0 = np.random.default_rng(4).standard_normal((1, 64, 4)).astype(np.float32)
    keep = z0.copy()
    denoise = _exact_denoiser(0.5, 0.3)
    a = sample(denoise, z0, uniform_schedule(6))
    b = sample(denoise, z0, uniform_schedule(6))
    assert np.array_equal(a, b)
    assert a.dtype == np.float32
    assert np.array_equal(z0, keep)


def test_guidance_and_progress_are_passed_through() -> None:
    seen: list[float] = []
    ticks: list[tuple[int, int]] = []

    def denoise(z: np.ndarray, angles: np.ndarray, guidance: float) -> np.ndarray:
        seen.append(guidance)
        return np.zeros_like(z)

    sample(denoise, np.ones((1, 4, 2), np.float32), paper_schedule(3), guidance=3.5,
           progress=lambda done, total: ticks.append((done, total)))
    assert seen == [3.5, 3.5, 3.5]
    assert ticks == [(1, 3), (2, 3), (3, 3)]


def test_angles_per_frame() -> None:
    chunk = np.array([[0.0, 0.5, 1.0, 1.5]])
    np.testing.assert_array_equal(angles_per_frame(chunk, 8), [[0, 0, 0.5, 0.5, 1, 1, 1.5, 1.5]])
    np.testing.assert_array_equal(angles_per_frame(chunk, 10), [[0, 0, 0, 0.5, 0.5, 0.5, 1, 1, 1, 1.5]])
    with pytest.raises(InvalidInputError, match="non-empty chunks"):
        angles_per_frame(chunk, 5)  # chunks of 2 leave the fourth chunk empty
    with pytest.raises(InvalidInputError, match="chunk_angles"):
        angles_per_frame(np.zeros(4), 8)


def _zero_v(z: np.ndarray, angles: np.ndarray, guidance: float) -> np.ndarray:
    """A denoiser that predicts v = 0."""
    return np.zeros_like(z)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z": np.zeros((4, 2), np.float32)}, "z must be"),
        ({"z": np.zeros((1, 4, 2), np.int64)}, "z must be"),
        ({"schedule": np.full(4, 0.3)}, "sum to pi/2"),
        ({"schedule": np.array([math.pi, -math.pi / 2])}, "positive"),
        ({"schedule": np.zeros((0,))}, "positive"),
        ({"fixed": np.ones(4, bool)}, "together"),
        ({"z_fixed": np.zeros((1, 4, 2), np.float32)}, "together"),
        ({"fixed": np.ones(4, np.int64), "z_fixed": np.zeros((1, 4, 2), np.float32)}, "bool mask"),
        ({"fixed": np.ones(5, bool), "z_fixed": np.zeros((1, 4, 2), np.float32)}, "bool mask"),
        ({"fixed": np.ones(4, bool), "z_fixed": np.zeros((1, 4, 3), np.float32)}, "z_fixed must"),
        ({"denoise": lambda z, angles, guidance: z[..., :1]}, "denoise returned"),
    ],
)
def test_invalid_sampler_inputs_raise(kwargs: dict, match: str) -> None:
    args = {"denoise": _zero_v, "z": np.zeros((1, 4, 2), np.float32), "schedule": uniform_schedule(4)} | kwargs
    with pytest.raises(InvalidInputError, match=match):
        sample(args.pop("denoise"), args.pop("z"), args.pop("schedule"), **args)


def _debug_dpd_denoiser(tokens: np.ndarray):
    """The debug-preset DPD (random weights; its zero-initialised output and FiLM layers given weights) as a sampler
    denoiser for one window."""
    torch = pytest.importorskip("torch")
    from melody_edge.models.config import get_config
    from melody_edge.models.dpd import DPD

    cfg = get_config("debug")
    torch.manual_seed(0)
    model = DPD(cfg.dpd, cfg.frames_per_token).eval()
    with torch.no_grad():
        model.out.weight.normal_(0, 0.1)
        for blk in model.blocks:
            blk.film.weight.normal_(0, 0.1)

    def denoise(z: np.ndarray, angles: np.ndarray, guidance: float) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(z), torch.from_numpy(angles), torch.from_numpy(tokens)).numpy()

    return denoise, cfg


def test_continuation_new_frames_follow_the_kept_frames_through_the_denoiser() -> None:
    # the sampler pins kept frames itself, so "kept frames come back unchanged" holds for any denoiser, even one that
    # returns zeros; what shows the denoiser continues the music is that the new frames change when only the kept
    # frames change (same noise, same tokens). A zero or context-blind denoiser makes both runs' new frames equal.
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 8, (1, 64))
    denoise, cfg = _debug_dpd_denoiser(tokens)
    L, C = cfg.window_frames, cfg.dpd.latent_dim
    fixed = np.arange(L) < 3 * L // 4
    noise = rng.standard_normal((1, L, C)).astype(np.float32)
    outs = []
    for _ in range(2):
        z0 = np.where(fixed[None, :, None], rng.uniform(-1, 1, (1, L, C)).astype(np.float32), noise)
        out = sample(denoise, z0, get_schedule("paper", 4), fixed=fixed, z_fixed=z0)
        assert np.array_equal(out[:, fixed], z0[:, fixed])
        outs.append(out[:, ~fixed])
    change = np.abs(outs[0] - outs[1]).mean() / np.abs(outs[0]).mean()
    assert change > 1e-3, change  # measured 0.023 (random weights); exactly 0 for a zero or context-blind denoiser
