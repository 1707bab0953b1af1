"""Checkpoint -> bundle: ``python -m conversion.export --checkpoint tiny --format onnx --precision int8 --out DIR``.

Exports the six graphs of ``conversion.graphs`` (text encoder = MiniLM + the LM's conditioner, LM prefill, LM decode
step that reads the KV cache and returns the new keys/values, DPD denoiser, VAE decoder and encoder, whose DFT
kernels are computed in-graph), quantizes (int8: dynamic, per-channel QUInt8 weights, the AVX2-safe recipe of
DEPENDENCIES.md, plus int8 storage of the VAE's conv weights, the DPD kept float32 (``FLOAT32_AT_INT8``); fp16: for
CUDA/Core ML, checked here on the CPU provider), stores the weights the two LM graphs share once
(``lm_weights.bin``), runs onnxruntime's mobile usability checker per graph (``conversion.providers``), all in a
staging folder next to ``--out``; there it runs the parity gate against torch, records the gate in
``manifest.json`` (and ``parity.json``), and only then replaces ``--out`` whole. A failed gate leaves ``--out`` as
it was, puts the failed bundle at ``<out>.failed`` for inspection and raises ``ParityError``.
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
    distillation_record,
    git_commit,
    load_checkpoint,
    publish,
    staged_bundle,
    write_assets,
    write_manifest,
)
from conversion.graphs import OUTPUTS, PARITY_PROMPTS, example_inputs, onnx_graphs
from conversion.parity import ParityError, report_parity, snr_db
from conversion.providers import check_graphs
from melody_edge.backends.base import dpd_controls, with_unconditional_row
from melody_edge.bundle import BUNDLE_FORMAT, COMPONENTS, Bundle, lm_step_cache_inputs, sha256
from melody_edge.controls import parse_controls
from melody_edge.errors import ConfigError
from melody_edge.models.melody import MeLoDy
from melody_edge.text import TextTokenizer

log = logging.getLogger("conversion.export")
OPSET = 20
CONV_INT8_MAX_LOSS_DB = 1.0  # int8 conv weights are kept where they cost at most this (choose_conv_storage)
LM_WEIGHTS = "lm_weights.bin"  # the weights lm_prefill.onnx and lm_step.onnx share (ONNX external data)
E2E_SECONDS = 2.0  # teacher-forced end-to-end clip: 50 tokens, within one window of every preset
# Graphs an int8 bundle keeps in float32. The DPD: the GPU-trained controlled DPD (issue 9) lost 8 dB more to dynamic
# int8 than its predecessor did: its 4-step sampled latents came out at 33.8 dB against torch (the float32 graph:
# 117 dB), which the VAE decoder turned into an end-to-end 10.6 dB at 4 steps and 14.5 dB at 8 (gate 16.5; the shipped
# model before it: 19.9 / 20.6). Keeping float32 only the weights that cost the most (the latent in / out projections,
# then every MatMul under 40 k weights) gave 11.1 / 21.7 and 17.8 / 14.8 dB: the waveform SNR swings that way with
# the latents' tiny differences, so no subset passes reliably. The float32 DPD: 25.9 / 27.2 dB end to end, 16.1 MB
# instead of 5.2, 30 ms a 10 s window instead of 27 (2 threads).
FLOAT32_AT_INT8 = ("dpd",)


def _dynamic_shapes(name: str, names: list[str]) -> dict[str, Any]:
    controls = "beat" in names
    D = torch.export.Dim
    B = D("B", min=1, max=64)
    if name == "text_encoder":
        return {"input_ids": {0: B}, "attention_mask": {0: B}}
    if name == "lm_prefill":
        N = D("N", min=0, max=4096)
        beat = {"beat": {0: B, 1: D("M", min=1, max=4097)}} if controls else {}  # M = N + 1, checked at run time
        return {"prefix": {0: B}, "tokens": {0: B, 1: N}, **beat}
    if name == "lm_step":
        n_cache = sum(n.startswith("cache_") for n in names)  # the *cache arguments of graphs.LMStep
        return {"token": {0: B}, "pos": {}, **({"beat": {0: B}} if controls else {}), "cache": ({0: B},) * n_cache}
    if name == "dpd":
        L = D("L", min=1, max=1 << 20)
        return {"z": {0: B, 1: L}, "angles": {0: B, 1: L}, "tokens": {0: B, 1: D("N", min=1, max=1 << 20)},
                **({"controls": {0: B}} if "controls" in names else {})}
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
                              dynamic_shapes=_dynamic_shapes(name, names), opset_version=OPSET,
                              optimize=True,
                              external_data=False)
    import onnx

    graph = onnx.load(str(path))
    if divide_by_sqrt(graph):
        onnx.save(graph, str(path))


def divide_by_sqrt(model: Any) -> int:
    """Rewrite ``a * Reciprocal(Sqrt(s))`` (how ``torch.rsqrt`` exports) as ``a / Sqrt(s)`` in place, the pattern
    onnxruntime fuses into one ``SimplifiedLayerNormalization`` per RMSNorm (7 nodes -> 1; the LM step graph of the
    tiny model goes from 278 to 224 nodes after onnxruntime's own fusions). Returns the number of rewrites."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    done = []
    for r in g.node:
        src = producer.get(r.input[0]) if r.op_type == "Reciprocal" else None
        muls = users.get(r.output[0], []) if src is not None and src.op_type == "Sqrt" else []
        if (not muls or r.output[0] in graph_outputs
                or any(m.op_type != "Mul" or list(m.input).count(r.output[0]) != 1 for m in muls)):
            continue
        for m in muls:
            other = next(i for i in m.input if i != r.output[0])
            m.op_type = "Div"
            m.input[:] = [other, r.input[0]]
        done.append(r)
    for r in done:
        g.node.remove(r)
    return len(done)


def quantize(src: Path, dst: Path, precision: str) -> None:
    """int8: dynamic quantization of MatMul/Gemm/Gather weights, per-channel QUInt8 (accurate on AVX2 without VNNI);
    fp16: all float tensors to float16 with float32 inputs/outputs kept, by onnxruntime's converter (onnxconverter-
    common's leaves MiniLM's ``Cast(to=float)`` nodes typed float16 in value_info: onnxruntime refuses the graph).
    At both, the nodes that compute constants (the VAE's DFT kernels, ``vae.dft_kernel``, folded by onnxruntime at
    session load) stay float32 and unquantized: an int8 gather of the cosine table, or the kernel multiplied out in
    float16, would change the fixed transforms, not just round learned weights."""
    import onnx

    graph = onnx.load(str(src))
    unnamed = any(not n.name for n in graph.graph.node)
    fixed = constant_nodes(graph)
    if unnamed:  # the quantizers read src: give them the names the lists refer to
        onnx.save(graph, str(src))
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "Gather"],  # Gather: MiniLM's word embeddings
                         nodes_to_exclude=fixed + small_gathers(graph))
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(graph, keep_io_types=True, node_block_list=fixed)
        drop_float16_round_trips(model)
        onnx.save(model, str(dst))
    else:
        shutil.copyfile(src, dst)


