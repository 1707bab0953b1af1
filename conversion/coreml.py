"""Checkpoint -> Core ML bundle: ``export_coreml``, or ``python -m conversion.export --format coreml --precision fp16``.

Each component becomes an ``.mlpackage`` (ML Program, minimum deployment target macOS 14 / iOS 17):
``torch.export.export(...).run_decompositions({})``, two graph rewrites, then ``ct.convert`` with explicit input
types. All six components convert, the text encoder whole (MiniLM BERT + the conditioner), and every flexible
dimension is a ``RangeDim`` (no component needed ``EnumeratedShapes``):

- batch 1..2 everywhere (1 for the prompt, 2 with classifier-free guidance);
- text encoder: the tokenizer's fixed 64 word pieces; LM prefill: 1..window_tokens tokens; LM step: fixed shapes;
- DPD: 1..window_frames latent frames and 1..window_tokens tokens; VAE decoder 1..window_frames frames, VAE encoder
  1..window_frames * hop samples (the generator never runs more than one window through a graph).

Where the Core ML graphs differ from the ONNX ones (both in ``conversion.graphs``), and why:

- Core ML tensors have rank <= 5, so the LM cache is (2 * n_layers, B, H, max_len, head_dim) instead of
  (n_layers, 2, ...), and the LM graphs are ``graphs.CoreMLPrefill`` and ``graphs.CoreMLStep``:
  ``SemanticLM.prefill`` and ``.step`` over the same blocks without the rank-6 stack (tests check they equal the
  originals).
- The step graph returns only the new keys and values ``kv`` (2 * n_layers, B, H, 1, head_dim), which the backend
  writes into its cache (as the ONNX step does; there the cache is also split into one input per layer, because
  onnxruntime copies slices, which Core ML's single rank-5 input is left as).
- The VAE graphs read their stored DFT bases (the ONNX ones compute them in-graph): ``compress`` finds the bases by
  name to leave them uncompressed.
- Core ML has no empty tensors: prefill takes N >= 1 tokens and returns the logits of the last two positions, and
  the backend feeds a placeholder token when N == 0. Its cache is returned unpadded (Core ML pads rank >= 2 tensors
  by static amounts only) and the backend pads it to max_len.
- ``pos`` is a (1,) input (no scalar inputs); ids and ``pos`` are int32.
- The VAE encoder computes in float32 at every precision: its STFT power floor (1e-10) is 0 in float16, so quiet
  audio gives log(0) and NaN latents (torch float16 gives NaN for noise at 1e-4 RMS or a silent stretch).

Rewrites (tests check the rewritten programs against eager torch at batch 1 and odd lengths): torch.export runs with
``backed_size_oblivious`` (as torch.onnx does) and defers the shape guards it cannot prove (e.g. 2 * ceil(L / 2) >=
L) to runtime asserts, which are dropped (Core ML has no assert); a pad by a dynamic amount (the DPD's pad to whole
segments) becomes a concat with a ``full`` block. coremltools 9.0 has no ``sym_min``/``sym_max`` and turns integer
``//`` on sizes into float32, which breaks slice ends: ``_register_converters`` adds integer versions.

Weights: fp16/fp32 as computed; int8 = linear symmetric per-channel quantization, palettize4 = 4-bit k-means palettes,
both on the float16 program; tensors of at most 2048 elements (coremltools' default threshold) and the VAE's fixed
DFT bases keep their compute precision (``compress``).
Predictions need macOS 14+ (``melody_edge.backends.coreml_backend``); elsewhere only the packages' specs are checked.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx.experimental._config as fx_config
from torch import nn

from conversion.common import (
    controls_manifest,
    distillation_record,
    git_commit,
    load_checkpoint,
    publish,
    staged_bundle,
    write_assets,
    write_manifest,
)
from conversion.graphs import OUTPUTS, coreml_example_inputs, coreml_graphs
from melody_edge.backends.coreml_backend import feature_dtype, sha256_path
from melody_edge.bundle import BUNDLE_FORMAT, COMPONENTS
from melody_edge.errors import BackendUnavailableError, ConfigError
from melody_edge.models.config import TEXT_MAX_TOKENS, ModelConfig

log = logging.getLogger("conversion.coreml")
PRECISIONS = ("fp16", "fp32", "int8", "palettize4")
DEPLOYMENT_TARGET = "macOS14"
FLOAT32_COMPONENTS = frozenset({"vae_encoder"})  # computed in float32 at every precision (module docstring)
Flex = tuple[str, int, int]  # a flexible dimension: (symbol shared across a graph's inputs, min, max)


def input_shapes(cfg: ModelConfig) -> dict[str, dict[str, list[int | Flex]]]:
    """Each component's input shapes; flexible dimensions are ``(symbol, min, max)``."""
    B: Flex = ("B", 1, 2)
    L: Flex = ("L", 1, cfg.window_frames)
    N: Flex = ("N", 1, cfg.window_tokens)
    lm, C = cfg.lm, cfg.vae.latent_dim
    text: dict[str, list[int | Flex]] = {"input_ids": [B, TEXT_MAX_TOKENS], "attention_mask": [B, TEXT_MAX_TOKENS]}
    prefill: dict[str, list[int | Flex]] = {"prefix": [B, cfg.prefix_len, lm.dim], "tokens": [B, N]}
    step: dict[str, list[int | Flex]] = {"token": [B], "pos": [1],
                                         "cache": [2 * lm.n_layers, B, lm.n_heads, cfg.lm_max_len, lm.head_dim]}
    if cfg.controls.enabled:
        text.update({k: [B] for k in ("key", "bpm", "metre", "family")})
        prefill["beat"] = [B, ("N1", 2, cfg.window_tokens + 1), cfg.controls.beat_dim]
        step["beat"] = [B, cfg.controls.beat_dim]
    return {
        "text_encoder": text,
        "lm_prefill": prefill,
        "lm_step": step,
        "dpd": {"z": [B, L, C], "angles": [B, L], "tokens": [B, N],
                **({"controls": [B, 2]} if cfg.dpd.controlled else {})},
        "vae_decoder": {"z": [B, L, C]},
        "vae_encoder": {"audio": [B, ("T", 1, cfg.window_frames * cfg.vae.hop)]},
    }


