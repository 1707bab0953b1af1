"""ONNX Runtime backend: runs an exported bundle with numpy + onnxruntime only (no torch)."""

from __future__ import annotations

import logging
import os
import platform
from typing import Any

import numpy as np

from melody_edge.backends.base import Backend
from melody_edge.bundle import COMPONENTS, Bundle
from melody_edge.errors import BackendUnavailableError, BundleError

log = logging.getLogger(__name__)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


def default_providers() -> list[str]:
    """CUDA when present, else CoreML on Apple, else CPU (always last as the fallback)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    order = ["CUDAExecutionProvider"]
    if platform.system() == "Darwin":
        order.append("CoreMLExecutionProvider")
    return [p for p in order if p in available] + ["CPUExecutionProvider"]


class OnnxBackend(Backend):
    """Runs the six graphs of a bundle. Each input's name, dtype and rank is checked against the manifest spec."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, providers: list[str] | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError("the onnxruntime backend needs: pip install onnxruntime") from e
        self.bundle = bundle
        self.config = bundle.config
        self.providers = providers or default_providers()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("MELODY_EDGE_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        if bundle.precision == "fp16" and self.providers == ["CPUExecutionProvider"]:
            opts.add_session_config_entry("session.disable_optimizers", "NchwcTransformer")  # ORT CPU fp16 crash
        self.sessions = {}
        self._in_types: dict[str, dict[str, type]] = {}
        for comp in COMPONENTS:
            try:
                sess = ort.InferenceSession(str(bundle.file(comp)), opts, providers=self.providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise BundleError(f"cannot load {bundle.file(comp)} ({comp}): {e}; the graph is corrupt, re-export"
                                  ) from e
            self._check_spec(comp, sess)
            self.sessions[comp] = sess
        self._load_bundle_assets(bundle)

    def _check_spec(self, comp: str, sess: Any) -> None:
        spec = self.bundle.spec(comp)
        got = {i.name: (i.type, len(i.shape)) for i in sess.get_inputs()}
        want = {k: (v["dtype"], len(v["shape"])) for k, v in spec.get("inputs", {}).items()}
        if got != want:
            raise BundleError(f"{comp} graph inputs {got} do not match the manifest spec {want}; re-export the bundle")
        self._in_types[comp] = {i.name: _DTYPES.get(i.type, np.float32) for i in sess.get_inputs()}

    def _run(self, comp: str, **inputs: np.ndarray) -> list[np.ndarray]:
        types = self._in_types[comp]
        feed = {k: np.ascontiguousarray(v, dtype=types[k]) for k, v in inputs.items()}
        return self.sessions[comp].run(None, feed)

    def encode_text(self, input_ids, attention_mask, controls=None):
        extra = dict(controls) if controls is not None and self.config.controls.enabled else {}
        return self._run("text_encoder", input_ids=input_ids, attention_mask=attention_mask, **extra)[0].astype(
            np.float32)

    def null_prefix(self, batch):
        return np.repeat(self._null[None], batch, axis=0).astype(np.float32)

    def lm_prefill(self, prefix, tokens, beat=None):
        extra = {"beat": beat} if beat is not None and self.config.controls.enabled else {}
        logits, cache = self._run("lm_prefill", prefix=prefix, tokens=tokens, **extra)
        return logits.astype(np.float32), cache

    def lm_step(self, token, pos, cache, beat=None):
        extra = {"beat": beat} if beat is not None and self.config.controls.enabled else {}
        logits, cache = self._run("lm_step", token=token, pos=np.array(pos, dtype=np.int64), cache=cache, **extra)
        return logits.astype(np.float32), cache

    def dpd(self, z, angles, tokens):
        return self._run("dpd", z=z, angles=angles, tokens=tokens)[0].astype(np.float32)

    def vae_decode(self, z):
        return self._run("vae_decoder", z=z)[0].astype(np.float32)

    def vae_encode(self, audio):
        return self._run("vae_encoder", audio=audio)[0].astype(np.float32)

    def info(self):
        gate = self.bundle.manifest.get("gate") or {}
        return {"backend": self.name, "providers": self.providers, "precision": self.bundle.precision,
                "bundle_path": str(self.bundle.root),
                "parity_gate": gate.get("status") or {True: "passed", False: "failed"}.get(gate.get("passed"),
                                                                                           "never ran")}
