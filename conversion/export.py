"""Checkpoint -> bundle: ``python -m conversion.export --checkpoint tiny --format onnx --precision int8 --out DIR``.

Exports the six graphs of ``conversion.graphs`` (text encoder = MiniLM + the LM's conditioner, LM prefill, LM decode
step with the KV cache as explicit inputs/outputs, DPD denoiser, VAE decoder and encoder), quantizes (int8: dynamic,
per-channel QUInt8 weights, the AVX2-safe recipe of DEPENDENCIES.md; fp16: for CUDA/Core ML, checked here on the CPU
provider), all in a staging folder next to ``--out``; there it runs the parity gate against torch, records the
gate in ``manifest.json`` (and ``parity.json``), and only then replaces ``--out`` whole. A failed gate leaves
``--out`` as it was, puts the failed bundle at ``<out>.failed`` for inspection and raises ``ParityError``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conversion.common import (
    controls_manifest,
    git_commit,
    load_checkpoint,
    publish,
    staged_bundle,
    write_assets,
    write_manifest,
)
from conversion.graphs import OUTPUTS, PARITY_PROMPTS, example_inputs, onnx_graphs
from conversion.parity import ParityError, report_parity, snr_db
from melody_edge.bundle import BUNDLE_FORMAT, COMPONENTS, Bundle, sha256
from melody_edge.errors import ConfigError
from melody_edge.models.melody import MeLoDy
from melody_edge.text import TextTokenizer

log = logging.getLogger("conversion.export")
OPSET = 20
E2E_SECONDS = 2.0  # teacher-forced end-to-end clip: 50 tokens, within one window of every preset


def _dynamic_shapes(name: str, controls: bool = False) -> dict[str, Any]:
    D = torch.export.Dim
    B = D("B", min=1, max=64)
    if name == "text_encoder":
        return {"input_ids": {0: B}, "attention_mask": {0: B}}
    if name == "lm_prefill":
        N = D("N", min=0, max=4096)
        beat = {"beat": {0: B, 1: D("M", min=1, max=4097)}} if controls else {}  # M = N + 1, checked at run time
        return {"prefix": {0: B}, "tokens": {0: B, 1: N}, **beat}
    if name == "lm_step":
        return {"token": {0: B}, "pos": {}, "cache": {2: B}, **({"beat": {0: B}} if controls else {})}
    if name == "dpd":
        L = D("L", min=1, max=1 << 20)
        return {"z": {0: B, 1: L}, "angles": {0: B, 1: L}, "tokens": {0: B, 1: D("N", min=1, max=1 << 20)}}
    if name == "vae_decoder":
        return {"z": {0: B, 1: D("L", min=1, max=1 << 20)}}
    return {"audio": {0: B, 1: D("T", min=1, max=1 << 28)}}


def export_onnx(module: nn.Module, inputs: dict[str, torch.Tensor], name: str, path: Path) -> None:
    """torch.export (dynamo) -> ONNX with dynamic batch/length; the text encoder uses the TorchScript exporter with
    a fixed 64-token length (BERT under dynamo is slow to trace and gains nothing: prompts are padded to 64)."""
    args = tuple(inputs.values())
    names = list(inputs)
    with torch.inference_mode(False), torch.no_grad():
        if name == "text_encoder":
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=OUTPUTS[name],
                              dynamic_axes={n: {0: "B"} for n in names + OUTPUTS[name]}, opset_version=OPSET)
        else:
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, output_names=OUTPUTS[name],
                              dynamic_shapes=_dynamic_shapes(name, "beat" in names), opset_version=OPSET,
                              optimize=True,
                              external_data=False)


def quantize(src: Path, dst: Path, precision: str) -> None:
    """int8: dynamic quantization of MatMul/Gemm/Gather weights, per-channel QUInt8 (accurate on AVX2 without VNNI);
    fp16: all float tensors to float16 with float32 inputs/outputs kept, by onnxruntime's converter (onnxconverter-
    common's leaves MiniLM's ``Cast(to=float)`` nodes typed float16 in value_info: onnxruntime refuses the graph)."""
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"])  # Gather: MiniLM's embeddings
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    else:
        shutil.copyfile(src, dst)


def _spec(path: Path) -> dict[str, Any]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    names = {1: "tensor(float)", 7: "tensor(int64)", 10: "tensor(float16)"}

    def io(values):
        return {v.name: {"dtype": names.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                         "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}
                for v in values}

    return {"inputs": io(m.graph.input), "outputs": io(m.graph.output)}


def _backend(bundle_dir: Path, manifest: dict[str, Any], model: MeLoDy) -> Any:
    """The bundle on onnxruntime's CPU provider (what ``Generator()`` runs), built without ``load_bundle``: the
    staged bundle has no gate result yet, which ``load_bundle`` may refuse."""
    from melody_edge.backends.onnx_backend import OnnxBackend

    return OnnxBackend(Bundle(bundle_dir, manifest, model.cfg), providers=["CPUExecutionProvider"])


def component_parity(model: MeLoDy, be: Any, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Torch vs bundle on the same inputs: LM logits max abs diff and greedy agreement, SNR of the others."""
    mods = onnx_graphs(model)
    with torch.inference_mode():
        ref = {k: mods[k](**v) for k, v in inputs.items()}
    np_in = {k: {n: t.numpy() for n, t in v.items()} for k, v in inputs.items()}
    out = {k: be._run(k, **np_in[k]) for k in inputs}
    # teacher-forced LM over a whole sequence: prefill with the prefix, then one step per example token, in torch
    # and in the bundle (B x N logits rows for the greedy-token agreement)
    prefix, tokens = inputs["lm_prefill"]["prefix"], inputs["lm_prefill"]["tokens"]
    beat = inputs["lm_prefill"].get("beat")  # (B, N + 1, F) with controls
    bt = (lambda i: beat[:, i]) if beat is not None else (lambda i: None)  # noqa: E731
    bn = (lambda i: beat[:, i].numpy()) if beat is not None else (lambda i: None)  # noqa: E731
    P = prefix.shape[1]
    rows_ref, rows_out = [], []
    with torch.inference_mode():
        logits, cache = model.lm.prefill(prefix, tokens[:, :0], None if beat is None else beat[:, :1])
        lo, co = be.lm_prefill(prefix.numpy(), tokens[:, :0].numpy(), None if beat is None else beat[:, :1].numpy())
        for i in range(tokens.shape[1]):
            rows_ref.append(logits.numpy())
            rows_out.append(lo)
            logits, cache = model.lm.step(tokens[:, i], torch.tensor(P + i), cache, bt(i + 1))
            lo, co = be.lm_step(tokens[:, i].numpy(), P + i, co, bn(i + 1))
    both_ref = np.concatenate(rows_ref + [ref["lm_prefill"][0].numpy(), ref["lm_step"][0].numpy()])
    both_out = np.concatenate(rows_out + [out["lm_prefill"][0], out["lm_step"][0]]).astype(np.float32)
    return {
        "text_snr_db": snr_db(ref["text_encoder"].numpy(), out["text_encoder"][0]),
        "lm_logits_max_abs": float(np.abs(both_ref - both_out).max()),
        "lm_token_agreement": float((both_ref.argmax(-1) == both_out.argmax(-1)).mean()),
        "lm_cache_snr_db": snr_db(ref["lm_step"][1].numpy(), out["lm_step"][1]),
        "dpd_snr_db": snr_db(ref["dpd"].numpy(), out["dpd"][0]),
        "vae_snr_db": snr_db(ref["vae_decoder"].numpy(), out["vae_decoder"][0]),
        "vae_encoder_snr_db": snr_db(ref["vae_encoder"].numpy(), out["vae_encoder"][0]),
    }


