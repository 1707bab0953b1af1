"""Interrupted work leaves nothing partial: saves, CLI runs (Ctrl-C, SIGINT, SIGTERM); CLI exit statuses."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from melody_edge import Audio, BundleError, OutputPathError, cli

TONE = Audio((0.1 * np.sin(np.arange(24_000) / 10)).astype(np.float32), 24_000)


def _dying_write(exc):
    real = sf.write

    def write(path, data, *args, **kwargs):
        real(path, data[: len(data) // 2], *args, **kwargs)  # half the file is on disk when the write dies
        raise exc

    return write


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(143), OSError(28, "No space left on device")])
def test_interrupted_save_leaves_no_temporary_file_and_the_old_file_intact(tmp_path, monkeypatch, exc):
    old = Audio(np.zeros(2400, np.float32), 24_000).save(tmp_path / "song.wav")
    before = old.read_bytes()
    monkeypatch.setattr(sf, "write", _dying_write(exc))
    with pytest.raises((type(exc), OutputPathError)):
        TONE.save(tmp_path / "song.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]
    assert (tmp_path / "song.wav").read_bytes() == before


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sf, "write", _dying_write(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        TONE.save(tmp_path / "new.flac")
    assert list(tmp_path.iterdir()) == []


# CLI exit statuses, in process -------------------------------------------------------------------------------------
def _main(argv):
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors
        return e.code


def test_ctrl_c_during_model_load_exits_130_without_traceback(tmp_path, monkeypatch, capsys):
    import melody_edge

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(melody_edge, "Generator", interrupted)
    assert _main(["generate", "piano", "--preset", "debug", "-o", str(tmp_path / "x.wav")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unexpected_error_exits_1_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys):
    import melody_edge

    def broken(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(melody_edge, "Generator", broken)
    assert _main(["generate", "piano", "-o", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError: boom" in err and "Traceback" not in err


def test_runtime_error_exits_1_and_usage_error_exits_2(tmp_path, monkeypatch, capsys):
    import melody_edge

    def bad_bundle(*a, **k):
        raise BundleError("bundle file missing")

    assert _main(["generate", "--no-such-flag"]) == 2
    assert _main(["generate", "piano", "--preset", "debug", "--seconds", "1e-9", "-o", str(tmp_path / "x.wav")]) == 2
    assert "token frame" in capsys.readouterr().err
    monkeypatch.setattr(melody_edge, "Generator", bad_bundle)
    assert _main(["info", "--bundle", str(tmp_path)]) == 1
    assert "error: bundle file missing" in capsys.readouterr().err


def test_disk_full_during_generate_save_is_a_runtime_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sf, "write", _dying_write(OSError(28, "No space left on device")))
    rc = _main(["generate", "piano", "--preset", "debug", "--seconds", "0.5", "--steps", "1", "--quiet",
                "-o", str(tmp_path / "x.wav")])
    assert rc == 1 and "No space left" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# signals to a CLI subprocess ---------------------------------------------------------------------------------------
def _stream(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "melody_edge.cli", "stream", "folk tune", "--preset", "debug",
                             "--steps", "1", "--quiet", "-o", str(out), *extra], stderr=subprocess.PIPE, text=True)


def _wait_for(proc, text, timeout=240):
    seen, t0 = "", time.monotonic()
    while text not in seen:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {text!r}: {seen}")
        seen += line
        assert time.monotonic() - t0 < timeout, seen
    return seen


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_stream_keeps_a_valid_file_of_whole_chunks_and_no_temp_file(tmp_path, sig, code):
    out = tmp_path / "s.wav"
    proc = _stream(out)
    _wait_for(proc, "s written")
    proc.send_signal(sig)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, rest
    assert "Traceback" not in rest
    data, sr = sf.read(out)
    assert sr == 24_000 and len(data) > 0 and (len(data) + 960) % (24_000 * 64 // 4 // 25) == 0  # whole 0.64 s chunks
    # (the first one 40 ms short: its last token waits for the next chunk's crossfade)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.wav"]


def test_sigint_before_the_first_chunk_leaves_the_previous_file_intact(tmp_path):
    out = tmp_path / "s.wav"
    TONE.save(out)
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "from melody_edge.backends.torch_backend import TorchBackend\n"
        "def slow(*a, **k):\n"
        "    print('loading', file=sys.stderr, flush=True)\n"
        "    import time; time.sleep(60)\n"
        "TorchBackend.encode_text = slow\n"
        "from melody_edge.cli import main\n"
        f"sys.exit(main(['stream', 'folk', '--preset', 'debug', '--quiet', '-o', {str(out)!r}]))\n")],
        stderr=subprocess.PIPE, text=True)
    _wait_for(proc, "loading")
    os.kill(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in rest
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.wav"]


@pytest.mark.parametrize("sig,exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, cli.Terminated)])
def test_a_signal_whose_exception_was_swallowed_still_ends_the_stream_at_the_next_chunk(sig, exc, monkeypatch):
    monkeypatch.setattr(cli, "_SIGNALLED", [])
    chunks = cli._until_signalled(iter(["a", "b", "c"]))
    assert next(chunks) == "a"
    try:  # as Python does with an exception raised inside __del__ or a callback: printed, then dropped
        cli._on_signal(sig, None)
    except BaseException as e:
        assert isinstance(e, exc)
    with pytest.raises(exc):
        next(chunks)


def test_main_restores_the_callers_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["generate", "a tune", "--preset", "debug", "--bpm", "0", "-o", str(tmp_path / "x.wav")]) == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not list(tmp_path.iterdir())
