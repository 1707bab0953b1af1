"""``python -m benchmarks report``: JSONL rows -> ``README.md`` (markdown tables with method notes) and PNG plots in
``--out``; with ``--readme FILE`` the summary table also replaces what lies between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` in FILE. Tables are generated from the rows, never typed by hand.

The tables never mix provenance: they draw on one run (the file's latest, or the ``--run`` ids named, which must
share one commit), and a configuration is keyed by its label, preset, model hash and settings, so rows of another
model or other settings are separate lines, never merged. ``--readme`` refuses a ``--quick`` run. The peer is set
against configurations that run the generator's default steps only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peer import FRAME_RATE, REFERENCE_PASSES_10S
from benchmarks.run import COMMITTED
from benchmarks.workloads import Workload
from melody_edge.generator import DEFAULT_STEPS

log = logging.getLogger("benchmarks.report")

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
STAGES = ("text", "lm", "dpd", "vae")
SNR_KEYS = ("text_snr_db", "dpd_snr_db", "vae_snr_db", "e2e_snr_db")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m benchmarks report``."""
    p.add_argument("--in", dest="inp", type=Path, default=COMMITTED, help=f"JSONL rows ({COMMITTED})")
    p.add_argument("--out", type=Path, default=COMMITTED.parent, help="folder for README.md and the PNG plots")
    p.add_argument("--run", action="append", default=None, metavar="RUN_ID",
                   help="the run(s) to report (repeatable; one commit); default: the file's latest run")
    p.add_argument("--readme", type=Path, default=None,
                   help=f"also replace the section between {START} and {END} in this file with the summary table")


# ---------------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------------

def select_runs(rows: list[dict[str, Any]], run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of ``run_ids`` (default: the last run in the file); raises ``SystemExit`` when they are of more than
    one commit (or a clean and a dirty tree), which a table must not mix."""
    if not rows:
        raise SystemExit("no rows to report")
    wanted = set(run_ids or [rows[-1]["run_id"]])
    missing = wanted - {r["run_id"] for r in rows}
    if missing:
        raise SystemExit(f"no rows of run(s) {sorted(missing)}")
    mine = [r for r in rows if r["run_id"] in wanted]
    commits = {(r["commit"], r["dirty"]) for r in mine}
    if len(commits) > 1:
        raise SystemExit(f"runs {sorted(wanted)} are of different commits {sorted(commits)}: report them apart")
    return mine


class Rows:
    """The rows of one commit's run(s), reduced to the latest one per configuration x workload (and the latest
    ceilings and peer). Pass them through ``select_runs`` first."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        latest: dict[tuple, dict[str, Any]] = {}
        self.ceilings: dict[str, Any] | None = None
        self.peer: dict[str, Any] | None = None
        for r in rows:
            if r["kind"] == "workload":
                latest[(*_config_key(r), r["workload"])] = r
            elif r["kind"] == "ceilings" and r["status"] == "ok":
                self.ceilings = r
            elif r["kind"] == "peer" and r["status"] == "ok":
                self.peer = r
        self.workloads = list(latest.values())
        self.configs = list(dict.fromkeys(_config_key(r) for r in self.workloads))

    @classmethod
    def load(cls, path: Path, run_ids: list[str] | None = None) -> Rows:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise SystemExit(f"{path} holds no rows; run `python -m benchmarks run` first")
        return cls(select_runs([json.loads(line) for line in lines], run_ids))

    def default_steps(self, config: tuple) -> int:
        """The DPD steps the configuration's model runs by default (rows written before that was recorded: 8)."""
        for r in self.of(config):
            return int((r.get("settings") or {}).get("default_steps") or DEFAULT_STEPS)
        return DEFAULT_STEPS

    def ok(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.workloads if r["status"] == "ok" and (kind is None or r["workload_kind"] == kind)]

    def of(self, config: tuple, kind: str | None = None) -> list[dict[str, Any]]:
        return sorted((r for r in self.ok(kind) if _config_key(r) == config), key=lambda r: r["audio_seconds"])

    def reference_gen(self, config: tuple, seconds: float = 10.0) -> dict[str, Any] | None:
        """The config's gen row closest to ``seconds`` of audio (gen10s when there is one)."""
        gens = self.of(config, "gen")
        return min(gens, key=lambda r: abs(r["audio_seconds"] - seconds)) if gens else None

    def runs(self) -> list[dict[str, Any]]:
        used = [*self.workloads, *(r for r in (self.ceilings, self.peer) if r)]
        runs: dict[str, dict[str, Any]] = {}
        for r in used:
            runs.setdefault(r["run_id"], {"run_id": r["run_id"], "commit": r["commit"], "dirty": r["dirty"],
                                          "version": r["version"], "quick": r["quick"], "date": r["timestamp"],
                                          "machine": r["machine"]})
        return list(runs.values())


