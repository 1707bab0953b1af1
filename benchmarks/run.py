"""``python -m benchmarks run``: measure every configuration (backend x precision x model) on named workloads and
write one JSON line per measurement to a JSONL file you name (the llama-bench habit: raw samples, machine, commit).

Rows go to ``--out`` (default ``runs/benchmarks/<run id>.jsonl``, git-ignored; never the committed
``benchmarks/results/results.jsonl`` unless named). An existing file is refused unless ``--append``. Every row carries
the run's commit (``dirty`` when the tree had changes), the model's hash (``model_sha256``: the checkpoint's weights
file, or a bundle's digest of its files' hashes; ``random:<preset>`` for random weights) and ``settings`` (steps,
guidance, threads, seed, repeats, quick); ``report`` groups by them.

Method:
- each configuration runs in a fresh process (``python -m benchmarks worker``), so its peak RSS is its own;
  loading (``Generator`` construction, imports included) is timed apart from the workloads;
- every workload gets one warm-up run first (not recorded), then ``--repeats`` timed runs; RTF is the median wall
  time over the seconds of audio made. A stream runs once (600 s of audio is its own long sample) and records time to
  first audio, each chunk's wall time and the RSS after each chunk; its warm-up is a stream of two chunks;
- the ceilings (``benchmarks.machine``) are measured once per run in their own process; the analytic FLOPs and bytes
  of each workload (``benchmarks.costs``) are attached to its row;
- the peer (``benchmarks.peer``) runs in its own process too;
- the paper preset runs the same ``--steps`` as the other configurations (its ratio to the peer is then fair).
``--quick`` exports ``debug`` bundles on the fly and runs tiny workloads once, without the paper model and the peer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.workloads import PROMPT, Workload, run_once

log = logging.getLogger("benchmarks.run")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = 1
COMMITTED = Path("benchmarks/results/results.jsonl")  # the committed rows the README tables come from
RUNS_DIR = ROOT / "runs" / "benchmarks"  # default home of new rows (git-ignored)
BACKEND_CHOICES = ("torch", "onnx-fp32", "onnx-int8", "onnx-fp16")
DEFAULT_BACKENDS = "torch,onnx-fp32,onnx-int8"
DEFAULT_WORKLOADS = "gen5s,gen10s,gen30s,stream600s,cont10s+10s"
QUICK_WORKLOADS = "gen2s,stream2s,cont1s+1s"
PAPER_WORKLOAD = "gen10s"
PAPER_WARMUP_SECONDS = 1.0  # a paper-size warm-up of the full 10 s would double an already long run
STREAM_WARMUP_CHUNKS = 2
RSS_GROWTH_FROM_CHUNK = 5  # chunk 5 (1-based): after the window has filled and the allocator settled
SEED = 0


# ---------------------------------------------------------------------------------------------------------------
# the parent: plan the configurations, run each in its own process, write rows
# ---------------------------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m benchmarks run``."""
    p.add_argument("--quick", action="store_true",
                   help="debug preset bundles exported on the fly, tiny workloads, one round, no paper model, no peer")
    p.add_argument("--bundle", action="append", default=None, metavar="PATH",
                   help="an exported bundle to measure (repeatable); default: melody_edge/assets/tiny-bundle if "
                        "present. A requested onnx-<precision> with no bundle is exported from --preset")
    p.add_argument("--backends", default=DEFAULT_BACKENDS,
                   help=f"comma-separated: torch, onnx-fp32, onnx-int8, onnx-fp16 (default {DEFAULT_BACKENDS})")
    p.add_argument("--preset", default=None,
                   help="model of the torch backend and of on-the-fly exports: tiny (the shipped checkpoint), "
                        "debug, paper, or a checkpoint folder (default: tiny; debug with --quick)")
    p.add_argument("--workloads", default=None, help=f"comma-separated (default {DEFAULT_WORKLOADS}; "
                                                     f"with --quick {QUICK_WORKLOADS})")
    p.add_argument("--stream-seconds", type=float, default=None, help="shorten (or lengthen) the stream workloads")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per workload after the warm-up "
                                                             "(default 3; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="diffusion steps (default: each model's own, its config.dpd_steps: what users run)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch, onnxruntime and BLAS")
    p.add_argument("--key-candidates", type=int, default=None,
                   help="the generator's key drafts (default: its own, 2); the labels get a -k<N> suffix")
    p.add_argument("--paper", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the paper preset (random weights, torch fp32) on gen10s (default: on, "
                        "off with --quick)")
    p.add_argument("--paper-repeats", type=int, default=1, help="timed runs of the paper model (default 1)")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                   help="also time the MusicGen-small peer (default: on, off with --quick)")
    p.add_argument("--peer-seconds", type=float, default=10.0, help="seconds of audio the peer makes (default 10)")
    p.add_argument("--peer-repeats", type=int, default=1, help="timed runs of the peer (default 1)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where bundles exported on the fly go (default: a temporary folder); bundles already "
                        "there are reused")
    p.add_argument("--out", type=Path, default=None,
                   help="JSONL file the rows go to (default runs/benchmarks/<run id>.jsonl)")
    p.add_argument("--append", action="store_true", help="append to --out when it exists (else it is refused)")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _header(quick: bool, threads: int) -> dict[str, Any]:
    from benchmarks.machine import machine_info
    from melody_edge import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return {"schema": SCHEMA, "run_id": f"{stamp}-{secrets.token_hex(3)}", "commit": _git("rev-parse", "HEAD") or
            "unknown", "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")), "version": __version__,
            "quick": quick, "machine": machine_info(threads)}