def _drop_runtime_asserts(graph: torch.fx.Graph) -> None:
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_scalar.default:
            graph.erase_node(node)


def _dynamic_pads_to_concat(graph: torch.fx.Graph) -> None:
    """Constant pads by symbolic amounts -> ``cat`` with ``full`` blocks along each padded dimension."""
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.target not in (aten.pad.default, aten.constant_pad_nd.default):
            continue
        x, pads = node.args[0], node.args[1]
        if all(isinstance(p, int) for p in pads):
            continue
        if node.target is aten.pad.default:
            if (node.args[2] if len(node.args) > 2 else "constant") != "constant":
                continue
            value = node.args[3] if len(node.args) > 3 and node.args[3] is not None else 0.0
        else:
            value = node.args[2] if len(node.args) > 2 else 0.0
        val = x.meta["val"]
        with graph.inserting_before(node):
            sizes = [s if isinstance(s, int) else graph.call_function(aten.sym_size.int, (x, d))
                     for d, s in enumerate(val.shape)]
            out = x
            for i in range(len(pads) // 2):
                d, before, after = val.dim() - 1 - i, pads[2 * i], pads[2 * i + 1]
                if before == 0 and after == 0:
                    continue
                blocks = [graph.call_function(aten.full.default, ([*sizes[:d], n, *sizes[d + 1:]], value),
                                              {"dtype": val.dtype}) if n != 0 else None for n in (before, after)]
                parts = [p for p in (blocks[0], out, blocks[1]) if p is not None]
                out = graph.call_function(aten.cat.default, (parts, d))
                sizes[d] = graph.call_function(aten.sym_size.int, (out, d))
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def export_program(module: nn.Module, inputs: dict[str, torch.Tensor],
                   shapes: dict[str, list[int | Flex]]) -> torch.export.ExportedProgram:
    """torch.export with the flexible dimensions of ``shapes``, decomposed and rewritten for Core ML."""
    dims: dict[str, Any] = {}
    dynamic = {name: {i: dims.setdefault(d[0], torch.export.Dim(d[0], min=d[1], max=d[2]))
                      for i, d in enumerate(shape) if isinstance(d, tuple)}
               for name, shape in shapes.items()}
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(module, tuple(inputs.values()), dynamic_shapes=dynamic,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    program = program.run_decompositions({})
    _drop_runtime_asserts(program.graph)
    _dynamic_pads_to_concat(program.graph)
    program.graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


@functools.cache
def _register_converters() -> None:
    """Integer ``sym_min``/``sym_max`` and integer ``//`` of sizes, which coremltools 9.0 lacks (module docstring)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops, register_torch_op
    from coremltools.converters.mil.mil import types

    def ints(context: Any, node: Any) -> list[Any]:
        return [mb.cast(x=v, dtype="int32") for v in ops._get_inputs(context, node, expected=2)]

    def sym_min(context: Any, node: Any) -> None:
        x, y = ints(context, node)
        context.add(mb.minimum(x=x, y=y, name=node.name))

    def sym_max(context: Any, node: Any) -> None:
        x, y = ints(context, node)
        context.add(mb.maximum(x=x, y=y, name=node.name))

    def floordiv(context: Any, node: Any) -> None:
        x, y = ops._get_inputs(context, node, expected=2)
        if types.is_int(x.dtype) and types.is_int(y.dtype):
            context.add(mb.floor_div(x=x, y=y, name=node.name))
        else:
            ops.floor_divide(context, node)

    for fn in (sym_min, sym_max, floordiv):
        register_torch_op(fn, override=True)


def convert(program: torch.export.ExportedProgram, inputs: dict[str, torch.Tensor],
            shapes: dict[str, list[int | Flex]], outputs: list[str], *, float16: bool) -> Any:
    """An exported program -> ``ct.models.MLModel`` (ML Program, macOS 14) with named, typed, ranged inputs."""
    import coremltools as ct

    _register_converters()
    ranges = {d[0]: ct.RangeDim(d[1], d[2]) for shape in shapes.values() for d in shape if isinstance(d, tuple)}
    types = [ct.TensorType(name=name, dtype=np.float32 if inputs[name].is_floating_point() else np.int32,
                           shape=ct.Shape([ranges[d[0]] if isinstance(d, tuple) else d for d in shape]))
             for name, shape in shapes.items()]
    return ct.convert(program, inputs=types, outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
                      convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                      compute_precision=ct.precision.FLOAT16 if float16 else ct.precision.FLOAT32,
                      skip_model_load=True)


def compress(mlmodel: Any, precision: str) -> Any:
    """int8: linear symmetric weight quantization; palettize4: 4-bit k-means palettes; else ``mlmodel`` as is.

    The VAE's STFT/iSTFT DFT bases are exact tables, not learned weights, and stay uncompressed: with them
    compressed, the debug decoder's audio falls to 25 dB SNR (8-bit) and 5 dB (4-bit k-means), measured in torch.
    """
    import coremltools.optimize.coreml as cto

    if precision not in ("int8", "palettize4"):
        return mlmodel
    fixed = {name: None for name in cto.get_weights_metadata(mlmodel) if "stft_basis" in name}
    if precision == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"),
                                        op_name_configs=fixed)
        return cto.linear_quantize_weights(mlmodel, config)
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4), op_name_configs=fixed)
    return cto.palettize_weights(mlmodel, config)


def model_spec(mlmodel: Any) -> dict[str, Any]:
    """What the converted model's spec says: input and output dtypes and shapes (``[min, max]`` for a flexible
    dimension), model type, specification version and compute precision (float16 when any op yields float16)."""
    from coremltools.proto import MIL_pb2

    spec = mlmodel.get_spec()

    def features(values: Any) -> dict[str, Any]:
        out = {}
        for f in values:
            t = f.type.multiArrayType
            ranges = t.shapeRange.sizeRanges
            shape = ([r.lowerBound if r.lowerBound == r.upperBound else [r.lowerBound, r.upperBound] for r in ranges]
                     if ranges else list(t.shape))
            out[f.name] = {"dtype": feature_dtype(f), "shape": shape}
        return out

    main = spec.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    fp16 = any(o.type.tensorType.dataType == MIL_pb2.FLOAT16 for op in ops for o in op.outputs)
    return {"inputs": features(spec.description.input), "outputs": features(spec.description.output),
            "model_type": spec.WhichOneof("Type"), "specification_version": spec.specificationVersion,
            "compute_precision": "float16" if fp16 else "float32"}


def export_coreml(checkpoint: str | Path, out: str | Path, *, precision: str = "fp16", steps: int = 8,
                  schedule: str = "paper") -> Path:
    """Export ``checkpoint`` (a preset name or a checkpoint folder) to a Core ML bundle folder ``out``; returns
    ``out``. Written in a staging folder and swapped in whole (``conversion.common``). Core ML predicts only on
    macOS, so off macOS the manifest's gate says "not verified on this platform" (``passed`` null); on macOS the
    tests compare the predictions with torch."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    try:
        import coremltools as ct
    except ImportError as e:
        raise BackendUnavailableError("Core ML export needs: pip install coremltools") from e
    model, folder = load_checkpoint(checkpoint)
    graphs, inputs, shapes = coreml_graphs(model), coreml_example_inputs(model), input_shapes(model.cfg)
    files: dict[str, Any] = {}
    with staged_bundle(out) as stage:
        for i, name in enumerate(COMPONENTS, 1):
            t0 = time.perf_counter()
            program = export_program(graphs[name], inputs[name], shapes[name])
            float16 = precision != "fp32" and name not in FLOAT32_COMPONENTS
            mlmodel = compress(convert(program, inputs[name], shapes[name], OUTPUTS[name], float16=float16),
                               precision)
            dst = stage / f"{name}.mlpackage"
            mlmodel.save(str(dst))
            files[name] = {"path": dst.name, "spec": model_spec(mlmodel)}
            size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
            log.info("[%d/%d] %s: %.1f MB (%.1f s)", i, len(COMPONENTS), name, size / 1e6, time.perf_counter() - t0)
        write_assets(model, folder, stage, files)
        for entry in files.values():
            entry["sha256"] = sha256_path(stage / entry["path"])
        on_macos = platform.system() == "Darwin"
        gate = {"passed": None, "status": "not verified on this platform" if not on_macos else
                "not run: compare with torch by the macOS tests (tests/conversion/test_coreml.py)",
                "platform": platform.system()}
        manifest = {
            "bundle_version": BUNDLE_FORMAT, "format": "coreml", "precision": precision, "model": model.cfg.name,
            "config": model.cfg.to_dict(), "sample_rate": model.cfg.sample_rate, "token_rate": model.cfg.token_rate,
            "latent_rate": model.cfg.vae.frame_rate, "steps": steps, "schedule": schedule, "files": files,
            "source": {"checkpoint": str(checkpoint), "commit": git_commit()},
            "tools": {"torch": torch.__version__, "coremltools": ct.__version__, "python": platform.python_version(),
                      "minimum_deployment_target": DEPLOYMENT_TARGET},
            "gate": gate,
            "controls": controls_manifest(model.cfg),
            "distillation": distillation_record(folder),
        }
        write_manifest(stage, manifest)
        publish(stage, out)
    log.info("Core ML bundle (%s) written to %s", precision, out)
    return Path(out)
