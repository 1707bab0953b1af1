"""benchmarks.profile: onnxruntime traces reduced to the last of several identical calls, and a real profiled run."""

import json

from benchmarks import profile


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
    for s in r["stages"].values():
        assert s["passes"] >= 1 and 0 < s["onnxruntime_s"] <= s["wall_s"] + 1e-3
    assert r["graphs"]["lm_step"]["runs"] == r["stages"]["lm"]["passes"] - 1  # the first token comes from the prefill
    assert "## `dpd`" in (tmp_path / "p.md").read_text()
