import numpy as np
import pytest
import torch

from melody_edge.models.config import PAPER_PARAMS, get_config
from melody_edge.models.dpd import DPD
from melody_edge.models.layers import count_params
from melody_edge.sampling import get_schedule, sample


def _dpd():
    cfg = get_config("debug")
    torch.manual_seed(0)
    model = DPD(cfg.dpd, cfg.frames_per_token).eval()
    with torch.no_grad():  # output and FiLM layers start at zero; give them weights so the test sees real outputs
        model.out.weight.normal_(0, 0.1)
        for blk in model.blocks:
            blk.film.weight.normal_(0, 0.1)
    return model, cfg


@pytest.mark.parametrize("frames", [1, 7, 8, 15, 16, 17, 31, 33, 64, 101])
def test_output_shape_for_lengths_not_multiple_of_segment(frames):
    model, cfg = _dpd()
    n_tok = -(-frames // cfg.frames_per_token)
    z = torch.randn(2, frames, cfg.dpd.latent_dim)
    with torch.inference_mode():
        v = model(z, torch.rand(2, frames), torch.randint(0, cfg.dpd.sem_vocab + 1, (2, n_tok)))
    assert v.shape == z.shape
    assert torch.isfinite(v).all()


def test_chunks_at_angle_zero_come_back_unchanged():
    model, cfg = _dpd()
    L, C = cfg.window_frames, cfg.dpd.latent_dim
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (1, L, C)).astype(np.float32)
    z0 = np.concatenate([clean[:, : 3 * L // 4], rng.standard_normal((1, L // 4, C), dtype=np.float32)], axis=1)
    fixed = np.arange(L) < 3 * L // 4
    tokens = torch.randint(0, cfg.dpd.sem_vocab, (1, cfg.window_tokens))

    def denoise(z, angles, guidance):
        with torch.inference_mode():
            return model(torch.from_numpy(z), torch.from_numpy(angles), tokens).numpy()

    out = sample(denoise, z0, get_schedule("paper", 4), fixed=fixed, z_fixed=z0)
    assert np.array_equal(out[:, fixed], clean[:, : 3 * L // 4])
    assert not np.allclose(out[:, ~fixed], z0[:, ~fixed])
    # the new frames are denoised *from* the kept ones: other kept frames, same noise -> other new frames
    # (a denoiser that ignores its input, e.g. returns zeros, passes the checks above but fails this one)
    z1 = z0.copy()
    z1[:, fixed] = rng.uniform(-1, 1, (1, int(fixed.sum()), C)).astype(np.float32)
    out1 = sample(denoise, z1, get_schedule("paper", 4), fixed=fixed, z_fixed=z1)
    assert np.abs(out1[:, ~fixed] - out[:, ~fixed]).max() > 1e-3


def test_per_chunk_angles_change_the_output():
    model, cfg = _dpd()
    L = cfg.window_frames
    z = torch.randn(1, L, cfg.dpd.latent_dim)
    tokens = torch.randint(0, cfg.dpd.sem_vocab, (1, cfg.window_tokens))
    with torch.inference_mode():
        a = model(z, torch.full((1, L), 0.5), tokens)
        b = model(z, torch.cat([torch.zeros(1, L // 2), torch.full((1, L - L // 2), 0.5)], 1), tokens)
    assert not torch.allclose(a, b)


def test_paper_dpd_parameter_count_within_5_percent():
    cfg = get_config("paper")
    with torch.device("meta"):
        model = DPD(cfg.dpd, cfg.frames_per_token)
    n = count_params(model)
    assert abs(n - PAPER_PARAMS["dpd"]) / PAPER_PARAMS["dpd"] < 0.05, n


def test_control_condition_starts_neutral_and_then_changes_the_output():
    model, cfg = _dpd()
    n_fam, n_keys = cfg.dpd.n_families, cfg.dpd.n_keys
    assert (n_fam, n_keys) == (9, 24)
    L = 3 * cfg.frames_per_token
    z, angles = torch.randn(4, L, cfg.dpd.latent_dim), torch.rand(4, L)
    tokens = torch.randint(0, cfg.dpd.sem_vocab, (1, 3)).repeat(4, 1)
    # piano in C major, strings in C major, piano in A minor, none asked
    controls = torch.tensor([[0, 0], [4, 0], [0, 21], [n_fam, n_keys]])
    with torch.inference_mode():
        # zero-initialised: a DPD fine-tuned from one without the control inputs starts out as it was
        assert torch.equal(model(z, angles, tokens, controls), model(z, angles, tokens))
        torch.nn.init.normal_(model.family_emb.weight, 0, 0.5)
        torch.nn.init.normal_(model.key_emb.weight, 0, 0.5)
        v = model(z, angles, tokens, controls)
        v_none = model(z, angles, tokens)  # no controls given = none asked
    assert torch.equal(v[3], v_none[3])
    for i in range(3):
        assert (v[i] - v_none[i]).abs().mean() > 1e-3
    assert (v[0] - v[1]).abs().mean() > 1e-3  # the family counts
    assert (v[0] - v[2]).abs().mean() > 1e-3  # the key counts
