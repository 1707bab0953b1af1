"""The audio VAE of MeLoDy: 24 kHz waveform <-> frame-rate latents.

Vocos-like rather than HiFi-GAN-like: encoder and decoder are ConvNeXt stacks that run at the latent frame rate,
the encoder reads a log-magnitude spectrogram and the decoder predicts a complex spectrogram that an iSTFT turns
into audio. Both the STFT and the iSTFT are convolutions with fixed DFT kernels (no FFT ops, no complex dtypes), so
the encoder and the decoder export to ONNX and Core ML as they are.

Kept from the paper (Lam et al. 2023, B.1): a Gaussian latent with a KL term, and latents divided by
``latent_scale`` (3) and clipped to [-1, 1] before the diffusion model sees them. The losses and the discriminators
of the VAE-GAN training are in ``losses.py`` and ``discriminators.py``.

Framing: with hop h and n_fft = 4h, ``T`` samples give exactly ``ceil(T / h)`` frames; frame t is centred on the
middle of samples [t*h, (t+1)*h), and decoding L frames gives exactly L*h samples.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from melody_edge.models.config import VAEConfig

LOG_MAG_FLOOR = 1e-10  # power floor of the log-magnitude input: log-magnitude >= 0.5 * ln(1e-10) = -11.5
LOG_MAG_MAX = 10.0  # the decoder's predicted log-magnitude is clamped here before exp
LINEAR_FLOOR = -7.0  # log-magnitude floor of the linear path (|X| = 9e-4; a full-scale sine peaks at 480)


def _dft(n_fft: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos and sin of the DFT angles 2 pi k n / n_fft (k = 0 .. n_fft // 2), each (F, n_fft), and the periodic Hann
    window (n_fft,); in float64, the bases are stored as float32 once built."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft  # (F, n_fft)
    return torch.cos(angle), torch.sin(angle), torch.hann_window(n_fft, periodic=True, dtype=torch.float64)


def dft_kernel(n_fft: int, inverse: bool, device: torch.device | None = None) -> torch.Tensor:
    """The (2F, 1, n_fft) float32 kernel of ``STFT`` (``ISTFT`` with ``inverse``), built from ``arange``: the n_fft
    distinct cosines and sines (float64, rounded once) gathered at k n mod n_fft and multiplied in float32; within
    two float32 ulps of the stored ``basis`` buffers (121.7 dB on an STFT of noise, the same as the buffers give).

    With ``kernel_in_graph`` set (the ONNX exporter's VAE graphs, ``conversion.graphs``) the transforms compute
    their kernel with this in the graph, which then stores no table: onnxruntime folds it once at session load
    (measured ~0.1 s for n_fft 1920; float64 tables or int64 indices took 2-3x longer). For the tiny model that is
    14.8 MB less in each VAE graph file."""
    n = torch.arange(n_fft, dtype=torch.int32, device=device)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.int32, device=device)
    unit = n.to(torch.float64) * (2 * math.pi / n_fft)  # the n_fft distinct angles
    cos_n, sin_n = torch.cos(unit).float(), torch.sin(unit).float()
    window = (0.5 - 0.5 * torch.cos(unit)).float()  # periodic Hann, as _dft's
    r = ((k[:, None] * n[None, :]) % n_fft).flatten()  # (F * n_fft,): angle 2 pi k n / n_fft = unit[r]
    # a 1-D gather (ONNX Gather; indexing by a 2-D tensor exports as GatherND, which folds several times slower)
    cos, sin = (torch.index_select(t, 0, r).reshape(len(k), n_fft) for t in (cos_n, sin_n))
    if not inverse:
        basis = torch.cat([window * cos, -window * sin])
    else:
        weight = torch.where((k == 0) | (k == n_fft // 2), 1.0, 2.0)[:, None]  # as ISTFT's: conjugate bins twice
        basis = torch.cat([weight * cos, -weight * sin]) * (window / n_fft)
    return basis[:, None, :]


class STFT(nn.Module):
    """Hann-window STFT as a strided Conv1d with fixed DFT kernels.

    ``audio`` (B, T) is zero-padded as if to a multiple of ``hop`` on the right and by (n_fft - hop) / 2 on both
    sides, so it gives exactly ceil(T / hop) frames. Bins are k = 0 .. n_fft // 2; the transform is unnormalised.
    ``kernel_in_graph``: compute the kernel in the forward pass (``dft_kernel``) instead of reading the buffer.
    """

    kernel_in_graph = False

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        if (n_fft - hop) % 2:
            raise ValueError(f"n_fft - hop must be even, got n_fft={n_fft}, hop={hop}")
        self.n_fft, self.hop, self.n_bins = n_fft, hop, n_fft // 2 + 1
        cos, sin, window = _dft(n_fft)
        basis = torch.cat([window * cos, -window * sin])  # (2F, n_fft): real; imag
        self.register_buffer("basis", basis[:, None, :].float(), persistent=False)  # (2F, 1, n_fft)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> (real, imag), each (B, n_fft // 2 + 1, ceil(T / hop))."""
        side = (self.n_fft - self.hop) // 2
        # a static pad (Core ML has no dynamic pad on 2-D tensors): with hop - 1 extra zeros on the right the
        # strided conv gives floor((T - 1) / hop) + 1 = ceil(T / hop) frames, the same as padding T to a multiple
        x = F.pad(audio, (side, side + self.hop - 1))[:, None, :]  # (B, 1, T + n_fft - 1)
        basis = dft_kernel(self.n_fft, False, audio.device) if self.kernel_in_graph else self.basis
        spec = F.conv1d(x, basis, stride=self.hop)  # (B, 2F, ceil(T / hop))
        return spec[:, : self.n_bins], spec[:, self.n_bins :]

    def log_magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) -> log |STFT| (B, n_fft // 2 + 1, ceil(T / hop))."""
        real, imag = self(audio)
        return 0.5 * torch.log(torch.clamp(real * real + imag * imag, min=LOG_MAG_FLOOR))


class ISTFT(nn.Module):
    """Inverse of ``STFT``: inverse-DFT frames times the Hann synthesis window, overlap-added by a ConvTranspose1d.

    The overlap-add is divided by the summed squared window, itself a ConvTranspose1d of ones, so it works for any
    number of frames; the padding ``STFT`` adds on the left and right is cropped, so L frames give L * hop samples.
    ``kernel_in_graph`` as for ``STFT``.
    """

    kernel_in_graph = False

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        if (n_fft - hop) % 2:
            raise ValueError(f"n_fft - hop must be even, got n_fft={n_fft}, hop={hop}")
        self.n_fft, self.hop, self.n_bins = n_fft, hop, n_fft // 2 + 1
        cos, sin, window = _dft(n_fft)
        # a real signal's spectrum is conjugate-symmetric: bins 1 .. n_fft/2 - 1 count twice, DC and Nyquist once
        weight = torch.full((self.n_bins, 1), 2.0, dtype=torch.float64)
        weight[0] = weight[-1] = 1.0
        basis = torch.cat([weight * cos, -weight * sin]) * window / n_fft  # (2F, n_fft)
        self.register_buffer("basis", basis[:, None, :].float(), persistent=False)  # (2F, 1, n_fft)
        self.register_buffer("window_sq", (window**2)[None, None, :].float(), persistent=False)  # (1, 1, n_fft)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        """(real, imag) each (B, n_fft // 2 + 1, L) -> audio (B, L * hop)."""
        spec = torch.cat([real, imag], dim=1)  # (B, 2F, L)
        basis = dft_kernel(self.n_fft, True, spec.device) if self.kernel_in_graph else self.basis
        audio = F.conv_transpose1d(spec, basis, stride=self.hop)  # (B, 1, (L - 1) * hop + n_fft)
        ones = torch.ones_like(spec[:1, :1])  # (1, 1, L); derived from spec so that L stays dynamic in exports
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.hop)  # (1, 1, (L - 1) * hop + n_fft)
        side = (self.n_fft - self.hop) // 2
        # every kept sample lies inside at least one window's non-zero part, so the envelope is > 0 there
        return audio[:, 0, side:-side] / envelope[:, 0, side:-side]  # (B, L * hop)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block in 1-D: depthwise conv, LayerNorm over channels, pointwise MLP (GELU), layer scale, residual."""

    def __init__(self, dim: int, ffn_mult: int, kernel: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, ffn_mult * dim)
        self.pw2 = nn.Linear(ffn_mult * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        h = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))  # (B, T, C)
        return x + (self.gamma * h).transpose(1, 2)  # (B, C, T)


