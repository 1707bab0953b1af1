"""Pool ``training.evaluate`` reports made at several seeds, per model, and compare models on the same seeds.

A single 10 s evaluation at one seed moves 8-13 points on key accuracy between near-identical models (75 free-form
prompts: a binomial standard error of ~5 points at 25%), too much to choose a model by. This pools the per-item
records of every seed (each seed draws other generation seeds and, for the captions, other clips) and reports per
model the pooled rate, the spread of the per-seed rates, and against a reference model the paired difference: the
same items at the same seeds in both models, so the per-item differences give a standard error of the difference
(a 95% interval of +-1.96 se). Frechet distance and RTF are per-seed numbers: their mean and spread are reported.

Usage::

    python -m training.eval_seeds --model teacher runs/eval/teacher-s0.json runs/eval/teacher-s1.json \\
        --model dpd4 runs/eval/dpd4-s0.json runs/eval/dpd4-s1.json --reference teacher \\
        --out training/results/eval_seeds.md            # .json beside it
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: (prompt set, report section, per-item section, metric, per-item test)
MEASURES = (
    ("free-form", "freeform", "per_prompt", "key_match", lambda c: None if c["key_relation"] is None
     else c["key_relation"] == "same"),
    ("free-form", "freeform", "per_prompt", "tempo_match", lambda c: c["tempo_match"]),
    ("free-form", "freeform", "per_prompt", "instrument_match", lambda c: c["instrument_match"]),
    ("captions", "captions", "per_clip", "key_match", lambda c: None if c["key_relation"] is None
     else c["key_relation"] == "same"),
    ("captions", "captions", "per_clip", "tempo_match", lambda c: c["tempo_match"]),
    ("captions", "captions", "per_clip", "instrument_match", lambda c: c["instrument_match"]),
)
PER_SEED = (("captions", "fd"), ("captions", "rtf"), ("freeform", "rtf"))


def _items(report: dict[str, Any], section: str, row: str, test: Any) -> dict[str, float]:
    """{item id: 0/1} for the items of ``row`` where ``test`` applies (None = the label lacks the attribute)."""
    out = {}
    for c in (report.get(section) or {}).get(row) or []:
        v = test(c)
        if v is not None:
            out[str(c["id"])] = float(v)
    return out


def pool(reports: Sequence[dict[str, Any]], row: str = "text_only") -> dict[str, Any]:
    """One model's seeds pooled: {"<set> <metric>": {rate, n, per_seed, sd}, "<section> <metric>": {mean, sd}}."""
    out: dict[str, Any] = {"seeds": [r["config"]["seed"] for r in reports]}
    for name, _sec, per, metric, test in MEASURES:
        per_seed = [_items(r, per, row, test) for r in reports]
        values = [v for s in per_seed for v in s.values()]
        rates = [float(np.mean(list(s.values()))) for s in per_seed if s]
        if values:
            out[f"{name} {metric}"] = {"rate": float(np.mean(values)), "n": len(values), "per_seed": rates,
                                       "sd": float(np.std(rates, ddof=1)) if len(rates) > 1 else None}
    for sec, metric in PER_SEED:
        vals = [((r.get(sec) or {}).get(row) or {}).get(metric) for r in reports]
        vals = [float(v) for v in vals if v is not None]
        if vals:
            out[f"{sec} {metric}"] = {"mean": float(np.mean(vals)), "per_seed": vals,
                                      "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}
    return out


def paired(reports: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]], row: str = "text_only"
           ) -> dict[str, Any]:
    """Per measure, the mean paired difference (model - reference) over the items both have at the same seeds,
    with its standard error and the number of pairs."""
    by_seed = {r["config"]["seed"]: r for r in reference}
    out = {}
    for name, _sec, per, metric, test in MEASURES:
        diffs = []
        for r in reports:
            ref = by_seed.get(r["config"]["seed"])
            if ref is None:
                continue
            a, b = _items(r, per, row, test), _items(ref, per, row, test)
            diffs += [a[k] - b[k] for k in a.keys() & b.keys()]
        if diffs:
            se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None
            out[f"{name} {metric}"] = {"diff": float(np.mean(diffs)), "se": se, "pairs": len(diffs)}
    return out


def markdown(models: dict[str, dict[str, Any]], diffs: dict[str, dict[str, Any]], reference: str | None,
             meta: dict[str, Any]) -> str:
    keys = [f"{n} {m}" for n, _s, _p, m, _t in MEASURES]
    seed_keys = [f"{s} {m}" for s, m in PER_SEED]
    lines = [f"# {meta['title']}", "", meta["note"], "",
             "Rates pooled over every item of every seed (n items), with the spread (sd) of the per-seed rates; "
             "Frechet distance and RTF: mean and sd over seeds.", "",
             "| model | seeds | " + " | ".join(keys + seed_keys) + " |",
             "|---" * (2 + len(keys) + len(seed_keys)) + "|"]
    for name, p in models.items():
        cells = []
        for k in keys:
            v = p.get(k)
            cells.append("-" if v is None else f"{v['rate']:.3f} (n {v['n']}"
                         + ("" if v["sd"] is None else f", sd {v['sd']:.3f}") + ")")
        for k in seed_keys:
            v = p.get(k)
            cells.append("-" if v is None else f"{v['mean']:.4g}" + ("" if v["sd"] is None else f" ± {v['sd']:.2g}"))
        lines.append(f"| {name} | {len(p['seeds'])} | " + " | ".join(cells) + " |")
    if reference and diffs:
        lines += ["", f"Paired differences against `{reference}` (same items, same seeds): mean difference, its "
                  "95% interval (+-1.96 se) and the number of pairs.", "",
                  "| model | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
        for name, d in diffs.items():
            cells = []
            for k in keys:
                v = d.get(k)
                cells.append("-" if v is None or v["se"] is None else
                             f"{v['diff']:+.3f} [{v['diff'] - 1.96 * v['se']:+.3f}, {v['diff'] + 1.96 * v['se']:+.3f}]"
                             f" ({v['pairs']})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", action="append", required=True, metavar=("NAME", "JSON"),
                   help="a model's name and its evaluation reports (one per seed)")
    p.add_argument("--reference", default=None, help="model the paired differences are taken against")
    p.add_argument("--row", default="text_only", help="generation row compared (default: text_only)")
    p.add_argument("--title", default="Evaluation pooled over seeds")
    p.add_argument("--note", default="", help="a line under the title (what was run, the command)")
    p.add_argument("--out", type=Path, required=True, help="markdown table; the .json goes beside it")
    args = p.parse_args(argv)
    runs = {}
    for group in args.model:
        if len(group) < 2:
            p.error(f"--model {group[0]}: give at least one report")
        runs[group[0]] = [json.loads(Path(f).read_text()) for f in group[1:]]
    if args.reference is not None and args.reference not in runs:
        p.error(f"--reference {args.reference} is not one of {list(runs)}")
    models = {n: pool(r, args.row) for n, r in runs.items()}
    diffs = ({n: paired(r, runs[args.reference], args.row) for n, r in runs.items() if n != args.reference}
             if args.reference else {})
    meta = {"title": args.title, "note": args.note, "row": args.row, "reference": args.reference,
            "reports": {g[0]: g[1:] for g in args.model}}
    result = {"meta": meta, "models": models, "paired": diffs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(models, diffs, args.reference, meta)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main()
