"""One error hierarchy for melody-edge: every error a user can cause is a ``MelodyEdgeError``."""

from __future__ import annotations


class MelodyEdgeError(Exception):
    """Base class of every error melody-edge raises on purpose."""


class InvalidInputError(MelodyEdgeError, ValueError):
    """A prompt, duration, sampling setting or audio input is out of range; the message says the valid range."""


class ConfigError(MelodyEdgeError, ValueError):
    """An unknown preset or backend, or a model config that does not fit together."""


class BundleError(MelodyEdgeError):
    """A model bundle or checkpoint is missing, corrupt, of another format version, or does not match its manifest."""


class BackendUnavailableError(MelodyEdgeError):
    """The requested backend needs a package or platform that is not present (e.g. torch, Core ML on Linux)."""


class OutputPathError(MelodyEdgeError, OSError):
    """An output path cannot be written: missing folder, unsupported extension, or no permission."""