def choose_conv_storage(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor], tmp: Path
                        ) -> dict[str, Any]:
    """For an int8 graph ``path``: store conv weights as int8 (``int8_conv_weights``) one at a time, largest first,
    keeping each only while the graph's SNR against ``module`` (torch) on ``inputs`` stays within
    ``CONV_INT8_MAX_LOSS_DB`` of the all-float32 graph; rewrites ``path``. Returns the weights kept as int8 and the
    SNRs, for the manifest. Measured on the tiny VAE: the big convs (decoder projection 0.5 M, encoder input conv
    0.9 M weights) cost under 0.2 dB; the 1x1 linear paths (the whitened PCA of ``VAE.init_linear_paths``) cost
    8-17 dB and stay float32; the debug preset's random-weight VAE keeps everything float32."""
    import onnx
    import onnxruntime as ort

    with torch.inference_mode():
        ref = module(*inputs.values()).numpy()
    feed = {k: v.numpy() for k, v in inputs.items()}

    def snr(p: Path) -> float:
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return round(float(snr_db(ref, sess.run(None, feed)[0])), 2)

    base = onnx.load(str(path))
    size = {i.name: int(np.prod(i.dims)) for i in base.graph.initializer}
    candidates = sorted(int8_conv_weights(base), key=lambda n: -size[n])
    record: dict[str, Any] = {"int8_conv_weights": [], "float32_snr_db": snr(path), "rejected": {}}
    floor = record["float32_snr_db"] - CONV_INT8_MAX_LOSS_DB
    best = None
    for name in candidates:
        model = onnx.load(str(path))
        int8_conv_weights(model, only={*record["int8_conv_weights"], name})
        trial = tmp / f"{path.stem}.int8conv.onnx"
        onnx.save(model, str(trial))
        got = snr(trial)
        if got >= floor:
            record["int8_conv_weights"].append(name)
            record["snr_db"] = got
            best = trial.read_bytes()
        else:
            record["rejected"][name] = got
    if best is not None:
        path.write_bytes(best)
    log.info("%s: conv weights stored int8 %s (%.2f dB; float32 %.2f dB), float32 %s", path.stem,
             record["int8_conv_weights"], record.get("snr_db", record["float32_snr_db"]), record["float32_snr_db"],
             record["rejected"])
    return record


