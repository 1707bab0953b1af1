"""Bundles are untrusted input: each bad bundle of issue 11 is refused with BundleError/ConfigError, never a raw
exception, a read outside the bundle or a crash of the process."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from melody_edge import BundleError, ConfigError, Generator, MelodyEdgeError
from melody_edge.bundle import load_bundle
from melody_edge.verify import main as verify_main
from melody_edge.verify import verify_bundle

BIG = ("text_encoder.onnx", "vae_decoder.onnx", "vae_encoder.onnx")  # hard-linked, never modified in place


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """The debug preset exported once per session (~50 s); MELODY_EDGE_TEST_BUNDLE reuses one made before."""
    from conversion.export import export_bundle

    if os.environ.get("MELODY_EDGE_TEST_BUNDLE"):
        from pathlib import Path

        return Path(os.environ["MELODY_EDGE_TEST_BUNDLE"])

    return export_bundle("debug", tmp_path_factory.mktemp("sec") / "bundle", precision="fp32", check=False)


@pytest.fixture
def b(exported, tmp_path):
    """A private copy of the exported debug bundle (big graphs hard-linked: replace them, never edit them)."""
    dst = tmp_path / "bundle"
    dst.mkdir()
    for f in exported.iterdir():
        (os.link if f.name in BIG else shutil.copyfile)(f, dst / f.name)
    return dst


def _manifest(b):
    return json.loads((b / "manifest.json").read_text())


def _save(b, m):
    (b / "manifest.json").write_text(json.dumps(m))


def _replace(path, data: bytes):
    path.unlink()  # break a hard link before writing
    path.write_bytes(data)


def _rehash(b, name):
    m = _manifest(b)
    m["files"][name]["sha256"] = hashlib.sha256((b / m["files"][name]["path"]).read_bytes()).hexdigest()
    _save(b, m)


def _refused(b, match=None, error=MelodyEdgeError):
    with pytest.raises(error, match=match) as e:
        load_bundle(b)
    assert isinstance(e.value, (BundleError, ConfigError))
    return str(e.value)


def test_exported_bundle_loads_and_verifies(b):
    assert load_bundle(b).config.name == "debug"
    assert verify_main([str(b), "--no-load"]) == 0


# path escapes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["../outside.npy", "../../outside.npy", "sub/../../outside.npy", "./null_prefix.npy",
                                  "ABSOLUTE", "C:\\x\\null_prefix.npy", "a\\..\\..\\outside.npy", "", "null\0.npy"])
def test_manifest_path_outside_the_bundle_is_refused_even_when_its_hash_matches(b, tmp_path, path):
    outside = tmp_path / "outside.npy"
    shutil.copyfile(b / "null_prefix.npy", outside)
    m = _manifest(b)
    m["files"]["null_prefix"]["path"] = str(outside) if path == "ABSOLUTE" else path
    _save(b, m)
    msg = _refused(b, error=BundleError)
    assert "path" in msg


def test_symlink_to_a_file_elsewhere_is_refused(b, tmp_path):
    outside = tmp_path / "elsewhere.npy"
    shutil.copyfile(b / "null_prefix.npy", outside)  # same bytes: the hash matches
    (b / "null_prefix.npy").unlink()
    (b / "null_prefix.npy").symlink_to(outside)
    _refused(b, "symbolic link", BundleError)
    with pytest.raises(BundleError, match="symbolic link"):
        Generator(b)


def test_symlinked_folder_or_unlisted_link_anywhere_in_the_bundle_is_refused(b, tmp_path):
    (b / "extra").symlink_to(tmp_path)
    _refused(b, "symbolic link", BundleError)


def test_unlisted_file_that_could_be_read_as_external_data_is_refused(b):
    (b / "weights.bin").write_bytes(b"\0" * 16)
    _refused(b, "does not list", BundleError)


def test_unlisted_notes_are_allowed(b):
    (b / "README.md").write_text("notes")
    (b / "parity_fp32.json").write_text("{}")
    load_bundle(b)


# malformed manifests ---------------------------------------------------------------------------------------------
def _edit(m, how):
    f = m["files"]
    edits = {
        "array": lambda: [m],
        "string": lambda: "bundle",
        "no_format": lambda: m.pop("format"),
        "bad_format": lambda: m.update(format=3),
        "no_precision": lambda: m.pop("precision"),
        "version_str": lambda: m.update(bundle_version="1"),
        "files_list": lambda: m.update(files=list(f)),
        "no_component": lambda: f.pop("dpd"),
        "entry_string": lambda: f.update(dpd="dpd.onnx"),
        "entry_no_sha": lambda: f["dpd"].pop("sha256"),
        "entry_sha_int": lambda: f["dpd"].update(sha256=5),
        "entry_path_null": lambda: f["dpd"].update(path=None),
        "entry_path_list": lambda: f["dpd"].update(path=["dpd.onnx"]),
        "spec_missing": lambda: f["dpd"].pop("spec"),
        "spec_inputs_list": lambda: f["dpd"]["spec"].update(inputs=[]),
        "spec_shape_str": lambda: f["lm_step"]["spec"]["inputs"]["cache_k0"].update(shape="big"),
        "spec_dtype_missing": lambda: f["lm_step"]["spec"]["inputs"]["cache_k0"].pop("dtype"),
        "provider_check_list": lambda: m.update(provider_check=[1]),
        "provider_check_graph": lambda: m.update(provider_check={"graphs": {"../dpd": {}}}),
        "provider_check_verdict": lambda: m.update(provider_check={"graphs": {"dpd": {"coreml": {"as_is": 1}}}}),
        "config_list": lambda: m.update(config=[1]),
        "no_config": lambda: m.pop("config"),
        "gate_string": lambda: m.update(gate="passed"),
        "gate_passed_str": lambda: m.update(gate={"passed": "yes"}),
        "steps_negative": lambda: m.update(steps=-3),
        "sample_rate": lambda: m.update(sample_rate=8000),
    }
    out = edits[how]()
    return out if how in ("array", "string") else m


@pytest.mark.parametrize("how", ["array", "string", "no_format", "bad_format", "no_precision", "version_str",
                                 "files_list", "no_component", "entry_string", "entry_no_sha", "entry_sha_int",
                                 "entry_path_null", "entry_path_list", "spec_missing", "spec_inputs_list",
                                 "spec_shape_str", "spec_dtype_missing", "provider_check_list",
                                 "provider_check_graph", "provider_check_verdict", "config_list", "no_config",
                                 "gate_string", "gate_passed_str", "steps_negative", "sample_rate"])
def test_malformed_manifest_raises_bundle_error_not_a_raw_exception(b, how):
    _save(b, _edit(_manifest(b), how))
    _refused(b, error=BundleError)
    assert not verify_bundle(b, load=False).ok


def test_step_graph_spec_without_every_layers_cache_input_is_refused(b):
    m = _manifest(b)
    m["files"]["lm_step"]["spec"]["inputs"].pop("cache_v1")
    _save(b, m)
    _refused(b, "cache inputs", ConfigError)


def test_huge_manifest_is_refused_before_parsing(b, monkeypatch):
    import melody_edge.bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "MAX_MANIFEST_BYTES", 100)
    _refused(b, "limit", BundleError)


def test_deeply_nested_manifest_is_refused(b):
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(b, error=BundleError)


# malformed assets (hash updated so that only the content is wrong) ----------------------------------------------
@pytest.mark.parametrize("content", [b"garbage", b"{}", b"[1, 2]", b'{"model": 5}', b'{"model": {"type": "nope"}}',
                                     b"\xff\xfe\x00"])
def test_garbage_tokenizer_json_with_matching_hash_is_refused(b, content):
    _replace(b / "text_tokenizer.json", content)
    _rehash(b, "text_tokenizer")
    _refused(b, "tokenizer", BundleError)


def _npy_bytes(arr, tmp_path, allow_pickle=False):
    p = tmp_path / "x.npy"
    np.save(p, arr, allow_pickle=allow_pickle)
    return p.read_bytes()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong_shape", "ints", "nan", "pickle"])
def test_garbage_npy_with_matching_hash_is_refused(b, tmp_path, kind):
    good = np.load(b / "null_prefix.npy")
    data = {
        "garbage": lambda: b"\x93NUMPY garbage",
        "truncated": lambda: (b / "null_prefix.npy").read_bytes()[:-20],
        "wrong_shape": lambda: _npy_bytes(np.zeros((3, 3), np.float32), tmp_path),
        "ints": lambda: _npy_bytes(good.astype(np.int32), tmp_path),
        "nan": lambda: _npy_bytes(np.full_like(good, np.nan), tmp_path),
        "pickle": lambda: _npy_bytes(np.array([{"a": 1}], dtype=object), tmp_path, allow_pickle=True),
    }[kind]()
    _replace(b / "null_prefix.npy", data)
    _rehash(b, "null_prefix")
    _refused(b, "null prefix", BundleError)


def test_garbage_semantic_tokenizer_with_matching_hash_is_refused(b):
    (b / "semantic_tokenizer.npz").write_bytes(b"PK\x03\x04 not a zip")
    m = _manifest(b)
    m["files"]["semantic_tokenizer"] = {"path": "semantic_tokenizer.npz", "sha256": "0" * 64}
    _save(b, m)
    _rehash(b, "semantic_tokenizer")
    _refused(b, "tokenizer", BundleError)


# absurd model configs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("lm.dim", -32), ("dpd.dim", 0), ("lm.n_layers", 10**9), ("n_chunks", 0), ("n_chunks", -4),
    ("window_tokens", 128),  # larger than the graphs' KV cache (68 = 4 + 64)
    ("window_tokens", 63), ("vae.hop", 1), ("vae.hop", 0), ("vae.hop", 7), ("lm.n_heads", "2"),
    ("lm.dim", 32.5), ("lm.dim", True), ("text.dropout_p", 1.5), ("lm.norm_eps", 0.0), ("guidance", float("nan")),
    ("guidance", -1.0), ("lm.rope_theta", float("inf")), ("vae.mrd_ffts", "256"), ("vae.mrd_ffts", [0]),
    ("lm.vocab_size", 64),  # disagrees with dpd.sem_vocab and the graphs' logits
    ("text.n_prefix", 8),  # disagrees with the graphs' prefix
    ("vae.latent_dim", 16), ("lm.unknown", 1), ("name", 5), ("lm", None),
])
def test_absurd_model_config_raises_config_error_before_allocation(b, key, value):
    m = _manifest(b)
    *parents, leaf = key.split(".")
    d = m["config"]
    for p in parents:
        d = d[p]
    d[leaf] = value
    _save(b, m)
    _refused(b, error=ConfigError)
    with pytest.raises(ConfigError):
        Generator(b)


# parity gate -----------------------------------------------------------------------------------------------------
def test_failed_parity_gate_is_refused(b):
    m = _manifest(b)
    m["gate"] = {"passed": False, "failed": ["dpd_snr_db=3 (threshold 50)"]}
    _save(b, m)
    msg = _refused(b, "parity gate", BundleError)
    assert "dpd_snr_db" in msg


@pytest.mark.parametrize("gate", [None, {"passed": None, "status": "not verified on this platform"},
                                  {"passed": True, "status": "not verified on this platform"}])
def test_missing_or_unverified_gate_loads_with_a_warning(b, caplog, gate):
    m = _manifest(b)
    if gate is not None:
        m["gate"] = gate
    _save(b, m)
    with caplog.at_level(logging.WARNING, logger="melody_edge.bundle"):
        load_bundle(b)
    assert "parity gate" in caplog.text


def test_passed_gate_loads_without_warning(b, caplog):
    m = _manifest(b)
    m["gate"] = {"passed": True}
    _save(b, m)
    with caplog.at_level(logging.WARNING, logger="melody_edge.bundle"):
        load_bundle(b)
    assert "parity gate" not in caplog.text


# fuzzed graph bytes ----------------------------------------------------------------------------------------------
def test_fuzzed_graph_bytes_with_matching_hash_never_crash_the_process(b, tmp_path):
    """Each fuzzed lm_step graph either loads or raises BundleError; a child process checks so a crash shows."""
    original = (b / "lm_step.onnx").read_bytes()
    rng = np.random.default_rng(0)
    cases = [original[: len(original) // 2], bytes(rng.integers(0, 256, 4096, dtype=np.uint8)), b""]
    for _ in range(3):
        data = bytearray(original)
        idx = rng.integers(0, len(data), 64)
        data_arr = np.frombuffer(bytes(data), np.uint8).copy()
        data_arr[idx] ^= 0xFF
        cases.append(data_arr.tobytes())
    folders = []
    for i, data in enumerate(cases):
        f = tmp_path / f"fuzz{i}"
        shutil.copytree(b, f, copy_function=os.link)
        _replace(f / "lm_step.onnx", data)
        _rehash(f, "lm_step")
        folders.append(str(f))
    code = f"""
