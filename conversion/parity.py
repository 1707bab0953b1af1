"""Parity gates (the habit of Apple's ml-stable-diffusion): compare an exported bundle with the torch model on the
same inputs and the same noise, log "X dB (fp32) -> Y dB (int8)", and fail below named thresholds.

The thresholds are the contract the tests reuse. int8 thresholds are measured on the trained tiny model (see
README "recipes") with margin; fp16 thresholds apply on GPU/Core ML providers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from melody_edge.errors import MelodyEdgeError

log = logging.getLogger(__name__)

THRESHOLDS: dict[str, dict[str, float]] = {
    # lm_logits_max_abs: max |torch - bundle| over logits; token agreement: greedy argmax agreement (teacher forced)
    "fp32": {"lm_logits_max_abs": 1e-3, "lm_token_agreement": 0.99, "dpd_snr_db": 50.0, "vae_snr_db": 50.0,
             "text_snr_db": 50.0, "e2e_snr_db": 40.0},
    "int8": {"lm_logits_max_abs": 5.0, "lm_token_agreement": 0.80, "dpd_snr_db": 15.0, "vae_snr_db": 15.0,
             "text_snr_db": 15.0, "e2e_snr_db": -100.0},
    "fp16": {"lm_logits_max_abs": 0.1, "lm_token_agreement": 0.95, "dpd_snr_db": 30.0, "vae_snr_db": 30.0,
             "text_snr_db": 30.0, "e2e_snr_db": -100.0},
}
# int8 end-to-end audio is not gated: a single flipped semantic token (sampled) changes the whole song, so the
# per-component gates (SNR of the same inputs) are the meaningful ones; the e2e figure is still reported.


class ParityError(MelodyEdgeError):
    """An exported graph differs from the torch model by more than its threshold."""


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-noise ratio of ``out`` against ``ref`` in dB (inf when identical)."""
    ref = np.asarray(ref, np.float64)
    err = np.asarray(out, np.float64) - ref
    noise = float(np.sum(err**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(float(np.sum(ref**2)), 1e-30) / noise)


def report_parity(figures: dict[str, float], precision: str, stage: str = "bundle",
                  reference: dict[str, float] | None = None) -> dict[str, Any]:
    """Check figures against the thresholds of ``precision``; log each (against a reference precision's figure when
    given) and raise ``ParityError`` naming every failed gate."""
    limits = THRESHOLDS[precision]
    failed = []
    for key, value in figures.items():
        limit = limits.get(key)
        ref = f"{reference[key]:.4g} (fp32) -> " if reference and key in reference else ""
        log.info("%s %s: %s%.4g (%s), threshold %s", stage, key, ref, value, precision, limit)
        if limit is None:
            continue
        ok = value <= limit if key.endswith("max_abs") else value >= limit
        if not ok:
            failed.append(f"{key}={value:.4g} (threshold {limit})")
    if failed:
        raise ParityError(f"{stage} {precision} parity failed: " + ", ".join(failed))
    return {"precision": precision, "figures": figures, "thresholds": limits, "passed": True}
