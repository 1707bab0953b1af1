"""Sampling for MeLoDy (Lam et al. 2023): LM token sampling and the angle-parameterized v-diffusion sampler."""

from melody_edge.sampling.diffusion import (
    Denoiser,
    add_noise,
    angles_per_frame,
    get_schedule,
    paper_schedule,
    sample,
    uniform_schedule,
    v_target,
)
from melody_edge.sampling.lm import apply_cfg, greedy, guide_within_groups, sample_token

__all__ = [
    "Denoiser",
    "add_noise",
    "angles_per_frame",
    "apply_cfg",
    "get_schedule",
    "greedy",
    "guide_within_groups",
    "paper_schedule",
    "sample",
    "sample_token",
    "uniform_schedule",
    "v_target",
]
