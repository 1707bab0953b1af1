"""Discriminators of the VAE-GAN training (training only; never exported).

- ``MultiPeriodDiscriminator``: HiFi-GAN's MPD (Kong et al. 2020), one 2-D conv stack per period over the waveform
  folded to (T / p, p); channels c, 4c, 16c, 32c, 32c with c = ``cfg.disc_channels`` (HiFi-GAN: c = 32).
- ``MultiResolutionDiscriminator``: UnivNet's MRD (Jang et al. 2021), one 2-D conv stack per FFT size over the
  linear magnitude spectrogram (window = n_fft, hop = n_fft / 4); ``cfg.disc_channels`` channels.

Every discriminator returns (logits list, feature-map list): one (B, N) logit tensor per sub-discriminator and, per
sub-discriminator, the list of its layer outputs (the logits map included, as in HiFi-GAN).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from melody_edge.models.config import VAEConfig
from melody_edge.models.losses import stft_magnitude

LRELU_SLOPE = 0.1

DiscOutput = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


class _ConvStack2d(nn.Module):
    """Weight-normed Conv2d layers with leaky ReLU, then a 1-channel conv; returns (logits (B, N), feature maps)."""

    def __init__(self, convs: list[nn.Conv2d], post: nn.Conv2d) -> None:
        super().__init__()
        self.convs = nn.ModuleList(weight_norm(conv) for conv in convs)
        self.post = weight_norm(post)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # x: (B, 1, H, W)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)  # (B, C, H', W')
            feats.append(x)
        x = self.post(x)  # (B, 1, H', W')
        feats.append(x)
        return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    """One MPD branch: the waveform folded to (B, 1, T / period, period), convolved along the first axis only."""

    def __init__(self, period: int, channels: int) -> None:
        super().__init__()
        self.period = period
        widths = [1, channels, 4 * channels, 16 * channels, 32 * channels, 32 * channels]
        convs = [
            nn.Conv2d(c_in, c_out, (5, 1), (3, 1) if i < 4 else (1, 1), padding=(2, 0))
            for i, (c_in, c_out) in enumerate(itertools.pairwise(widths))
        ]
        self.stack = _ConvStack2d(convs, nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # audio: (B, T)
        pad = (self.period - audio.shape[-1] % self.period) % self.period
        x = F.pad(audio[:, None], (0, pad), mode="reflect")  # (B, 1, T_padded)
        return self.stack(x.view(x.shape[0], 1, -1, self.period))  # (B, 1, T_padded / period, period)


class ResolutionDiscriminator(nn.Module):
    """One MRD branch: 2-D convs over the magnitude spectrogram (B, 1, n_fft // 2 + 1, frames), striding time."""

    def __init__(self, n_fft: int, channels: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        convs = [nn.Conv2d(1, channels, (3, 9), padding=(1, 4))]
        convs += [nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)) for _ in range(3)]
        convs += [nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))]
        self.stack = _ConvStack2d(convs, nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # audio: (B, T)
        mag = stft_magnitude(audio, self.n_fft, self.n_fft, self.n_fft // 4)  # (B, F, frames)
        return self.stack(mag[:, None])


class _MultiDiscriminator(nn.Module):
    """Runs its sub-discriminators on the same audio and gathers their (logits, feature maps)."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, audio: torch.Tensor) -> DiscOutput:  # audio: (B, T)
        logits, feats = [], []
        for branch in self.branches:
            branch_logits, branch_feats = branch(audio)
            logits.append(branch_logits)
            feats.append(branch_feats)
        return logits, feats


def _period_branches(cfg: VAEConfig) -> list[nn.Module]:
    return [PeriodDiscriminator(p, cfg.disc_channels) for p in cfg.mpd_periods]


def _resolution_branches(cfg: VAEConfig) -> list[nn.Module]:
    return [ResolutionDiscriminator(n, cfg.disc_channels) for n in cfg.mrd_ffts]


class MultiPeriodDiscriminator(_MultiDiscriminator):
    """HiFi-GAN multi-period discriminator over ``cfg.mpd_periods``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__(_period_branches(cfg))


class MultiResolutionDiscriminator(_MultiDiscriminator):
    """UnivNet multi-resolution spectrogram discriminator over ``cfg.mrd_ffts``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__(_resolution_branches(cfg))


class VAEDiscriminator(_MultiDiscriminator):
    """The MPD and MRD branches together: (B, T) -> (logits list, feature-map list), MPD branches first."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__(_period_branches(cfg) + _resolution_branches(cfg))
