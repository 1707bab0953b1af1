import torch

from melody_edge.models.config import PAPER_PARAMS, get_config
from melody_edge.models.layers import count_params
from melody_edge.models.lm import SemanticLM


def _lm(seed=0):
    cfg = get_config("debug")
    torch.manual_seed(seed)
    return SemanticLM(cfg.lm, cfg.text, cfg.lm_max_len).eval(), cfg


def test_kv_cache_decoding_matches_full_sequence_logits():
    lm, cfg = _lm()
    g = torch.Generator().manual_seed(1)
    prefix = torch.randn(2, cfg.text.n_prefix, cfg.lm.dim, generator=g)
    tokens = torch.randint(0, cfg.lm.vocab_size, (2, 20), generator=g)
    with torch.inference_mode():
        full = lm(prefix, tokens)  # (B, N, V): entry i predicts tokens[:, i]
        logits, cache = lm.prefill(prefix)
        stepped = [logits]
        for i in range(tokens.shape[1] - 1):
            logits, cache = lm.step(tokens[:, i], torch.tensor(cfg.text.n_prefix + i), cache)
            stepped.append(logits)
    stepped = torch.stack(stepped, dim=1)
    assert stepped.shape == full.shape
    assert (stepped - full).abs().max().item() < 1e-4


def test_prefill_with_given_tokens_matches_teacher_forcing():
    lm, cfg = _lm()
    prefix = torch.randn(1, cfg.text.n_prefix, cfg.lm.dim)
    tokens = torch.randint(0, cfg.lm.vocab_size, (1, 12))
    with torch.inference_mode():
        full = lm(prefix, tokens)
        logits, cache = lm.prefill(prefix, tokens[:, :7])
    assert cache.shape[-2] == cfg.lm_max_len
    assert (logits - full[:, 7]).abs().max().item() < 1e-4


def test_paper_lm_parameter_count_within_5_percent():
    cfg = get_config("paper")
    with torch.device("meta"):
        lm = SemanticLM(cfg.lm, cfg.text, cfg.lm_max_len)
    n = count_params(lm)
    assert abs(n - PAPER_PARAMS["lm"]) / PAPER_PARAMS["lm"] < 0.05, n


def test_checkpoint_round_trip_in_fp16(tmp_path):
    from melody_edge.models.melody import MeLoDy

    model = MeLoDy.random(get_config("debug"))
    model.save(tmp_path, dtype=torch.float16)
    back = MeLoDy.load(tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert b.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), k


def test_corrupt_or_mismatched_checkpoint_raises_bundle_error(tmp_path):
    import json

    import pytest

    from melody_edge import BundleError
    from melody_edge.models.melody import MeLoDy

    with pytest.raises(BundleError, match="missing"):
        MeLoDy.load(tmp_path)
    MeLoDy.random(get_config("debug")).save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="corrupt"):
        MeLoDy.load(tmp_path)
    MeLoDy.random(get_config("debug")).save(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["lm"]["dim"] = 64
    meta["config"]["lm"]["ffn_dim"] = 128
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError):
        MeLoDy.load(tmp_path)


def test_kv_step_gives_the_full_cache_steps_logits_and_only_the_new_keys_and_values():
    lm, cfg = _lm()
    g = torch.Generator().manual_seed(2)
    P = cfg.text.n_prefix
    prefix = torch.randn(2, P, cfg.lm.dim, generator=g)
    tokens = torch.randint(0, cfg.lm.vocab_size, (2, 12), generator=g)
    with torch.inference_mode():
        _, full = lm.prefill(prefix, tokens[:, :4])
        own = full.clone()
        for i in range(4, 12):
            pos = torch.tensor(P + i)
            ref_logits, full = lm.step(tokens[:, i], pos, full)
            pairs = [(own[j, 0], own[j, 1]) for j in range(cfg.lm.n_layers)]  # the per-layer form of the graph
            logits, kv = lm.step_kv(tokens[:, i], pos, pairs)
            assert kv.shape == (cfg.lm.n_layers, 2, 2, cfg.lm.n_heads, 1, cfg.lm.head_dim)
            torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(kv, full[..., P + i : P + i + 1, :], atol=1e-5, rtol=1e-5)
            own[..., P + i : P + i + 1, :] = kv
            own[..., P + i + 1 :, :] = 7.0  # stale entries past pos must be ignored
        torch.testing.assert_close(lm.step_kv(tokens[:, 0], torch.tensor(P + 12), own)[0],
                                   lm.step(tokens[:, 0], torch.tensor(P + 12), full)[0], atol=1e-5, rtol=1e-5)


def test_rope_matrix_rotates_as_apply_rope():
    from melody_edge.models.layers import apply_rope, rope_angles
    from melody_edge.models.lm import rope_matrix

    x = torch.randn(2, 4, 1, 64, generator=torch.Generator().manual_seed(3))
    for p in (0, 1, 200, 4095):
        pos = torch.tensor(p)
        cos, sin = rope_angles(pos.reshape(1), 64, 10000.0)
        torch.testing.assert_close(x @ rope_matrix(pos, 64, 10000.0), apply_rope(x, cos, sin), atol=2e-6, rtol=1e-5)