def teacher_forced_tokens(model: MeLoDy, prompt: str, n: int) -> np.ndarray:
    """The torch LM's greedy semantic tokens (n,) for ``prompt``: the shared input of the end-to-end check."""
    ids, mask = (torch.from_numpy(a) for a in TextTokenizer()([prompt]))
    out = np.empty(n, np.int64)
    with torch.inference_mode():
        prefix = onnx_graphs(model)["text_encoder"](ids, mask)
        logits, cache = model.lm.prefill(prefix, torch.zeros(1, 0, dtype=torch.int64))
        for i in range(n):
            out[i] = int(logits[0].argmax())
            logits, cache = model.lm.step(torch.tensor(out[i:i + 1]), torch.tensor(prefix.shape[1] + i), cache)
    return out


def e2e_parity(model: MeLoDy, be: Any, *, steps: int = 8, schedule: str = "paper",
               seconds: float = E2E_SECONDS) -> dict[str, float]:
    """Teacher-forced end to end: the same semantic tokens and the same starting noise through DPD sampling
    (``steps``, ``schedule`` and the model's DPD guidance, as ``Generator`` runs them) and the VAE decoder, in torch
    and in the bundle; the audio SNR in dB.

    DDIM sampling is deterministic given tokens and noise, so this measures the conversion error of DPD + VAE as it
    accumulates over the sampler's steps. A free-running comparison (same prompt and seed) measures nothing for a
    sampled LM: one flipped token makes a different song (the int8 bundle measured -2.3 dB that way); the LM is
    gated by its teacher-forced logits and greedy agreement instead.
    """
    from melody_edge.backends.torch_backend import TorchBackend
    from melody_edge.sampling import get_schedule, sample

    c = model.cfg
    tokens = teacher_forced_tokens(model, PARITY_PROMPTS[0], round(seconds * c.token_rate))
    null = np.full_like(tokens, c.dpd.sem_vocab)
    z0 = np.random.default_rng(0).standard_normal((1, len(tokens) * c.frames_per_token, c.vae.latent_dim),
                                                  dtype=np.float32)
    audio = []
    for backend in (TorchBackend(model, "cpu"), be):
        def denoise(z, angles, guidance, backend=backend):
            if guidance == 1.0:
                return backend.dpd(z, angles, tokens[None])
            v = backend.dpd(np.concatenate([z, z]), np.concatenate([angles, angles]), np.stack([tokens, null]))
            return v[1:] + guidance * (v[:1] - v[1:])

        z = sample(denoise, z0, get_schedule(schedule, steps), guidance=c.guidance)
        audio.append(backend.vae_decode(z))
    return {"e2e_snr_db": snr_db(audio[0], audio[1])}