def _config_key(r: dict[str, Any]) -> tuple:
    """What makes rows comparable: label, preset, steps, model hash and settings (rows written before the hash and
    settings were recorded key as ``unknown``)."""
    settings = json.dumps(r.get("settings") or "unknown", sort_keys=True)
    return (r["config"], r["preset"], r["steps"], r.get("model_sha256") or "unknown", settings)


def _label(config: tuple) -> str:
    name, preset, steps, model, _ = config
    model = model.split(":", 1)[0] if model.startswith("random:") else model[:8]
    return f"{name} ({preset}, {steps} steps, model {model})"


def _num(x: Any) -> float | None:
    if x is None:
        return None
    return float(x)  # "inf" / "nan" strings (JSON has no inf) read back as floats


def _f(x: Any, digits: int = 3) -> str:
    v = _num(x)
    if v is None or math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return f"{v:,.{digits}f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _params_m(r: dict[str, Any]) -> str:
    p = r["params"]
    return f"{(p['total'] - p['text_encoder']) / 1e6:.1f}M + MiniLM {p['text_encoder'] / 1e6:.1f}M"


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------

def summary_table(rows: Rows) -> str:
    """One line per configuration: RTF of each gen workload, stream TTFA and steady RTF, peak RSS, load time; the
    peer last."""
    gen_names = list(dict.fromkeys(r["workload"] for r in sorted(rows.ok("gen"), key=lambda r: r["audio_seconds"])))
    head = ["configuration", "params", "size MB", *[f"RTF {n}" for n in gen_names], "stream TTFA s",
            "stream steady RTF", "peak RSS MB", "load s"]
    body = []
    for c in rows.configs:
        mine = rows.of(c)
        if not mine:
            continue
        by = {r["workload"]: r for r in mine}
        stream = next((r["stream"] for r in mine if r["workload_kind"] == "stream"), None)
        bundle = mine[0].get("bundle")
        body.append([_label(c), _params_m(mine[0]), _f(bundle["size_mb"], 1) if bundle else "—",
                     *[_f(by[n]["rtf"], 4) if n in by else "—" for n in gen_names],
                     _f(stream["ttfa_s"]) if stream else "—",
                     _f(stream["steady_rtf_median"], 4) if stream else "—",
                     _f(max(r["peak_rss_mb"] for r in mine), 0), _f(mine[0].get("load_s"), 2)])
    if rows.peer:
        p = rows.peer
        asked = p["max_new_tokens"] / FRAME_RATE
        matched = [Workload.parse(n).seconds == asked for n in gen_names]
        cells = [_f(p["rtf"], 2) if m else "—" for m in matched]
        at = "" if any(matched) else f"; RTF {_f(p['rtf'], 2)} at {p['audio_seconds']:.2f} s"
        body.append([f"peer: MusicGen-small arch. (random weights, CFG {p['guidance']:g}{at})",
                     f"{p['params']['total'] / 1e6:.0f}M", "—", *cells, "—", "—", _f(p["peak_rss_mb"], 0),
                     _f(p["load_s"], 2)])
    return _table(head, body)


def rtf_table(rows: Rows) -> str:
    order = {"gen": 0, "stream": 1, "cont": 2}
    names = list(dict.fromkeys(r["workload"] for r in sorted(rows.ok(), key=lambda r: (order[r["workload_kind"]],
                                                                                        r["audio_seconds"]))))
    body = []
    for c in rows.configs:
        by = {r["workload"]: r for r in rows.of(c)}
        cells = []
        for n in names:
            r = by.get(n)
            if r is None:
                cells.append("—")
                continue
            lo, hi = min(r["samples"]) / r["audio_seconds"], max(r["samples"]) / r["audio_seconds"]
            spread = f" ({_f(lo, 4)}–{_f(hi, 4)})" if len(r["samples"]) > 1 else ""
            cells.append(f"{_f(r['rtf'], 4)}{spread} ×{r['repeats']}")
        body.append([_label(c), *cells])
    return _table(["configuration", *names], body)


