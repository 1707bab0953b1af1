"""Checkpoint -> bundle: ``python -m conversion.export --checkpoint tiny --format onnx --precision int8 --out DIR``.

Exports the six components (text encoder = MiniLM + the LM's conditioner, LM prefill, LM decode step with the KV
cache as explicit inputs/outputs, DPD denoiser, VAE decoder and encoder), quantizes (int8: dynamic, per-channel
QUInt8 weights, the AVX2-safe recipe of DEPENDENCIES.md; fp16: for CUDA/Core ML), checks parity against torch on
the same inputs, and writes ``manifest.json`` + ``parity.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conversion.parity import report_parity, snr_db
from melody_edge.bundle import BUNDLE_FORMAT, COMPONENTS, MANIFEST, load_bundle, sha256
from melody_edge.errors import ConfigError
from melody_edge.models.melody import MeLoDy
from melody_edge.text import TextTokenizer, minilm_dir

log = logging.getLogger("conversion.export")
OPSET = 20
# parity is measured on real captions: random word-piece ids are far from what the text encoder sees and
# exaggerate int8 error (measured 8.7 dB on random ids vs 26 dB on captions for the tiny model)
PARITY_PROMPTS = ("a slow chorale for string ensemble in G major, 3/4, 66 BPM",
                  "a lively folk dance for flute in A minor, allegro 132 bpm")


class TextPrefix(nn.Module):
    """MiniLM token states -> the LM's soft prefix, as one graph."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        from melody_edge.models.text import MiniLM

        self.minilm = MiniLM()
        self.cond = model.lm.cond

    def forward(self, input_ids, attention_mask):
        return self.cond(self.minilm(input_ids, attention_mask), attention_mask)


class LMPrefill(nn.Module):
    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.lm = model.lm

    def forward(self, prefix, tokens):
        return self.lm.prefill(prefix, tokens)


class LMStep(nn.Module):
    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.lm = model.lm

    def forward(self, token, pos, cache):
        return self.lm.step(token, pos, cache)


class VAEDecoder(nn.Module):
    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.vae = model.vae

    def forward(self, z):
        return self.vae.decode_from_diffusion(z)


class VAEEncoder(nn.Module):
    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.vae = model.vae

    def forward(self, audio):
        return self.vae.encode_for_diffusion(audio)


