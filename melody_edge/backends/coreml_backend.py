"""Core ML backend: runs a Core ML bundle (written by ``conversion.coreml``) with coremltools, on macOS 14+ only.

No torch. coremltools is imported when a backend is built, so this module imports anywhere. Load the bundle with
``load_bundle(path, verify=False)``: its graphs are ``.mlpackage`` folders, which ``load_bundle`` does not hash;
the backend verifies every listed file and folder itself (``sha256_path``) before it loads a model.

Layouts that differ from the ONNX bundle (see ``conversion/coreml.py``): ids and ``pos`` are int32, ``pos`` is
(1,), and the LM cache is (2 * n_layers, B, H, max_len, head_dim) (Core ML tensors have rank <= 5); the cache is
opaque to the generation loop, which only hands it back to ``lm_step``. The step graph returns the new keys and
values ``kv`` (2 * n_layers, B, H, 1, head_dim), written here into the cache in place; packages exported before
issue 13 return the whole updated cache as ``cache_out`` and still run. (Not run here off macOS: the Core ML tests
check the graphs against torch on every platform, the predictions on macOS only.)
"""

from __future__ import annotations

import hashlib
import logging
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from melody_edge.backends.base import Backend, dpd_feeds
from melody_edge.bundle import COMPONENTS, MANIFEST, Bundle, sha256
from melody_edge.errors import BackendUnavailableError, BundleError, ConfigError

