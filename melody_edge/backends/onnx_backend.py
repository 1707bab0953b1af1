"""ONNX Runtime backend: runs an exported bundle with numpy + onnxruntime only (no torch).

The decode loop makes no copy of the KV cache (issue 13). The ``lm_step`` graph reads the cache, one input per layer
and keys or values, and returns only the step's new keys and values (``kv``) with the logits. ``lm_prefill`` wraps
its cache in a ``StepCache``: the one (n_layers, 2, B, H, max_len, hd) array of that generation, whose per-layer
views are bound to the step graph by pointer (onnxruntime reads them in place) together with preallocated token,
position, beat, logits and kv buffers. A step fills the small input buffers, runs the binding, writes kv into the
cache at ``pos`` and returns a copy of the logits (B, V): one allocation per step, kept so that the logits a caller
holds are never overwritten by the next step.

Bundles exported before issue 13 hold a step graph that takes the whole cache and returns an updated copy (4.4 MB
each way for the tiny model); it still runs here, told apart by its ``cache_out`` output. Measured on the tiny int8
model (batch 2, one thread, both bundles in one process, a loaded 2-core machine): 3.85 ms a step for the old graph,
0.58 ms for the new one (median of 7 x 250 steps). I/O binding by pointer measured within noise of
``InferenceSession.run`` fed the same numpy views (0.88 vs 0.89 ms median on the bare graph); it is kept because it
also saves the per-step output allocations.

Providers are chosen per graph (``choose_providers``) from the bundle's precision and the verdicts of onnxruntime's
mobile usability checker that the exporter records in the manifest (``provider_check``, ``conversion.providers``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from melody_edge.backends.base import Backend, dpd_feeds
from melody_edge.bundle import COMPONENTS, Bundle, lm_step_cache_inputs
from melody_edge.errors import BackendUnavailableError, BundleError, InvalidInputError

log = logging.getLogger(__name__)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# execution providers a graph runs on only where the checker's verdict for it, as exported, was YES
MOBILE = {"CoreMLExecutionProvider": "coreml", "NnapiExecutionProvider": "nnapi"}
SERIAL_GRAPHS = ("lm_step",)
# graphs loaded on first use: the VAE encoder serves only continue_audio and inpaint, and its session holds ~40 MB
# (the folded DFT kernel) with a transient of ~150 MB while onnxruntime folds it (tiny int8; ``release_freed_memory``)
LAZY_GRAPHS = ("vae_encoder",)  # graphs that run on one intra-op thread whatever ``threads`` is (``graph_threads``)


def provider_verdicts(manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{component: {provider key: verdict as is}}`` from the manifest's ``provider_check`` ({} without one)."""
    graphs = (manifest.get("provider_check") or {}).get("graphs") or {}
    return {comp: {ep: v.get("as_is") for ep, v in verdicts.items()} for comp, verdicts in graphs.items()}


