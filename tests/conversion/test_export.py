import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import conversion.export
from conversion.export import export_bundle
from conversion.parity import THRESHOLDS, ParityError
from melody_edge import BundleError, Generator
from melody_edge.bundle import BUNDLE_FORMAT, load_bundle
from melody_edge.errors import ConfigError


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    return export_bundle("debug", tmp_path_factory.mktemp("fp32"), precision="fp32")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    return export_bundle("debug", tmp_path_factory.mktemp("int8"), precision="int8")


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory):
    return export_bundle("debug", tmp_path_factory.mktemp("fp16"), precision="fp16")


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _leftovers(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_fp32_bundle_parity_meets_the_issue_thresholds(fp32_bundle):
    parity = json.loads((fp32_bundle / "parity.json").read_text())
    f = parity["figures"]
    assert parity["passed"] and not parity["failed"]
    assert f["lm_logits_max_abs"] < 1e-3
    assert f["lm_token_agreement"] == 1.0
    assert f["vae_snr_db"] > 50 and f["dpd_snr_db"] > 50 and f["text_snr_db"] > 50
    assert f["e2e_snr_db"] > 40


def test_int8_bundle_parity_meets_documented_thresholds(int8_bundle, fp32_bundle):
    parity = json.loads((int8_bundle / "parity.json").read_text())
    limits = THRESHOLDS["int8"]
    f = parity["figures"]
    assert f["lm_logits_max_abs"] <= limits["lm_logits_max_abs"]
    for key in ("lm_token_agreement", "dpd_snr_db", "vae_snr_db", "text_snr_db"):
        assert f[key] >= limits[key], key
    manifest = load_bundle(int8_bundle).manifest
    assert manifest["precision"] == "int8"
    size = {p: sum((p / e["path"]).stat().st_size for e in load_bundle(p).manifest["files"].values())
            for p in (fp32_bundle, int8_bundle)}
    assert size[int8_bundle] < size[fp32_bundle]


def test_manifest_records_the_gate_that_ran_on_the_bundle(fp32_bundle):
    gate = _manifest(fp32_bundle)["gate"]
    parity = json.loads((fp32_bundle / "parity.json").read_text())
    assert gate["passed"] is True and gate["failed"] == [] and gate["provider"] == "CPUExecutionProvider"
    assert gate["tolerances"] == THRESHOLDS["fp32"] and gate["measured"] == parity["figures"]
    assert set(gate["tolerances"]) <= set(gate["measured"])
    assert _leftovers(fp32_bundle) == []


def test_fp16_bundle_loads_on_the_cpu_provider_and_passes_its_gate(fp16_bundle):
    gate = _manifest(fp16_bundle)["gate"]
    assert gate["passed"] is True, gate["failed"]
    assert _manifest(fp16_bundle)["files"]["dpd"]["spec"]["inputs"]["z"]["dtype"] == "tensor(float)"  # fp32 I/O
    gen = Generator(fp16_bundle, backend="onnxruntime")
    assert gen.info["precision"] == "fp16" and gen.info["providers"] == ["CPUExecutionProvider"]
    audio = gen.generate("a calm piano waltz", seconds=1.0, seed=0, steps=2)
    assert len(audio.samples) == 24_000 and np.isfinite(audio.samples).all() and np.abs(audio.samples).max() > 0


def test_failed_gate_is_recorded_and_leaves_the_old_bundle_in_place(fp32_bundle, tmp_path, monkeypatch):
    out = _copy(fp32_bundle, tmp_path)
    before = (out / "manifest.json").read_bytes()
    # a tolerance the fp32 DPD cannot meet (it measures ~130 dB): the gate must fail, be written down, then raise
    monkeypatch.setitem(THRESHOLDS, "fp32", {**THRESHOLDS["fp32"], "dpd_snr_db": 1e9})
    with pytest.raises(ParityError, match="dpd_snr_db"):
        export_bundle("debug", out, precision="fp32", e2e=False)
    assert (out / "manifest.json").read_bytes() == before
    failed = out.with_name(out.name + ".failed")
    gate = _manifest(failed)["gate"]
    assert gate["passed"] is False and [f.split("=")[0] for f in gate["failed"]] == ["dpd_snr_db"]
    assert gate["skipped"] == ["e2e_snr_db"]  # not run (e2e=False) is recorded as such, not as a failure
    assert json.loads((failed / "parity.json").read_text())["passed"] is False
    assert _leftovers(out) == []


def test_interrupted_export_leaves_the_old_bundle_and_no_partial_folder(fp32_bundle, tmp_path, monkeypatch):
    out = _copy(fp32_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, done = conversion.export.quantize, []

    def dies_on_the_third(src, dst, precision):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(real(src, dst, precision))

    monkeypatch.setattr(conversion.export, "quantize", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        export_bundle("debug", out, precision="fp32")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(out) == [] and not out.with_name(out.name + ".failed").exists()


def test_export_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a bundle"):
        export_bundle("debug", tmp_path, precision="fp32", check=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_manifest_describes_every_component(fp32_bundle):
    m = load_bundle(fp32_bundle).manifest
    for comp in ("text_encoder", "lm_prefill", "lm_step", "dpd", "vae_decoder", "vae_encoder"):
        entry = m["files"][comp]
        assert len(entry["sha256"]) == 64 and entry["spec"]["inputs"] and entry["spec"]["outputs"]
    assert m["bundle_version"] == BUNDLE_FORMAT and m["sample_rate"] == 24_000 and m["config"]["name"] == "debug"
    assert m["tools"]["onnxruntime"] and m["source"]["commit"]


def test_exported_dpd_takes_the_asked_family_and_key_and_matches_torch(fp32_bundle, int8_bundle):
    m = load_bundle(fp32_bundle).manifest
    assert m["files"]["dpd"]["spec"]["inputs"]["controls"]["dtype"] == "tensor(int64)"
    assert "dpd_controls" in m["controls"]["inputs"]
    torch_gen = Generator("debug")
    cfg = torch_gen.config
    rng = np.random.default_rng(0)
    L = 6 * cfg.frames_per_token
    z = rng.standard_normal((3, L, cfg.vae.latent_dim), dtype=np.float32)
    angles = rng.uniform(0.1, 1.5, (3, L)).astype(np.float32)
    tokens = rng.integers(0, cfg.dpd.sem_vocab, (3, 6))
    controls = np.array([[1, 7], [6, 19], [cfg.dpd.n_families, cfg.dpd.n_keys]])  # asked, asked, none
    ref = torch_gen.backend.dpd(z, angles, tokens, controls)
    assert np.abs(ref[0] - torch_gen.backend.dpd(z[:1], angles[:1], tokens[:1], controls[1:2])[0]).max() > 1e-5
    for bundle, precision in ((fp32_bundle, "fp32"), (int8_bundle, "int8")):
        min_db = THRESHOLDS[precision]["dpd_snr_db"]
        got = Generator(bundle).backend.dpd(z, angles, tokens, controls)
        for i in range(3):
            snr = 10 * np.log10(np.sum(ref[i] ** 2) / max(np.sum((ref[i] - got[i]) ** 2), 1e-30))
            assert snr > min_db, (bundle, i, snr)


def test_bundle_runs_in_a_process_where_torch_cannot_be_imported(fp32_bundle, tmp_path):
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from melody_edge import Generator
gen = Generator({str(fp32_bundle)!r})
audio = gen.generate("a calm piano waltz", seconds=2, seed=0, steps=2)
audio.save({str(tmp_path / 'x.wav')!r})
assert gen.info["backend"] == "onnxruntime"
print(len(audio.samples))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "48000"


def test_bundle_and_torch_give_the_same_audio_for_the_same_seed(fp32_bundle):
    a = Generator("debug").generate("folk song", seconds=1.5, seed=7, steps=3)
    b = Generator(fp32_bundle).generate("folk song", seconds=1.5, seed=7, steps=3)
    err = np.sum((a.samples - b.samples) ** 2) / max(np.sum(a.samples**2), 1e-12)
    assert 10 * np.log10(1 / max(err, 1e-30)) > 40


def _copy(src, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def test_corrupted_graph_is_refused_before_running(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    data = bytearray((b / "dpd.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "dpd.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Generator(b)


def test_wrong_hash_in_manifest_is_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["lm_step"]["sha256"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="lm_step"):
        Generator(b)


def test_missing_file_is_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    (b / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Generator(b)


def test_newer_format_version_is_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["bundle_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="upgrade"):
        Generator(b)


def test_format_1_bundles_still_load_and_older_ones_are_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["bundle_version"] = 1  # the full-cache step format, still read (tests/backends/test_onnx_backend.py runs one)
    (b / "manifest.json").write_text(json.dumps(m))
    assert load_bundle(b).manifest["bundle_version"] == 1
    m["bundle_version"] = 0
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="old format version 0; re-export"):
        Generator(b)


def test_corrupt_manifest_is_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        Generator(b)
