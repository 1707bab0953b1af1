"""The ``Audio`` value type: mono float32 samples and their sample rate, with safe save/load."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melody_edge.errors import InvalidInputError, OutputPathError

SUPPORTED_EXTENSIONS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


def check_output_path(path: str | os.PathLike) -> Path:
    """Validate an output path before any work is done: known extension, existing writable folder."""
    p = Path(path)
    fmt = SUPPORTED_EXTENSIONS.get(p.suffix.lower())
    if fmt is None:
        raise OutputPathError(
            f"cannot write {str(p)!r}: unsupported extension {p.suffix!r}; use one of {sorted(SUPPORTED_EXTENSIONS)}"
        )
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {str(p)!r}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"cannot write {str(p)!r}: no permission to write in {str(folder)!r}")
    if p.is_dir():
        raise OutputPathError(f"cannot write {str(p)!r}: it is a folder")
    return p


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono audio: ``samples`` float32 (T,) in [-1, 1] and ``sample_rate`` in Hz."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        s = np.asarray(self.samples)
        if s.ndim != 1:
            raise InvalidInputError(f"Audio holds mono samples (T,); got shape {s.shape}. Downmix first.")
        if not np.issubdtype(s.dtype, np.floating):
            raise InvalidInputError(f"Audio samples must be floating point; got {s.dtype}")
        if int(self.sample_rate) <= 0:
            raise InvalidInputError(f"sample_rate must be positive; got {self.sample_rate}")
        object.__setattr__(self, "samples", np.ascontiguousarray(s, dtype=np.float32))

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / self.sample_rate

    def __len__(self) -> int:
        return len(self.samples)

    def save(self, path: str | os.PathLike) -> Path:
        """Write WAV (16-bit PCM), FLAC or OGG by extension. Written to a temporary file, then renamed: a failed
        save never leaves a half-written file behind."""
        import soundfile as sf

        p = check_output_path(path)
        fmt = SUPPORTED_EXTENSIONS[p.suffix.lower()]
        subtype = "PCM_16" if fmt in ("WAV", "FLAC") else None
        fd, tmp = tempfile.mkstemp(prefix=".melody-edge-", suffix=p.suffix, dir=p.parent if str(p.parent) else ".")
        os.close(fd)
        try:
            sf.write(tmp, np.clip(self.samples, -1.0, 1.0), self.sample_rate, format=fmt, subtype=subtype)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
            os.replace(tmp, p)
        except Exception as e:
            Path(tmp).unlink(missing_ok=True)
            raise OutputPathError(f"could not write {str(p)!r}: {e}") from e
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Audio:
        """Read an audio file (any format soundfile reads); multi-channel audio is averaged to mono."""
        import soundfile as sf

        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"audio file not found: {str(p)!r}")
        try:
            data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception as e:
            raise InvalidInputError(f"could not read {str(p)!r} as audio: {e}") from e
        return cls(data.mean(axis=1), int(sr))

    def resample(self, sample_rate: int) -> Audio:
        """Linear-interpolation resampling (adequate for prompts; not for mastering)."""
        if sample_rate == self.sample_rate:
            return self
        n = int(round(len(self.samples) * sample_rate / self.sample_rate))
        t = np.arange(n) * (self.sample_rate / sample_rate)
        return Audio(np.interp(t, np.arange(len(self.samples)), self.samples).astype(np.float32), sample_rate)
