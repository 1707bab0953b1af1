"""The onnxruntime backend on the debug preset: the KV decode path (same tokens as the full-cache and no-cache
references, the cache updated in place), old full-cache bundles, provider choice from the manifest, and what the
exporter records (provider check, file sizes, shared LM weights, VAE graphs without stored DFT tables)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from melody_edge.backends.onnx_backend import CPU, CUDA, OnnxBackend, StepCache, choose_providers, graph_threads
from melody_edge.backends.torch_backend import TorchBackend
from melody_edge.bundle import COMPONENTS, Bundle, load_bundle, sha256
from melody_edge.controls import beat_features
from melody_edge.errors import InvalidInputError
from melody_edge.sampling import apply_cfg, sample_token

N_NEW = 40  # decode steps of the token comparisons (the debug window is 64 tokens)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The debug preset exported once (fp32, no parity gate: tests/conversion/test_export.py runs it)."""
    from conversion.export import export_bundle

    return export_bundle("debug", tmp_path_factory.mktemp("onnx_backend") / "bundle", precision="fp32", check=False)


@pytest.fixture(scope="module")
def model():
    from conversion.common import load_checkpoint

    return load_checkpoint("debug")[0]  # the same random weights the bundle was exported from


@pytest.fixture(scope="module")
def old_bundle(exported, model, tmp_path_factory):
    """``exported`` with the step graph as bundles before issue 13 had it: the whole cache in, an updated copy out."""
    from conversion.export import _spec

    class FullCacheStep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = model.lm

        def forward(self, token, pos, cache, beat):
            return self.lm.step(token, pos, cache, beat)

    c = model.cfg
    folder = tmp_path_factory.mktemp("old") / "bundle"
    shutil.copytree(exported, folder)
    args = (torch.zeros(2, dtype=torch.int64), torch.tensor(c.prefix_len + 3), model.lm.empty_cache(2),
            torch.zeros(2, c.controls.beat_dim))
    B = torch.export.Dim("B", min=1, max=64)
    with torch.no_grad():
        torch.onnx.export(FullCacheStep().eval(), args, str(folder / "lm_step.onnx"), dynamo=True,
                          input_names=["token", "pos", "cache", "beat"], output_names=["logits", "cache_out"],
                          dynamic_shapes={"token": {0: B}, "pos": {}, "cache": {2: B}, "beat": {0: B}},
                          opset_version=20, external_data=False)
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["lm_step"].update(spec=_spec(folder / "lm_step.onnx"), sha256=sha256(folder / "lm_step.onnx"))
    m["bundle_version"] = 1  # the format of full-cache steps
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def _inputs(model, seed=0):
    """A CFG batch (cond, null) prefix (2, P, D) and the beat clock (2, N_NEW + 1, F) as the generator makes it."""
    c = model.cfg
    rng = np.random.default_rng(seed)
    prefix = (rng.standard_normal((2, c.prefix_len, c.lm.dim)) * 0.5).astype(np.float32)
    beat = beat_features(N_NEW + 1, 0.0, 96.0, c.controls.beat_harmonics, c.token_rate)
    return prefix, np.stack([beat, np.zeros_like(beat)]).astype(np.float32)


def _decode(be, model, seed=0):
    """Sampled tokens (N_NEW,) with guidance, as ``Generator._lm`` draws them, from backend ``be``."""
    prefix, beat = _inputs(model)
    rng = np.random.default_rng(seed)
    logits, cache = be.lm_prefill(prefix, np.zeros((2, 0), np.int64), beat[:, :1])
    out = np.empty(N_NEW, np.int64)
    for i in range(N_NEW):
        if i:
            logits, cache = be.lm_step(np.repeat(out[i - 1:i], 2), prefix.shape[1] + i - 1, cache, beat[:, i])
        out[i] = sample_token(apply_cfg(logits[:1], logits[1:], 3.0), rng)[0]
    return out


def _decode_without_cache(model, seed=0):
    """The same draws, each step's logits recomputed from the whole sequence (``SemanticLM.forward``, no cache)."""
    prefix, beat = (torch.from_numpy(a) for a in _inputs(model))
    rng = np.random.default_rng(seed)
    out = np.empty(N_NEW, np.int64)
    with torch.inference_mode():
        for i in range(N_NEW):
            seq = torch.from_numpy(np.repeat(np.append(out[:i], 0)[None], 2, axis=0))  # + a placeholder to predict
            logits = model.lm(prefix, seq, beat[:, : i + 1])[:, -1].numpy()
            out[i] = sample_token(apply_cfg(logits[:1], logits[1:], 3.0), rng)[0]
    return out


