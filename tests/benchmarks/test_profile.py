"""benchmarks.profile: onnxruntime traces reduced to the last of several identical calls, and a real profiled run."""

import json

from benchmarks import profile
from melody_edge.generator import DRAFT_WORKERS


def test_trace_summary_keeps_only_the_last_calls_runs_and_kernels(tmp_path):
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(ts, op, dur):
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [run(0, 100), node(1, "MatMul", 50), run(200, 100), node(201, "MatMul", 60),  # call 1 (warm-up)
              run(400, 80), node(401, "MatMul", 30), node(402, "Add", 10), run(600, 70), node(601, "Add", 5)]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    s = profile.summarize_trace(path, calls=2)
    assert s["runs"] == 2 and s["run_us"] == 150
    assert s["ops"] == {"MatMul": {"us": 30, "calls": 1}, "Add": {"us": 15, "calls": 2}}
    assert s["kernel_us"] == 45
    assert profile.summarize_trace(path)["runs"] == 4


def test_profile_of_the_shipped_bundle_accounts_for_every_stage(tmp_path):
    r = profile.main(["--seconds", "2", "--threads", "1", "--out", str(tmp_path / "p.md")])
    assert set(r["stages"]) == {"text", "lm", "dpd", "vae"}
    for name, s in r["stages"].items():  # the LM's key drafts run on DRAFT_WORKERS threads at once
        threads = DRAFT_WORKERS if name == "lm" else 1
        assert s["passes"] >= 1 and 0 < s["onnxruntime_s"] <= threads * s["wall_s"] + 1e-3
    g = r["graphs"]
    # each LM pass is a step but the first of each decode (key drafts: one decode per draft), which its prefill makes
    assert g["lm_step"]["runs"] + g["lm_prefill"]["runs"] == r["stages"]["lm"]["passes"]
    assert "## `dpd`" in (tmp_path / "p.md").read_text()
