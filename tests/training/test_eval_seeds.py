"""training.eval_seeds: pooling per-seed evaluation reports and paired differences between models."""

import json

import pytest

from training import eval_seeds


def _report(seed, key_same, tempo, fd):
    """A minimal ``training.evaluate`` report: free-form and caption items with the given per-item outcomes."""
    per = [{"id": f"p{i}", "key_relation": "same" if k else "other", "tempo_match": t, "instrument_match": None}
           for i, (k, t) in enumerate(zip(key_same, tempo, strict=True))]
    return {"config": {"seed": seed}, "freeform": {"text_only": {"rtf": 0.05}},
            "captions": {"text_only": {"fd": fd, "rtf": 0.06}},
            "per_prompt": {"text_only": per}, "per_clip": {"text_only": per[:2]}}


def test_pool_rates_spread_and_paired_difference(tmp_path):
    a = [_report(0, [1, 0, 0, 0], [1, 1, 0, 0], 40.0), _report(1, [1, 1, 0, 0], [1, 1, 1, 0], 44.0)]
    b = [_report(0, [1, 1, 0, 0], [1, 1, 0, 0], 42.0), _report(1, [1, 1, 1, 0], [1, 1, 1, 0], 46.0)]
    pooled = eval_seeds.pool(a)
    assert pooled["free-form key_match"]["rate"] == pytest.approx(3 / 8)
    assert pooled["free-form key_match"]["n"] == 8
    assert pooled["free-form key_match"]["per_seed"] == [0.25, 0.5]
    assert pooled["free-form key_match"]["sd"] == pytest.approx(0.1767767, rel=1e-5)
    assert "free-form instrument_match" not in pooled  # no item had a family label
    assert pooled["captions fd"]["mean"] == pytest.approx(42.0)
    d = eval_seeds.paired(b, a)
    assert d["free-form key_match"]["diff"] == pytest.approx(2 / 8)  # two items gained, none lost
    assert d["free-form key_match"]["pairs"] == 8
    assert d["free-form tempo_match"]["diff"] == 0.0
    paths = []
    for name, reps in (("a", a), ("b", b)):
        for r in reps:
            p = tmp_path / f"{name}{r['config']['seed']}.json"
            p.write_text(json.dumps(r))
            paths.append(str(p))
    out = tmp_path / "pooled.md"
    eval_seeds.main(["--model", "a", *paths[:2], "--model", "b", *paths[2:], "--reference", "a", "--out", str(out)])
    text = out.read_text()
    assert "| a | 2 | 0.375 (n 8, sd 0.177)" in text
    assert "+0.250 [" in text
    assert json.loads(out.with_suffix(".json").read_text())["paired"]["b"]["free-form key_match"]["pairs"] == 8


def test_unknown_reference_is_refused(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps(_report(0, [1], [1], 1.0)))
    with pytest.raises(SystemExit):
        eval_seeds.main(["--model", "a", str(p), "--reference", "zzz", "--out", str(tmp_path / "o.md")])