import sys
from melody_edge import BundleError, Generator
for f in {folders!r}:
    try:
        Generator(f)
        print("loaded")
    except BundleError as e:
        print("refused")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    outcomes = r.stdout.split()
    assert len(outcomes) == len(cases) and outcomes[:3] == ["refused"] * 3


# verify ----------------------------------------------------------------------------------------------------------
def test_verify_reports_every_problem_and_exits_1(b, capsys):
    _replace(b / "lm_step.onnx", b"x")
    _replace(b / "null_prefix.npy", b"y")
    assert verify_main([str(b), "--no-load"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  file lm_step" in out and "FAIL  file null_prefix" in out and "NOT usable" in out


def test_verify_json_and_the_cli_subcommand(b, capsys):
    from melody_edge.cli import main

    m = _manifest(b)
    m["files"]["dpd"]["path"] = "../dpd.onnx"
    _save(b, m)
    assert main(["verify", str(b), "--json", "--no-load"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"][0]["check"] == "paths"


def test_python_m_verify_loads_the_graphs_of_a_sound_bundle(b):
    r = subprocess.run([sys.executable, "-m", "melody_edge.verify", str(b)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok    graphs" in r.stdout and "sound" in r.stdout


def test_verify_of_a_folder_without_manifest_exits_1(tmp_path, capsys):
    assert verify_main([str(tmp_path)]) == 1
    assert "not a bundle" in capsys.readouterr().out
