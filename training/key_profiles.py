"""Cross-check of key adherence with key profiles other than the one the runtime aligns and drafts by.

The runtime transposes and picks LM drafts by their fit to Krumhansl-Kessler profiles (``melody_edge.controls``), the
profile ``training.evaluate`` also scores with, so part of a gain there can be the music fitting that one profile
better. This scores the same generations with three other published profile sets (music21's Aarden-Essen,
Temperley-Kostka-Payne and Bellman-Budge weightings) on the same CQT chroma: a gain that holds under all of them is
a gain in key, not in one estimator.

``python -m training.key_profiles --row NAME BUNDLE KEY_CANDIDATES ALIGN [KEY_STRENGTH] ... --data data/music --seeds 0
--out F.md``: the free-form prompts at their evaluation seeds, text only, 10 s, each bundle at its defaults but
``key_candidates``, (ALIGN 0) without the key alignment (the runtime's tonic from C, as before it existed) and
``key_strength`` where given; real test clips through the same estimators as the ceiling (``--n-real 0``: none).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
from music21.analysis import discrete

from melody_edge.generator import Generator
from training.captions import controls_of
from training.data import load_split
from training.evaluate import DEFAULT_PROMPTS, HOP, SILENT_RMS, load_clip, load_prompts, pick_rows, prompt_items, rms

PROFILES = {"Krumhansl-Kessler": discrete.KrumhanslSchmuckler, "Aarden-Essen": discrete.AardenEssen,
            "Temperley-Kostka-Payne": discrete.TemperleyKostkaPayne, "Bellman-Budge": discrete.BellmanBudge}


def profiles() -> dict[str, dict[str, np.ndarray]]:
    """{profile set: {mode: 12 weights, tonic first}} from music21."""
    return {name: {m: np.array(cls().getWeights(m), np.float64) for m in ("major", "minor")}
            for name, cls in PROFILES.items()}


def estimate(chroma: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[int, str]:
    best = (-2.0, 0, "major")
    for mode, w in weights.items():
        for t in range(12):
            r = float(np.corrcoef(chroma, np.roll(w, t))[0, 1])
            if np.isfinite(r) and r > best[0]:
                best = (r, t, mode)
    return best[1], best[2]


def chroma_of(audio: np.ndarray, sr: int) -> np.ndarray | None:
    if rms(audio) < SILENT_RMS:
        return None
    return librosa.feature.chroma_cqt(y=audio.astype(np.float32), sr=sr, hop_length=HOP).mean(axis=1)


def score(chromas: list[np.ndarray | None], labels: list[tuple[int, str] | None]) -> dict[str, float]:
    out = {}
    for name, w in profiles().items():
        hits = [c is not None and estimate(c, w) == lab for c, lab in zip(chromas, labels, strict=True) if lab]
        out[name] = float(np.mean(hits))
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", nargs="+", action="append", required=True,
                   metavar="NAME BUNDLE K ALIGN [STRENGTH]",
                   help="a row: its name, bundle folder or 'tiny', key_candidates, 1/0 key alignment on/off and "
                        "optionally key_strength (default: the API's)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-real", type=int, default=40, help="real test clips (the estimators' ceiling)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    for row in a.row:
        if len(row) not in (4, 5):
            p.error(f"--row takes NAME BUNDLE K ALIGN [STRENGTH], got {row}")
    items = prompt_items(load_prompts(DEFAULT_PROMPTS))
    labels = [(it.label.tonic, it.label.mode) if it.label.tonic is not None else None for it in items]
    result = {"profiles": list(PROFILES), "seeds": a.seeds, "n_prompts": len(items), "rows": {}}
    import melody_edge.generator as generator

    aligned = generator.key_rotation
    for name, bundle, k, align, *strength in a.row:
        extra = {"key_strength": float(strength[0])} if strength else {}
        generator.key_rotation = aligned if align == "1" else (lambda chroma, tonic, mode: tonic)
        gen = Generator(bundle)
        chromas, labs = [], []
        for seed in a.seeds:
            for i, it in enumerate(items):
                audio = gen.generate(it.prompt, 10.0, seed=seed * 100_003 + 50_000 + i,  # evaluate's item seeds
                                     key_candidates=int(k), **extra)
                chromas.append(chroma_of(audio.samples, gen.sample_rate))
                labs.append(labels[i])
        result["rows"][name] = score(chromas, labs)
        print(name, result["rows"][name], flush=True)
    generator.key_rotation = aligned
    rows = pick_rows(load_split(a.data, "test"), a.n_real, 0) if a.n_real else []
    real = [chroma_of(load_clip(Path(a.data) / r["path"], 24_000, 240_000), 24_000) for r in rows]
    real_labels = [(c.tonic, c.mode) if c.tonic is not None else None
                   for c in (controls_of(r["metadata"]) for r in rows)]
    if rows:
        result["rows"][f"real test clips ({len(rows)})"] = score(real, real_labels)
    lines = ["# Key adherence under four key-profile sets", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Free-form prompts: {len(items)} x seeds {a.seeds}; exact key (tonic and mode).", "",
             "| model | " + " | ".join(PROFILES) + " |", "|---" * (len(PROFILES) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in PROFILES) + " |" for name, v in result["rows"].items()]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