def int8_conv_weights(model: Any, min_elements: int = 16384, only: set[str] | None = None) -> list[str]:
    """Store the float32 weights of Conv / ConvTranspose nodes with at least ``min_elements`` (and named in ``only``
    when given) as int8, symmetric per output channel, behind a ``DequantizeLinear``, in place; returns their names.
    Weight-only: the convolution still computes in float32 on the dequantized weight (dynamic quantization has no
    Conv kernel that keeps the VAE's parity). onnxruntime runs the DequantizeLinear each call (it does not fold it,
    to keep QDQ patterns for other providers): measured 0.1 ms for the tiny VAE decoder's projection, within noise
    of its 20 ms. ``choose_conv_storage`` decides which by measured parity."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    done = []
    for node in list(g.node):
        w = inits.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 else None
        if (w is None or w.data_type != onnx.TensorProto.FLOAT or int(np.prod(w.dims)) < min_elements
                or readers[w.name] != 1 or (only is not None and w.name not in only)):
            continue
        a = numpy_helper.to_array(w)
        axis = 0 if node.op_type == "Conv" else 1  # the output channels: (C_out, C_in/g, k) / (C_in, C_out/g, k)
        shape = [1] * a.ndim
        shape[axis] = -1
        scale = np.abs(a).max(axis=tuple(d for d in range(a.ndim) if d != axis)) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(a / scale.reshape(shape)), -127, 127).astype(np.int8)
        g.initializer.remove(w)
        g.initializer.extend([numpy_helper.from_array(q, f"{w.name}_int8"),
                              numpy_helper.from_array(scale, f"{w.name}_scale"),
                              numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{w.name}_zero_point")])
        dq = helper.make_node("DequantizeLinear", [f"{w.name}_int8", f"{w.name}_scale", f"{w.name}_zero_point"],
                              [w.name], name=f"{w.name}_dequantize", axis=axis)
        g.node.insert(list(g.node).index(node), dq)
        done.append(w.name)
    return done


def share_weights(folder: Path, graphs: list[str], data_file: str, min_bytes: int = 1024) -> int:
    """Store each initializer that two or more of ``graphs`` (ONNX files in ``folder``) hold with the same contents
    once, in ``data_file`` beside them, as ONNX external data that every one of them references (4 kB aligned);
    rewrites the graphs in place and returns the bytes saved. The LM prefill and step graphs hold the same
    quantized weights: 3.3 MB of the tiny int8 bundle's 7.7 MB. onnxruntime reads external data only from the
    model's own folder (it refuses a location with ``..`` or an absolute path)."""
    import onnx
    from onnx import numpy_helper

    models = {name: onnx.load(str(folder / name)) for name in graphs}

    def raw(t: Any) -> bytes:
        return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()

    def key(t: Any) -> tuple[int, tuple[int, ...], bytes]:
        return t.data_type, tuple(t.dims), raw(t)

    holders: dict[tuple[int, tuple[int, ...], bytes], set[str]] = {}
    for name, m in models.items():
        for t in m.graph.initializer:
            if len(raw(t)) >= min_bytes:
                holders.setdefault(key(t), set()).add(name)
    offsets: dict[tuple[int, tuple[int, ...], bytes], int] = {}
    saved = 0
    with open(folder / data_file, "wb") as f:
        for m in models.values():
            for t in m.graph.initializer:
                k = key(t)
                if len(holders.get(k, ())) < 2:
                    continue
                if k not in offsets:
                    f.write(b"\0" * (-f.tell() % 4096))
                    offsets[k] = f.tell()
                    f.write(k[2])
                else:
                    saved += len(k[2])
                for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(field)
                del t.external_data[:]
                for field, value in (("location", data_file), ("offset", offsets[k]), ("length", len(k[2]))):
                    entry = t.external_data.add()
                    entry.key, entry.value = field, str(value)
                t.data_location = onnx.TensorProto.EXTERNAL
    for name, m in models.items():
        (folder / name).write_bytes(m.SerializeToString())
    return saved