def stage_table(rows: Rows) -> str:
    body = []
    for c in rows.configs:
        r = rows.reference_gen(c)
        if r is None:
            continue
        sec, passes = r["stages"]["seconds"], r["stages"]["passes"]
        total = sum(sec.values())
        cells = [f"{_f(sec.get(s), 3)} ({100 * sec.get(s, 0) / total:.0f}%)" if total else "—" for s in STAGES]
        per_pass = [_f(1e3 * sec[s] / passes[s], 2) if passes.get(s) else "—" for s in STAGES]
        body.append([_label(c), r["workload"], *cells, _f(total, 3), " / ".join(str(passes.get(s, 0)) for s in STAGES),
                     " / ".join(per_pass)])
    return _table(["configuration", "workload", *[f"{s} s" for s in STAGES], "total s",
                   "passes text/lm/dpd/vae", "ms per pass text/lm/dpd/vae"], body)


def passes_table(rows: Rows) -> str:
    body = []
    for name, parts in REFERENCE_PASSES_10S.items():
        body.append([f"{name} (analytic, from the paper)", "10", " + ".join(f"{v:,} {k}" for k, v in parts.items()),
                     f"{sum(parts.values()):,}"])
    if rows.peer:
        p = rows.peer["passes"]
        body.append(["MusicGen-small (peer, measured config)", _f(rows.peer["audio_seconds"], 2),
                     " + ".join(f"{v:,} {k}" for k, v in p.items()), f"{sum(p.values()):,}"])
    for c in rows.configs:
        r = rows.reference_gen(c)
        if r is None:
            continue
        p = r["stages"]["passes"]
        body.append([f"ours: {_label(c)} (measured)", _f(r["audio_seconds"], 2),
                     " + ".join(f"{p.get(s, 0):,} {s}" for s in STAGES), f"{sum(p.values()):,}"])
    return _table(["system", "audio s", "forward passes", "total"], body)


def peer_table(rows: Rows) -> str:
    p = rows.peer
    body = []
    for c in rows.configs:
        if c[2] != rows.default_steps(c):  # fewer or more DPD steps than its users run: not a fair ratio
            continue
        r = rows.reference_gen(c, p["audio_seconds"])
        if r is None:
            continue
        body.append([_label(c), r["workload"], _f(r["rtf"], 4), _f(p["rtf"], 2), _f(r["rtf"] / p["rtf"], 4),
                     f"{_f(p['rtf'] / r['rtf'], 1)}×"])
    return _table(["configuration", "workload", "our RTF (s per audio s)", "peer RTF", "ours / peer",
                   "peer / ours"], body)


def ceilings_table(rows: Rows) -> str:
    c = rows.ceilings["ceilings"]
    return _table(["fp32 GEMM GFLOP/s", "int8 GEMM GOPS", "copy GB/s (read + write)", "GEMM n", "copy MB", "median of"],
                  [[_f(c["fp32_gemm_gflops"], 1), _f(c["int8_gemm_gops"], 1), _f(c["copy_gbs"], 1), c["gemm_n"],
                    c["copy_mb"], c["repeats"]]])


def _achieved(r: dict[str, Any], ceilings: dict[str, Any]) -> dict[str, Any]:
    sec, an = r["stages"]["seconds"], r["analytic"]
    peak = ceilings["int8_gemm_gops"] if r["precision"] == "int8" else ceilings["fp32_gemm_gflops"]
    out: dict[str, Any] = {"peak": peak}
    for s in ("lm", "dpd", "vae"):
        g = an["flops"][s] / sec[s] / 1e9 if sec.get(s) else None
        out[s] = (g, 100 * g / peak if g is not None else None)
    gbs = an["lm_bytes"] / sec["lm"] / 1e9 if sec.get("lm") else None
    out["lm_gbs"] = (gbs, 100 * gbs / ceilings["copy_gbs"] if gbs is not None else None)
    return out


