import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conversion.export import export_bundle
from conversion.parity import THRESHOLDS
from melody_edge import BundleError, Generator
from melody_edge.bundle import load_bundle


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    return export_bundle("debug", tmp_path_factory.mktemp("fp32"), precision="fp32")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    return export_bundle("debug", tmp_path_factory.mktemp("int8"), precision="int8")


def test_fp32_bundle_parity_meets_the_issue_thresholds(fp32_bundle):
    parity = json.loads((fp32_bundle / "parity.json").read_text())
    f = parity["figures"]
    assert parity["passed"]
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


def test_manifest_describes_every_component(fp32_bundle):
    m = load_bundle(fp32_bundle).manifest
    for comp in ("text_encoder", "lm_prefill", "lm_step", "dpd", "vae_decoder", "vae_encoder"):
        entry = m["files"][comp]
        assert len(entry["sha256"]) == 64 and entry["spec"]["inputs"] and entry["spec"]["outputs"]
    assert m["bundle_version"] == 1 and m["sample_rate"] == 24_000 and m["config"]["name"] == "debug"
    assert m["tools"]["onnxruntime"] and m["source"]["commit"]


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


def test_corrupt_manifest_is_refused(fp32_bundle, tmp_path):
    b = _copy(fp32_bundle, tmp_path)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="JSON"):
        Generator(b)