def finish(stage: Path, out: str | Path, manifest: dict[str, Any], gate: dict[str, Any]) -> Path:
    """Record ``gate`` in the staged manifest, then publish: to ``out`` when the gate passed or was not run, else
    to ``<out>.failed`` (``out`` untouched) and raise ``ParityError``."""
    manifest["gate"] = gate
    write_manifest(stage, manifest)
    if gate.get("passed") is False:
        failed = Path(out).absolute()
        failed = publish(stage, failed.with_name(failed.name + ".failed"))
        raise ParityError(f"{manifest['model']} {manifest['format']} {manifest['precision']} parity gate failed: "
                          f"{', '.join(gate['failed'])}; {out} was left as it was, the failed bundle is at {failed}")
    return publish(stage, out)


def export_bundle(checkpoint: str | Path, out: str | Path, *, fmt: str = "onnx", precision: str = "fp32",
                  steps: int = 8, schedule: str = "paper", check: bool = True, e2e: bool = True) -> Path:
    """Export ``checkpoint`` to a bundle folder ``out`` (replaced whole, only after the parity gate ran; see the
    module docstring); returns ``out``."""
    if fmt != "onnx":
        if fmt == "coreml":
            from conversion.coreml import export_coreml

            return export_coreml(checkpoint, out, precision=precision, steps=steps, schedule=schedule)
        raise ConfigError(f"unknown format {fmt!r}; choose onnx or coreml")
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
    model, folder = load_checkpoint(checkpoint)
    inputs = example_inputs(model)
    graphs = onnx_graphs(model)
    files: dict[str, Any] = {}
    with staged_bundle(out) as stage, tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(COMPONENTS, 1):
            t0 = time.perf_counter()
            raw = Path(tmp) / f"{name}.onnx"
            export_onnx(graphs[name], inputs[name], name, raw)
            dst = stage / f"{name}.onnx"
            quantize(raw, dst, precision)
            files[name] = {"path": dst.name, "spec": _spec(dst)}
            log.info("[%d/%d] %s: %.1f MB (%.1f s)", i, len(COMPONENTS), name, dst.stat().st_size / 1e6,
                     time.perf_counter() - t0)
        write_assets(model, folder, stage, files)
        for entry in files.values():
            entry["sha256"] = sha256(stage / entry["path"])
        import onnx
        import onnxruntime

        manifest = {
            "bundle_version": BUNDLE_FORMAT, "format": fmt, "precision": precision, "model": model.cfg.name,
            "config": model.cfg.to_dict(), "sample_rate": model.cfg.sample_rate, "token_rate": model.cfg.token_rate,
            "latent_rate": model.cfg.vae.frame_rate, "steps": steps, "schedule": schedule, "files": files,
            "source": {"checkpoint": str(checkpoint), "commit": git_commit()},
            "tools": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                      "python": platform.python_version(), "opset": OPSET},
            "gate": {"passed": None, "status": "not run yet"},
            "controls": controls_manifest(model.cfg),
        }
        write_manifest(stage, manifest)
        if not check:
            return finish(stage, out, manifest, {"passed": None, "status": "not run (--no-check)"})
        be = _backend(stage, manifest, model)
        figures = component_parity(model, be, inputs)
        if e2e:
            figures.update(e2e_parity(model, be, steps=steps, schedule=schedule))
        result = report_parity(figures, precision, stage=f"{model.cfg.name} onnx",
                               skipped=() if e2e else ("e2e_snr_db",))
        result["provider"] = "CPUExecutionProvider"
        result["sizes_mb"] = {k: round((stage / v["path"]).stat().st_size / 1e6, 3) for k, v in files.items()}
        result["total_mb"] = round(sum(result["sizes_mb"].values()), 3)
        (stage / "parity.json").write_text(json.dumps(result, indent=2, default=float))
        gate = {"passed": result["passed"], "tolerances": result["thresholds"], "measured": figures,
                "failed": result["failed"], "skipped": result["skipped"], "provider": result["provider"]}
        return finish(stage, out, manifest, gate)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m conversion.export", description=__doc__)
    p.add_argument("--checkpoint", default="tiny", help="'tiny', 'debug', 'paper' or a checkpoint folder")
    p.add_argument("--format", default="onnx", choices=["onnx", "coreml"])
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "int8", "palettize4"],
                   help="default: fp32 for onnx, fp16 for coreml; palettize4 is Core ML only")
    p.add_argument("--steps", type=int, default=8, help="diffusion steps of the end-to-end gate (and the manifest)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-check", action="store_true", help="skip the parity gates (recorded as not run)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    precision = a.precision or ("fp16" if a.format == "coreml" else "fp32")
    try:
        export_bundle(a.checkpoint, a.out, fmt=a.format, precision=precision, steps=a.steps, check=not a.no_check)
    except ParityError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