log = logging.getLogger(__name__)
_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32}
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def sha256_path(path: str | Path) -> str:
    """sha256 of a file (as ``bundle.sha256``) or of a folder such as an ``.mlpackage``: the digest of its files'
    relative POSIX paths, sorted, each followed by a NUL byte and the file's own sha256."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    h = hashlib.sha256()
    for rel in sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()):
        h.update(rel.encode() + b"\0" + sha256(path / rel).encode())
    return h.hexdigest()


def verify_files(bundle: Bundle) -> None:
    """Check that every file and folder the manifest lists exists and matches its sha256; raise ``BundleError``."""
    for name, entry in bundle.manifest["files"].items():
        f = bundle.root / entry["path"]
        if not f.exists():
            raise BundleError(f"bundle file missing: {f} ({name}); copy the whole bundle folder or re-export it")
        if sha256_path(f) != entry["sha256"]:
            raise BundleError(f"bundle file {f} ({name}) does not match the sha256 in {MANIFEST}: it is corrupt "
                              "or was changed; restore it or re-export the bundle")


def feature_dtype(feature: Any) -> str:
    """The dtype ('float32', 'float16', 'int32') of a multiarray feature of a Core ML model description."""
    from coremltools.proto import FeatureTypes_pb2

    return FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(feature.type.multiArrayType.dataType).lower()


def _macos_version() -> tuple[int, ...]:
    release = platform.mac_ver()[0]
    return tuple(int(p) for p in release.split(".") if p.isdigit()) or (0,)


class CoreMLBackend(Backend):
    """Runs the six ``.mlpackage`` graphs of a Core ML bundle with ``MLModel.predict``.

    ``compute_units`` is one of ``COMPUTE_UNITS`` (Core ML picks CPU, GPU or Neural Engine per op with ``ALL``).
    Raises ``BackendUnavailableError`` off macOS 14+ or without coremltools, ``BundleError`` for a bundle that is
    not a verified Core ML bundle.
    """

    name = "coreml"

    def __init__(self, bundle: Bundle, compute_units: str = "ALL", verify: bool = True) -> None:
        if sys.platform != "darwin" or _macos_version() < (14,):
            raise BackendUnavailableError("Core ML prediction needs macOS 14+; use the ONNX bundle on this platform")
        try:
            import coremltools as ct
        except ImportError as e:
            raise BackendUnavailableError("the Core ML backend needs: pip install coremltools") from e
        if compute_units not in COMPUTE_UNITS:
            raise ConfigError(f"unknown compute_units {compute_units!r}; choose one of {COMPUTE_UNITS}")
        if bundle.format != "coreml":
            raise BundleError(f"{bundle.root} is a {bundle.format!r} bundle; export one with "
                              "`python -m conversion.export --format coreml` to run it with Core ML")
        if verify:
            verify_files(bundle)
        self.bundle = bundle
        self.config = bundle.config
        self.compute_units = compute_units
        self.models: dict[str, Any] = {}
        self._in_types: dict[str, dict[str, type]] = {}
        for comp in COMPONENTS:
            path = bundle.file(comp)
            try:
                model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit[compute_units])
            except Exception as e:  # Core ML raises its own exception types
                raise BundleError(f"cannot load {path} ({comp}): {e}; the package is corrupt, re-export") from e
            self._check_spec(comp, model)
            self.models[comp] = model
        self._load_bundle_assets(bundle)
        self._max_len = self.config.lm_max_len
        log.info("Core ML bundle %s loaded (%s, compute units %s)", bundle.root, bundle.precision, compute_units)

    def _check_spec(self, comp: str, model: Any) -> None:
        got = {f.name: feature_dtype(f) for f in model.get_spec().description.input}
        want = {k: v["dtype"] for k, v in self.bundle.spec(comp).get("inputs", {}).items()}
        if got != want:
            raise BundleError(f"{comp} model inputs {got} do not match the manifest spec {want}; re-export the bundle")
        self._in_types[comp] = {k: _DTYPES[v] for k, v in got.items()}

    def _run(self, comp: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        types = self._in_types[comp]
        return self.models[comp].predict({k: np.ascontiguousarray(v, dtype=types[k]) for k, v in inputs.items()})

    def encode_text(self, input_ids, attention_mask, controls=None):
        extra = dict(controls) if controls is not None and self.config.controls.enabled else {}
        return self._run("text_encoder", input_ids=input_ids, attention_mask=attention_mask, **extra)["prefix"].astype(
            np.float32)

    def null_prefix(self, batch):
        return np.repeat(self._null[None], batch, axis=0).astype(np.float32)

    def lm_prefill(self, prefix, tokens, beat=None):
        """The graph takes N >= 1 tokens and returns the logits of the last two positions and the unpadded cache
        (Core ML has no empty tensors): with no tokens, one placeholder token is fed, the logits of the prefix's last
        position are read and the placeholder's cache entry is dropped. The cache is zero-padded to max_len here."""
        n = tokens.shape[1]
        fed = tokens if n else np.zeros((tokens.shape[0], 1), np.int32)
        extra = {}
        if beat is not None and self.config.controls.enabled:
            extra["beat"] = beat if n else np.concatenate([beat, beat[:, -1:]], axis=1)  # the placeholder's too
        out = self._run("lm_prefill", prefix=prefix, tokens=fed, **extra)
        cache = out["cache"][..., : prefix.shape[1] + n, :]
        cache = np.pad(cache.astype(np.float32), [(0, 0)] * 3 + [(0, self._max_len - cache.shape[-2]), (0, 0)])
        return out["logits"][:, 1 if n else 0].astype(np.float32), cache

    def lm_step(self, token, pos, cache, beat=None):
        """As ``Backend.lm_step``; with a kv step graph ``cache`` (the array ``lm_prefill`` made) is updated in
        place and returned."""
        extra = {"beat": beat} if beat is not None and self.config.controls.enabled else {}
        out = self._run("lm_step", token=token, pos=np.array([pos]), cache=cache, **extra)
        if "cache_out" in out:  # a package exported before issue 13
            return out["logits"].astype(np.float32), out["cache_out"]
        cache[..., pos : pos + 1, :] = out["kv"]
        return out["logits"].astype(np.float32), cache

    def dpd(self, z, angles, tokens, controls=None):
        return self._run("dpd", **dpd_feeds(z, angles, tokens, controls, self.config))["v"].astype(np.float32)

    def vae_decode(self, z):
        return self._run("vae_decoder", z=z)["audio"].astype(np.float32)

    def vae_encode(self, audio):
        return self._run("vae_encoder", audio=audio)["z"].astype(np.float32)

    def info(self):
        gate = self.bundle.manifest.get("gate") or {}
        return {"backend": self.name, "compute_units": self.compute_units, "precision": self.bundle.precision,
                "bundle_path": str(self.bundle.root),
                "parity_gate": gate.get("status") or {True: "passed", False: "failed"}.get(gate.get("passed"),
                                                                                           "never ran")}
