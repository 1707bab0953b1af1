"""``python -m benchmarks.joins``: how audible are the segment joins of ``generate``, ``stream`` and ``continue_audio``?

A join is where one segment's decode ends and the next one's begins (``generate``: after the first window, then
every chunk; ``stream``: every chunk; ``continue_audio``: where the prompt audio ends). For each join the script
takes the sample-to-sample jump at it (and, with a crossfade, at the crossfade's start too: the larger of the two)
and divides it by the 99th percentile of the whole song's jumps (above 1: rarer than 1 sample in 100 of the song,
a click), and the RMS within
20 ms of the join divided by the song's RMS (a dip below 1 is a hole at the join). It measures every crossfade
length in ``--holds`` (tokens held back per segment; 0 is no crossfade, the behaviour before
``JOIN_CROSSFADE_TOKENS``) on the same prompts and seeds, so the rows compare side by side.

    python -m benchmarks.joins --bundle tiny --seconds 20 --out benchmarks/results/joins.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

import melody_edge.generator as generator_module
from melody_edge import Audio, Generator

log = logging.getLogger(__name__)

PROMPTS = [  # written for this measurement, unlike the training captions and the example
    "a calm piano waltz in D major",
    "brisk fiddle reel in A minor",
    "slow brass chorale, E-flat major, 60 bpm",
    "a jaunty flute melody over strings at 132 BPM",
]


def join_figures(x: np.ndarray, joins: list[int], fade: int, sample_rate: int) -> list[dict[str, float]]:
    """Per join (the first sample of a new decode): the jump into it (and into the sample ``fade`` before it, where
    a crossfade starts) over the song's 99th-percentile jump, and RMS within 20 ms of it over the song's RMS."""
    jumps = np.abs(np.diff(x))
    p99 = float(np.percentile(jumps, 99)) + 1e-12
    rms = float(np.sqrt(np.mean(x**2))) + 1e-12
    near = int(0.02 * sample_rate)
    out = []
    for j in joins:
        seg = x[max(0, j - near): j + near]
        out.append({"jump_over_p99": float(max(jumps[j - 1], jumps[j - 1 - fade])) / p99,
                    "rms_ratio": float(np.sqrt(np.mean(seg**2))) / rms})
    return out


def measure(gen: Generator, hold: int, seconds: float, seeds: list[int]) -> dict[str, object]:
    """Figures of every join of generate / stream / continue_audio at crossfade ``hold`` tokens."""
    c = gen.config
    spt = c.sample_rate // c.token_rate
    generator_module.JOIN_CROSSFADE_TOKENS = hold
    rows: dict[str, list[dict[str, float]]] = {"generate": [], "stream": [], "continue": []}
    for prompt in PROMPTS:
        for seed in seeds:
            song = gen.generate(prompt, seconds=seconds, seed=seed).samples
            first = c.window_tokens * spt
            advance = min(generator_module.GENERATE_ADVANCE_CHUNKS, c.n_chunks - 1) * c.chunk_tokens
            joins = list(range(first, len(song) - spt, advance * spt))
            rows["generate"] += join_figures(song, joins, hold * spt, c.sample_rate)
            chunks = [a.samples for a in gen.stream(prompt, seconds=seconds / 2, seed=seed)]
            cuts = np.cumsum([len(a) for a in chunks])[:-1] + hold * spt  # a chunk's end waits hold tokens
            rows["stream"] += join_figures(np.concatenate(chunks), [int(j) for j in cuts], hold * spt, c.sample_rate)
            head = song[: int(seconds / 2 * c.sample_rate) // spt * spt]
            cont = gen.continue_audio(Audio(head, c.sample_rate), prompt, seconds=seconds / 4, seed=seed).samples
            rows["continue"] += join_figures(cont, [len(head)], hold * spt, c.sample_rate)
    summary = {}
    for kind, figs in rows.items():
        j = np.array([f["jump_over_p99"] for f in figs])
        r = np.array([f["rms_ratio"] for f in figs])
        summary[kind] = {"joins": len(figs), "max_jump_over_p99": round(float(j.max()), 3),
                         "median_jump_over_p99": round(float(np.median(j)), 3),
                         "clicks (jump > p99)": int((j > 1.0).sum()),
                         "median_rms_ratio": round(float(np.median(r)), 3)}
    return {"hold_tokens": hold, **summary}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="tiny")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 3])
    p.add_argument("--holds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/joins.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    gen = Generator(a.bundle)
    default = generator_module.JOIN_CROSSFADE_TOKENS
    try:
        results = [measure(gen, h, a.seconds, a.seeds) for h in a.holds]
    finally:
        generator_module.JOIN_CROSSFADE_TOKENS = default
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"bundle": a.bundle, "seconds": a.seconds, "seeds": a.seeds, "prompts": PROMPTS,
                                 "default_hold_tokens": default, "rows": results}, indent=1) + "\n")
    lines = ["| hold (tokens) | call | joins | max jump / p99 | median jump / p99 | joins above p99 | "
             "median RMS ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for kind in ("generate", "stream", "continue"):
            s = r[kind]
            lines.append(f"| {r['hold_tokens']} | {kind} | {s['joins']} | {s['max_jump_over_p99']} | "
                         f"{s['median_jump_over_p99']} | {s['clicks (jump > p99)']} | {s['median_rms_ratio']} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s\n%s", a.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
