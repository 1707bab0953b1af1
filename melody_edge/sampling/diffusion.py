"""The angle-parameterized v-diffusion sampler of MeLoDy (Lam et al. 2023, sec. 3.3 and appendix A).

A clean latent ``z`` at angle ``delta`` in [0, pi/2] is noised as ``cos(delta) z + sin(delta) eps``; the network
predicts ``v = cos(delta) eps - sin(delta) z``. Sampling starts from pure noise at ``delta = pi/2`` and takes the
deterministic DDIM steps ``z <- cos(w) z - sin(w) v_hat`` with angle steps ``w_T, ..., w_1`` that sum to pi/2.
Angles are per frame, so given frames (continuation and inpainting, Algorithm 2) stay at angle 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from melody_edge.errors import InvalidInputError

Denoiser = Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (z (B, L, C), angles (B, L), guidance) -> v_hat


def paper_schedule(steps: int) -> np.ndarray:
    """Angle steps ``w_t = pi/(6T) + 2 pi t / (3T(T+1))`` for t = 1..T (appendix A), summing to pi/2."""
    _check_steps(steps)
    t = np.arange(1, steps + 1, dtype=np.float64)
    return np.pi / (6 * steps) + 2 * np.pi * t / (3 * steps * (steps + 1))


def uniform_schedule(steps: int) -> np.ndarray:
    """Equal angle steps ``w_t = pi / (2T)``, the baseline schedule MeLoDy compares against."""
    _check_steps(steps)
    return np.full(steps, np.pi / (2 * steps))


def get_schedule(name: str, steps: int) -> np.ndarray:
    """The angle schedule called ``name`` ('paper' or 'uniform') with ``steps`` steps."""
    schedules = {"paper": paper_schedule, "uniform": uniform_schedule}
    if name not in schedules:
        raise InvalidInputError(f"unknown schedule {name!r}; choose one of {sorted(schedules)}")
    return schedules[name](steps)


def add_noise(z: np.ndarray, eps: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Noised latent ``cos(delta) z + sin(delta) eps`` with per-frame angles (B, L) broadcast over channels."""
    return np.cos(angles)[..., None] * z + np.sin(angles)[..., None] * eps


def v_target(z: np.ndarray, eps: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Velocity target ``cos(delta) eps - sin(delta) z`` with per-frame angles (B, L) broadcast over channels."""
    return np.cos(angles)[..., None] * eps - np.sin(angles)[..., None] * z


def angles_per_frame(chunk_angles: np.ndarray, frames: int) -> np.ndarray:
    """Repeat per-chunk angles (B, M) over ``frames`` frames cut into M chunks of ceil(frames / M) (Algorithm 2)."""
    if chunk_angles.ndim != 2 or chunk_angles.shape[1] < 1:
        raise InvalidInputError(f"chunk_angles must have shape (batch, chunks >= 1), got {chunk_angles.shape}")
    chunks = chunk_angles.shape[1]
    size = -(-frames // chunks)
    if frames < 1 or (chunks - 1) * size >= frames:
        raise InvalidInputError(f"{frames} frames cannot be cut into {chunks} non-empty chunks of ceil(frames / chunks)"
                                f" frames; need frames >= 1 and (chunks - 1) * ceil(frames / chunks) < frames")
    return chunk_angles[:, np.arange(frames) // size]


def sample(denoise: Denoiser, z: np.ndarray, schedule: np.ndarray, *, fixed: np.ndarray | None = None,
           z_fixed: np.ndarray | None = None, guidance: float = 1.0,
           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Deterministic DDIM in angle form, ``z_{delta - w} = cos(w) z_delta - sin(w) v_hat`` (eq. 29), from pi/2 to 0.

    ``z`` (B, L, C) is the starting noise; ``schedule`` holds w_1..w_T and is applied from w_T down to w_1. Frames
    where ``fixed`` ((B, L) or (L,) bool) is true are set to ``z_fixed`` (B, L, C), get angle 0 in every call and
    come back bit-identical to ``z_fixed`` cast to float32. ``guidance`` is passed through to ``denoise``;
    ``progress(done, total)`` is called after each step. Works in float32 and returns float32 (B, L, C).
    """
    z = np.asarray(z)
    if z.ndim != 3 or not np.issubdtype(z.dtype, np.floating):
        raise InvalidInputError(f"z must be a float array of shape (batch, frames, channels), got {z.dtype} {z.shape}")
    z = z.astype(np.float32)
    schedule = np.asarray(schedule, dtype=np.float64)
    if schedule.ndim != 1 or schedule.size < 1 or not (schedule > 0).all():
        raise InvalidInputError(f"schedule must be a 1-D array of >= 1 positive angle steps, got {schedule.shape}")
    if abs(schedule.sum() - np.pi / 2) > 1e-6:
        raise InvalidInputError(f"schedule angle steps must sum to pi/2 (within 1e-6), got {schedule.sum()!r}")
    mask, z_fixed = _check_fixed(fixed, z_fixed, z)
    z = np.where(mask[..., None], z_fixed, z)
    delta = np.pi / 2
    total = schedule.size
    for done, w in enumerate(schedule[::-1], start=1):
        angles = np.where(mask, np.float32(0), np.float32(delta))
        v = denoise(z, angles, guidance)
        if v.shape != z.shape:
            raise InvalidInputError(f"denoise returned shape {v.shape}, expected the latent shape {z.shape}")
        z_new = np.float32(math.cos(w)) * z - np.float32(math.sin(w)) * v.astype(np.float32, copy=False)
        z = np.where(mask[..., None], z_fixed, z_new)
        delta -= w
        if progress is not None:
            progress(done, total)
    return z


def _check_steps(steps: int) -> None:
    """A schedule needs at least one step."""
    if steps < 1:
        raise InvalidInputError(f"steps must be an integer >= 1, got {steps}")


def _check_fixed(fixed: np.ndarray | None, z_fixed: np.ndarray | None, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (B, L) bool mask of given frames and their float32 latents; none given means an all-false mask."""
    if (fixed is None) != (z_fixed is None):
        raise InvalidInputError("fixed and z_fixed must be given together (the mask of given frames and their latents)")
    if fixed is None:
        return np.zeros(z.shape[:2], dtype=bool), z
    fixed = np.asarray(fixed)
    if fixed.dtype != np.bool_ or fixed.shape not in (z.shape[:2], z.shape[1:2]):
        raise InvalidInputError(f"fixed must be a bool mask of shape (batch, frames) {z.shape[:2]} or (frames,) "
                                f"{z.shape[1:2]}, got {fixed.dtype} {fixed.shape}")
    z_fixed = np.asarray(z_fixed)
    if z_fixed.shape != z.shape:
        raise InvalidInputError(f"z_fixed must have the shape of z {z.shape}, got {z_fixed.shape}")
    return np.broadcast_to(fixed, z.shape[:2]), z_fixed.astype(np.float32)