class ConvNeXtStack(nn.Module):
    """Conv1d(in -> dim, kernel) -> LayerNorm -> ``n_layers`` ConvNeXt blocks -> LayerNorm -> Conv1d(dim -> out, 1)."""

    def __init__(self, in_dim: int, dim: int, n_layers: int, out_dim: int, ffn_mult: int, kernel: int) -> None:
        super().__init__()
        self.embed = nn.Conv1d(in_dim, dim, kernel, padding=kernel // 2)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, ffn_mult, kernel, 1.0 / n_layers) for _ in range(n_layers))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Conv1d(dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim, T) -> (B, out_dim, T)
        x = self.norm_in(self.embed(x).transpose(1, 2)).transpose(1, 2)  # (B, dim, T)
        for block in self.blocks:
            x = block(x)
        x = self.norm_out(x.transpose(1, 2)).transpose(1, 2)  # (B, dim, T)
        return self.proj(x)


class VAEEncoder(nn.Module):
    """Waveform (B, T) -> Gaussian posterior (mean, logvar), each (B, latent_dim, ceil(T / hop)).

    The mean is a linear path (a 1x1 conv on the log-magnitude floored at ``LINEAR_FLOOR``) plus the ConvNeXt
    stack's correction; ``VAE.init_linear_paths`` starts the linear path at whitened PCA.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.stft = STFT(cfg.n_fft, cfg.hop)
        self.net = ConvNeXtStack(self.stft.n_bins, cfg.enc_dim, cfg.enc_layers, 2 * cfg.latent_dim, cfg.ffn_mult,
                                 cfg.kernel)
        self.linear = nn.Conv1d(self.stft.n_bins, cfg.latent_dim, 1)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior(self.stft.log_magnitude(audio))

    def posterior(self, log_mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log |STFT| (B, F, L) -> (mean, logvar), each (B, latent_dim, L)."""
        mean, logvar = self.net(log_mag).chunk(2, dim=1)  # (B, latent_dim, L) each
        mean = mean + self.linear(torch.clamp(log_mag, min=LINEAR_FLOOR))
        return mean, torch.clamp(logvar, -30.0, 20.0)


class VAEDecoder(nn.Module):
    """Latents (B, latent_dim, L) -> waveform (B, L * hop), through a Vocos-style iSTFT head.

    The stack predicts per bin a phase p and a correction to the log-magnitude of a linear path (a 1x1 conv of
    the latents, the inverse of the encoder's); their sum x is clamped at ``LOG_MAG_MAX`` and the spectrum is
    exp(x) * (cos p + i sin p).
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.istft = ISTFT(cfg.n_fft, cfg.hop)
        self.net = ConvNeXtStack(cfg.latent_dim, cfg.dec_dim, cfg.dec_layers, 2 * self.istft.n_bins, cfg.ffn_mult,
                                 cfg.kernel)
        self.linear = nn.Conv1d(cfg.latent_dim, self.istft.n_bins, 1)

    def spectrum(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, latent_dim, L) -> (log-magnitude, phase), each (B, n_fft // 2 + 1, L)."""
        log_mag, phase = self.net(z).chunk(2, dim=1)  # (B, F, L) each
        return log_mag + self.linear(z), phase

    def synthesize(self, log_mag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """(log-magnitude, phase), each (B, F, L) -> audio (B, L * hop)."""
        mag = torch.exp(torch.clamp(log_mag, max=LOG_MAG_MAX))  # (B, F, L)
        return self.istft(mag * torch.cos(phase), mag * torch.sin(phase))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesize(*self.spectrum(z))  # (B, L * hop)


class VAEOutput(NamedTuple):
    """What a training pass of ``VAE`` returns: the reconstruction (B, T), the posterior (mean, logvar), each
    (B, latent_dim, L), the decoder's log-magnitude (B, F, L) and the input's log-magnitude at the same STFT."""

    recon: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor
    log_mag: torch.Tensor
    log_mag_target: torch.Tensor


class VAE(nn.Module):
    """MeLoDy's audio VAE: ``encode`` / ``decode`` at the frame rate, plus the diffusion-side scaling of B.1.

    The diffusion model works on time-major latents (B, L, latent_dim) divided by ``cfg.latent_scale`` and clipped
    to [-1, 1]; ``encode_for_diffusion`` and ``decode_from_diffusion`` convert to and from that space.
    """

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)

    @torch.no_grad()
    def init_linear_paths(self, audio: torch.Tensor, init_logvar: float = -4.0) -> dict[str, float]:
        """Data-dependent initialisation: whitened PCA of the floored log-magnitude frames of ``audio`` (B, T).

        The encoder's linear path becomes the projection on the top ``latent_dim`` principal components divided by
        their standard deviations (so latents start near N(0, 1), inside the diffusion range), the decoder's its
        inverse; the stacks' mean and log-magnitude outputs start at zero and the bias of the posterior's
        log-variance at ``init_logvar`` (its weights keep their random init). Without it a 2-core training run
        learns loudness and rhythm but not pitch (chroma correlation 0.09 after 1,750 steps); 32 PCA components
        alone keep a chroma correlation of about 0.9.
        Returns the fraction of the frames' variance the components explain.
        """
        k = self.cfg.latent_dim
        frames = torch.clamp(self.encoder.stft.log_magnitude(audio), min=LINEAR_FLOOR)  # (B, F, L)
        frames = frames.transpose(1, 2).reshape(-1, frames.shape[1]).double()  # (N, F)
        mu = frames.mean(0)
        _, s, vt = torch.linalg.svd(frames - mu, full_matrices=False)
        std = s[:k] / math.sqrt(len(frames) - 1)  # (k,)
        basis = vt[:k]  # (k, F)
        self.encoder.linear.weight.copy_((basis / std[:, None])[:, :, None].float())
        self.encoder.linear.bias.copy_((-(basis @ mu) / std).float())
        self.decoder.linear.weight.copy_((basis.T * std[None, :])[:, :, None].float())
        self.decoder.linear.bias.copy_(mu.float())
        for proj, n in ((self.encoder.net.proj, k), (self.decoder.net.proj, self.decoder.istft.n_bins)):
            proj.weight[:n].zero_()
            proj.bias[:n].zero_()
        self.encoder.net.proj.bias[k:].fill_(init_logvar)
        return {"explained": float((s[:k] ** 2).sum() / (s**2).sum())}

    def encode(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> (mean, logvar), each (B, latent_dim, ceil(T / hop))."""
        return self.encoder(audio)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim, L) -> (B, L * hop)."""
        return self.decoder(z)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw z = mean + exp(logvar / 2) * eps, with eps from ``generator``."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def to_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(z / self.cfg.latent_scale, -1.0, 1.0)

    def from_diffusion(self, zd: torch.Tensor) -> torch.Tensor:
        return zd * self.cfg.latent_scale

    def encode_for_diffusion(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) -> the posterior mean, scaled and clipped, time-major (B, ceil(T / hop), latent_dim)."""
        mean, _ = self.encode(audio)  # (B, latent_dim, L)
        return self.to_diffusion(mean).transpose(1, 2)

    def decode_from_diffusion(self, zd: torch.Tensor) -> torch.Tensor:
        """(B, L, latent_dim) in diffusion space -> audio (B, L * hop)."""
        return self.decode(self.from_diffusion(zd).transpose(1, 2))

    def forward(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Training pass: (B, T) -> ``VAEOutput`` (reconstruction cropped to (B, T), posterior, spectra)."""
        target = self.encoder.stft.log_magnitude(audio)  # (B, F, L): the encoder's input and the magnitude target
        mean, logvar = self.encoder.posterior(target)  # (B, latent_dim, L)
        log_mag, phase = self.decoder.spectrum(self.sample(mean, logvar, generator))  # (B, F, L) each
        recon = self.decoder.synthesize(log_mag, phase)  # (B, L * hop)
        return VAEOutput(recon[:, : audio.shape[-1]], mean, logvar, log_mag, target)
