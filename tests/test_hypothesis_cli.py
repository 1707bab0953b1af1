"""Property tests over the CLI (issue 11): whatever the arguments, no traceback; exit 0 with a file, 2 for a usage
error or 1 for a runtime error, with the message on stderr. In process and bounded to run in < 60 s."""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melody_edge import cli

BOUNDED = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                   derandomize=True)

numbers = st.sampled_from(["nan", "inf", "-inf", "-1", "0", "-0.0", "1e-9", "5e-324", "0.04", "0.3", "1e308", "abc",
                           "", "0x10", "1_0", "18446744073709551616", "-18446744073709551617", "1.5", "2", "1"])
prompts = st.one_of(st.text(st.characters(codec=None, categories=None), max_size=30),
                    st.sampled_from(["piano", "", "   ", "\udcff", "-", "--seconds", "x" * 600, "🎹🎻"]))


def _run(argv, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors exit 2
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return rc, err


@pytest.fixture(autouse=True)
def _fast_debug_model(monkeypatch, debug_gen):
    import melody_edge

    monkeypatch.setattr(melody_edge, "Generator", lambda *a, **k: debug_gen)  # one model for every example


@BOUNDED
@given(cmd=st.sampled_from(["generate", "stream"]), prompt=prompts, seconds=numbers, seed=numbers, steps=numbers,
       guidance=numbers, top_p=numbers, ext=st.sampled_from([".wav", ".flac", ".mp3", "", "/"]))
def test_any_generate_or_stream_arguments_give_0_1_or_2_and_no_traceback(tmp_path, capsys, cmd, prompt, seconds,
                                                                          seed, steps, guidance, top_p, ext):
    out = tmp_path / f"{uuid.uuid4().hex}{ext}"
    argv = [cmd, prompt, "--preset", "debug", "--quiet", "-o", str(out), "--seconds", seconds, "--seed", seed,
            "--steps", steps, "--guidance", guidance, "--top-p", top_p]
    rc, err = _run(argv, capsys)
    assert rc in (0, 1, 2), (rc, err)
    if rc == 0:
        assert out.is_file() and out.stat().st_size > 0
    else:
        assert err.strip(), "an error must say what was wrong"
        assert not any(p.name.startswith(".melody-edge-") for p in tmp_path.iterdir())


@BOUNDED
@given(argv=st.lists(st.one_of(st.sampled_from(["generate", "info", "verify", "-v", "--version", "-o",
                                                "--seconds", "--preset", "--bundle", "--no-load", "--json"]),
                               st.text(max_size=8)), max_size=6))
def test_any_argument_list_never_prints_a_traceback(tmp_path, capsys, monkeypatch, argv):
    """(``stream`` is left out: without --seconds it is endless by design.)"""
    monkeypatch.chdir(tmp_path)
    rc, _ = _run(argv, capsys)
    assert rc in (0, 1, 2)
