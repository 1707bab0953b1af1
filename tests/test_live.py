"""Live playback, steering and editing (issue 14): ``stream -o -`` into real decoders, a reader closing the pipe,
``Stream.steer`` (new LM conditioning, kept context untouched, no click at the join), ``inpaint`` and the CLI's
``continue`` / ``inpaint``, and the band-limited ``Audio.resample``."""

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from melody_edge import Audio, InvalidInputError
from melody_edge.cli import WAV_OPEN_LENGTH, _wav_header
from melody_edge.generator import INPAINT_CROSSFADE_SECONDS, INPAINT_GRANULARITY_SECONDS

SR = 24_000
SPT = 960  # samples per 40 ms token frame
CALM = "a calm piano waltz in C major"
STORMY = "a stormy string tremolo in D minor"
CLI = [sys.executable, "-m", "melody_edge.cli"]
DEBUG = ["--preset", "debug", "--steps", "1", "--seed", "0", "--quiet"]


def _needs(tool):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed (.ci/run installs it)")


def _pipe(stream_args, reader, timeout=300):
    """Run ``melody-edge stream ... -o -`` into ``reader``; return (stream rc, stream stderr, reader stdout)."""
    prod = subprocess.Popen([*CLI, "stream", *stream_args, "-o", "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    cons = subprocess.Popen(reader, stdin=prod.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prod.stdout.close()  # only the reader holds the pipe's read end: its exit closes the pipe
    out, _ = cons.communicate(timeout=timeout)
    err = prod.communicate(timeout=timeout)[1].decode()
    return prod.returncode, err, out


# stream to a pipe ---------------------------------------------------------------------------------------------------
def test_wav_header_is_44_bytes_of_pcm16_mono_with_open_lengths():
    h = _wav_header(SR)
    assert len(h) == 44 and h[:4] == b"RIFF" and h[8:16] == b"WAVEfmt " and h[36:40] == b"data"
    assert int.from_bytes(h[4:8], "little") == int.from_bytes(h[40:44], "little") == WAV_OPEN_LENGTH


@_needs("sox")
def test_stream_to_stdout_decodes_with_sox_to_the_requested_duration(tmp_path):
    out = tmp_path / "sox.wav"
    rc, err, _ = _pipe(["folk tune", *DEBUG, "--seconds", "1.5"], ["sox", "-t", "wav", "-", str(out)])
    assert rc == 0, err
    data, sr = sf.read(out)
    assert sr == SR and len(data) == 36_000
    assert "Traceback" not in err and "streamed 1.50 s" in err


@_needs("ffmpeg")
def test_stream_to_stdout_decodes_with_ffmpeg_and_equals_the_file_stream(tmp_path):
    rc, err, pcm = _pipe(["folk tune", *DEBUG, "--seconds", "1.5"],
                         ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "-", "-f", "s16le", "-"])
    assert rc == 0, err
    piped = np.frombuffer(pcm, "<i2")
    assert len(piped) == 36_000
    f = tmp_path / "file.wav"  # the same stream written to a file: the same samples, within 16-bit rounding
    r = subprocess.run([*CLI, "stream", "folk tune", *DEBUG, "--seconds", "1.5", "-o", str(f)], capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.abs(piped.astype(int) - sf.read(f, dtype="int16")[0]).max() <= 1
    raw = subprocess.run([*CLI, "stream", "folk tune", *DEBUG, "--seconds", "1.5", "--raw", "-o", "-"],
                         capture_output=True, timeout=300)
    assert raw.returncode == 0 and raw.stdout == pcm  # --raw: the same samples without the header


@_needs("aplay")
def test_stream_to_stdout_is_accepted_by_aplay(tmp_path):
    out = tmp_path / "aplay.raw"
    rc, err, _ = _pipe(["folk tune", *DEBUG, "--seconds", "1.5"], ["aplay", "-q", "-D", f"file:{out},raw", "-"])
    assert rc == 0, err
    played = np.frombuffer(out.read_bytes(), "<i2")  # aplay pads the last period with silence
    assert 36_000 <= len(played) < 36_000 + SR // 2 and not played[36_000:].any()


def test_reader_closing_the_pipe_stops_an_endless_stream_with_exit_0():
    rc, err, out = _pipe(["folk tune", *DEBUG], ["head", "-c", "100000"])
    assert len(out) == 100_000
    assert rc == 0, err
    assert "reader closed the pipe" in err and "Traceback" not in err and "Exception ignored" not in err


def test_raw_without_stdout_is_a_usage_error(tmp_path):
    r = subprocess.run([*CLI, "stream", "folk", *DEBUG, "--raw", "-o", str(tmp_path / "x.wav")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "--raw" in r.stderr and not (tmp_path / "x.wav").exists()


# steering -----------------------------------------------------------------------------------------------------------
def _spy(gen, monkeypatch):
    """Record what each segment's LM and DPD get: the prefix, the kept tokens, the DPD tokens and kept latents."""
    calls = []
    lm, dpd = gen._lm, gen._dpd

    def spy_lm(prefix, kept, n_new, *a, **k):
        calls.append({"prefix": prefix.copy(), "kept": kept.copy()})
        return lm(prefix, kept, n_new, *a, **k)

    def spy_dpd(tokens, kept_z, *a, **k):
        calls[-1].update(dpd_tokens=tokens.copy(), kept_z=kept_z.copy())
        return dpd(tokens, kept_z, *a, **k)

    monkeypatch.setattr(gen, "_lm", spy_lm)
    monkeypatch.setattr(gen, "_dpd", spy_dpd)
    return calls


def _run(gen, monkeypatch, steer_at=None, prompt=STORMY, n=6):
    calls = _spy(gen, monkeypatch)
    s = gen.stream(CALM, seconds=n * gen.chunk_seconds, seed=0, steps=2)
    chunks = []
    for i, chunk in enumerate(s):
        chunks.append(chunk)
        if i == steer_at:
            s.steer(prompt)
    monkeypatch.undo()
    return chunks, calls


def test_steer_changes_the_lm_conditioning_and_keeps_the_context(debug_gen, monkeypatch):
    at = 2  # steer after the third chunk: the fourth follows the new prompt
    plain, base = _run(debug_gen, monkeypatch)
    steered, calls = _run(debug_gen, monkeypatch, steer_at=at)
    assert [c.prompt for c in steered] == [CALM] * (at + 1) + [STORMY] * (len(steered) - at - 1)
    assert str(steered[0].controls) != str(steered[-1].controls) and steered[-1].controls.key == "D minor"
    assert sum(len(c) for c in steered) == sum(len(c) for c in plain)  # a steer does not change the length
    for i in range(at + 1):  # before the steer: the same music
        np.testing.assert_array_equal(steered[i].samples, plain[i].samples)
    k = at + 1
    assert not np.allclose(calls[k]["prefix"], base[k]["prefix"])  # new conditioning (a new LM prefix) ...
    np.testing.assert_array_equal(calls[k]["kept"], base[k]["kept"])  # ... on the same kept tokens
    np.testing.assert_array_equal(calls[k]["kept_z"], base[k]["kept_z"])  # and the same kept latents (angle 0)
    n_kept = len(calls[k]["kept_z"]) // debug_gen.config.frames_per_token  # the DPD's kept context (angle 0) ...
    assert 0 < n_kept <= len(calls[k]["kept"])  # ... in the key its tokens were made in
    np.testing.assert_array_equal(calls[k]["dpd_tokens"][:n_kept], base[k]["dpd_tokens"][:n_kept])
    assert steered[k].stats.passes["text"] == 1  # the prefix was rebuilt once, at the steer
    assert not np.array_equal(steered[k].samples, plain[k].samples)
    assert np.array_equal(calls[k + 1]["prefix"], calls[k]["prefix"])  # and kept after it


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_click_at_the_steer_join(debug_gen, seed):
    s = debug_gen.stream(CALM, seconds=5 * debug_gen.chunk_seconds, seed=seed, steps=2)
    chunks = []
    for i, chunk in enumerate(s):
        chunks.append(chunk.samples)
        if i == 1:
            s.steer(STORMY)
    x = np.concatenate(chunks)
    jumps = np.abs(np.diff(x))
    join = sum(len(c) for c in chunks[:2])  # first sample of the first steered chunk (its crossfade starts there)
    for j in (join, join + 960):  # ... and the first sample of its new decode
        assert jumps[j - 1] <= np.percentile(jumps, 99), (j, jumps[j - 1], np.percentile(jumps, 99))


@pytest.mark.parametrize("bad", ["", "   ", "x" * 600, 3])
def test_steering_with_a_bad_prompt_raises_and_the_stream_goes_on(debug_gen, bad):
    plain = list(debug_gen.stream(CALM, seconds=3 * debug_gen.chunk_seconds, seed=0, steps=1))
    s = debug_gen.stream(CALM, seconds=3 * debug_gen.chunk_seconds, seed=0, steps=1)
    first = next(s)
    with pytest.raises(InvalidInputError):
        s.steer(bad)
    rest = list(s)
    assert [c.prompt for c in [first, *rest]] == [CALM] * 3
    for a, b in zip([first, *rest], plain, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_steer_with_a_bad_control_raises_and_before_the_first_chunk_takes_effect_at_once(debug_gen):
    s = debug_gen.stream(CALM, seconds=debug_gen.chunk_seconds, seed=0, steps=1)
    with pytest.raises(InvalidInputError):
        s.steer(STORMY, bpm=1000)
    s.steer(STORMY, bpm=100)
    (chunk,) = list(s)
    assert chunk.prompt == STORMY and chunk.controls.bpm == 100


def test_cli_script_steers_at_the_given_song_time(tmp_path):
    script = tmp_path / "script.txt"
    script.write_text(f"# time prompt\n\n1.0 {STORMY}\n")
    out = tmp_path / "s.wav"
    r = subprocess.run([*CLI, "stream", CALM, *DEBUG, "--seconds", "2", "--script", str(script), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"1.24 s: steered to {STORMY!r}" in r.stderr  # the first chunk boundary at or after 1.0 s (0.60 + 0.64)
    assert len(sf.read(out)[0]) == 48_000
    script.write_text("soon a stormy string tremolo\n")
    r = subprocess.run([*CLI, "stream", CALM, *DEBUG, "--script", str(script), "-o", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "script.txt:1" in r.stderr and "Traceback" not in r.stderr


def test_cli_steer_stdin_follows_each_line_and_skips_bad_ones():
    proc = subprocess.Popen([*CLI, "stream", CALM, *DEBUG, "--steer-stdin", "-o", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(("x" * 600 + "\n").encode())  # too long: an error line, the stream goes on
    proc.stdin.write(f"{STORMY}\n".encode())
    proc.stdin.flush()
    got, t0 = b"", time.monotonic()
    while len(got) < 44 + 8 * 2 * SPT * 16 and time.monotonic() - t0 < 240:  # eight 0.64 s chunks
        got += proc.stdout.read1(1 << 16)
    proc.stdout.close()  # the player quits while stdin is still open
    rc = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    proc.stdin.close()
    assert rc == 0, err
    assert "maximum is 500" in err and f"steered to {STORMY!r}" in err and "Traceback" not in err


# editing ------------------------------------------------------------------------------------------------------------
def _song(gen, seconds=2.0):
    return gen.generate(CALM, seconds=seconds, seed=3, steps=1)


def test_inpaint_keeps_the_audio_outside_the_region_and_changes_it_inside(debug_gen):
    song = _song(debug_gen)
    start, end = 0.5, 1.1
    out = debug_gen.inpaint(song, start, end, STORMY, seed=0, steps=2)
    assert len(out) == len(song) and out.sample_rate == SR
    margin = int(INPAINT_GRANULARITY_SECONDS * SR)  # the region is widened to whole token frames, at most 40 ms
    lo, hi = int(start * SR) - margin, int(end * SR) + margin
    np.testing.assert_array_equal(out.samples[:lo], song.samples[:lo])
    np.testing.assert_array_equal(out.samples[hi:], song.samples[hi:])
    a, b = int(start * SR) // SPT * SPT, -(-int(end * SR) // SPT) * SPT  # exactly: the widened region
    np.testing.assert_array_equal(out.samples[:a], song.samples[:a])
    np.testing.assert_array_equal(out.samples[b:], song.samples[b:])
    fade = int(INPAINT_CROSSFADE_SECONDS * SR)
    inside = slice(a + fade, b - fade)
    assert np.abs(out.samples[inside] - song.samples[inside]).mean() > 0.1 * np.abs(song.samples[inside]).mean()
    assert out.stats.passes["lm"] == (b - a) // SPT
    assert np.isfinite(out.samples).all()


def test_inpaint_accepts_other_rates_and_keeps_the_resampled_audio_outside(debug_gen):
    song = _song(debug_gen, 1.5)
    at_44k = song.resample(44_100)
    out = debug_gen.inpaint(at_44k, 0.4, 0.8, STORMY, seed=0, steps=1)
    ref = at_44k.resample(SR)
    assert out.sample_rate == SR and len(out) == len(ref)
    np.testing.assert_array_equal(out.samples[: 9 * SPT], ref.samples[: 9 * SPT])  # 0.4 s is token 10
    np.testing.assert_array_equal(out.samples[21 * SPT:], ref.samples[21 * SPT:])  # 0.8 s is token 20


def test_inpaint_at_the_very_start_and_end_of_the_audio(debug_gen):
    song = _song(debug_gen, 1.0)
    head = debug_gen.inpaint(song, 0.0, 0.2, STORMY, seed=0, steps=1)
    np.testing.assert_array_equal(head.samples[int(0.2 * SR):], song.samples[int(0.2 * SR):])
    tail = debug_gen.inpaint(song, 0.8, 1.0, STORMY, seed=0, steps=1)
    np.testing.assert_array_equal(tail.samples[: int(0.8 * SR)], song.samples[: int(0.8 * SR)])
    assert len(head) == len(tail) == len(song)


@pytest.mark.parametrize("start,end,match", [
    (1.0, 1.0, "end > start"), (1.2, 0.8, "end > start"), (-0.1, 0.5, "outside"), (1.5, 2.5, "outside"),
    (0.5, 0.52, "token frame"), (0.0, 2.0, "at most"), (float("nan"), 1.0, "finite"), ("1", 2.0, "number"),
    (True, 1.0, "number")])
def test_bad_inpaint_regions_raise_invalid_input(debug_gen, start, end, match):
    with pytest.raises(InvalidInputError, match=match):
        debug_gen.inpaint(_song(debug_gen), start, end, STORMY, seed=0, steps=1)  # debug: 1.92 s at most


def test_cli_continue_and_inpaint_take_any_rate_and_channel_count(tmp_path):
    sr = 44_100
    t = np.arange(int(1.2 * sr)) / sr
    stereo = 0.2 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)
    src = tmp_path / "in.wav"
    sf.write(src, stereo, sr)
    out = tmp_path / "cont.wav"
    r = subprocess.run([*CLI, "continue", str(src), STORMY, *DEBUG, "--seconds", "1", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(sf.read(out)[0]) == 30 * SPT + SR  # 1.2 s = 30 token frames of prompt, then 1 s more
    out = tmp_path / "inp.wav"
    r = subprocess.run([*CLI, "inpaint", str(src), "--start", "0.4", "--end", "0.8", STORMY, *DEBUG, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(sf.read(out)[0]) == round(1.2 * SR)
    r = subprocess.run([*CLI, "inpaint", str(src), "--start", "0.8", "--end", "0.4", STORMY, *DEBUG, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "end > start" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*CLI, "continue", str(tmp_path / "missing.wav"), STORMY, *DEBUG, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not found" in r.stderr


def test_resample_is_band_limited_not_interpolated():
    sr = 44_100
    t = np.arange(sr) / sr
    tone = Audio((0.5 * np.sin(2 * np.pi * 1_000 * t)).astype(np.float32), sr).resample(SR)
    ref = 0.5 * np.sin(2 * np.pi * 1_000 * np.arange(SR) / SR)
    assert len(tone) == SR and np.abs(tone.samples[500:-500] - ref[500:-500]).max() < 1e-3
    # 15 kHz is above 24 kHz's Nyquist: a real resampler removes it, interpolation folds it to 9 kHz at -9 dB
    above = Audio((0.5 * np.sin(2 * np.pi * 15_000 * t)).astype(np.float32), sr).resample(SR)
    assert np.sqrt(np.mean(above.samples[500:-500] ** 2)) < 1e-3
