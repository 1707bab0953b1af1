"""The ``Audio`` value type: mono float32 samples and their sample rate, with safe save/load."""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melody_edge.errors import InvalidInputError, OutputPathError

SUPPORTED_EXTENSIONS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces offer; anything above is a mistake


def check_sample_rate(sample_rate: object) -> int:
    """A sample rate as a positive whole number of Hz (an integral float such as 24000.0 is accepted), else
    ``InvalidInputError``."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise InvalidInputError(f"sample_rate must be a whole number of Hz, got {type(sample_rate).__name__}")
    sr = float(sample_rate)
    if not math.isfinite(sr) or not sr.is_integer():
        raise InvalidInputError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
    if not 1 <= sr <= MAX_SAMPLE_RATE:
        raise InvalidInputError(f"sample_rate must be positive and at most {MAX_SAMPLE_RATE} Hz; got {sample_rate}")
    return int(sr)


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
        try:
            s = np.asarray(self.samples)
        except (TypeError, ValueError) as e:  # ragged lists and the like
            raise InvalidInputError(f"Audio samples must be a 1-D float array; got {type(self.samples).__name__}"
                                    ) from e
        if s.ndim != 1:
            raise InvalidInputError(f"Audio holds mono samples (T,); got shape {s.shape}. Downmix first.")
        if not np.issubdtype(s.dtype, np.floating):
            raise InvalidInputError(f"Audio samples must be floating point; got {s.dtype}")
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
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
        try:
            fd, tmp = tempfile.mkstemp(prefix=".melody-edge-", suffix=p.suffix,
                                       dir=p.parent if str(p.parent) else ".")
        except OSError as e:
            raise OutputPathError(f"could not write {str(p)!r}: {e}") from e
        os.close(fd)
        try:
            sf.write(tmp, np.clip(self.samples, -1.0, 1.0), self.sample_rate, format=fmt, subtype=subtype)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have
            os.replace(tmp, p)
        except Exception as e:
            Path(tmp).unlink(missing_ok=True)
            raise OutputPathError(f"could not write {str(p)!r}: {e}") from e
        except BaseException:  # KeyboardInterrupt, SystemExit (SIGTERM in the CLI): leave nothing, keep the old file
            Path(tmp).unlink(missing_ok=True)
            raise
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
        """Band-limited resampling with libsoxr (its "HQ" polyphase filter: flat to 0.91 of the lower Nyquist
        frequency, >= 125 dB stop band), not interpolation. The result has ``round(len * new_rate / old_rate)``
        samples."""
        import soxr

        sample_rate = check_sample_rate(sample_rate)
        if sample_rate == self.sample_rate:
            return self
        n = int(round(len(self.samples) * sample_rate / self.sample_rate))
        if n == 0:
            return Audio(np.zeros(0, np.float32), sample_rate)
        y = soxr.resample(self.samples, self.sample_rate, sample_rate, quality="HQ")
        y = np.pad(y[:n], (0, max(0, n - len(y))))  # soxr rounds the length its own way; keep the documented one
        return Audio(y.astype(np.float32, copy=False), sample_rate)