def drop_float16_round_trips(model: Any) -> int:
    """Remove ``Cast(float32 -> float16) -> Cast(-> float32)`` pairs in place: onnxruntime's float16 converter
    wraps every node it was told to keep in float32 that way, so a chain of kept nodes (the DFT kernel) is rounded
    to float16 between each two (measured: the tiny VAE decoder 0.12 dB lower than with the kernel stored). The
    kept chain then computes in float32 and is rounded once, where a float16 node reads it. Returns the count."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    f16, f32 = 10, 1
    dropped = 0
    for node in g.node:
        for j, x in enumerate(node.input):
            back = producer.get(x)
            if back is None or back.op_type != "Cast" or _cast_to(back) != f32:
                continue
            down = producer.get(back.input[0])
            if down is None or down.op_type != "Cast" or _cast_to(down) != f16 or not down.name.endswith(
                    "_cast_to_fp16_node"):
                continue
            node.input[j] = down.input[0]
            dropped += 1
    while True:  # the casts left unread, back to front
        used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
        unread = [n for n in g.node if n.op_type == "Cast" and not set(n.output) & used]
        if not unread:
            return dropped
        for n in unread:
            g.node.remove(n)


def _cast_to(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), -1)


def small_gathers(model: Any, min_elements: int = 1 << 20) -> list[str]:
    """Gather nodes reading an initializer table of under ``min_elements`` values (MiniLM's position and token-type
    embeddings: 0.2M values), left float32 by the int8 quantizer: they cost 0.6 MB and hold the text encoder's SNR
    above its gate (tiny, LM of 3,000 steps: 21.4 dB quantized, 22.7 dB with these kept), while the 11.7M-value word
    embedding table is what int8 saves."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Gather" and n.input and sizes.get(n.input[0], min_elements) < min_elements]


