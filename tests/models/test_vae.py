"""VAE: frame counts, parameter counts, the STFT / iSTFT pair, the diffusion scaling and the VAE-GAN losses."""

from __future__ import annotations

import math

import pytest
import torch

from melody_edge.models.config import PAPER_PARAMS, get_config
from melody_edge.models.discriminators import VAEDiscriminator
from melody_edge.models.losses import (
    discriminator_loss,
    generator_loss,
    log_magnitude_loss,
    multi_resolution_stft_loss,
    stft_only_loss,
)
from melody_edge.models.vae import ISTFT, LINEAR_FLOOR, STFT, VAE


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _seeded_vae(preset: str) -> VAE:
    """A VAE with reproducible init, without touching the global RNG state of other tests."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return VAE(get_config(preset).vae)


def _tones(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) sums of two random sines at 24 kHz, plus a little noise."""
    t = torch.arange(length) / 24_000
    freqs = 100 + 2000 * torch.rand(batch, 2, 1, generator=generator)  # (B, 2, 1)
    audio = 0.3 * torch.sin(2 * math.pi * freqs * t).sum(1)  # (B, T)
    return audio + 0.01 * torch.randn(batch, length, generator=generator)


def test_paper_frame_rate_and_param_counts() -> None:
    cfg = get_config("paper").vae
    with torch.device("meta"):
        vae = VAE(cfg)
        mean, logvar = vae.encode(torch.zeros(1, 24_000))
    assert mean.shape == logvar.shape == (1, cfg.latent_dim, 250)
    for part, target in (("encoder", PAPER_PARAMS["vae_encoder"]), ("decoder", PAPER_PARAMS["vae_decoder"])):
        n = _n_params(getattr(vae, part))
        assert abs(n / target - 1) < 0.05, f"{part}: {n / 1e6:.2f}M vs paper {target / 1e6:.1f}M"


@pytest.mark.parametrize("preset", ["debug", "tiny"])
def test_round_trip_shapes_for_odd_lengths(preset: str) -> None:
    vae = _seeded_vae(preset).eval()
    cfg = vae.cfg
    for length in (1, 479, 481, 24_001):
        audio = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            mean, logvar = vae.encode(audio)
            frames = math.ceil(length / cfg.hop)
            assert mean.shape == logvar.shape == (2, cfg.latent_dim, frames)
            assert vae.decode(mean).shape == (2, frames * cfg.hop)
            zd = vae.encode_for_diffusion(audio)
            assert zd.shape == (2, frames, cfg.latent_dim)
            assert vae.decode_from_diffusion(zd).shape == (2, frames * cfg.hop)
            recon = vae(audio, torch.Generator().manual_seed(0)).recon
            assert recon.shape == audio.shape


@pytest.mark.parametrize("hop", [96, 480])
def test_istft_inverts_stft(hop: int) -> None:
    stft, istft = STFT(4 * hop, hop), ISTFT(4 * hop, hop)
    for length in (1, 479, 24_001):
        audio = 2 * torch.rand(3, length, generator=torch.Generator().manual_seed(length)) - 1
        real, imag = stft(audio)  # (B, F, frames)
        assert real.shape == (3, 2 * hop + 1, math.ceil(length / hop))
        mag, phase = torch.hypot(real, imag), torch.atan2(imag, real)
        recon = istft(mag * torch.cos(phase), mag * torch.sin(phase))  # (B, frames * hop)
        assert recon.shape == (3, real.shape[-1] * hop)
        assert (recon[:, :length] - audio).abs().max() < 1e-4
        assert torch.all(recon[:, length:].abs() < 1e-4)  # the right padding comes back as silence


def test_stft_and_istft_have_no_trainable_or_saved_state() -> None:
    vae = VAE(get_config("debug").vae)
    assert not any("basis" in name or "window" in name for name, _ in vae.named_parameters())
    assert not any("basis" in name or "window" in name for name in vae.state_dict())


def test_diffusion_scaling_clamps_and_inverts() -> None:
    vae = VAE(get_config("debug").vae)
    z = torch.linspace(-10, 10, 101)
    zd = vae.to_diffusion(z)
    assert zd.min() == -1 and zd.max() == 1
    inside = z.abs() <= vae.cfg.latent_scale
    torch.testing.assert_close(vae.from_diffusion(zd)[inside], z[inside])


