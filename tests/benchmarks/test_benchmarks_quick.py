"""The benchmark harness keeps working: ``python -m benchmarks run --quick`` writes rows with the schema's fields,
``report`` turns them into README tables and plots (and fills a marked section), and the pytest-benchmark suites
run once each with timing off.

Everything runs on one thread: these tests check the code, not the speed, and a second thread only adds scheduling
noise on a small shared machine. The quick run's debug bundles are reused by the suites.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.workloads import Workload
from melody_edge.generator import KEY_CANDIDATES
from melody_edge.models.config import get_config

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("torch", "onnx-fp32", "onnx-int8")
COMMON = {"schema", "run_id", "commit", "dirty", "version", "quick", "machine", "kind", "timestamp", "status", "error"}
WORKLOAD = COMMON | {"config", "backend", "precision", "preset", "model", "model_sha256", "settings", "params",
                     "bundle", "steps", "guidance",
                     "seed", "prompt", "threads", "providers", "device", "backend_import_s", "load_s",
                     "rss_after_load_mb", "workload", "workload_kind", "audio_seconds", "prompt_seconds", "analytic",
                     "peak_rss_mb"}
MEASURED = {"warmup", "repeats", "samples", "rtf", "stages"}
MACHINE = {"cpu", "arch", "cpu_flags", "cores_physical", "cores_logical", "threads", "ram_gb", "gpus", "os",
           "versions"}


def _python(*args: str, env: dict[str, str] | None = None, timeout: int = 900, rc: int = 0) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                          capture_output=True, text=True)
    assert proc.returncode == rc, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n" \
                                  f"{proc.stderr[-5000:]}"
    return proc.stderr


def expected_passes(workload: str, steps: int = 8) -> dict[str, int]:
    """Forward passes from the generator's contract, not from its loop: one text pass; one LM pass per 40 ms token;
    segments of a window first (``generate``) or of a chunk (``stream``, ``continue_audio``), then of a chunk each;
    ``steps`` DPD passes (the CFG pair is one batch) and one VAE decode per segment, plus the prompt's encode. The
    benchmark prompt asks a key, so a song's first segment (not a continuation's) is drafted ``KEY_CANDIDATES``
    times."""
    cfg, wl = get_config("debug"), Workload.parse(workload)
    tokens = math.ceil(wl.seconds * cfg.token_rate)
    first = cfg.window_tokens if wl.kind == "gen" else cfg.chunk_tokens
    segments = 1 + math.ceil(max(0, tokens - first) / cfg.chunk_tokens)
    drafts = 0 if wl.kind == "cont" else (KEY_CANDIDATES - 1) * min(tokens, first)
    return {"text": 1, "lm": tokens + drafts, "dpd": steps * segments, "vae": segments + (wl.kind == "cont")}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    _python("-m", "benchmarks", "run", "--quick", "--threads", "1", "--backends", ",".join(BACKENDS),
            "--work-dir", str(tmp / "bundles"), "--out", str(tmp / "results.jsonl"))
    return tmp


@pytest.fixture(scope="module")
def rows(quick: Path) -> list[dict]:
    return [json.loads(line) for line in (quick / "results.jsonl").read_text().splitlines()]


def test_quick_run_writes_one_ceilings_row_and_a_row_per_configuration_and_workload(rows):
    kinds = [r["kind"] for r in rows]
    assert kinds.count("ceilings") == 1 and "peer" not in kinds
    work = [r for r in rows if r["kind"] == "workload"]
    assert {r["config"] for r in work} == set(BACKENDS)
    assert {r["workload"] for r in work} == {"gen2s", "stream2s", "cont1s+1s"}
    assert len(work) == len(BACKENDS) * 3
    assert len({r["run_id"] for r in rows}) == 1


def test_workload_rows_carry_the_schema_fields(rows):
    for r in (r for r in rows if r["kind"] == "workload"):
        assert WORKLOAD <= r.keys(), WORKLOAD - r.keys()
        assert MACHINE <= r["machine"].keys() and r["machine"]["threads"] == 1
        assert r["quick"] and r["preset"] == "debug" and len(r["commit"]) == 40
        assert r["params"]["lm"] > 0 and r["params"]["total"] > r["params"]["dpd"]
        assert r["analytic"]["flops"]["dpd"] > 0 and r["analytic"]["lm_bytes"] > 0
        if r["status"] == "ok":
            assert MEASURED <= r.keys()
            assert len(r["samples"]) == r["repeats"] == 1 and r["rtf"] > 0
            assert r["stages"]["passes"] == expected_passes(r["workload"]) == r["analytic"]["calls"]
        assert r["settings"]["steps"] == r["steps"] == 8 and r["settings"]["threads"] == 1 and r["settings"]["quick"]
        if r["backend"] == "torch":
            assert r["model_sha256"] == "random:debug"
        else:
            assert len(r["model_sha256"]) == 64 and r["model_sha256"] == r["bundle"]["sha256"]
            assert r["bundle"]["gate"]["passed"] is True
            assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0


def test_generate_and_stream_succeed_on_every_backend_and_onnx_precisions_are_recorded(rows):
    work = [r for r in rows if r["kind"] == "workload"]
    for r in work:
        if r["workload_kind"] in ("gen", "stream"):
            assert r["status"] == "ok", r["error"]
        if r["backend"] == "onnxruntime":
            assert r["bundle"]["precision"] == r["precision"] == r["config"].split("-")[1]
            assert r["providers"] and r["bundle"]["parity"]["passed"]
    torch_cont = next(r for r in work if r["config"] == "torch" and r["workload_kind"] == "cont")
    assert torch_cont["status"] == "ok"  # the debug bundles have no semantic tokenizer: skipped there, with a reason
    stream = next(r for r in work if r["config"] == "torch" and r["workload_kind"] == "stream")["stream"]
    assert stream["chunks"] == len(stream["chunk_wall_s"]) == len(stream["chunk_rss_mb"]) >= 3
    assert 0 < stream["ttfa_s"] <= sum(stream["chunk_wall_s"])


def test_ceilings_row_has_positive_gemm_and_copy_figures(rows):
    c = next(r for r in rows if r["kind"] == "ceilings")["ceilings"]
    assert c["fp32_gemm_gflops"] > 0 and c["int8_gemm_gops"] > 0 and c["copy_gbs"] > 0


def test_run_refuses_to_append_to_an_existing_file_unless_asked(quick):
    err = _python("-m", "benchmarks", "run", "--quick", "--out", str(quick / "results.jsonl"), rc=1)
    assert "--append" in err


def test_report_takes_one_run_and_never_mixes_commits(rows):
    other = [{**r, "run_id": "older", "commit": "0" * 40, "rtf": 1e6} for r in rows]
    picked = report.Rows(report.select_runs(other + rows))  # default: the file's last run
    assert {r["run_id"] for r in picked.workloads} == {rows[0]["run_id"]}
    with pytest.raises(SystemExit, match="different commits"):
        report.select_runs(other + rows, ["older", rows[0]["run_id"]])
    relabelled = [{**r, "model_sha256": "f" * 64} if r.get("config") == "onnx-fp32" else r for r in rows]
    doubled = report.Rows(report.select_runs(rows + relabelled))  # same run, another model under the same label
    assert len([c for c in doubled.configs if c[0] == "onnx-fp32"]) == 2


def test_report_writes_tables_plots_and_fills_the_marked_section(quick, rows, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n<!-- bench:start -->\nstale\n<!-- bench:end -->\n\nafter\n")
    out = tmp_path / "report"
    err = _python("-m", "benchmarks", "report", "--in", str(quick / "results.jsonl"), "--out", str(out),
                  "--readme", str(readme), rc=1)
    assert "--quick" in err and "stale" in readme.read_text()  # a quick (debug) run never reaches a README table
    full = tmp_path / "full.jsonl"  # the same rows, as if from a full run
    full.write_text("".join(json.dumps({**r, "quick": False}) + "\n" for r in rows))
    _python("-m", "benchmarks", "report", "--in", str(full), "--out", str(out), "--readme", str(readme))
    page = (out / "README.md").read_text()
    for heading in ("## Summary", "## Per-stage breakdown", "## Forward passes", "## Machine ceilings", "## Streaming",
                    "## Size vs quality per recipe", "## Method"):
        assert heading in page
    assert "6,250" in page  # MusicLM's analytic count beside ours
    assert list(out.glob("*.png"))
    text = readme.read_text()
    assert "stale" not in text and "| torch (debug, 8 steps, model random) |" in text and text.endswith("after\n")
    assert rows[0]["commit"][:10] in text and rows[0]["run_id"] in text


def test_pytest_benchmark_suites_run_once_with_timing_off(quick):
    _python("-m", "pytest", str(ROOT / "benchmarks"), "--benchmark-disable", "-q", "-p", "no:cacheprovider",
            env={"MELODY_BENCH_BUNDLE": str(quick / "bundles" / "debug-fp32"), "OMP_NUM_THREADS": "1",
                 "MELODY_EDGE_THREADS": "1"})