def constant_nodes(model: Any) -> list[str]:
    """Names of the nodes whose inputs are all initializers or outputs of such nodes (what onnxruntime folds into
    constants at session load), naming unnamed nodes in place so that they can be listed."""
    known = {i.name for i in model.graph.initializer}
    names = []
    for i, node in enumerate(model.graph.node):
        if node.input and all(x in known or x == "" for x in node.input) or node.op_type == "Constant":
            if not node.name:
                node.name = f"constant_node_{i}"
            known.update(node.output)
            names.append(node.name)
    return names


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
        ref = {k: mods[k](*v.values()) for k, v in inputs.items()}  # positional: LMStep takes *cache
    np_in = {k: {n: t.numpy() for n, t in v.items()} for k, v in inputs.items()}
    out = {k: be._run(k, **np_in[k]) for k in inputs}
    # the step's cache figure is the whole cache after the step, as it was when the graph returned it: the torch
    # model's full-cache ``step`` against the example cache with the bundle's new keys/values written at ``pos``
    step = inputs["lm_step"]
    n_layers, pos = model.cfg.lm.n_layers, int(step["pos"])
    packed = torch.stack([step[n] for n in lm_step_cache_inputs(n_layers)]).unflatten(0, (n_layers, 2))
    with torch.inference_mode():
        ref["lm_step"] = model.lm.step(step["token"], step["pos"], packed, step.get("beat"))
    stepped = packed.numpy().copy()
    stepped[..., pos:pos + 1, :] = out["lm_step"][1]
    out["lm_step"] = [out["lm_step"][0], stepped]
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
    ctl = dpd_controls(parse_controls(PARITY_PROMPTS[0]), c)
    z0 = np.random.default_rng(0).standard_normal((1, len(tokens) * c.frames_per_token, c.vae.latent_dim),
                                                  dtype=np.float32)
    audio = []
    for backend in (TorchBackend(model, "cpu"), be):
        def denoise(z, angles, guidance, backend=backend):
            if guidance == 1.0:
                return backend.dpd(z, angles, tokens[None], ctl)
            v = backend.dpd(np.concatenate([z, z]), np.concatenate([angles, angles]), np.stack([tokens, null]),
                            with_unconditional_row(ctl, c))
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
                  steps: int = 8, schedule: str = "paper", check: bool = True, e2e: bool = True,
                  provider_check: bool = True) -> Path:
    """Export ``checkpoint`` to a bundle folder ``out`` (replaced whole, only after the parity gate ran; see the
    module docstring); returns ``out``. ``provider_check``: run onnxruntime's mobile usability checker on each graph
    and record its verdicts in the manifest (``conversion.providers``; ~10 s), which the backend chooses
    execution providers from."""
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
            kept = precision == "int8" and name in FLOAT32_AT_INT8
            quantize(raw, dst, "fp32" if kept else precision)
            files[name] = {"path": dst.name, "spec": _spec(dst), **({"precision": "fp32"} if kept else {})}
            if precision == "int8" and name.startswith("vae"):
                files[name]["recipe"] = choose_conv_storage(dst, graphs[name], inputs[name], Path(tmp))
            log.info("[%d/%d] %s: %.1f MB (%.1f s)", i, len(COMPONENTS), name, dst.stat().st_size / 1e6,
                     time.perf_counter() - t0)
        shared = share_weights(stage, [files["lm_prefill"]["path"], files["lm_step"]["path"]], LM_WEIGHTS)
        files["lm_weights"] = {"path": LM_WEIGHTS}
        log.info("lm_prefill and lm_step share %s: %.1f MB stored once", LM_WEIGHTS, shared / 1e6)
        write_assets(model, folder, stage, files)
        for entry in files.values():
            entry["sha256"] = sha256(stage / entry["path"])
            entry["bytes"] = (stage / entry["path"]).stat().st_size
        providers = (check_graphs({name: stage / files[name]["path"] for name in COMPONENTS}) if provider_check
                     else {"status": "not run (provider_check=False)", "graphs": {}})
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
            "provider_check": providers,
            "controls": controls_manifest(model.cfg),
            "distillation": distillation_record(folder),
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
    p.add_argument("--no-provider-check", action="store_true",
                   help="skip onnxruntime's mobile usability checker (the backend then uses the CPU provider, or "
                        "CUDA for fp16)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    precision = a.precision or ("fp16" if a.format == "coreml" else "fp32")
    try:
        export_bundle(a.checkpoint, a.out, fmt=a.format, precision=precision, steps=a.steps, check=not a.no_check,
                      provider_check=not a.no_provider_check)
    except ParityError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
