"""Model bundles: a folder that conversion writes and the runtime reads, verified before any graph runs.

``manifest.json`` holds the format version, the model config, rates, precision, default steps and schedule, and for
each component its file, sha256, and input/output spec; beside it are one graph per component, the text tokenizer
(``text_tokenizer.json``; ``tokenizer.json`` in older bundles), the null text prefix for classifier-free
guidance, the semantic tokenizer and ``parity.json``.

A bundle is untrusted input (an app may load whatever bundle a user downloaded). ``load_bundle`` checks, in this
order and before anything is allocated or any graph is loaded:

1. the folder: no symlink anywhere in it, no file that the manifest does not list (an unlisted file could be read
   unhashed, e.g. as ONNX external data), except top-level notes (``*.json``, ``*.md``, ``*.txt``);
2. the manifest: a JSON object under ``MAX_MANIFEST_BYTES`` with the keys and types of ``_check_manifest``; every
   path a plain relative name that stays inside the folder after resolving;
3. the model config: types and ranges (``check_config_dict``), then ``ModelConfig.validate`` and agreement with the
   graphs' input/output specs (cache length, prefix size, vocabulary, latent width, hop);
4. the parity gate the exporter recorded: a failed gate is refused, a missing or unverified one is logged;
5. every listed file: a regular file (or ``.mlpackage`` folder), the bundle under ``MAX_BUNDLE_BYTES``, its sha256;
6. the assets (null prefix, text tokenizer, semantic tokenizer) parse and fit the config.

Every failure is a ``BundleError`` (``ConfigError`` for the model config) saying what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from melody_edge.errors import BundleError, ConfigError, MelodyEdgeError
from melody_edge.models.config import (
    SAMPLE_RATE,
    TEXT_MAX_TOKENS,
    TOKEN_RATE,
    DPDConfig,
    LMConfig,
    ModelConfig,
    TextConfig,
    VAEConfig,
)

log = logging.getLogger(__name__)

# 2 (issue 13): the LM step graph reads the cache as one input per layer and keys/values and returns only the new
# kv; the LM graphs share lm_weights.bin; the manifest records provider_check. 1: the step takes the whole cache and
# returns an updated copy, which the onnxruntime backend still runs. A reader refuses bundles newer than it knows,
# so an older melody-edge says "upgrade" to a format-2 bundle instead of failing inside onnxruntime.
BUNDLE_FORMAT = 2
OLDEST_FORMAT = 1  # the oldest format this version still reads
MANIFEST = "manifest.json"
COMPONENTS = ("text_encoder", "lm_prefill", "lm_step", "dpd", "vae_decoder", "vae_encoder")
ASSETS = ("null_prefix", "text_tokenizer")  # required besides the graphs; "semantic_tokenizer" is optional
FORMATS = ("onnx", "coreml")
PRECISIONS = ("fp32", "fp16", "int8", "palettize4")  # palettize4: Core ML only
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is ~7 kB; refuse anything that could be a JSON bomb
MAX_TOKENIZER_BYTES = 64 << 20  # MiniLM's tokenizer.json is 0.5 MB
MAX_BUNDLE_BYTES = 16 << 30  # the paper preset in fp32 is ~3.3 GB; a larger bundle is refused before it is read
NOTE_SUFFIXES = (".json", ".md", ".txt")  # unlisted top-level files allowed (parity.json and such); never loaded

# Ranges of the model config, checked before any network is built. Upper bounds are far above the paper preset
# (dim 1536, 14 layers, vocab 1024, window 256) and keep a hostile config from allocating gigabytes.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "text.n_prefix": (1, 256), "text.n_heads": (1, 64),
    "lm.vocab_size": (2, 1 << 16), "lm.dim": (1, 1 << 14), "lm.n_layers": (1, 256), "lm.n_heads": (1, 256),
    "lm.ffn_dim": (1, 1 << 16),
    "dpd.latent_dim": (1, 1024), "dpd.dim": (1, 1 << 14), "dpd.n_blocks": (1, 256), "dpd.n_heads": (1, 256),
    "dpd.coarse_layers": (0, 64), "dpd.fine_layers": (0, 64), "dpd.ffn_mult": (1, 16), "dpd.segment": (2, 4096),
    "dpd.merge": (1, 4096), "dpd.sem_vocab": (2, 1 << 16),
    # hop >= 60: at most 16 latent frames per 40 ms token (the paper's hop 96 gives 10); hop 1 would make a
    # window of 245,760 frames and allocate gigabytes
    "vae.hop": (60, SAMPLE_RATE // TOKEN_RATE), "vae.latent_dim": (1, 1024), "vae.enc_dim": (1, 1 << 14),
    "vae.enc_layers": (1, 256), "vae.dec_dim": (1, 1 << 14), "vae.dec_layers": (1, 256), "vae.kernel": (1, 255),
    "vae.ffn_mult": (1, 16), "vae.disc_channels": (1, 4096),
    "window_tokens": (4, 4096), "n_chunks": (1, 64), "dpd_steps": (1, 1000),
}
_FLOAT_RANGES: dict[str, tuple[float, float]] = {  # inclusive, except that 0 is refused where the low end is 0+
    "text.dropout_p": (0.0, 1.0), "lm.rope_theta": (1.0, 1e9), "lm.norm_eps": (1e-12, 1.0), "lm.dropout": (0.0, 1.0),
    "dpd.cond_dropout": (0.0, 1.0), "vae.latent_scale": (1e-6, 1e6), "guidance": (1e-6, 100.0),
    "lm_guidance": (1e-6, 100.0),
}
_SECTIONS = {"text": TextConfig, "lm": LMConfig, "dpd": DPDConfig, "vae": VAEConfig}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def lm_step_cache_inputs(n_layers: int) -> list[str]:
    """The KV-cache inputs of an ONNX ``lm_step`` graph, one (B, H, max_len, head_dim) tensor per layer and keys or
    values, in order: ``cache_k0``, ``cache_v0``, ``cache_k1``, ... (its outputs are ``logits`` and ``kv``, the
    step's new keys and values). Step graphs exported before issue 13 take one ``cache`` input instead and return
    the updated cache as ``cache_out``; the backend still runs them."""
    return [f"cache_{kv}{i}" for i in range(n_layers) for kv in "kv"]


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_bundle(path: str | Path) -> bool:
    """True when ``path`` is a folder with a ``manifest.json``."""
    return (Path(path) / MANIFEST).is_file()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, manifest and model config."""

    root: Path
    manifest: dict[str, Any]
    config: ModelConfig

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists (component graph or asset)."""
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise BundleError(f"bundle {self.root} has no {name!r}; re-export it with `python -m conversion.export`")
        return self.root / entry["path"]

    def spec(self, component: str) -> dict[str, Any]:
        return self.manifest["files"][component].get("spec", {})

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def gate(self) -> dict[str, Any] | None:
        """The parity gate result the exporter recorded (``{"passed": bool, ...}``), or ``None``."""
        return self.manifest.get("gate")


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and validate a bundle (see the module docstring for every check) before any graph is loaded.

    ``verify=False`` skips hashing the listed files (a Core ML backend hashes its ``.mlpackage`` folders itself);
    everything else is still checked. Raises ``BundleError`` or ``ConfigError`` naming the problem and the fix.
    """
    root = _check_root(path)
    manifest = read_manifest(root)
    check_paths(root, manifest)
    config = check_config(manifest)
    check_gate(root, manifest)
    check_files(root, manifest, hash_files=verify)
    bundle = Bundle(root, manifest, config)
    check_assets(bundle)
    return bundle


# the steps of load_bundle, each usable alone (``melody_edge.verify`` runs them one by one to report everything) ---
def _check_root(path: str | Path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(f"a bundle path must be a str or os.PathLike, got {type(path).__name__}")
    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing. Export one with "
                          "`python -m conversion.export`")
    return root.resolve()


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its structure (keys, types, version); return it."""
    mpath = root / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise BundleError(f"{mpath} must be a regular file, not a link; copy the bundle without links")
    size = mpath.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is {size} bytes, above the {MAX_MANIFEST_BYTES}-byte limit; it is not a "
                          "melody-edge manifest, export the bundle again")
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt, export it again") from e
    _check_manifest(manifest, mpath)
    return manifest


def _check_manifest(manifest: Any, mpath: Path) -> None:
    def bad(what: str) -> BundleError:
        return BundleError(f"{mpath}: {what}; the bundle is corrupt or not a melody-edge bundle, export it again")

    if not isinstance(manifest, dict):
        raise bad(f"the manifest must be a JSON object, not a {type(manifest).__name__}")
    version = manifest.get("bundle_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad("it has no integer bundle_version")
    if version > BUNDLE_FORMAT:
        raise BundleError(f"bundle {mpath.parent} has format version {version}, newer than this melody-edge reads "
                          f"({BUNDLE_FORMAT}); upgrade melody-edge (pip install -U melody-edge)")
    if version < OLDEST_FORMAT:
        raise BundleError(f"bundle {mpath.parent} has old format version {version}; re-export it with this version")
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise bad(f"'format' is {fmt!r}, not one of {list(FORMATS)}")
    precision = manifest.get("precision")
    if precision not in PRECISIONS:
        raise bad(f"'precision' is {precision!r}, not one of {list(PRECISIONS)}")
    if not isinstance(manifest.get("config"), dict):
        raise bad("it has no model 'config' object")
    for key in ("steps",):
        val = manifest.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 1000):
            raise bad(f"'{key}' is {val!r}, not an integer in [1, 1000]")
    if manifest.get("schedule") is not None and not isinstance(manifest["schedule"], str):
        raise bad("'schedule' must be a string")
    for key, expect in (("sample_rate", SAMPLE_RATE), ("token_rate", TOKEN_RATE)):
        if key in manifest and manifest[key] != expect:
            raise bad(f"'{key}' is {manifest[key]!r}; this melody-edge runs models at {expect}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("'files' must be an object mapping component names to entries")
    missing = [c for c in (*COMPONENTS, *ASSETS) if c not in files]
    if missing:
        raise bad(f"'files' does not list {missing} (every bundle has {[*COMPONENTS, *ASSETS]})")
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise bad(f"files[{name!r}] must be an object with 'path' and 'sha256', not {type(entry).__name__}")
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise bad(f"files[{name!r}].path must be a non-empty string, got {entry.get('path')!r}")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad(f"files[{name!r}].sha256 must be 64 lowercase hex digits, got {digest!r}")
        if name in COMPONENTS:
            _check_spec(entry.get("spec"), f"files[{name!r}].spec", bad)
    gate = manifest.get("gate")
    if gate is not None and (not isinstance(gate, dict) or not isinstance(gate.get("passed"), (bool, type(None)))):
        raise bad("'gate' must be an object whose 'passed' is true, false or null")
    _check_provider_check(manifest.get("provider_check"), bad)


def _check_provider_check(record: Any, bad: Any) -> None:
    """``provider_check`` (optional, written by ``conversion.providers``): {"graphs": {component: {provider:
    {"as_is": "YES" | "MAYBE" | "NO", ...}}}, ...}; the onnxruntime backend picks providers from it."""
    if record is None:
        return
    graphs = record.get("graphs") if isinstance(record, dict) else None
    if not isinstance(graphs, dict):
        raise bad("'provider_check' must be an object with a 'graphs' object")
    for comp, verdicts in graphs.items():
        if comp not in COMPONENTS or not isinstance(verdicts, dict):
            raise bad(f"provider_check.graphs[{comp!r}] must be a component's object of verdicts")
        for ep, v in verdicts.items():
            if not isinstance(v, dict) or v.get("as_is") not in ("YES", "MAYBE", "NO"):
                raise bad(f"provider_check.graphs[{comp!r}][{ep!r}] must be an object whose 'as_is' is YES, MAYBE "
                          "or NO")


def _check_spec(spec: Any, where: str, bad: Any) -> None:
    if not isinstance(spec, dict):
        raise bad(f"{where} must be an object with 'inputs' and 'outputs'")
    for side in ("inputs", "outputs"):
        io = spec.get(side)
        if not isinstance(io, dict) or not io:
            raise bad(f"{where}.{side} must be a non-empty object")
        for tensor, desc in io.items():
            if not isinstance(desc, dict) or not isinstance(desc.get("dtype"), str):
                raise bad(f"{where}.{side}[{tensor!r}] must be an object with a string 'dtype'")
            shape = desc.get("shape")
            if not isinstance(shape, list) or len(shape) > 8 or not all(_is_dim(d) for d in shape):
                raise bad(f"{where}.{side}[{tensor!r}].shape must be a list of at most 8 dims (int >= 0, name or "
                          f"[min, max]), got {shape!r}")


def _is_dim(d: Any) -> bool:
    if isinstance(d, bool):
        return False
    if isinstance(d, int):
        return 0 <= d < 1 << 31
    if isinstance(d, str):
        return len(d) < 256
    # a [min, max] range (Core ML); max -1 is unbounded
    return (isinstance(d, list) and len(d) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and -1 <= x < 1 << 31 for x in d))


def check_paths(root: Path, manifest: dict[str, Any]) -> None:
    """Every listed path is a plain relative name inside ``root`` (after resolving); no symlink anywhere in the
    bundle; no unlisted file except top-level notes (``NOTE_SUFFIXES``)."""
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in (*dirnames, *filenames):
            p = Path(dirpath) / n
            if p.is_symlink():
                raise BundleError(f"bundle {root} contains a symbolic link {p.relative_to(root)}: links are refused "
                                  "because they can point outside the bundle; replace it with the file itself")
    listed: dict[str, str] = {}
    for name, entry in manifest["files"].items():
        listed[_plain_relative(entry["path"], name, root)] = name
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        if any(PurePosixPath(rel_dir.as_posix()).is_relative_to(k) for k in listed if str(rel_dir) != "."):
            continue  # inside a listed folder (an .mlpackage): hashed as part of it
        for n in filenames:
            rel = (rel_dir / n).as_posix()
            if rel in listed or rel == MANIFEST:
                continue
            if rel_dir == Path(".") and n.lower().endswith(NOTE_SUFFIXES):
                continue
            raise BundleError(f"bundle {root} holds {rel}, which {MANIFEST} does not list: an unlisted file could be "
                              "read unhashed (for example as ONNX external data); delete it or re-export the bundle")


def _plain_relative(rel: str, name: str, root: Path) -> str:
    def bad(why: str) -> BundleError:
        return BundleError(f"files[{name!r}].path {rel!r} {why}; a bundle may only name files inside its own folder. "
                           "Do not load this bundle; re-export it")

    if "\0" in rel or "\\" in rel or len(rel) > 255:
        raise bad("holds a NUL or backslash or is too long")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise bad("is absolute")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("is not a plain relative name (it has '..', '.' or an empty part)")
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise bad(f"resolves to {target}, outside the bundle folder")
    return PurePosixPath(rel).as_posix()


def check_config_dict(d: Any) -> None:
    """Types and ranges of a model config dict (as in ``manifest['config']`` or a checkpoint's ``config.json``),
    checked before ``ModelConfig`` is built so that absurd values raise ``ConfigError``, not ``ZeroDivisionError``
    or an allocation of gigabytes."""
    if not isinstance(d, dict):
        raise ConfigError(f"model config must be a JSON object, got {type(d).__name__}; re-export the bundle")
    if not isinstance(d.get("name"), str):
        raise ConfigError("model config has no string 'name'; re-export the bundle")
    for section, cls in _SECTIONS.items():
        sub = d.get(section)
        if not isinstance(sub, dict):
            raise ConfigError(f"model config has no '{section}' object; re-export the bundle")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(sub) - set(known))
        if unknown:
            raise ConfigError(f"model config '{section}' has unknown keys {unknown}; this melody-edge does not read "
                              "this model, upgrade melody-edge or re-export the bundle")
        for key, value in sub.items():
            _check_value(f"{section}.{key}", value, known[key])
    for key in ("window_tokens", "n_chunks"):
        _check_int(key, d.get(key))
    if "dpd_steps" in d:
        _check_int("dpd_steps", d["dpd_steps"])
    for key in ("guidance", "lm_guidance"):
        if key in d:
            _check_float(key, d[key])
    wt, nc = d["window_tokens"], d["n_chunks"]
    if wt % nc or wt // nc < 1:
        raise ConfigError(f"model config window_tokens {wt} must divide into n_chunks {nc} whole chunks")
    hop = d["vae"].get("hop", VAEConfig.hop)
    if SAMPLE_RATE % hop or (SAMPLE_RATE // hop) % TOKEN_RATE:
        raise ConfigError(f"model config vae.hop {hop} must divide {SAMPLE_RATE} into a multiple of {TOKEN_RATE} Hz")


def _check_value(key: str, value: Any, f: dataclasses.Field) -> None:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(default, int) and not isinstance(default, bool):
        _check_int(key, value)
    elif isinstance(default, float):
        _check_float(key, value)
    elif isinstance(default, tuple):
        if (not isinstance(value, list) or not 1 <= len(value) <= 16
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 16 for v in value)):
            raise ConfigError(f"model config {key} must be a list of 1 to 16 positive integers, got {value!r}")


def _check_int(key: str, value: Any) -> None:
    lo, hi = _INT_RANGES.get(key, (0, 1 << 20))
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"model config {key} must be an integer in [{lo}, {hi}], got {value!r}; the bundle is "
                          "corrupt or not made by melody-edge, re-export it")


def _check_float(key: str, value: Any) -> None:
    lo, hi = _FLOAT_RANGES.get(key, (0.0, 1e6))
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not lo <= value <= hi or (key.endswith("dropout") and value >= 1.0)):
        raise ConfigError(f"model config {key} must be a finite number in [{lo}, {hi}], got {value!r}; the bundle "
                          "is corrupt or not made by melody-edge, re-export it")


def check_config(manifest: dict[str, Any]) -> ModelConfig:
    """The manifest's model config: ranges, ``ModelConfig.validate``, and agreement with the graphs' specs."""
    d = manifest["config"]
    check_config_dict(d)
    try:
        config = ModelConfig.from_dict(d)
    except MelodyEdgeError:
        raise
    except (ArithmeticError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"model config is malformed ({e!r}); re-export the bundle") from e
    if d["dpd"].get("segment", DPDConfig.segment) > config.window_frames:
        raise ConfigError(f"model config dpd.segment {config.dpd.segment} is longer than the window "
                          f"({config.window_frames} frames); re-export the bundle")
    if manifest["format"] == "onnx":
        _check_specs_fit(config, manifest["files"])
    return config


def _check_specs_fit(c: ModelConfig, files: dict[str, Any]) -> None:
    def dims(comp: str, side: str, tensor: str) -> list[Any] | None:
        desc = files[comp]["spec"][side].get(tensor)
        return None if desc is None else desc["shape"]

    want = [  # (component, side, tensor, axis, expected, what)
        ("text_encoder", "inputs", "input_ids", -1, TEXT_MAX_TOKENS, "text tokens"),
        ("lm_prefill", "inputs", "prefix", -2, c.prefix_len, "text.n_prefix + the control prefix"),
        ("lm_prefill", "inputs", "prefix", -1, c.lm.dim, "lm.dim"),
        ("lm_prefill", "outputs", "logits", -1, c.lm.vocab_size, "lm.vocab_size"),
        ("lm_step", "outputs", "logits", -1, c.lm.vocab_size, "lm.vocab_size"),
        ("lm_step", "inputs", "cache", -2, c.lm_max_len, "the KV-cache length (prefix + window_tokens)"),
        ("lm_step", "inputs", "cache", -1, c.lm.head_dim, "lm.dim // lm.n_heads"),
        *[("lm_step", "inputs", name, axis, expected, what) for name in lm_step_cache_inputs(c.lm.n_layers)
          for axis, expected, what in ((-2, c.lm_max_len, "the KV-cache length (prefix + window_tokens)"),
                                       (-3, c.lm.n_heads, "lm.n_heads"), (-1, c.lm.head_dim, "lm.dim // lm.n_heads"))],
        ("dpd", "inputs", "z", -1, c.vae.latent_dim, "vae.latent_dim"),
        ("vae_decoder", "inputs", "z", -1, c.vae.latent_dim, "vae.latent_dim"),
        ("vae_encoder", "outputs", "z", -1, c.vae.latent_dim, "vae.latent_dim"),
    ]
    step_inputs = files["lm_step"]["spec"]["inputs"]
    cache_names = lm_step_cache_inputs(c.lm.n_layers)
    if "cache" not in step_inputs and sorted(n for n in step_inputs if n.startswith("cache")) != sorted(cache_names):
        raise ConfigError(f"model config does not fit the graphs: lm_step takes the cache inputs "
                          f"{sorted(n for n in step_inputs if n.startswith('cache'))}, the config's lm.n_layers "
                          f"{c.lm.n_layers} gives {cache_names}; re-export the bundle")
    for comp, side, tensor, axis, expected, what in want:
        shape = dims(comp, side, tensor)
        if shape is None or len(shape) < -axis:
            continue
        got = shape[axis]
        if isinstance(got, int) and got != expected:
            raise ConfigError(f"model config does not fit the graphs: {comp} {tensor} has {got} where the config's "
                              f"{what} gives {expected} (a window longer than the graphs' cache would clip the "
                              "audio); re-export the bundle")
    audio = dims("vae_decoder", "outputs", "audio")
    m = re.fullmatch(r"(\d+)\*L", str(audio[-1])) if audio else None
    if m and int(m.group(1)) != c.vae.hop:
        raise ConfigError(f"model config vae.hop {c.vae.hop} does not fit vae_decoder, which makes {m.group(1)} "
                          "samples per latent frame; re-export the bundle")


def check_gate(root: Path, manifest: dict[str, Any]) -> None:
    """Refuse a bundle whose recorded parity gate failed; log a warning when it is missing or not verified here."""
    gate = manifest.get("gate")
    if gate is None:
        gate = _legacy_gate(root)
    if gate is None:
        _warn_once(root, "bundle %s records no parity gate: it was not checked against the torch model; re-export "
                   "it with this version to gate it", root)
        return
    if gate["passed"] is False:
        detail = gate.get("failed") or gate.get("failures") or gate.get("reason") or ""
        raise BundleError(f"bundle {root} failed its parity gate at export{f' ({detail})' if detail else ''}: its "
                          "graphs differ from the model beyond the thresholds; do not use it, re-export it "
                          "(e.g. another precision)")
    note = " ".join(str(gate.get(k, "")) for k in ("status", "note", "reason")).lower()
    where = gate.get("platform")
    here = f"{platform.system()}-{platform.machine()}"
    if gate["passed"] is None or "not verified" in note or (isinstance(where, str) and where not in ("", here)):
        _warn_once(root, "bundle %s: parity gate not verified on this platform (%s; gate: %s); outputs may differ "
                   "from the reference model", root, here, {k: v for k, v in gate.items() if k != "figures"})


_warned: set[str] = set()


def _warn_once(root: Path, msg: str, *args: Any) -> None:
    if str(root) not in _warned:  # the runtime reads a manifest twice per load (format, then backend)
        _warned.add(str(root))
        log.warning(msg, *args)


def _legacy_gate(root: Path) -> dict[str, Any] | None:
    # bundles exported before the manifest carried "gate" (the shipped tiny bundle) keep it in parity.json
    try:
        parity = json.loads((root / "parity.json").read_text())
    except (OSError, ValueError):
        return None
    passed = parity.get("passed") if isinstance(parity, dict) else None
    return {"passed": passed, "source": "parity.json"} if isinstance(passed, bool) else None


def check_files(root: Path, manifest: dict[str, Any], *, hash_files: bool = True) -> None:
    """Every listed file exists as a regular file (a folder for Core ML graphs), the bundle is under
    ``MAX_BUNDLE_BYTES``, and (``hash_files``) each matches its sha256."""
    total = 0
    for name, entry in manifest["files"].items():
        f = root / entry["path"]
        try:
            st = f.lstat()
        except OSError:
            raise BundleError(f"bundle file missing: {f} ({name}); copy the whole bundle folder or re-export it"
                              ) from None
        if stat.S_ISDIR(st.st_mode) and manifest["format"] == "coreml":
            total += sum(p.stat().st_size for p in f.rglob("*") if p.is_file())
            continue  # an .mlpackage: CoreMLBackend hashes folders
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"bundle file {f} ({name}) is not a regular file; re-export the bundle")
        total += st.st_size
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"bundle {root} is over {MAX_BUNDLE_BYTES / 2**30:.0f} GiB (the limit); it is not a "
                              "melody-edge bundle or is damaged")
        if hash_files and sha256(f) != entry["sha256"]:
            raise BundleError(f"bundle file {f} ({name}) does not match the sha256 in {MANIFEST}: it is corrupt "
                              "or was changed; restore it or re-export the bundle")


def check_assets(bundle: Bundle) -> None:
    """The null prefix, text tokenizer and semantic tokenizer parse and fit the model config."""
    c = bundle.config
    f = bundle.file("null_prefix")
    if f.is_file():
        try:
            null = np.load(f, allow_pickle=False)
        except Exception as e:  # np.load raises ValueError, OSError, EOFError, ... on garbage
            raise BundleError(f"null prefix {f} is not a valid .npy file ({e}); re-export the bundle") from e
        want = (c.prefix_len, c.lm.dim)
        if (not isinstance(null, np.ndarray) or null.shape != want or not np.issubdtype(null.dtype, np.floating)
                or not np.isfinite(null).all()):
            raise BundleError(f"null prefix {f} must be finite floats of shape {want}, got "
                              f"{getattr(null, 'dtype', type(null).__name__)} {getattr(null, 'shape', '')}; "
                              "re-export the bundle")
    f = bundle.file("text_tokenizer")
    if f.is_file():
        if f.stat().st_size > MAX_TOKENIZER_BYTES:
            raise BundleError(f"text tokenizer {f} is over {MAX_TOKENIZER_BYTES >> 20} MiB; re-export the bundle")
        try:
            doc = json.loads(f.read_bytes().decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
                raise ValueError("not a tokenizers JSON object with a 'model'")
            from tokenizers import Tokenizer

            Tokenizer.from_str(json.dumps(doc))
        except Exception as e:  # tokenizers raises its own Exception type on malformed files
            raise BundleError(f"text tokenizer {f} is not a valid tokenizer.json ({str(e)[:200]}); re-export the "
                              "bundle") from e
    if "semantic_tokenizer" in bundle.manifest["files"] and bundle.file("semantic_tokenizer").is_file():
        from melody_edge.tokenizer import SemanticTokenizer

        f = bundle.file("semantic_tokenizer")
        try:
            tok = SemanticTokenizer.load(f)
        except MelodyEdgeError:
            raise
        except Exception as e:
            raise BundleError(f"semantic tokenizer {f} is not valid ({e!r}); re-export the bundle") from e
        if tok.vocab_size != c.lm.vocab_size:
            raise BundleError(f"semantic tokenizer {f} has {tok.vocab_size} tokens but the LM reads "
                              f"{c.lm.vocab_size}; re-export the bundle")