def example_inputs(model: MeLoDy, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs each component is traced and checked with (deterministic in ``seed``)."""
    c = model.cfg
    g = torch.Generator().manual_seed(seed)
    B, N, L = 2, 24, 24 * c.frames_per_token + 3
    ids, mask = (torch.from_numpy(a) for a in TextTokenizer()(list(PARITY_PROMPTS[:B])))  # real captions
    prefix = torch.randn(B, c.text.n_prefix, c.lm.dim, generator=g) * 0.5
    tokens = torch.randint(0, c.lm.vocab_size, (B, N), generator=g)
    with torch.inference_mode():
        _, cache = model.lm.prefill(prefix, tokens)
    return {
        "text_encoder": {"input_ids": ids, "attention_mask": mask},
        "lm_prefill": {"prefix": prefix, "tokens": tokens},
        "lm_step": {"token": tokens[:, 0].clone(), "pos": torch.tensor(c.text.n_prefix + N, dtype=torch.int64),
                    "cache": cache.clone()},
        "dpd": {"z": torch.randn(B, L, c.dpd.latent_dim, generator=g), "angles": torch.rand(B, L, generator=g) * 1.5,
                "tokens": torch.randint(0, c.dpd.sem_vocab + 1, (B, -(-L // c.frames_per_token)), generator=g)},
        "vae_decoder": {"z": torch.rand(B, L, c.vae.latent_dim, generator=g) * 2 - 1},
        "vae_encoder": {"audio": torch.randn(B, L * c.vae.hop + 17, generator=g) * 0.1},
    }


def _modules(model: MeLoDy) -> dict[str, nn.Module]:
    return {"text_encoder": TextPrefix(model).eval(), "lm_prefill": LMPrefill(model).eval(),
            "lm_step": LMStep(model).eval(), "dpd": model.dpd.eval(), "vae_decoder": VAEDecoder(model).eval(),
            "vae_encoder": VAEEncoder(model).eval()}


OUTPUTS = {"text_encoder": ["prefix"], "lm_prefill": ["logits", "cache"], "lm_step": ["logits", "cache_out"],
           "dpd": ["v"], "vae_decoder": ["audio"], "vae_encoder": ["z"]}


def _dynamic_shapes(name: str) -> dict[str, Any]:
    D = torch.export.Dim
    B = D("B", min=1, max=64)
    if name == "text_encoder":
        return {"input_ids": {0: B}, "attention_mask": {0: B}}
    if name == "lm_prefill":
        return {"prefix": {0: B}, "tokens": {0: B, 1: D("N", min=0, max=4096)}}
    if name == "lm_step":
        return {"token": {0: B}, "pos": {}, "cache": {2: B}}
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
                              dynamic_shapes=_dynamic_shapes(name), opset_version=OPSET, optimize=True,
                              external_data=False)


def quantize(src: Path, dst: Path, precision: str) -> None:
    """int8: dynamic quantization of MatMul/Gemm/Gather weights, per-channel QUInt8 (accurate on AVX2 without VNNI);
    fp16: all float tensors to float16 with float32 inputs/outputs kept."""
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"])  # Gather: MiniLM's embeddings
    elif precision == "fp16":
        import onnx
        from onnxconverter_common import float16

        m = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(m, str(dst))
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


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def load_checkpoint(checkpoint: str | Path) -> tuple[MeLoDy, Path | None]:
    """A preset name ('tiny' = the shipped checkpoint; 'debug'/'paper' = random) or a checkpoint folder."""
    from melody_edge.generator import ASSETS
    from melody_edge.models.config import PRESETS, get_config

    name = str(checkpoint)
    if name in PRESETS and name != "tiny":
        return MeLoDy.random(get_config(name)), None
    folder = ASSETS / "tiny" if name == "tiny" else Path(checkpoint)
    return MeLoDy.load(folder), folder


def component_parity(model: MeLoDy, bundle_dir: Path, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Torch vs bundle on the same inputs: LM logits max abs diff and greedy agreement, SNR of the others."""
    from melody_edge.backends.onnx_backend import OnnxBackend

    be = OnnxBackend(load_bundle(bundle_dir))
    mods = _modules(model)
    with torch.inference_mode():
        ref = {k: mods[k](**v) for k, v in inputs.items()}
    np_in = {k: {n: t.numpy() for n, t in v.items()} for k, v in inputs.items()}
    out = {k: be._run(k, **np_in[k]) for k in inputs}
    # teacher-forced LM over a whole sequence: prefill with the prefix, then one step per example token, in torch
    # and in the bundle (B x N logits rows for the greedy-token agreement)
    prefix, tokens = inputs["lm_prefill"]["prefix"], inputs["lm_prefill"]["tokens"]
    P = prefix.shape[1]
    rows_ref, rows_out = [], []
    with torch.inference_mode():
        logits, cache = model.lm.prefill(prefix, tokens[:, :0])
        lo, co = be.lm_prefill(prefix.numpy(), tokens[:, :0].numpy())
        for i in range(tokens.shape[1]):
            rows_ref.append(logits.numpy())
            rows_out.append(lo)
            logits, cache = model.lm.step(tokens[:, i], torch.tensor(P + i), cache)
            lo, co = be.lm_step(tokens[:, i].numpy(), P + i, co)
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


def e2e_parity(model: MeLoDy, bundle_dir: Path, tokenizer: Any, seconds: float = 2.0) -> dict[str, float]:
    """The same prompt and seed through the torch backend and the bundle: audio SNR and token agreement."""
    from melody_edge.backends.onnx_backend import OnnxBackend
    from melody_edge.backends.torch_backend import TorchBackend
    from melody_edge.generator import Generator

    prompt = "a slow chorale for string ensemble in G major"
    a = Generator.from_backend(TorchBackend(model, "cpu", tokenizer)).generate(prompt, seconds, seed=0, steps=4)
    b = Generator.from_backend(OnnxBackend(load_bundle(bundle_dir))).generate(prompt, seconds, seed=0, steps=4)
    return {"e2e_snr_db": snr_db(a.samples, b.samples)}


def export_bundle(checkpoint: str | Path, out: str | Path, *, fmt: str = "onnx", precision: str = "fp32",
                  steps: int = 8, schedule: str = "paper", check: bool = True, e2e: bool = True) -> Path:
    """Export ``checkpoint`` to a bundle folder ``out`` and gate it on parity; returns ``out``."""
    if fmt != "onnx":
        if fmt == "coreml":
            from conversion.coreml import export_coreml

            return export_coreml(checkpoint, out, precision=precision)
        raise ConfigError(f"unknown format {fmt!r}; choose onnx or coreml")
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
    model, folder = load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(model)
    mods = _modules(model)
    files: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(COMPONENTS, 1):
            t0 = time.perf_counter()
            raw = Path(tmp) / f"{name}.onnx"
            export_onnx(mods[name], inputs[name], name, raw)
            dst = out / f"{name}.onnx"
            quantize(raw, dst, precision)
            files[name] = {"path": dst.name, "spec": _spec(dst)}
            print(f"[{i}/{len(COMPONENTS)}] {name}: {dst.stat().st_size / 1e6:.1f} MB "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    np.save(out / "null_prefix.npy", model.lm.cond.null_prefix.detach().numpy().astype(np.float32))
    files["null_prefix"] = {"path": "null_prefix.npy"}
    shutil.copyfile(minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    files["text_tokenizer"] = {"path": "tokenizer.json"}
    tokenizer = None
    if folder is not None and (folder / "tokenizer.npz").is_file():
        from melody_edge.tokenizer import SemanticTokenizer

        shutil.copyfile(folder / "tokenizer.npz", out / "semantic_tokenizer.npz")
        files["semantic_tokenizer"] = {"path": "semantic_tokenizer.npz"}
        tokenizer = SemanticTokenizer.load(out / "semantic_tokenizer.npz")
    for entry in files.values():
        entry["sha256"] = sha256(out / entry["path"])
    import onnx
    import onnxruntime

    manifest = {
        "bundle_version": BUNDLE_FORMAT, "format": fmt, "precision": precision, "model": model.cfg.name,
        "config": model.cfg.to_dict(), "sample_rate": model.cfg.sample_rate, "token_rate": model.cfg.token_rate,
        "latent_rate": model.cfg.vae.frame_rate, "steps": steps, "schedule": schedule, "files": files,
        "source": {"checkpoint": str(checkpoint), "commit": _git_commit()},
        "tools": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "python": platform.python_version(), "opset": OPSET},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if check:
        figures = component_parity(model, out, inputs)
        if e2e:
            figures.update(e2e_parity(model, out, tokenizer))
        result = report_parity(figures, precision, stage=model.cfg.name)
        result["sizes_mb"] = {k: round((out / v["path"]).stat().st_size / 1e6, 3) for k, v in files.items()}
        result["total_mb"] = round(sum(result["sizes_mb"].values()), 3)
        (out / "parity.json").write_text(json.dumps(result, indent=2, default=float))
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m conversion.export", description=__doc__)
    p.add_argument("--checkpoint", default="tiny", help="'tiny', 'debug', 'paper' or a checkpoint folder")
    p.add_argument("--format", default="onnx", choices=["onnx", "coreml"])
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "int8", "palettize4"],
                   help="default: fp32 for onnx, fp16 for coreml; palettize4 is Core ML only")
    p.add_argument("--steps", type=int, default=8, help="default diffusion steps recorded in the manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--no-check", action="store_true", help="skip the parity gates (not recommended)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    precision = a.precision or ("fp16" if a.format == "coreml" else "fp32")
    export_bundle(a.checkpoint, a.out, fmt=a.format, precision=precision, steps=a.steps, check=not a.no_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