def _bundle_digest(files: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps({k: v["sha256"] for k, v in sorted(files.items())}).encode()).hexdigest()


def model_sha256(model: str) -> str:
    """What identifies a job's weights: a bundle's digest of its files' sha256, a checkpoint's weights-file sha256,
    or ``random:<preset>`` (random weights, deterministic in the preset)."""
    from melody_edge.bundle import is_bundle, load_bundle, sha256
    from melody_edge.generator import ASSETS
    from melody_edge.models.config import PRESETS

    if is_bundle(model):
        return _bundle_digest(load_bundle(model, verify=False).manifest["files"])
    if model in PRESETS and model != "tiny":
        return f"random:{model}"
    folder = ASSETS / "tiny" if model == "tiny" else Path(model)
    return sha256(folder / "model.safetensors")


def _bundle_summary(path: Path) -> dict[str, Any]:
    from melody_edge.bundle import load_bundle

    b = load_bundle(path, verify=False)
    size = sum((path / e["path"]).stat().st_size for e in b.manifest["files"].values())
    parity_file = path / "parity.json"
    parity = json.loads(parity_file.read_text()) if parity_file.is_file() else None
    return {"path": str(path), "precision": b.precision, "model": b.config.name, "size_mb": size / 1e6,
            "source": b.manifest.get("source"), "parity": parity, "gate": b.manifest.get("gate"),
            "sha256": _bundle_digest(b.manifest["files"])}


def _export(preset: str, precision: str, work_dir: Path, e2e: bool) -> Path:
    from melody_edge.bundle import is_bundle

    out = work_dir / f"{Path(preset).name}-{precision}"
    if is_bundle(out):
        log.info("reusing the %s %s bundle in %s", preset, precision, out)
        return out
    from conversion.export import export_bundle

    log.info("exporting %s to an ONNX %s bundle in %s", preset, precision, out)
    return export_bundle(preset, out, precision=precision, check=True, e2e=e2e)


