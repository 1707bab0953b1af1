"""Model bundles: a folder that conversion writes and the runtime reads, verified before any graph runs.

``manifest.json`` holds the format version, the model config, rates, precision, default steps and schedule, and for
each component its file, sha256, and input/output spec; beside it are one graph per component, the text tokenizer
(``tokenizer.json``), the null text prefix for classifier-free guidance, the semantic tokenizer and ``parity.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melody_edge.errors import BundleError
from melody_edge.models.config import ModelConfig

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"
COMPONENTS = ("text_encoder", "lm_prefill", "lm_step", "dpd", "vae_decoder", "vae_encoder")


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


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read ``manifest.json`` and check the format version, that every listed file exists and matches its sha256.

    Raises ``BundleError`` naming the problem and what to do about it, before any graph is loaded.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing. Export one with "
                          "`python -m conversion.export`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); the bundle is corrupt, export it again") from e
    version = manifest.get("bundle_version")
    if not isinstance(version, int):
        raise BundleError(f"{mpath} has no bundle_version; the bundle is corrupt, export it again")
    if version > BUNDLE_FORMAT:
        raise BundleError(f"bundle {root} has format version {version}, newer than this melody-edge reads "
                          f"({BUNDLE_FORMAT}); upgrade melody-edge (pip install -U melody-edge)")
    if version < BUNDLE_FORMAT:
        raise BundleError(f"bundle {root} has old format version {version}; re-export it with this version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(c in files for c in COMPONENTS):
        raise BundleError(f"{mpath} does not list every component {COMPONENTS}; export the bundle again")
    if verify:
        for name, entry in files.items():
            f = root / entry["path"]
            if not f.is_file():
                raise BundleError(f"bundle file missing: {f} ({name}); copy the whole bundle folder or re-export it")
            if sha256(f) != entry["sha256"]:
                raise BundleError(f"bundle file {f} ({name}) does not match the sha256 in {MANIFEST}: it is corrupt "
                                  "or was changed; restore it or re-export the bundle")
    try:
        config = ModelConfig.from_dict(manifest["config"])
    except KeyError as e:
        raise BundleError(f"{mpath} has no model config; export the bundle again") from e
    return Bundle(root, manifest, config)