def fraction_table(rows: Rows) -> str:
    body = []
    for c in rows.configs:
        r = rows.reference_gen(c)
        if r is None:
            continue
        a = _achieved(r, rows.ceilings["ceilings"])
        cells = [f"{_f(a[s][0], 1)} ({_f(a[s][1], 1)}%)" for s in ("dpd", "vae", "lm")]
        body.append([_label(c), r["workload"], *cells, f"{_f(a['lm_gbs'][0], 2)} ({_f(a['lm_gbs'][1], 1)}%)",
                     _f(r["analytic"]["flops"]["dpd"] / 1e9, 1), _f(r["analytic"]["lm_bytes"] / 1e9, 2)])
    return _table(["configuration", "workload", "DPD GFLOP/s (% of GEMM)", "VAE GFLOP/s (% of GEMM)",
                   "LM GFLOP/s (% of GEMM)", "LM GB/s (% of copy)", "DPD GFLOP", "LM GB moved"], body)


def stream_table(rows: Rows) -> str:
    body = []
    for r in rows.ok("stream"):
        s = r["stream"]
        rss = s["chunk_rss_mb"]
        k = s["rss_growth_from_chunk"] - 1
        rss_cell = f"{_f(rss[k], 0)} → {_f(rss[-1], 0)}" if len(rss) > k else "—"
        body.append([_label(_config_key(r)), _f(r["audio_seconds"], 0), s["chunks"], _f(s["chunk_seconds"], 2),
                     _f(s["ttfa_s"], 3), _f(s["steady_rtf_median"], 4), _f(s["steady_rtf_p95"], 4),
                     _f(s["steady_rtf_max"], 4), rss_cell, _f(s["rss_growth_pct"], 2)])
    return _table(["configuration", "audio s", "chunks", "chunk s", "TTFA s", "steady RTF median", "p95", "max",
                   "RSS MB chunk 5 → end", "RSS growth %"], body)


def cont_table(rows: Rows) -> str:
    body = [[_label(_config_key(r)), r["workload"], r["status"], _f(r.get("rtf"), 4),
             " / ".join(str(r["stages"]["passes"].get(s, 0)) for s in STAGES) if r["status"] == "ok" else "—"]
            for r in rows.workloads if r["workload_kind"] == "cont"]
    return _table(["configuration", "workload", "status", "RTF", "passes text/lm/dpd/vae"], body)


def _bundles(rows: Rows) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for r in rows.workloads:
        b = r.get("bundle")
        if b and b.get("parity"):
            seen[b["path"]] = b
    return list(seen.values())


def recipes_table(bundles: list[dict[str, Any]]) -> str:
    body = []
    for b in bundles:
        f = b["parity"]["figures"]
        body.append([Path(b["path"]).name, b["model"], b["precision"], _f(b["size_mb"], 2),
                     *[_f(f.get(k), 1) for k in SNR_KEYS], _f(f.get("lm_token_agreement"), 3),
                     _f(f.get("lm_logits_max_abs"), 4), "yes" if b["parity"].get("passed") else "no"])
    return _table(["bundle", "model", "precision", "size MB", "text SNR dB", "DPD SNR dB", "VAE SNR dB",
                   "e2e SNR dB", "LM token agreement", "LM logits max abs", "gates passed"], body)


def issues_list(rows: Rows) -> str:
    return "\n".join(f"- {_label(_config_key(r))} {r['workload']}: **{r['status']}**: {r['error']}"
                     for r in rows.workloads if r["status"] != "ok")


