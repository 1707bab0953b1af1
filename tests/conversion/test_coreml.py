"""Core ML export of the debug preset: conversion, specs and graph rewrites everywhere; predictions on macOS only."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conversion.common import load_checkpoint
from conversion.coreml import FLOAT32_COMPONENTS, compress, convert, export_coreml, export_program, input_shapes
from conversion.graphs import (
    OUTPUTS,
    CoreMLPrefill,
    CoreMLStep,
    coreml_example_inputs,
    coreml_graphs,
    example_inputs,
    onnx_graphs,
)
from conversion.parity import snr_db
from melody_edge.backends.coreml_backend import CoreMLBackend, sha256_path, verify_files
from melody_edge.bundle import BUNDLE_FORMAT, COMPONENTS, Bundle, load_bundle, sha256
from melody_edge.errors import BackendUnavailableError, BundleError, ConfigError

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools)")
from coremltools.proto import MIL_pb2  # noqa: E402

on_macos = pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction runs only on macOS")
INPUTS = {"text_encoder": ["input_ids", "attention_mask"], "lm_prefill": ["prefix", "tokens"],
          "lm_step": ["token", "pos", "cache"], "dpd": ["z", "angles", "tokens"], "vae_decoder": ["z"],
          "vae_encoder": ["audio"]}
CONTROL_INPUTS = {"text_encoder": ["key", "bpm", "metre", "family"], "lm_prefill": ["beat"], "lm_step": ["beat"]}
QUANTIZED_OPS = {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}


@pytest.fixture(scope="module")
def model():
    return load_checkpoint("debug")[0]


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory):
    return export_coreml("debug", tmp_path_factory.mktemp("coreml_fp16"), precision="fp16")


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, model):
    """``export_coreml``'s int8 path on three components (the biggest, the LM step, a VAE) and its palettize4 path on
    the LM step, in folders ``int8`` and ``palettize4``: a minute less than exporting whole bundles."""
    root = tmp_path_factory.mktemp("coreml_compressed")
    mods, inputs, shapes = coreml_graphs(model), coreml_example_inputs(model), input_shapes(model.cfg)
    for name in ("text_encoder", "lm_step", "vae_decoder"):
        program = export_program(mods[name], inputs[name], shapes[name])
        mlmodel = convert(program, inputs[name], shapes[name], OUTPUTS[name], float16=True)
        for precision in ("int8", "palettize4") if name == "lm_step" else ("int8",):
            (root / precision).mkdir(exist_ok=True)
            compress(mlmodel, precision).save(str(root / precision / f"{name}.mlpackage"))
    return root


def _ops(package: Path) -> list:
    spec = ct.utils.load_spec(str(package))
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_every_component_is_an_ml_program_for_macos14(fp16_bundle, model):
    extra = CONTROL_INPUTS if model.cfg.controls.enabled else {}
    if model.cfg.dpd.controlled:  # the DPD hears the asked family and key
        extra = {**extra, "dpd": ["controls"]}
    for comp in COMPONENTS:
        spec = ct.utils.load_spec(str(fp16_bundle / f"{comp}.mlpackage"))
        assert spec.WhichOneof("Type") == "mlProgram", comp
        assert spec.specificationVersion >= 8, comp  # 8 = macOS 14 / iOS 17
        assert [i.name for i in spec.description.input] == INPUTS[comp] + extra.get(comp, [])
        assert [o.name for o in spec.description.output] == OUTPUTS[comp]


def test_manifest_spec_has_ranged_dims_and_core_ml_dtypes(fp16_bundle, model):
    c = model.cfg
    files = load_bundle(fp16_bundle, verify=False).manifest["files"]
    spec = {comp: files[comp]["spec"]["inputs"] for comp in COMPONENTS}
    assert spec["text_encoder"]["input_ids"] == {"dtype": "int32", "shape": [[1, 2], 64]}
    assert spec["lm_prefill"]["tokens"] == {"dtype": "int32", "shape": [[1, 2], [1, c.window_tokens]]}
    assert spec["lm_step"]["pos"] == {"dtype": "int32", "shape": [1]}
    assert spec["lm_step"]["cache"]["shape"] == [2 * c.lm.n_layers, [1, 2], c.lm.n_heads, c.lm_max_len,
                                                 c.lm.head_dim]
    assert spec["dpd"]["z"] == {"dtype": "float32", "shape": [[1, 2], [1, c.window_frames], c.vae.latent_dim]}
    assert spec["vae_decoder"]["z"]["shape"] == [[1, 2], [1, c.window_frames], c.vae.latent_dim]
    assert spec["vae_encoder"]["audio"]["shape"] == [[1, 2], [1, c.window_frames * c.vae.hop]]
    ranges = ct.utils.load_spec(str(fp16_bundle / "dpd.mlpackage")).description.input[0].type.multiArrayType
    assert [(r.lowerBound, r.upperBound) for r in ranges.shapeRange.sizeRanges] == [
        (1, 2), (1, c.window_frames), (c.vae.latent_dim, c.vae.latent_dim)]


def test_fp16_bundle_computes_in_float16_except_the_vae_encoder(fp16_bundle):
    files = load_bundle(fp16_bundle, verify=False).manifest["files"]
    for comp in COMPONENTS:
        n16 = sum(o.type.tensorType.dataType == MIL_pb2.FLOAT16 for op in _ops(fp16_bundle / f"{comp}.mlpackage")
                  for o in op.outputs)
        want = "float32" if comp in FLOAT32_COMPONENTS else "float16"
        assert files[comp]["spec"]["compute_precision"] == want, comp
        assert (n16 > 0) == (want == "float16"), comp


def test_int8_quantizes_weights_but_not_the_dft_bases_and_is_smaller(compressed, fp16_bundle):
    packages = sorted((compressed / "int8").iterdir())
    assert len(packages) == 3
    for package in packages:
        ops = _ops(package)
        assert QUANTIZED_OPS & {op.type for op in ops}, package.name
        basis = [op for op in ops if any("stft_basis" in o.name for o in op.outputs)]
        assert all(op.type == "const" for op in basis), package.name
        assert basis or not package.name.startswith("vae"), package.name
        assert _size(package) < _size(fp16_bundle / package.name), package.name
    assert _size(compressed / "int8" / "text_encoder.mlpackage") < 0.6 * _size(fp16_bundle / "text_encoder.mlpackage")


def test_palettize4_stores_weights_as_lookup_tables(compressed, fp16_bundle):
    package = compressed / "palettize4" / "lm_step.mlpackage"
    assert "constexpr_lut_to_dense" in {op.type for op in _ops(package)}
    assert _size(package) < _size(compressed / "int8" / "lm_step.mlpackage") < _size(fp16_bundle / "lm_step.mlpackage")


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="palettize4"):
        export_coreml("debug", tmp_path, precision="int4")


def test_manifest_hashes_every_package_and_asset(fp16_bundle, model):
    m = load_bundle(fp16_bundle, verify=False).manifest
    assert m["format"] == "coreml" and m["precision"] == "fp16" and m["bundle_version"] == BUNDLE_FORMAT
    assert m["tools"]["coremltools"] == ct.__version__ and m["tools"]["minimum_deployment_target"] == "macOS14"
    assert m["gate"]["passed"] is None  # no Core ML predictions at export time, on any platform
    if sys.platform != "darwin":
        assert m["gate"]["status"] == "not verified on this platform"
    assert not [p for p in fp16_bundle.parent.iterdir() if p.name.startswith(f".{fp16_bundle.name}.")]
    for name, entry in m["files"].items():
        assert sha256_path(fp16_bundle / entry["path"]) == entry["sha256"], name
    bundle = load_bundle(fp16_bundle, verify=False)
    verify_files(bundle)
    tampered = copy.deepcopy(bundle.manifest)
    tampered["files"]["dpd"]["sha256"] = "0" * 64
    with pytest.raises(BundleError, match="dpd.mlpackage"):
        verify_files(Bundle(bundle.root, tampered, bundle.config))
    assert np.load(fp16_bundle / "null_prefix.npy").shape == (model.cfg.prefix_len, model.cfg.lm.dim)
    assert (fp16_bundle / "text_tokenizer.json").is_file()


def test_sha256_path_hashes_folders_by_relative_paths_and_bytes(tmp_path):
    pkg = tmp_path / "a.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "weights.bin").write_bytes(b"\x00\x01")
    (pkg / "Manifest.json").write_text("{}")
    first = sha256_path(pkg)
    assert first == sha256_path(pkg) and len(first) == 64
    (pkg / "Data" / "weights.bin").write_bytes(b"\x00\x02")
    changed = sha256_path(pkg)
    (pkg / "Data" / "weights.bin").rename(pkg / "Data" / "other.bin")
    assert len({first, changed, sha256_path(pkg)}) == 3
    assert sha256_path(pkg / "Manifest.json") == sha256(pkg / "Manifest.json")


def test_core_ml_lm_graphs_equal_the_lm(model):
    inputs = coreml_example_inputs(model)
    prefix, tokens = inputs["lm_prefill"]["prefix"], inputs["lm_prefill"]["tokens"]
    step = inputs["lm_step"]
    with torch.no_grad():
        for B in (1, 2):
            ref_logits, ref_cache = model.lm.prefill(prefix[:B], tokens[:B])
            logits, cache = CoreMLPrefill(model)(prefix[:B], tokens[:B])
            T = cache.shape[-2]
            torch.testing.assert_close(logits[:, 1], ref_logits)
            torch.testing.assert_close(cache, ref_cache.flatten(0, 1)[..., :T, :])
            assert not ref_cache[..., T:, :].any()
            cache = step["cache"].unflatten(0, (model.cfg.lm.n_layers, 2))[:, :, :B]  # (n_layers, 2, B, ...)
            pos = int(step["pos"])
            ref_logits, ref_cache = model.lm.step(step["token"][:B], step["pos"], cache)
            logits, kv = CoreMLStep(model)(step["token"][:B], step["pos"].reshape(1), cache.flatten(0, 1))
            torch.testing.assert_close(logits, ref_logits)
            torch.testing.assert_close(kv, ref_cache.flatten(0, 1)[..., pos : pos + 1, :])
        empty_logits, _ = model.lm.prefill(prefix[:1], tokens[:1, :0])  # N == 0: the backend's placeholder token
        torch.testing.assert_close(CoreMLPrefill(model)(prefix[:1], tokens[:1, :1])[0][:, 0], empty_logits)


def test_rewritten_programs_equal_eager_torch_at_batch_1_and_odd_lengths(model):
    mods, inputs, shapes = coreml_graphs(model), coreml_example_inputs(model), input_shapes(model.cfg)
    g = torch.Generator().manual_seed(1)
    C, fpt, V = model.cfg.vae.latent_dim, model.cfg.frames_per_token, model.cfg.lm.vocab_size
    d = model.cfg.dpd
    ctl = (lambda B: (torch.tensor([[1, 5], [d.n_families, d.n_keys]])[:B],)) if d.controlled else (lambda B: ())
    cases = {"dpd": [(torch.randn(B, L, C, generator=g), torch.rand(B, L, generator=g),
                      torch.randint(0, d.sem_vocab + 1, (B, -(-L // fpt)), generator=g), *ctl(B))
                     for B, L in ((1, 1), (1, 37), (2, model.cfg.window_frames))],
             "vae_encoder": [(torch.randn(B, T, generator=g) * 0.1,) for B, T in ((1, 1), (1, 961), (2, 5000))],
             "lm_prefill": [(inputs["lm_prefill"]["prefix"][:1], torch.randint(0, V, (1, N), generator=g),
                             *([inputs["lm_prefill"]["beat"][:1, : N + 1]] if "beat" in inputs["lm_prefill"] else []))
                            for N in (1, 7)],
             "lm_step": [tuple(t[:, :1] if t.dim() == 5 else t[:1] for t in inputs["lm_step"].values())]}
    for name, args in cases.items():
        program = export_program(mods[name], inputs[name], shapes[name])
        nodes = list(program.graph.nodes)
        assert not [n for n in nodes if n.target is torch.ops.aten._assert_scalar.default]
        assert all(isinstance(p, int) for n in nodes if n.target is torch.ops.aten.pad.default for p in n.args[1])
        with torch.no_grad():
            for a in args:
                torch.testing.assert_close(program.module()(*a), mods[name](*a), msg=name)


def test_backend_is_unavailable_off_macos(fp16_bundle):
    if sys.platform == "darwin":
        pytest.skip("this platform runs Core ML")
    with pytest.raises(BackendUnavailableError, match="Core ML prediction needs macOS 14"):
        CoreMLBackend(load_bundle(fp16_bundle, verify=False))


def test_backend_module_imports_without_coremltools():
    code = ("import sys\nsys.modules['coremltools'] = None\n"
            "from melody_edge.backends.coreml_backend import CoreMLBackend\nprint(CoreMLBackend.name)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "coreml"


@on_macos
def test_fp16_predictions_match_torch(fp16_bundle, model):
    be = CoreMLBackend(load_bundle(fp16_bundle, verify=False))
    mods = coreml_graphs(model)
    inputs = coreml_example_inputs(model)
    np_in = {k: {n: t.numpy() for n, t in v.items()} for k, v in inputs.items()}
    with torch.no_grad():
        ref = {k: mods[k](**v) for k, v in inputs.items() if k not in ("lm_prefill", "lm_step")}
        ref["lm_prefill"] = onnx_graphs(model)["lm_prefill"](**example_inputs(model)["lm_prefill"])
        step = inputs["lm_step"]
        cache = step["cache"].unflatten(0, (model.cfg.lm.n_layers, 2))
        ref["lm_step"] = model.lm.step(step["token"], step["pos"].reshape(()), cache, step.get("beat"))
        ref_empty, _ = model.lm.prefill(inputs["lm_prefill"]["prefix"], inputs["lm_prefill"]["tokens"][:, :0])
    assert snr_db(ref["text_encoder"].numpy(), be.encode_text(**np_in["text_encoder"])) > 30
    logits, cache = be.lm_prefill(**np_in["lm_prefill"])
    assert snr_db(ref["lm_prefill"][0].numpy(), logits) > 30
    assert snr_db(ref["lm_prefill"][1].flatten(0, 1).numpy(), cache) > 30
    prefix = np_in["lm_prefill"]["prefix"]
    assert snr_db(ref_empty.numpy(), be.lm_prefill(prefix, np.zeros((2, 0), np.int64))[0]) > 30
    step = np_in["lm_step"]
    logits, cache = be.lm_step(step["token"], int(step["pos"][0]), step["cache"].copy(), step.get("beat"))
    assert snr_db(ref["lm_step"][0].numpy(), logits) > 30
    assert snr_db(ref["lm_step"][1].flatten(0, 1).numpy(), cache) > 30
    assert snr_db(ref["dpd"].numpy(), be.dpd(**np_in["dpd"])) > 30
    assert snr_db(ref["vae_decoder"].numpy(), be.vae_decode(**np_in["vae_decoder"])) > 30
    assert snr_db(ref["vae_encoder"].numpy(), be.vae_encode(**np_in["vae_encoder"])) > 30
    z, angles, tokens = (np_in["dpd"][k][:1, :37] for k in ("z", "angles", "tokens"))  # batch 1, odd length
    with torch.no_grad():
        ref_v = model.dpd(torch.from_numpy(z), torch.from_numpy(angles), torch.from_numpy(tokens)).numpy()
    assert snr_db(ref_v, be.dpd(z, angles, tokens)) > 30


@on_macos
def test_generator_runs_a_core_ml_bundle(fp16_bundle):
    from melody_edge.generator import Generator

    gen = Generator.from_backend(CoreMLBackend(load_bundle(fp16_bundle, verify=False)))
    audio = gen.generate("a calm piano waltz", seconds=1.0, seed=0, steps=2)
    assert len(audio.samples) == 24_000 and np.isfinite(audio.samples).all()
    assert gen.info["backend"] == "coreml"