def plan(args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    """The configurations to run, as worker jobs; exports the bundles a requested precision lacks."""
    from melody_edge.generator import ASSETS

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKEND_CHOICES]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_CHOICES)}")
    preset = args.preset or ("debug" if args.quick else "tiny")
    if Path(preset).exists():
        preset = str(Path(preset).resolve())  # the workers run from the repository root
    if preset == "tiny" and "torch" in backends and not (ASSETS / "tiny").is_dir():
        raise SystemExit(f"the tiny checkpoint is missing ({ASSETS / 'tiny'}); train it, or pass --preset debug")
    names = (args.workloads or (QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS)).split(",")
    try:
        workloads = [Workload.parse(w.strip()) for w in names if w.strip()]
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if args.stream_seconds:
        workloads = [w.with_seconds(args.stream_seconds) if w.kind == "stream" else w for w in workloads]
    repeats = args.repeats or (1 if args.quick else 3)
    common = {"threads": args.threads, "steps": args.steps, "repeats": repeats, "seed": SEED, "prompt": PROMPT,
              "key_candidates": args.key_candidates,
              "workloads": [w.name for w in workloads], "warmup_seconds": None}
    jobs = []
    if "torch" in backends:
        jobs.append({**common, "label": "torch", "backend": "torch", "model": preset, "precision": "fp32"})
    bundle_paths = [Path(b).resolve() for b in args.bundle or []]
    if not bundle_paths and not args.quick and preset == "tiny" and (ASSETS / "tiny-bundle").is_dir():
        bundle_paths = [ASSETS / "tiny-bundle"]
    bundles = [_bundle_summary(p) for p in bundle_paths]
    for b in bundles:
        if f"onnx-{b['precision']}" not in backends:
            log.warning("skipping %s: onnx-%s is not among --backends %s", b["path"], b["precision"], args.backends)
    have = {b["precision"] for b in bundles}
    for precision in [b[5:] for b in backends if b.startswith("onnx-") and b[5:] not in have]:
        bundles.append(_bundle_summary(_export(preset, precision, work_dir, e2e=not args.quick)))
    seen: dict[str, int] = {}
    for b in bundles:
        label = f"onnx-{b['precision']}"
        if label not in backends:
            continue
        seen[label] = seen.get(label, 0) + 1
        label = label if seen[label] == 1 else f"{label}-{seen[label]}"  # a second bundle of the same precision
        jobs.append({**common, "label": label, "backend": "onnxruntime", "model": b["path"],
                     "precision": b["precision"], "bundle": b})
    if args.paper if args.paper is not None else not args.quick:
        jobs.append({**common, "label": "paper-torch", "backend": "torch", "model": "paper", "precision": "fp32",
                     "workloads": [PAPER_WORKLOAD], "steps": args.steps,
                     "repeats": args.paper_repeats, "warmup_seconds": PAPER_WARMUP_SECONDS})
    for job in jobs:  # no --steps: every model runs its own default (a step-distilled student fewer)
        if job["steps"] is None:
            job["steps"] = _config_of(job).dpd_steps
        if args.key_candidates is not None:
            job["label"] += f"-k{args.key_candidates}"
    return jobs


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)  # OPENBLAS_CORETYPE and the like pass through untouched
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MELODY_EDGE_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(job: dict[str, Any], threads: int) -> tuple[dict[str, Any] | None, str | None]:
    """Run one job in ``python -m benchmarks worker``; returns (its result, None) or (None, what went wrong)."""
    with tempfile.TemporaryDirectory() as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "benchmarks", "worker", str(job_file), str(result_file)],
                              env=_child_env(threads), cwd=ROOT)
        if proc.returncode != 0 or not result_file.is_file():
            return None, f"worker exited with code {proc.returncode} (its log is above in the run's output)"
        return json.loads(result_file.read_text()), None


def _config_of(job: dict[str, Any]) -> Any:
    from melody_edge.bundle import load_bundle
    from melody_edge.models.config import PRESETS, get_config

    if "bundle" in job:
        return load_bundle(job["model"], verify=False).config
    if job["model"] in PRESETS and job["model"] != "tiny":
        return get_config(job["model"])
    from melody_edge.generator import ASSETS
    from melody_edge.models.config import ModelConfig

    folder = ASSETS / "tiny" if job["model"] == "tiny" else Path(job["model"])
    return ModelConfig.from_dict(json.loads((folder / "config.json").read_text())["config"])


def _workload_rows(header: dict[str, Any], job: dict[str, Any], result: dict[str, Any] | None,
                   error: str | None) -> list[dict[str, Any]]:
    from benchmarks.costs import param_counts, workload_costs

    cfg = _config_of(job)
    params = param_counts(cfg)
    settings = {"steps": job["steps"], "default_steps": cfg.dpd_steps, "guidance": cfg.guidance,
                "lm_guidance": cfg.lm_guidance, "temperature": cfg.temperature,
                "key_candidates": job.get("key_candidates"),
                "threads": job["threads"], "seed": job["seed"], "repeats": job["repeats"], "quick": header["quick"]}
    base = {**header, "kind": "workload", "config": job["label"], "backend": job["backend"],
            "precision": job["precision"], "preset": cfg.name, "model": job["model"],
            "model_sha256": model_sha256(job["model"]), "settings": settings, "params": params,
            "bundle": job.get("bundle"), "steps": job["steps"], "guidance": cfg.guidance, "seed": job["seed"],
            "prompt": job["prompt"], "threads": job["threads"]}
    if result is not None:
        base.update({k: result[k] for k in ("providers", "device", "backend_import_s", "load_s", "rss_after_load_mb")})
    by_name = {w["workload"]: w for w in (result or {}).get("workloads", [])}
    rows = []
    for name in job["workloads"]:
        wl = Workload.parse(name)
        row = {**base, "workload": name, "workload_kind": wl.kind, "audio_seconds": wl.seconds,
               "prompt_seconds": wl.prompt_seconds or None}
        row.update(by_name.get(name, {"status": "failed", "error": error or "no result"}))
        row["analytic"] = workload_costs(cfg, wl, job["steps"], job["precision"], job.get("key_candidates"))
        if row["status"] == "ok" and row["stages"]["passes"] != row["analytic"]["calls"]:
            log.warning("%s %s: the analytic count saw passes %s, the run %s; the FLOP figures do not fit this run",
                        job["label"], name, row["analytic"]["calls"], row["stages"]["passes"])
        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows.append(row)
    return rows


