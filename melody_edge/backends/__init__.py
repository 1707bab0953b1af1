"""Backends run the networks; the generation loop (numpy) talks to them through ``Backend``."""

from melody_edge.backends.base import Backend

BACKENDS = ("auto", "onnxruntime", "coreml", "torch")

__all__ = ["BACKENDS", "Backend"]
