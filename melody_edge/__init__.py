"""melody-edge: fast, on-device text-to-music generation after MeLoDy (Lam et al. 2023)."""

from melody_edge.audio import Audio
from melody_edge.controls import Controls
from melody_edge.errors import (
    BackendUnavailableError,
    BundleError,
    ConfigError,
    InvalidInputError,
    MelodyEdgeError,
    OutputPathError,
)
from melody_edge.generator import GenerationStats, Generator, Stream

__version__ = "0.1.0"
__all__ = [
    "Audio",
    "BackendUnavailableError",
    "BundleError",
    "ConfigError",
    "Controls",
    "GenerationStats",
    "Generator",
    "InvalidInputError",
    "MelodyEdgeError",
    "OutputPathError",
    "Stream",
    "__version__",
]