def _finite(x: Any) -> Any:
    """JSON has no inf/NaN: write them as the strings "inf", "-inf", "nan" (``float()`` reads them back)."""
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _append(out: Path, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for row in rows:
            f.write(json.dumps(_finite(row), allow_nan=False) + "\n")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark: plan, ceilings, every configuration, the peer; rows go to ``args.out`` as they come."""
    header = _header(args.quick, args.threads)
    args.out = args.out or RUNS_DIR / f"{header['run_id']}.jsonl"
    if args.out.exists() and not args.append:
        raise SystemExit(f"{args.out} exists; name a new --out, or pass --append to add this run's rows to it")
    log.info("run %s on %s (%d threads), commit %s; rows go to %s", header["run_id"], header["machine"]["cpu"],
             args.threads, header["commit"][:10], args.out)
    with tempfile.TemporaryDirectory(prefix="melody-bench-") as tmp:
        work_dir = (args.work_dir or Path(tmp)).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        jobs = plan(args, work_dir)
        log.info("configurations: %s", ", ".join(j["label"] for j in jobs))
        repeats = 3 if args.quick else 7
        result, error = run_child({"kind": "ceilings", "label": "ceilings", "threads": args.threads,
                                   "repeats": repeats}, args.threads)
        _append(args.out, [{**header, "kind": "ceilings", "timestamp": _now(), "threads": args.threads,
                            "status": "ok" if result else "failed", "error": error, "ceilings": result}])
        for job in jobs:
            log.info("configuration %s: %s on %s", job["label"], job["model"], job["backend"])
            result, error = run_child({"kind": "config", **job}, args.threads)
            _append(args.out, _workload_rows(header, job, result, error))
        if args.peer if args.peer is not None else not args.quick:
            result, error = run_child({"kind": "peer", "label": "peer", "seconds": args.peer_seconds,
                                       "repeats": args.peer_repeats, "threads": args.threads}, args.threads)
            _append(args.out, [{**header, "kind": "peer", "timestamp": _now(), "threads": args.threads,
                                "status": "ok" if result else "failed", "error": error, **(result or {})}])
    log.info("rows written to %s", args.out)
    return 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------------
# the worker: one configuration in this process
# ---------------------------------------------------------------------------------------------------------------

def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def _measure_repeated(gen: Any, wl: Workload, job: dict[str, Any]) -> dict[str, Any]:
    steps, seed = job["steps"], job["seed"]
    prompt_audio = gen.generate(PROMPT, wl.prompt_seconds, seed=seed + 1, steps=steps) if wl.kind == "cont" else None
    warm = wl.with_seconds(job["warmup_seconds"]) if job["warmup_seconds"] else wl
    kc = job.get("key_candidates")
    run_once(gen, warm, steps=steps, seed=seed, prompt_audio=prompt_audio, key_candidates=kc)
    samples: list[float] = []
    stage_samples: dict[str, list[float]] = {}
    passes: dict[str, int] = {}
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        stats = run_once(gen, wl, steps=steps, seed=seed, prompt_audio=prompt_audio, key_candidates=kc)
        samples.append(time.perf_counter() - t0)
        for k, v in stats.seconds.items():
            stage_samples.setdefault(k, []).append(v)
        passes = dict(stats.passes)
    return {"warmup": warm.name, "repeats": job["repeats"], "samples": samples,
            "rtf": _median(samples) / wl.seconds,
            "stages": {"seconds": {k: _median(v) for k, v in stage_samples.items()}, "passes": passes,
                       "seconds_samples": stage_samples}}


def _measure_stream(gen: Any, wl: Workload, job: dict[str, Any]) -> dict[str, Any]:
    from melody_edge import GenerationStats

    steps, seed = job["steps"], job["seed"]
    warm = wl.with_seconds(STREAM_WARMUP_CHUNKS * gen.chunk_seconds)
    kc = job.get("key_candidates")
    run_once(gen, warm, steps=steps, seed=seed, key_candidates=kc)
    stats = GenerationStats()
    wall, audio_s, rss = [], [], []
    t0 = last = time.perf_counter()
    for chunk in gen.stream(PROMPT, seconds=wl.seconds, seed=seed, steps=steps,
                            **({} if kc is None else {"key_candidates": kc})):
        now = time.perf_counter()
        wall.append(now - last)
        last = now
        audio_s.append(chunk.seconds)
        rss.append(_rss_mb())
        stats.add(chunk.stats)
    steady = [w / a for w, a in zip(wall[1:], audio_s[1:], strict=True)]
    first = RSS_GROWTH_FROM_CHUNK - 1
    growth = 100.0 * (rss[-1] - rss[first]) / rss[first] if len(rss) > first + 1 else None
    return {"warmup": f"stream of {STREAM_WARMUP_CHUNKS} chunks", "repeats": 1, "samples": [last - t0],
            "rtf": (last - t0) / wl.seconds,
            "stages": {"seconds": dict(stats.seconds), "passes": dict(stats.passes),
                       "seconds_samples": {k: [v] for k, v in stats.seconds.items()}},
            "stream": {"ttfa_s": wall[0], "chunks": len(wall), "chunk_seconds": gen.chunk_seconds,
                       "chunk_wall_s": wall, "chunk_audio_s": audio_s, "chunk_rss_mb": rss,
                       "steady_rtf_median": _median(steady) if steady else None,
                       "steady_rtf_p95": float(np.percentile(steady, 95)) if steady else None,
                       "steady_rtf_max": max(steady) if steady else None,
                       "rss_growth_from_chunk": RSS_GROWTH_FROM_CHUNK, "rss_growth_pct": growth}}


def measure_config(job: dict[str, Any]) -> dict[str, Any]:
    """Load one configuration's ``Generator`` and time each of its workloads (call in a fresh process)."""
    from benchmarks.machine import peak_rss_mb
    from melody_edge import BundleError, Generator

    t0 = time.perf_counter()
    if job["backend"] == "torch":
        import torch

        torch.set_num_threads(job["threads"])
    else:
        import onnxruntime  # noqa: F401  (timed: the first import is part of what a user waits for)
    backend_import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = Generator(job["model"], backend=job["backend"])
    load_s = time.perf_counter() - t0
    info = gen.info
    out: dict[str, Any] = {"backend_import_s": backend_import_s, "load_s": load_s, "rss_after_load_mb": _rss_mb(),
                           "providers": info.get("providers"), "device": info.get("device"), "workloads": []}
    log.info("%s loaded in %.2f s (+ %.2f s to import the backend's library)", job["label"], load_s, backend_import_s)
    for name in job["workloads"]:
        wl = Workload.parse(name)
        try:
            res = _measure_stream(gen, wl, job) if wl.kind == "stream" else _measure_repeated(gen, wl, job)
            res.update(status="ok", error=None)
            log.info("%s %s: RTF %.4f (samples %s)", job["label"], name, res["rtf"],
                     ", ".join(f"{s:.3f}" for s in res["samples"]))
        except BundleError as e:  # e.g. a bundle without a semantic tokenizer cannot continue audio
            res = {"status": "skipped", "error": str(e)}
            log.warning("%s %s skipped: %s", job["label"], name, e)
        except Exception as e:  # one failed workload must not lose the others' measurements
            res = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            log.exception("%s %s failed", job["label"], name)
        res.update(workload=name, peak_rss_mb=peak_rss_mb())
        out["workloads"].append(res)
    return out


def worker_main(job_file: Path, result_file: Path) -> int:
    """Entry point of ``python -m benchmarks worker JOB RESULT``: run one job, write its result as JSON."""
    job = json.loads(Path(job_file).read_text())
    logging.basicConfig(level=logging.WARNING, format=f"[{job['label']}] %(message)s", force=True)
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    if job["kind"] == "ceilings":
        from benchmarks.machine import measure_ceilings

        result = measure_ceilings(job["threads"], job["repeats"])
    elif job["kind"] == "peer":
        from benchmarks.peer import run_peer

        result = run_peer(job["seconds"], job["repeats"], job["threads"])
    else:
        result = measure_config(job)
    Path(result_file).write_text(json.dumps(_finite(result), allow_nan=False))
    return 0