def test_sample_is_reproducible_with_a_generator() -> None:
    mean, logvar = torch.zeros(2, 8, 5), torch.zeros(2, 8, 5)
    a = VAE.sample(mean, logvar, torch.Generator().manual_seed(3))
    b = VAE.sample(mean, logvar, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert a.std() > 0.5


def test_gan_losses_are_finite_and_backpropagate() -> None:
    cfg = get_config("debug").vae
    gen = torch.Generator().manual_seed(0)
    vae, disc = _seeded_vae("debug"), VAEDiscriminator(cfg)
    audio = _tones(2, 12_000, gen)
    recon, mean, logvar, log_mag, target = vae(audio, gen)

    real_logits, real_feats = disc(audio)
    fake_logits, _ = disc(recon.detach())
    d_loss = discriminator_loss(real_logits, fake_logits)
    assert len(real_logits) == len(cfg.mpd_periods) + len(cfg.mrd_ffts)
    assert torch.isfinite(d_loss)

    fake_logits, fake_feats = disc(recon)
    total, parts = generator_loss(cfg, audio, recon, mean, logvar, real_feats, fake_logits, fake_feats, log_mag,
                                  target)
    assert set(parts) == {"stft", "fm", "gan", "kl", "mag"}
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    total.backward()
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_stft_warm_up_lowers_the_multi_resolution_loss() -> None:
    cfg = get_config("debug").vae
    gen = torch.Generator().manual_seed(0)
    vae = _seeded_vae("debug")
    audio = _tones(2, 24_000, gen)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    with torch.no_grad():
        before = multi_resolution_stft_loss(audio, vae(audio, torch.Generator().manual_seed(1))[0])
    for _ in range(8):
        recon, mean, logvar, log_mag, target = vae(audio, gen)
        total, _ = stft_only_loss(cfg, audio, recon, mean, logvar, log_mag, target)
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        after = multi_resolution_stft_loss(audio, vae(audio, torch.Generator().manual_seed(1))[0])
    assert torch.isfinite(after) and after < 0.95 * before


def test_pca_init_starts_the_linear_paths_at_whitened_pca() -> None:
    cfg = get_config("debug").vae
    vae = _seeded_vae("debug")
    audio = _tones(4, 24_000, torch.Generator().manual_seed(0))
    stats = vae.init_linear_paths(audio, init_logvar=-4.0)
    assert 0.0 < stats["explained"] <= 1.0
    with torch.no_grad():
        mean, logvar = vae.encode(audio)  # (B, C, L)
        log_mag, _ = vae.decoder.spectrum(mean)  # (B, F, L)
        target = torch.clamp(vae.encoder.stft.log_magnitude(audio), min=LINEAR_FLOOR)
    flat = mean.transpose(1, 2).reshape(-1, cfg.latent_dim)
    # whitened: zero mean and unit variance per latent channel over the frames it was fitted on
    torch.testing.assert_close(flat.mean(0), torch.zeros(cfg.latent_dim), atol=1e-3, rtol=0)
    torch.testing.assert_close(flat.std(0), torch.ones(cfg.latent_dim), atol=1e-3, rtol=0)
    assert abs(logvar.mean().item() + 4.0) < 1.0  # the bias is set; the weights keep their random init
    # the decoder's linear path inverts it: decoding the latents gives the rank-C PCA reconstruction of the frames
    frames = target.transpose(1, 2).reshape(-1, target.shape[1]).double()  # (N, F)
    mu = frames.mean(0)
    basis = torch.linalg.svd(frames - mu, full_matrices=False)[2][: cfg.latent_dim]  # (C, F)
    expected = ((frames - mu) @ basis.T @ basis + mu).float()
    torch.testing.assert_close(log_mag.transpose(1, 2).reshape(-1, target.shape[1]), expected, atol=2e-3, rtol=0)
    assert (expected - frames.float()).abs().mean() < (mu.float() - frames.float()).abs().mean()


def test_log_magnitude_loss_is_zero_on_the_input_and_floored() -> None:
    x = torch.tensor([[[-20.0, 0.0, 3.0]]])
    assert log_magnitude_loss(x, x) == 0
    assert log_magnitude_loss(torch.full_like(x, -50.0), torch.full_like(x, -9.0)) == 0  # both below the floor
    assert log_magnitude_loss(x + 1.0, x) == pytest.approx(2 / 3)  # -20 -> -19 stays under the floor


@pytest.mark.parametrize(("n_fft", "hop"), [(1920, 480), (384, 96)])
def test_in_graph_dft_kernels_equal_the_stored_bases_within_two_ulps(n_fft: int, hop: int) -> None:
    from melody_edge.models.vae import dft_kernel

    for stored, inverse in ((STFT(n_fft, hop).basis, False), (ISTFT(n_fft, hop).basis, True)):
        kernel = dft_kernel(n_fft, inverse)
        assert kernel.dtype == torch.float32 and kernel.shape == stored.shape
        ulp = torch.finfo(torch.float32).eps * stored.abs().max()
        assert (kernel - stored).abs().max() <= 2 * ulp


def test_vae_with_in_graph_kernels_gives_the_same_audio_and_latents() -> None:
    import copy

    vae = _seeded_vae("debug").eval()
    graph = copy.deepcopy(vae)
    for m in graph.modules():
        if isinstance(m, (STFT, ISTFT)):
            m.kernel_in_graph = True
    g = torch.Generator().manual_seed(4)
    audio = _tones(2, 24_000 + 17, g)
    z = torch.rand(2, 51, vae.cfg.latent_dim, generator=g) * 2 - 1
    with torch.no_grad():
        for ref, out in ((vae.encode_for_diffusion(audio), graph.encode_for_diffusion(audio)),
                         (vae.decode_from_diffusion(z), graph.decode_from_diffusion(z))):
            err = ((out - ref) ** 2).sum() / (ref**2).sum()
            assert 10 * torch.log10(1 / err.clamp_min(1e-30)) > 100  # dB: the fp32 parity gate (measured 110)
