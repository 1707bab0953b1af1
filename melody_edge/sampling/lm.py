"""Token sampling for the semantic LM of MeLoDy (Lam et al. 2023, sec. 3.2): guidance, temperature, top-k, top-p."""

from __future__ import annotations

import numpy as np

from melody_edge.errors import InvalidInputError


def apply_cfg(cond_logits: np.ndarray, uncond_logits: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance on logits, ``uncond + scale * (cond - uncond)``; scale 1 returns ``cond`` exactly."""
    if cond_logits.shape != uncond_logits.shape:
        raise InvalidInputError(f"cond and uncond logits must have one shape, got {cond_logits.shape} and "
                                f"{uncond_logits.shape}")
    return cond_logits + (scale - 1.0) * (cond_logits - uncond_logits)


def guide_within_groups(logits: np.ndarray, bias: np.ndarray, group: int, temperature: float = 1.0) -> np.ndarray:
    """Add ``bias`` (V,) to ``logits`` (B, V) inside each group of ``group`` consecutive ids only: every group's total
    probability after ``temperature`` stays what ``logits`` gave it, and within the group the bias reweights its
    members. For transposition-equivariant semantic tokens (id = base * 12 + rotation, ``group`` 12) a key bias then
    chooses which transposition of a base code is drawn, never which base code: the pitch content moves into the
    key, the texture and timbre the base codes carry keep the LM's distribution. ``group`` 1 returns ``logits``;
    ids past the last whole group and groups with no finite logit are left as they are."""
    _check_logits(logits)
    if group <= 1:
        return logits
    B, n = len(logits), (logits.shape[-1] // group) * group
    b = np.asarray(bias, np.float64)[:n].reshape(1, -1, group)
    y = logits[:, :n].astype(np.float64).reshape(B, -1, group) / temperature
    m = y.max(axis=-1, keepdims=True)
    ok = np.isfinite(m)  # groups with no finite logit stay as they are
    e = np.exp(y - np.where(ok, m, 0.0))  # 0 for -inf members
    # y + b - log sum exp(y + b) + log sum exp(y), per group: the shift m cancels
    with np.errstate(divide="ignore"):  # log 0 in a masked group, which keeps y
        shift = np.log(e.sum(axis=-1, keepdims=True) / np.where(ok, (e * np.exp(b)).sum(axis=-1, keepdims=True), 1.0))
    out = logits.astype(np.float64, copy=True)
    out[:, :n] = (np.where(ok, y + b + shift, y) * temperature).reshape(B, n)
    return out.astype(logits.dtype)


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row of ``logits`` (B, V), as int64 (B,)."""
    _check_logits(logits)
    return np.argmax(logits, axis=-1).astype(np.int64)


def sample_token(logits: np.ndarray, rng: np.random.Generator, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> np.ndarray:
    """Draw one token per row of ``logits`` (B, V) after temperature, top-k then nucleus (top-p) filtering, the whole
    batch in one pass (numpy, no per-row loop): one stable sort per row, inverse-CDF sampling on the sorted row."""
    _check_logits(logits)
    if not np.isfinite(temperature) or temperature <= 0:
        raise InvalidInputError(f"temperature must be a finite number > 0 (use greedy() for 0), got {temperature}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InvalidInputError(f"top_k must be an integer >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InvalidInputError(f"top_p must be in (0, 1] or None, got {top_p}")
    B = logits.shape[0]
    rows = np.arange(B)[:, None]
    x = logits.astype(np.float64)
    order = np.argsort(-x, axis=-1, kind="stable")  # descending; ties keep the lower id first
    x = x[rows, order]
    if temperature != 1.0:
        x /= temperature
    if top_k is not None:
        x[:, top_k:] = -np.inf
    p = np.exp(x - x[:, :1])  # the row max is the first entry, so this is a stable softmax numerator
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None:
        p = np.where(np.cumsum(p, axis=-1) - p < top_p, p, 0.0)  # keep the smallest prefix with mass >= top_p
    n_kept = (p != 0).sum(axis=-1)  # both filters keep a prefix of the sorted row
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(B)[:, None] * cdf[:, -1:]
    idx = np.minimum((cdf <= u).sum(axis=-1), n_kept - 1)
    return order[rows[:, 0], idx].astype(np.int64)


def _check_logits(logits: np.ndarray) -> None:
    """Logits must be (B, V) with no NaN or +inf and at least one finite entry per row."""
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise InvalidInputError(f"logits must have shape (batch, vocab) with vocab >= 1, got {logits.shape}")
    if not np.isfinite(logits.max(axis=-1)).all():  # a row max is NaN if any entry is, +inf or -inf as they are
        raise InvalidInputError("logits must be finite or -inf, with at least one finite entry per row")
