import subprocess
import sys

import soundfile as sf


def test_cli_generate_writes_a_wav_that_soundfile_reads(tmp_path):
    out = tmp_path / "x.wav"
    r = subprocess.run([sys.executable, "-m", "melody_edge.cli", "generate", "a calm piano waltz", "--preset", "debug",
                        "--seconds", "2", "--steps", "2", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out)
    assert sr == 24_000 and len(data) == 48_000


def test_cli_bad_input_exits_2_with_message_and_writes_nothing(tmp_path):
    out = tmp_path / "x.wav"
    r = subprocess.run([sys.executable, "-m", "melody_edge.cli", "generate", "  ", "--preset", "debug", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "prompt is empty" in r.stderr
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "melody_edge.cli", "generate", "piano", "--preset", "debug",
                        "-o", str(tmp_path / "nodir" / "x.wav")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_stream_writes_requested_length(tmp_path):
    out = tmp_path / "s.wav"
    r = subprocess.run([sys.executable, "-m", "melody_edge.cli", "stream", "folk tune", "--preset", "debug",
                        "--seconds", "1.5", "--steps", "1", "-o", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out)
    assert len(data) == 36_000
