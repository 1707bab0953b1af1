"""Training losses of the VAE-GAN (Lam et al. 2023, B.1).

- multi-resolution STFT loss at the paper's seven resolutions: per resolution, L1 on the magnitude plus L1 on the
  log magnitude, averaged over resolutions;
- feature matching: L1 between the discriminator feature maps of real and reconstructed audio, averaged over the
  layers of each discriminator, then over the discriminators;
- LSGAN generator and discriminator losses, averaged over the discriminators;
- KL of the diagonal Gaussian posterior to N(0, I), averaged over latent channels and frames;
- ours, not the paper's: L1 between the decoder's predicted log-magnitude and the input's at the VAE's own STFT,
  both floored at ``LINEAR_FLOOR``. It reaches the magnitudes directly, whatever the phases; through the iSTFT
  alone a 2-core run learned envelopes but not pitch.

``generator_loss`` weights these with ``cfg.w_stft``, ``cfg.w_fm``, ``cfg.w_gan``, ``cfg.w_kl`` and ``cfg.w_mag``;
``stft_only_loss`` is its warm-up form without the discriminators (STFT and KL terms only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from melody_edge.models.config import VAEConfig
from melody_edge.models.vae import LINEAR_FLOOR, LOG_MAG_MAX

# paper B.1: (FFT size, window, hop) of the multi-resolution STFT loss
STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (8192, 4096, 2048),
    (4096, 2048, 1024),
    (2048, 1024, 512),
    (512, 256, 128),
    (128, 64, 32),
    (64, 32, 16),
    (32, 16, 8),
)


def stft_magnitude(audio: torch.Tensor, n_fft: int, win: int, hop: int) -> torch.Tensor:
    """(B, T) -> |STFT| (B, n_fft // 2 + 1, frames), Hann window, scaled by 1 / sqrt(n_fft), zero-padded centring."""
    window = torch.hann_window(win, device=audio.device, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop_length=hop, win_length=win, window=window, center=True, pad_mode="constant",
                      normalized=True, return_complex=True)  # (B, F, frames)
    power = torch.view_as_real(spec).square().sum(-1)  # (B, F, frames)
    return torch.sqrt(torch.clamp(power, min=1e-8))  # the floor keeps the gradient of sqrt finite at silence


def multi_resolution_stft_loss(
    audio: torch.Tensor, recon: torch.Tensor, resolutions: tuple[tuple[int, int, int], ...] = STFT_RESOLUTIONS
) -> torch.Tensor:
    """Mean over resolutions of L1(|X|, |Y|) + L1(log |X|, log |Y|); ``audio`` and ``recon`` are (B, T)."""
    total = audio.new_zeros(())
    for n_fft, win, hop in resolutions:
        mag_real = stft_magnitude(audio, n_fft, win, hop)  # (B, F, frames)
        mag_fake = stft_magnitude(recon, n_fft, win, hop)
        total = total + F.l1_loss(mag_fake, mag_real) + F.l1_loss(torch.log(mag_fake), torch.log(mag_real))
    return total / len(resolutions)


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), averaged over every latent element."""
    return 0.5 * torch.mean(mean.square() + torch.exp(logvar) - 1.0 - logvar)


def feature_matching_loss(real_feats: list[list[torch.Tensor]], fake_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between feature maps, averaged over the layers of each discriminator, then over discriminators."""
    per_disc = [
        torch.stack([F.l1_loss(fake, real.detach()) for real, fake in zip(reals, fakes, strict=True)]).mean()
        for reals, fakes in zip(real_feats, fake_feats, strict=True)
    ]
    return torch.stack(per_disc).mean()


def gan_generator_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss: mean over discriminators of E[(1 - D(fake))^2]."""
    return torch.stack([torch.mean((1.0 - logits).square()) for logits in fake_logits]).mean()


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss: mean over discriminators of E[(1 - D(real))^2] + E[D(fake)^2].

    Pass the logits of a detached reconstruction as ``fake_logits``.
    """
    per_disc = [
        torch.mean((1.0 - real).square()) + torch.mean(fake.square())
        for real, fake in zip(real_logits, fake_logits, strict=True)
    ]
    return torch.stack(per_disc).mean()


def log_magnitude_loss(log_mag: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and target log-magnitudes (B, F, L), both clamped to [LINEAR_FLOOR, LOG_MAG_MAX]."""
    return F.l1_loss(torch.clamp(log_mag, LINEAR_FLOOR, LOG_MAG_MAX), torch.clamp(target, LINEAR_FLOOR, LOG_MAG_MAX))


def stft_only_loss(
    cfg: VAEConfig, audio: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
    log_mag: torch.Tensor | None = None, log_mag_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Warm-up generator loss without discriminators: w_stft * STFT + w_kl * KL, plus w_mag * log-magnitude L1
    when the decoder's ``log_mag`` and its ``log_mag_target`` are given; returns (total, parts)."""
    parts = {"stft": multi_resolution_stft_loss(audio, recon), "kl": kl_loss(mean, logvar)}
    total = cfg.w_stft * parts["stft"] + cfg.w_kl * parts["kl"]
    if log_mag is not None and log_mag_target is not None:
        parts["mag"] = log_magnitude_loss(log_mag, log_mag_target)
        total = total + cfg.w_mag * parts["mag"]
    return total, parts


def generator_loss(
    cfg: VAEConfig,
    audio: torch.Tensor,
    recon: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    disc_real_feats: list[list[torch.Tensor]],
    disc_fake_logits: list[torch.Tensor],
    disc_fake_feats: list[list[torch.Tensor]],
    log_mag: torch.Tensor | None = None,
    log_mag_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Full VAE-GAN generator loss: w_stft * STFT + w_fm * FM + w_gan * GAN + w_kl * KL; returns (total, parts).

    ``audio`` and ``recon`` are (B, T); the discriminator outputs are those of ``VAEDiscriminator`` on the real
    audio (features only) and on the reconstruction (logits and features, not detached).
    """
    total, parts = stft_only_loss(cfg, audio, recon, mean, logvar, log_mag, log_mag_target)
    parts["fm"] = feature_matching_loss(disc_real_feats, disc_fake_feats)
    parts["gan"] = gan_generator_loss(disc_fake_logits)
    return total + cfg.w_fm * parts["fm"] + cfg.w_gan * parts["gan"], parts
