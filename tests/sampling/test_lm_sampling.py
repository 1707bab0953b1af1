"""Tests of LM token sampling: guidance, determinism, greedy limits, filtering and argument validation."""

from __future__ import annotations

import numpy as np
import pytest

from melody_edge.errors import InvalidInputError
from melody_edge.sampling import apply_cfg, greedy, guide_within_groups, sample_token


def _logits(seed: int = 0, batch: int = 64, vocab: int = 50) -> np.ndarray:
    """Random float32 logits with no ties."""
    return np.random.default_rng(seed).normal(0.0, 2.0, (batch, vocab)).astype(np.float32)


def _frequencies(logits_row: np.ndarray, n: int = 40_000, **kwargs: float) -> np.ndarray:
    """Empirical token frequencies of ``n`` draws from one row of logits."""
    logits = np.tile(logits_row, (n, 1))
    tokens = sample_token(logits, np.random.default_rng(123), **kwargs)
    return np.bincount(tokens, minlength=logits.shape[1]) / n


def test_cfg_scale_one_returns_cond_exactly() -> None:
    cond, uncond = _logits(1), _logits(2)
    assert np.array_equal(apply_cfg(cond, uncond, 1.0), cond)


def test_cfg_formula() -> None:
    cond, uncond = _logits(1).astype(np.float64), _logits(2).astype(np.float64)
    np.testing.assert_allclose(apply_cfg(cond, uncond, 0.0), uncond, atol=1e-12)
    np.testing.assert_allclose(apply_cfg(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-12)


def test_cfg_shape_mismatch_raises() -> None:
    with pytest.raises(InvalidInputError, match="one shape"):
        apply_cfg(_logits(1, vocab=5), _logits(2, vocab=6), 2.0)


def test_sample_shape_and_dtype() -> None:
    tokens = sample_token(_logits(), np.random.default_rng(0))
    assert tokens.shape == (64,)
    assert tokens.dtype == np.int64
    assert ((tokens >= 0) & (tokens < 50)).all()


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    logits = _logits()
    a = sample_token(logits, np.random.default_rng(7), temperature=1.3, top_k=20, top_p=0.95)
    b = sample_token(logits, np.random.default_rng(7), temperature=1.3, top_k=20, top_p=0.95)
    c = sample_token(logits, np.random.default_rng(8), temperature=1.3, top_k=20, top_p=0.95)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7, "top_k": 9}, {"top_p": 0.8}, {"top_k": 30, "top_p": 0.95}])
def test_one_batched_call_draws_what_row_by_row_calls_draw(kwargs: dict) -> None:
    logits = _logits(3, batch=16)
    logits[::3] = np.round(logits[::3])  # ties, kept in id order
    logits[1, :7] = -np.inf
    batched = sample_token(logits, np.random.default_rng(11), **kwargs)
    rng = np.random.default_rng(11)  # the same stream, one draw per row
    rows = [sample_token(logits[i : i + 1], rng, **kwargs)[0] for i in range(len(logits))]
    np.testing.assert_array_equal(batched, rows)


def test_top_k_one_and_tiny_top_p_equal_greedy() -> None:
    logits = _logits()
    expected = np.argmax(logits, axis=-1)
    assert np.array_equal(greedy(logits), expected)
    assert np.array_equal(sample_token(logits, np.random.default_rng(0), top_k=1), expected)
    assert np.array_equal(sample_token(logits, np.random.default_rng(0), top_p=1e-9), expected)
    assert np.array_equal(sample_token(logits, np.random.default_rng(0), temperature=5.0, top_p=1e-9), expected)


def test_frequencies_match_softmax() -> None:
    row = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
    p = np.exp(row) / np.exp(row).sum()
    np.testing.assert_allclose(_frequencies(row), p, atol=0.01)
    p_hot = np.exp(row / 0.5) / np.exp(row / 0.5).sum()
    np.testing.assert_allclose(_frequencies(row, temperature=0.5), p_hot, atol=0.01)


def test_top_k_keeps_the_k_largest_renormalized() -> None:
    row = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
    freq = _frequencies(row, top_k=2)
    expected = np.zeros(5)
    expected[[3, 0]] = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()
    np.testing.assert_allclose(freq, expected, atol=0.01)
    assert freq[[1, 2, 4]].sum() == 0


def test_top_p_keeps_smallest_prefix_reaching_p() -> None:
    row = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    freq = _frequencies(row, top_p=0.7)  # 0.5 < 0.7 so 0.3 is kept too; 0.5 + 0.3 >= 0.7 so 0.15 is dropped
    np.testing.assert_allclose(freq, [0.0, 0.625, 0.0, 0.375], atol=0.01)
    assert freq[[0, 2]].sum() == 0


def test_masked_tokens_never_drawn() -> None:
    logits = np.zeros((5000, 6))
    logits[:, [1, 4]] = -np.inf
    tokens = sample_token(logits, np.random.default_rng(0))
    assert not np.isin(tokens, [1, 4]).any()
    assert set(np.unique(tokens)) == {0, 2, 3, 5}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.1}, "top_p"),
        ({"top_p": -0.2}, "top_p"),
    ],
)
def test_invalid_settings_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        sample_token(_logits(), np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    "logits",
    [np.zeros(5), np.zeros((2, 0)), np.array([[0.0, np.nan]]), np.array([[0.0, np.inf]]), np.full((1, 3), -np.inf)],
)
def test_invalid_logits_raise(logits: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="logits"):
        sample_token(logits, np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="logits"):
        greedy(logits)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_guide_within_groups_keeps_each_groups_mass_and_reweights_inside_it(temperature: float) -> None:
    logits = _logits(batch=3, vocab=50)  # 4 groups of 12 and 2 ids past the last group
    bias = np.random.default_rng(1).normal(0.0, 3.0, 50)
    out = guide_within_groups(logits, bias, 12, temperature)

    def probs(x: np.ndarray) -> np.ndarray:
        p = np.exp((x - x.max(axis=-1, keepdims=True)) / temperature)
        return p / p.sum(axis=-1, keepdims=True)

    p, q = probs(logits.astype(np.float64)), probs(out.astype(np.float64))
    np.testing.assert_allclose(q[:, :48].reshape(3, 4, 12).sum(-1), p[:, :48].reshape(3, 4, 12).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(q[:, 48:], p[:, 48:], rtol=1e-5)  # past the last group: untouched
    # inside a group the ratio of two members moves by exactly their bias difference (at the temperature)
    ratio = (np.log(q[:, 1]) - np.log(q[:, 0])) - (np.log(p[:, 1]) - np.log(p[:, 0]))
    np.testing.assert_allclose(ratio, bias[1] - bias[0], rtol=1e-4)
    assert guide_within_groups(logits, bias, 1) is logits


def test_guide_within_groups_leaves_a_masked_group_masked() -> None:
    logits = _logits(batch=1, vocab=24)
    logits[0, 12:] = -np.inf  # a whole group filtered out
    logits[0, 3] = -np.inf  # and one member of the other
    out = guide_within_groups(logits, np.ones(24), 12)
    assert np.isneginf(out[0, 12:]).all() and np.isneginf(out[0, 3])
    assert np.isfinite(np.delete(out[0, :12], 3)).all()