def choose_providers(bundle: Bundle, available: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The execution providers of each graph of ``bundle``, best first, the CPU provider always last (the fallback).

    - CUDA (when onnxruntime has it) for the graphs of an fp16 bundle, the precision exported for a GPU; never for
      int8 (dynamic quantization: ``DynamicQuantizeLinear`` / ``MatMulInteger`` would split each graph between the
      GPU and the CPU with a copy at every boundary) nor for fp32 (the CPU reference bundle).
    - Core ML / NNAPI only for a graph whose recorded checker verdict as exported is YES: on the tiny int8 model
      every graph measured NO (6-45 partitions over 7-26% of the nodes; ``conversion.providers``), so the Core ML
      route is the ``coreml`` bundle format. A bundle without the record (exported before issue 13) gets neither.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    verdicts = provider_verdicts(bundle.manifest)
    chosen = {}
    for comp in COMPONENTS:
        eps = [CUDA] if bundle.precision == "fp16" and CUDA in available else []
        eps += [ep for ep, key in MOBILE.items() if ep in available and verdicts.get(comp, {}).get(key) == "YES"]
        chosen[comp] = [*eps, CPU]
    return chosen


def release_freed_memory() -> None:
    """Hand heap memory that is free but still mapped back to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    onnxruntime folds each VAE graph's DFT kernel (computed in the graph, so that the file stores no table) at session
    load, through intermediates of the kernel's size that it then frees; glibc keeps the freed pages mapped, so the
    process held them for its whole life: +118 MB RSS for the decoder's session, +25 MB after the trim (tiny int8)."""
    if platform.system() != "Linux":
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


def graph_threads(threads: int) -> dict[str, int]:
    """Intra-op threads per graph: ``threads`` (0: onnxruntime's choice, one per physical core) for every graph but
    the LM step, which runs on the calling thread alone (``SERIAL_GRAPHS``).

    Why (tiny int8 bundle, 2-core CPU, medians of 4 runs; ``benchmarks`` measure the shipped default): a step is one
    token of a 4-layer, 256-wide network at batch 2, about 150 small kernels of a few microseconds each, so a second
    thread's hand-off costs more than it splits; and the other graphs' workers, spinning between their runs, took
    the core the step needed. gen10s RTF 0.044 -> 0.031 and LM 0.86 -> 0.47 ms a token with the step on one thread
    and no spinning elsewhere, against 0.73 ms a token with spinning left on.
    """
    return {comp: 1 if comp in SERIAL_GRAPHS else threads for comp in COMPONENTS}


class StepCache:
    """The LM's KV cache between ``lm_prefill`` and the ``lm_step`` calls of one generation (opaque to the loop):
    ``array`` (n_layers, 2, B, H, max_len, hd) float32, updated in place, and the step graph's I/O bound to it and to
    preallocated buffers once."""

    def __init__(self, sess: Any, array: np.ndarray, vocab: int) -> None:
        self.array = array
        n_layers, _, B = array.shape[:3]
        inputs = {i.name: i for i in sess.get_inputs()}
        self.token = np.zeros(B, np.int64)
        self.pos = np.zeros((), np.int64)
        self.beat = np.zeros((B, inputs["beat"].shape[-1]), np.float32) if "beat" in inputs else None
        self.logits = np.empty((B, vocab), np.float32)
        self.kv = np.empty((*array.shape[:4], 1, array.shape[-1]), np.float32)  # (n_layers, 2, B, H, 1, hd)
        views = (array[i, j] for i in range(n_layers) for j in range(2))  # each a contiguous (B, H, L, hd) block
        bound = {"token": self.token, "pos": self.pos, **({"beat": self.beat} if self.beat is not None else {}),
                 **dict(zip(lm_step_cache_inputs(n_layers), views, strict=True))}
        self.binding = sess.io_binding()
        for name, a in bound.items():
            self.binding.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        for name, a in (("logits", self.logits), ("kv", self.kv)):
            self.binding.bind_output(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)


class OnnxBackend(Backend):
    """Runs the six graphs of a bundle. Each input's name, dtype and rank is checked against the manifest spec.

    ``providers`` (a list) runs every graph with those execution providers; by default each graph gets
    ``choose_providers``'. ``threads`` sets onnxruntime's intra-op threads of every graph but the LM step, which runs
    on one (``graph_threads``; default: ``MELODY_EDGE_THREADS`` or onnxruntime's own choice). ``profile_prefix``
    turns on onnxruntime's profiler in every session (traces ``<prefix><graph>_*.json``, ``end_profiling``).
    """

    name = "onnxruntime"
    concurrent_lm = True

    def __init__(self, bundle: Bundle, providers: list[str] | None = None, threads: int | None = None, *,
                 profile_prefix: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError("the onnxruntime backend needs: pip install onnxruntime") from e
        self.bundle = bundle
        self.config = bundle.config
        self.providers_by_graph = ({c: list(providers) for c in COMPONENTS} if providers
                                   else choose_providers(bundle, ort.get_available_providers()))
        self.providers = list(dict.fromkeys(p for c in COMPONENTS for p in self.providers_by_graph[c]))
        threads = threads or int(os.environ.get("MELODY_EDGE_THREADS", "0"))
        self.threads_by_graph = graph_threads(threads)
        self._profile_prefix = profile_prefix  # onnxruntime's profiler on every session (benchmarks.profile)
        self.sessions: dict[str, Any] = {}  # the graphs loaded so far (LAZY_GRAPHS wait for their first use)
        self._in_types: dict[str, dict[str, type]] = {}
        # the VAE decoder first: its load-time transient (constant folding) then stacks on the least resident memory
        for comp in sorted(COMPONENTS, key=lambda c: c != "vae_decoder"):
            if comp not in LAZY_GRAPHS:
                self._session(comp)
        self._full_cache_step = self._step_kind(self.sessions["lm_step"]) == "full cache"
        self._load_bundle_assets(bundle)

    def _session(self, comp: str) -> Any:
        """The onnxruntime session of graph ``comp``, created (and its inputs checked against the manifest) on first
        use. Heap memory freed while onnxruntime folded the graph's constants is handed back to the system."""
        sess = self.sessions.get(comp)
        if sess is not None:
            return sess
        import onnxruntime as ort

        eps = self.providers_by_graph[comp]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        n = self.threads_by_graph[comp]
        if n:
            opts.intra_op_num_threads = n
        if n != 1:  # the graphs run one after another: a worker spinning after its graph steals the next one's core
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.bundle.precision == "fp16" and eps == [CPU]:
            opts.add_session_config_entry("session.disable_optimizers", "NchwcTransformer")  # ORT CPU fp16 crash
        if self._profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = f"{self._profile_prefix}{comp}"
        try:
            sess = ort.InferenceSession(str(self.bundle.file(comp)), opts, providers=eps)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"cannot load {self.bundle.file(comp)} ({comp}): {e}; the graph is corrupt, re-export"
                              ) from e
        self._check_spec(comp, sess)
        release_freed_memory()
        self.sessions[comp] = sess
        return sess

    def end_profiling(self) -> dict[str, str]:
        """Stop onnxruntime's profiler (``profile_prefix``): {graph: the JSON trace file it wrote}."""
        return {comp: sess.end_profiling() for comp, sess in self.sessions.items()} if self._profile_prefix else {}

    def _step_kind(self, sess: Any) -> str:
        outputs = [o.name for o in sess.get_outputs()]
        inputs = {i.name for i in sess.get_inputs()}
        if outputs == ["logits", "cache_out"] and "cache" in inputs:
            log.info("bundle %s: its lm_step graph copies the whole KV cache in and out every step (exported "
                     "before issue 13); re-export it with `python -m conversion.export` for a faster decode",
                     self.bundle.root)
            return "full cache"
        names = lm_step_cache_inputs(self.config.lm.n_layers)
        if outputs != ["logits", "kv"] or not set(names) <= inputs:
            raise BundleError(f"lm_step graph of {self.bundle.root} has outputs {outputs} and inputs "
                              f"{sorted(inputs)}: neither the KV step (logits, kv; inputs {names}) nor the older "
                              "full-cache step (logits, cache_out); re-export the bundle")
        return "kv"

    def _check_spec(self, comp: str, sess: Any) -> None:
        spec = self.bundle.spec(comp)
        got = {i.name: (i.type, len(i.shape)) for i in sess.get_inputs()}
        want = {k: (v["dtype"], len(v["shape"])) for k, v in spec.get("inputs", {}).items()}
        if got != want:
            raise BundleError(f"{comp} graph inputs {got} do not match the manifest spec {want}; re-export the bundle")
        self._in_types[comp] = {i.name: _DTYPES.get(i.type, np.float32) for i in sess.get_inputs()}

    def _run(self, comp: str, **inputs: np.ndarray) -> list[np.ndarray]:
        sess = self._session(comp)
        types = self._in_types[comp]
        feed = {k: np.ascontiguousarray(v, dtype=types[k]) for k, v in inputs.items()}
        return sess.run(None, feed)

    def encode_text(self, input_ids, attention_mask, controls=None):
        extra = dict(controls) if controls is not None and self.config.controls.enabled else {}
        return self._run("text_encoder", input_ids=input_ids, attention_mask=attention_mask, **extra)[0].astype(
            np.float32)

    def null_prefix(self, batch):
        return np.repeat(self._null[None], batch, axis=0).astype(np.float32)

    def lm_prefill(self, prefix, tokens, beat=None):
        extra = {"beat": beat} if beat is not None and self.config.controls.enabled else {}
        logits, cache = self._run("lm_prefill", prefix=prefix, tokens=tokens, **extra)
        if self._full_cache_step:
            return logits.astype(np.float32), cache
        return logits.astype(np.float32), self._step_cache(cache)

    def _step_cache(self, cache: np.ndarray) -> StepCache:
        array = np.require(cache, np.float32, ["C_CONTIGUOUS", "WRITEABLE", "ALIGNED"])
        return StepCache(self.sessions["lm_step"], array, self.config.lm.vocab_size)

    def lm_step(self, token, pos, cache, beat=None):
        """As ``Backend.lm_step``; ``cache`` is updated in place and returned (a plain array, such as a cache made
        outside this backend, is copied into a new ``StepCache`` first). With controls, a missing ``beat`` is zeros
        (no tempo)."""
        if self._full_cache_step:
            extra = {"beat": beat} if beat is not None and self.config.controls.enabled else {}
            logits, cache = self._run("lm_step", token=token, pos=np.array(pos, dtype=np.int64), cache=cache,
                                      **extra)
            return logits.astype(np.float32), cache
        if not isinstance(cache, StepCache):
            cache = self._step_cache(np.array(cache, dtype=np.float32))
        c = cache
        length = c.array.shape[-2]
        if not 0 <= pos < length:
            raise InvalidInputError(f"lm_step position {pos} is outside the KV cache (0 .. {length - 1})")
        if np.shape(token) != c.token.shape:
            raise InvalidInputError(f"lm_step token must have shape {c.token.shape} (the batch of the prefill), got "
                                    f"{np.shape(token)}")
        c.token[...] = token
        c.pos[...] = pos
        if c.beat is not None:
            c.beat[...] = 0.0 if beat is None else beat
        self.sessions["lm_step"].run_with_iobinding(c.binding)
        c.array[:, :, :, :, pos] = c.kv[:, :, :, :, 0]
        return c.logits.copy(), c

    def dpd(self, z, angles, tokens, controls=None):
        return self._run("dpd", **dpd_feeds(z, angles, tokens, controls, self.config))[0].astype(np.float32)

    def vae_decode(self, z):
        return self._run("vae_decoder", z=z)[0].astype(np.float32)

    def vae_encode(self, audio):
        return self._run("vae_encoder", audio=audio)[0].astype(np.float32)

    def info(self):
        gate = self.bundle.manifest.get("gate") or {}
        return {"backend": self.name, "providers": self.providers, "providers_by_graph": self.providers_by_graph,
                "threads_by_graph": self.threads_by_graph,
                "precision": self.bundle.precision, "bundle_path": str(self.bundle.root),
                "lm_step": "full cache copy (re-export)" if self._full_cache_step else "kv in place",
                "parity_gate": gate.get("status") or {True: "passed", False: "failed"}.get(gate.get("passed"),
                                                                                           "never ran")}
