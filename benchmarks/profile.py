"""Where the time of one ``generate`` goes: onnxruntime's profiler on every graph of a bundle, against the wall time
``GenerationStats`` measures per stage.

``python -m benchmarks.profile [--bundle PATH] [--seconds 10] [--threads 2] [--out benchmarks/results/profile.md]``
runs one warm-up ``generate`` and then one profiled call of the same workload (the default prompt and seed of the
benchmarks), and writes a markdown report (and the summary as JSON beside it): per stage the wall seconds, the
seconds inside onnxruntime's ``model_run`` and the rest (Python: sampling, classifier-free guidance, cache
bookkeeping, array glue); per graph the operators that take the most kernel time. The profiler adds a per-node cost
(its timestamps), so kernel times are inflated a little and the shares are what to read.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.run import SEED
from benchmarks.workloads import PROMPT
from melody_edge.backends.onnx_backend import OnnxBackend
from melody_edge.bundle import load_bundle
from melody_edge.generator import ASSETS, Generator

STAGE_GRAPHS = {"text": ("text_encoder",), "lm": ("lm_prefill", "lm_step"), "dpd": ("dpd",),
                "vae": ("vae_decoder", "vae_encoder")}
TOP_OPS = 8


def summarize_trace(path: str | Path, calls: int = 1) -> dict[str, Any]:
    """One onnxruntime trace of ``calls`` identical workloads: runs, ``model_run`` microseconds, and kernel
    microseconds and calls per op type, of the last workload only (its runs are the last 1/``calls`` of them)."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    mine = runs[len(runs) - len(runs) // calls:] if runs else []
    start = mine[0]["ts"] if mine else float("inf")
    op_us: collections.Counter = collections.Counter()
    op_n: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            op_us[op] += e["dur"]
            op_n[op] += 1
    return {"runs": len(mine), "run_us": float(sum(e["dur"] for e in mine)), "kernel_us": float(sum(op_us.values())),
            "ops": {op: {"us": us, "calls": op_n[op]} for op, us in op_us.most_common()}}


def profile(bundle: Path, seconds: float, threads: int, workdir: Path) -> dict[str, Any]:
    """A warm-up ``generate`` and the measured one on the same profiled backend; the figures are the second's."""
    backend = OnnxBackend(load_bundle(bundle), threads=threads, profile_prefix=str(workdir / "trace_"))
    gen = Generator.from_backend(backend)
    gen.generate(PROMPT, seconds=seconds, seed=SEED)  # warm-up: the sessions' first runs
    audio = gen.generate(PROMPT, seconds=seconds, seed=SEED)
    graphs = {comp: summarize_trace(f, calls=2) for comp, f in backend.end_profiling().items()}
    stats = audio.stats
    stages = {}
    for stage, comps in STAGE_GRAPHS.items():
        wall = stats.seconds.get(stage, 0.0)
        ort_s = sum(graphs[c]["run_us"] for c in comps if c in graphs) / 1e6
        stages[stage] = {"wall_s": wall, "onnxruntime_s": ort_s, "outside_s": wall - ort_s,
                         "passes": stats.passes.get(stage, 0)}
    return {"bundle": str(bundle), "seconds": seconds, "threads": threads, "prompt": PROMPT, "seed": SEED,
            "rtf": stats.rtf, "total_s": stats.total_seconds, "stages": stages, "graphs": graphs,
            "threads_by_graph": backend.threads_by_graph}


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Profile of one `generate`", "",
             f"`python -m benchmarks.profile --bundle {r['bundle']} --seconds {r['seconds']:g} --threads "
             f"{r['threads']}`: \"{r['prompt']}\", seed {r['seed']}; RTF {r['rtf']:.4f} ({r['total_s'] * 1e3:.0f} ms "
             f"for {r['seconds']:g} s) under onnxruntime's profiler, which inflates kernel times a little. Intra-op "
             f"threads per graph: {r['threads_by_graph']}.", "",
             "In onnxruntime: summed over threads (the LM's key drafts run concurrently, so its figure can exceed its "
             "wall time and the rest go negative).", "",
             "| stage | passes | wall ms | in onnxruntime ms | outside (Python) ms | share of the call |",
             "|---|---|---|---|---|---|"]
    for stage, s in r["stages"].items():
        lines.append(f"| {stage} | {s['passes']} | {s['wall_s'] * 1e3:.1f} | {s['onnxruntime_s'] * 1e3:.1f} | "
                     f"{s['outside_s'] * 1e3:.1f} | {s['wall_s'] / r['total_s']:.0%} |")
    for comp, g in r["graphs"].items():
        if not g["runs"]:
            continue
        per_run = g["run_us"] / g["runs"]
        lines += ["", f"## `{comp}`: {g['runs']:g} runs, {per_run:.0f} us a run "
                  f"(kernels {g['kernel_us'] / g['run_us']:.0%} of it)", "",
                  "| op | us a run | calls a run | share of kernel time |", "|---|---|---|---|"]
        for op, v in list(g["ops"].items())[:TOP_OPS]:
            lines.append(f"| {op} | {v['us'] / g['runs']:.1f} | {v['calls'] / g['runs']:g} | "
                         f"{v['us'] / max(g['kernel_us'], 1e-9):.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=ASSETS / "tiny-bundle")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/profile.md"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = profile(args.bundle, args.seconds, args.threads, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