def method_notes(rows: Rows) -> str:
    runs = rows.runs()
    m = runs[-1]["machine"]
    gpus = ", ".join(f"{g['name']} (driver {g['driver']})" for g in m["gpus"]) or "none"
    lines = [
        f"- Machine: {m['cpu']} ({m['arch']}; {', '.join(m['cpu_flags']) or 'no listed flags'}), "
        f"{m['cores_physical']} physical / {m['cores_logical']} logical cores, {m['ram_gb']} GB RAM, GPU: {gpus}; "
        f"{m['os']}.",
        f"- Threads: {m['threads']} (torch, onnxruntime intra-op, BLAS). Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "- Runs: " + "; ".join(f"`{r['run_id']}` {r['date']} commit `{r['commit'][:10]}`"
                               f"{' (dirty)' if r['dirty'] else ''}, melody-edge {r['version']}"
                               f"{', --quick' if r['quick'] else ''}" for r in runs) + ".",
        "- Each workload: one warm-up run (not recorded), then the median of N timed runs (N after the ×); RTF = "
        "median wall seconds / seconds of audio made (for `cont`, the continuation's seconds). Load time "
        "(`Generator` construction; the backend library's import is timed apart) is not in any sample.",
        "- Each configuration runs in a fresh process; peak RSS is that process's high-water mark (`VmHWM`: load + "
        "all of its workloads). A stream runs once after a two-chunk warm-up; TTFA = wall time from the `stream()` "
        "call to the first chunk; RSS growth is from chunk 5 to the last chunk.",
        "- Stage seconds and forward passes come from `GenerationStats` (`audio.stats`); the stage times include the "
        "numpy sampling loop, so the LM figures hold Python overhead as well as the network.",
        "- Ceilings: numpy fp32 matmul and onnxruntime `MatMulInteger` (u8 x u8) at 2048², `np.copyto` of 512 MB "
        "(bytes read + written). Analytic FLOPs: `FlopCounterMode` on the meta-device model for every backend call "
        "of the workload; LM bytes: weights at the precision + the fp32 KV cache per decode step "
        "(`benchmarks/costs.py`). int8 rows are held against the int8 GEMM ceiling, the others against fp32.",
    ]
    if rows.peer:
        p = rows.peer
        lines.append(f"- Peer: {p['model']} built from local `transformers` configs (T5-base text encoder, 24-layer "
                     f"1024-wide decoder over 4 codebooks, EnCodec 32 kHz), {p['weights']} weights, {p['precision']}, "
                     f"{p['threads']} threads, CFG {p['guidance']:g}, {p['max_new_tokens']} new tokens "
                     f"({p['audio_seconds']:.2f} s of audio), fixed random {p['text_tokens']}-token text input; "
                     f"median of {p['repeats']} after a {p['warmup']} warm-up.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rtf(rows: Rows, path: Path) -> Path | None:
    """RTF against seconds of audio for the gen workloads, one line per configuration, the peer as a point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for c in rows.configs:
        gens = rows.of(c, "gen")
        if not gens:
            continue
        x = [r["audio_seconds"] for r in gens]
        y = [r["rtf"] for r in gens]
        lo = [r["rtf"] - min(r["samples"]) / r["audio_seconds"] for r in gens]
        hi = [max(r["samples"]) / r["audio_seconds"] - r["rtf"] for r in gens]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=_label(c))
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if rows.peer:
        ax.scatter([rows.peer["audio_seconds"]], [rows.peer["rtf"]], marker="*", s=150, color="k",
                   label="MusicGen-small arch. (peer)")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time")
    ax.set_yscale("log")
    ax.set_xlabel("seconds of audio generated")
    ax.set_ylabel("RTF (wall s / audio s, log)")
    ax.set_title("Real-time factor vs duration (median)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_stages(rows: Rows, path: Path) -> Path | None:
    """100%-stacked bars: each stage's share of the generation time per configuration, the RTF written on top."""
    refs = [(c, rows.reference_gen(c)) for c in rows.configs]
    refs = [(c, r) for c, r in refs if r is not None]
    if not refs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(refs)), 4.5))
    totals = np.array([sum(r["stages"]["seconds"].values()) for _, r in refs])
    bottom = np.zeros(len(refs))
    for s in STAGES:
        share = 100 * np.array([r["stages"]["seconds"].get(s, 0.0) for _, r in refs]) / totals
        ax.bar(range(len(refs)), share, bottom=bottom, label=s)
        bottom += share
    for i, (_, r) in enumerate(refs):
        ax.text(i, 101, f"RTF {_f(r['rtf'], 3)}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(refs)), [f"{c[0]}\n{c[1]}, {r['workload']}" for c, r in refs], fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_ylabel("% of the generation time")
    ax.set_title("Per-stage breakdown (median run)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_size_quality(bundles: list[dict[str, Any]], path: Path) -> Path | None:
    """Bundle size against parity SNR (dB) per recipe, one marker per component; infinite SNR (identical outputs) is
    drawn above the highest finite one."""
    if not bundles:
        return None
    snr = {(b["path"], k): _num(b["parity"]["figures"].get(k)) for b in bundles for k in SNR_KEYS}
    finite = [v for v in snr.values() if v is not None and math.isfinite(v)]
    top = (max(finite) if finite else 100.0) + 10.0
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, marker in zip(SNR_KEYS, "osD^", strict=True):
        pts = [(b["size_mb"], min(snr[b["path"], key], top)) for b in bundles if snr[b["path"], key] is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=key.replace("_snr_db", ""))
    for b in bundles:
        ys = [min(v, top) for k in SNR_KEYS if (v := snr[b["path"], k]) is not None]
        ax.annotate(f"{b['model']} {b['precision']}", (b["size_mb"], max(ys, default=0.0)), fontsize=8,
                    textcoords="offset points", xytext=(5, 5))
    if any(v is not None and math.isinf(v) for v in snr.values()):
        ax.axhline(top, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("bundle size (MB)")
    ax.set_ylabel(f"SNR vs torch (dB; identical = ∞, drawn at {top:.0f})")
    ax.set_title("Size vs quality per recipe (parity.json)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# documents
# ---------------------------------------------------------------------------------------------------------------

def render(rows: Rows, out: Path, source: Path) -> str:
    """The full results page (markdown) with its plots written beside it."""
    out.mkdir(parents=True, exist_ok=True)
    bundles = _bundles(rows)
    plots = [p for p in (plot_rtf(rows, out / "rtf_vs_duration.png"), plot_stages(rows, out / "stages.png"),
                         plot_size_quality(bundles, out / "size_quality.png")) if p]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [f"# Benchmark results\n\nGenerated by `python -m benchmarks report` from `{source}` on {now}; do not "
             "edit by hand.\n", "## Summary\n", summary_table(rows), "\n## RTF per workload\n",
             "Median RTF (min–max over the timed runs) ×N timed runs.\n", rtf_table(rows),
             "\n## Per-stage breakdown\n", stage_table(rows), "\n## Forward passes\n",
             "The analytic counts are the papers' for 10 s; ours are counted by the generator, where one DPD pass is "
             "one call on the classifier-free-guidance batch of 2 (conditional + unconditional) and one LM pass one "
             "token (the prefill counts as the first).\n", passes_table(rows)]
    if rows.peer:
        parts += ["\n## Against the peer\n", "Our seconds per audio second over the peer's (lower is better); only "
                  "configurations at their model's default DPD steps (what its users run).\n", peer_table(rows)]
    if rows.ceilings:
        parts += ["\n## Machine ceilings\n", ceilings_table(rows), "\n### Fraction of the ceiling each stage reaches\n",
                  fraction_table(rows)]
    if rows.ok("stream"):
        parts += ["\n## Streaming\n", stream_table(rows)]
    if any(r["workload_kind"] == "cont" for r in rows.workloads):
        parts += ["\n## Continuation\n", cont_table(rows)]
    if bundles:
        parts += ["\n## Size vs quality per recipe\n", "From each bundle's `parity.json` (torch vs the bundle on the "
                  "same inputs).\n", recipes_table(bundles)]
    if any(r["status"] != "ok" for r in rows.workloads):
        parts += ["\n## Skipped or failed\n", issues_list(rows)]
    if plots:
        parts += ["\n## Plots\n", "\n".join(f"![{p.stem}]({p.name})" for p in plots)]
    parts += ["\n## Method\n", method_notes(rows), ""]
    return "\n".join(parts)


def replace_section(path: Path, content: str) -> None:
    """Replace what lies between the bench markers in ``path`` with ``content``."""
    text = path.read_text()
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise SystemExit(f"{path} has no {START} ... {END} section to fill; add the two markers where the table goes")
    path.write_text(text[: i + len(START)] + "\n" + content.strip() + "\n" + text[j:])


def main(args: argparse.Namespace) -> int:
    """Write ``README.md`` and the plots into ``args.out`` (and the summary into ``args.readme``)."""
    rows = Rows.load(args.inp, args.run)
    if args.readme and any(r["quick"] for r in rows.runs()):
        raise SystemExit("a --quick run (debug preset, one round) does not go into a README table; report a full run")
    page = (args.out / "README.md").resolve()
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(rows, args.out, args.inp))
    log.info("wrote %s", page)
    if args.readme:
        last = rows.runs()[-1]
        link = Path(os.path.relpath(page, args.readme.resolve().parent)).as_posix()
        runs = ", ".join(f"`{r['run_id']}`" for r in rows.runs())
        note = (f"Generated by `python -m benchmarks report` from run {runs} on {last['machine']['cpu']} "
                f"({last['machine']['threads']} threads), commit `{last['commit'][:10]}`"
                f"{' (dirty)' if last['dirty'] else ''}; details and method in [{link}]({link}).")
        replace_section(args.readme, summary_table(rows) + "\n\n" + note)
        log.info("updated the summary in %s", args.readme)
    return 0
