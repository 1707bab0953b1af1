import os

import numpy as np
import pytest

from melody_edge import Audio, InvalidInputError, OutputPathError


def test_save_load_round_trip(tmp_path):
    x = (0.5 * np.sin(np.linspace(0, 100, 24_000))).astype(np.float32)
    path = Audio(x, 24_000).save(tmp_path / "a.wav")
    back = Audio.load(path)
    assert back.sample_rate == 24_000 and len(back) == len(x)
    assert np.abs(back.samples - x).max() < 1e-3


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    # works as root too (CI runs as root): the write itself fails half-way, as on a full disk
    import soundfile

    real = soundfile.write

    def half_then_fail(file, data, *args, **kwargs):
        real(file, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(soundfile, "write", half_then_fail)
    target = tmp_path / "x.wav"
    with pytest.raises(OutputPathError, match="space"):
        Audio(np.zeros(24_000, np.float32), 24_000).save(target)
    assert list(tmp_path.iterdir()) == []


def test_audio_rejects_bad_samples():
    with pytest.raises(InvalidInputError, match="mono"):
        Audio(np.zeros((2, 10), np.float32), 24_000)
    with pytest.raises(InvalidInputError, match="sample_rate"):
        Audio(np.zeros(10, np.float32), 0)


def test_load_missing_or_corrupt_file(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        Audio.load(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(InvalidInputError, match="could not read"):
        Audio.load(bad)


def test_saved_file_gets_the_umask_mode_not_the_temp_file_mode(tmp_path):

    mask = os.umask(0o022)
    try:
        path = Audio(np.zeros(2400, dtype=np.float32), 24_000).save(tmp_path / "out.wav")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