def test_kv_decode_draws_the_tokens_of_the_full_cache_and_no_cache_references(exported, old_bundle, model):
    new = OnnxBackend(load_bundle(exported), providers=[CPU])
    old = OnnxBackend(load_bundle(old_bundle), providers=[CPU])
    assert new.info()["lm_step"] == "kv in place" and old.info()["lm_step"].startswith("full cache")
    tokens = _decode(new, model)
    assert len(set(tokens)) > 5  # a real sampled sequence, not a constant
    np.testing.assert_array_equal(tokens, _decode(old, model))  # the ONNX decode before issue 13
    np.testing.assert_array_equal(tokens, _decode(TorchBackend(model), model))  # torch, full-cache step
    np.testing.assert_array_equal(tokens, _decode_without_cache(model))


def test_step_writes_the_new_keys_and_values_into_the_same_cache_in_place(exported, model):
    be = OnnxBackend(load_bundle(exported), providers=[CPU])
    prefix, beat = _inputs(model)
    _, cache = be.lm_prefill(prefix, np.zeros((2, 0), np.int64), beat[:, :1])
    assert isinstance(cache, StepCache)
    address, pos = cache.array.ctypes.data, prefix.shape[1]
    with torch.inference_mode():
        _, ref = model.lm.step(torch.tensor([3, 3]), torch.tensor(pos), torch.from_numpy(cache.array.copy()),
                               torch.from_numpy(beat[:, 1]))
    logits, again = be.lm_step(np.array([3, 3]), pos, cache, beat[:, 1])
    assert again is cache and cache.array.ctypes.data == address
    np.testing.assert_allclose(cache.array, ref.numpy(), atol=1e-5)
    assert logits is not cache.logits  # the caller's logits survive the next step
    plain = ref.numpy().copy()  # a cache made elsewhere is copied into a new StepCache, never written
    _, other = be.lm_step(np.array([1, 1]), pos + 1, plain, beat[:, 2])
    assert other is not cache and np.array_equal(plain, ref.numpy())
    with pytest.raises(InvalidInputError, match="outside the KV cache"):
        be.lm_step(np.array([1, 1]), model.cfg.lm_max_len, cache, beat[:, 2])
    with pytest.raises(InvalidInputError, match="batch"):
        be.lm_step(np.array([1]), pos + 1, cache, beat[:1, 2])


def test_shipped_bundle_from_before_the_kv_step_still_loads_and_decodes():
    from melody_edge.generator import ASSETS

    shipped = load_bundle(ASSETS / "tiny-bundle")
    if "cache_out" not in shipped.spec("lm_step")["outputs"]:
        pytest.skip("the shipped bundle was re-exported with the kv step")
    be = OnnxBackend(shipped, providers=[CPU])
    assert be.info()["lm_step"].startswith("full cache")
    c = be.config
    beat = np.zeros((2, 1, c.controls.beat_dim), np.float32)
    logits, cache = be.lm_prefill(be.null_prefix(2), np.zeros((2, 0), np.int64), beat)
    logits2, cache = be.lm_step(np.array([1, 1]), c.prefix_len, cache, beat[:, 0])
    assert cache.shape[-2] == c.lm_max_len and np.isfinite(logits2).all() and not np.array_equal(logits, logits2)


def _bundle(precision, verdicts=None):
    manifest = {"precision": precision, "files": {}}
    if verdicts is not None:
        manifest["provider_check"] = {"status": "ran", "graphs": verdicts}
    return Bundle(Path("."), manifest, None)


def test_providers_follow_the_precision_and_the_recorded_checker_verdicts():
    everything = [CUDA, "CoreMLExecutionProvider", "NnapiExecutionProvider", CPU]
    yes = {"coreml": {"as_is": "YES"}, "nnapi": {"as_is": "YES"}}
    # int8 (dynamic quantization) and fp32: the CPU provider alone, even where CUDA is present
    for precision in ("int8", "fp32"):
        assert choose_providers(_bundle(precision, {}), everything) == {c: [CPU] for c in COMPONENTS}
    # fp16: CUDA first where onnxruntime has it
    assert choose_providers(_bundle("fp16"), everything) == {c: [CUDA, CPU] for c in COMPONENTS}
    assert choose_providers(_bundle("fp16"), [CPU]) == {c: [CPU] for c in COMPONENTS}
    # Core ML / NNAPI only for the graphs the checker said YES for, as exported; MAYBE or no record is not enough
    verdicts = {"dpd": yes, "vae_decoder": {"coreml": {"as_is": "MAYBE"}, "nnapi": {"as_is": "NO"}}}
    chosen = choose_providers(_bundle("int8", verdicts), everything)
    assert chosen["dpd"] == ["CoreMLExecutionProvider", "NnapiExecutionProvider", CPU]
    assert all(chosen[c] == [CPU] for c in COMPONENTS if c != "dpd")
    assert choose_providers(_bundle("int8", verdicts), [CPU])["dpd"] == [CPU]  # not built into this onnxruntime


def test_backend_runs_each_graph_with_its_chosen_providers(exported):
    be = OnnxBackend(load_bundle(exported))
    assert be.providers_by_graph == {c: [CPU] for c in COMPONENTS} and be.providers == [CPU]
    assert all(s.get_providers() == [CPU] for s in be.sessions.values())
    forced = OnnxBackend(load_bundle(exported), providers=[CPU])
    assert forced.info()["providers_by_graph"] == {c: [CPU] for c in COMPONENTS}


def test_lm_step_runs_on_one_thread_and_the_other_graphs_on_the_threads_asked(exported):
    assert graph_threads(2) == {c: 1 if c == "lm_step" else 2 for c in COMPONENTS}
    be = OnnxBackend(load_bundle(exported), threads=3)
    assert be.info()["threads_by_graph"] == {c: 1 if c == "lm_step" else 3 for c in COMPONENTS}
    sessions = be.sessions
    assert sessions["lm_step"].get_session_options().intra_op_num_threads == 1
    assert sessions["dpd"].get_session_options().intra_op_num_threads == 3
    assert sessions["dpd"].get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_vae_encoder_loads_on_first_use_and_is_checked_then(exported):
    be = OnnxBackend(load_bundle(exported))
    assert "vae_encoder" not in be.sessions and set(be.sessions) == set(COMPONENTS) - {"vae_encoder"}
    audio = np.zeros((1, be.config.sample_rate), np.float32)
    z = be.vae_encode(audio)
    assert z.shape[-1] == be.config.vae.latent_dim and "vae_encoder" in be.sessions
    assert be._in_types["vae_encoder"] == {"audio": np.float32}


def test_manifest_records_the_provider_check_file_sizes_and_shared_lm_weights(exported):
    m = load_bundle(exported).manifest
    check = m["provider_check"]
    if check["status"] != "ran":
        pytest.skip(f"onnxruntime's usability checker did not run here: {check['status']}")
    assert set(check["graphs"]) == set(COMPONENTS)
    for comp, verdicts in check["graphs"].items():
        assert {"nnapi", "coreml", "coreml_mlprogram"} <= set(verdicts), comp
        assert all(v["as_is"] in ("YES", "MAYBE", "NO") and v["partitions"] >= 0 for v in verdicts.values()), comp
    for name, entry in m["files"].items():
        assert entry["bytes"] == (exported / entry["path"]).stat().st_size, name
    # the two LM graphs hold their common weights once, as external data in lm_weights.bin
    assert m["files"]["lm_weights"]["path"] == "lm_weights.bin"
    import onnx

    for comp in ("lm_prefill", "lm_step"):
        graph = onnx.load(str(exported / m["files"][comp]["path"]), load_external_data=False)
        external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {
            "lm_weights.bin"}


def test_vae_graphs_compute_their_dft_kernels_instead_of_storing_them(exported, model):
    import onnx

    n_fft = model.cfg.vae.n_fft
    table = (n_fft // 2 + 1) * 2 * n_fft  # elements of one stored STFT / iSTFT basis
    for comp in ("vae_decoder", "vae_encoder"):
        graph = onnx.load(str(exported / f"{comp}.onnx"))
        largest = max(int(np.prod(t.dims)) for t in graph.graph.initializer)
        assert largest < table / 4, comp
        assert os.path.getsize(exported / f"{comp}.onnx") < 4 * table  # 4 bytes a float32 basis entry
