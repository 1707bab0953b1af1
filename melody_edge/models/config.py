"""Model configurations and the three presets: ``debug``, ``tiny`` and ``paper``.

Every network of MeLoDy (Lam et al. 2023) has a config dataclass here; ``ModelConfig`` ties them together
with the rates they share. Preset sizes:

- ``debug``: random weights, builds in well under a second; used by the tests of every path.
- ``tiny``: the bundled model, trained in this repo on 2 CPU cores (see MODEL_CARD.md).
- ``paper``: MeLoDy's sizes (LM 429.5M, DPD 296.6M, VAE 40M + 60.1M), random weights, for cost measurements.

One deliberate deviation from the paper: the generation window is 10.24 s, not 10 s, so that each of the
4 chunks holds a whole number of 25 Hz semantic tokens (64) and latent frames; 10 s gives 62.5 tokens per chunk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from melody_edge.errors import ConfigError

SAMPLE_RATE = 24_000  # the paper's rate
TOKEN_RATE = 25  # semantic tokens per second (Wav2Vec2-Conformer at 25 Hz in the paper)
TEXT_DIM = 384  # all-MiniLM-L6-v2 hidden size
TEXT_MAX_TOKENS = 64  # MiniLM word pieces kept per prompt; captions here are far shorter


@dataclass(frozen=True)
class TextConfig:
    """Text conditioning: MiniLM token states -> ``n_prefix`` soft prefix vectors (a learned-query resampler).

    Why a soft prefix and not MuLan-style RVQ tokens: the RVQ prefix quantizes one pooled embedding, and MiniLM's
    pooled embedding barely separates "G major" from "D minor" (measured cosine > 0.95 between such captions);
    learned queries cross-attending to every token state keep words such as the key and the tempo apart.
    """

    n_prefix: int = 8  # MuLan gives 12 tokens; 8 learned queries suffice for our captions
    n_heads: int = 4
    dropout_p: float = 0.1  # conditioning dropout for classifier-free guidance (paper: 0.1)


@dataclass(frozen=True)
class ControlConfig:
    """Explicit musical controls (``melody_edge.controls``) as conditions of the LM, beside the text prefix.

    Four extra prefix vectors (key, tempo, metre, instrument family; each replaced by its learned "absent" vector
    when not given) and, per token, the beat phase at the asked tempo (sin/cos of the first ``beat_harmonics``
    harmonics) added to the LM's input. With ``key_rotation`` the semantic tokens are transposition-equivariant:
    the LM writes in C (tonic 0) and sees only the mode, and the runtime rotates its tokens to the asked tonic.
    """

    enabled: bool = False  # models trained before the controls existed have none
    key_rotation: bool = True  # True: the LM sees the mode (2 classes); False: the key (24 classes)
    n_metres: int = 11  # = len(melody_edge.controls.METRES)
    n_families: int = 9  # = len(melody_edge.controls.FAMILIES)
    beat_harmonics: int = 2  # beat-phase features per token: 2 * harmonics
    dropout: float = 0.3  # each control is dropped independently in training (any subset may be given)

    @property
    def n_keys(self) -> int:
        return 2 if self.key_rotation else 24

    @property
    def n_prefix(self) -> int:
        return 4 if self.enabled else 0

    @property
    def beat_dim(self) -> int:
        return 2 * self.beat_harmonics if self.enabled else 0


@dataclass(frozen=True)
class LMConfig:
    """LLaMA-style decoder over semantic tokens (RoPE, RMSNorm, SwiGLU, static-shape KV cache)."""

    vocab_size: int = 256  # k-means clusters of the semantic tokenizer (paper: 1024)
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 688  # SwiGLU hidden, ~8/3 * dim rounded to a multiple of 16
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True)
class DPDConfig:
    """Dual-path diffusion denoiser (v-prediction on the angle parameterization)."""

    latent_dim: int = 32  # = VAEConfig.latent_dim
    dim: int = 192
    n_blocks: int = 3
    n_heads: int = 4
    coarse_layers: int = 1  # RoFormer layers across merged segments, per block
    fine_layers: int = 1  # local attention layers inside each segment, per block (stand-in for the bi-SRU)
    ffn_mult: int = 4
    segment: int = 32  # frames per segment; segments overlap by half
    merge: int = 8  # a segment is merged to segment // merge vectors for the coarse path
    sem_vocab: int = 256  # = LMConfig.vocab_size; index sem_vocab is the "no condition" token for CFG
    cond_dropout: float = 0.1  # paper: 0.1
    token_features: int = 0  # > 0: each token also embeds its tokenizer feature vector (24-d: chroma, ...)
    n_families: int = 0  # > 0: the asked instrument family (controls.FAMILIES; index n_families = none) conditions it
    n_keys: int = 0  # 24: the asked key (controls.Controls.key_index; index 24 = none) conditions it

    @property
    def controlled(self) -> bool:
        """Whether the DPD takes a ``controls`` input (B, 2) int64: [family, key]."""
        return bool(self.n_families or self.n_keys)


@dataclass(frozen=True)
class VAEConfig:
    """VAE-GAN over 24 kHz audio: a frame-rate ConvNeXt encoder and decoder with an iSTFT head.

    The iSTFT is written as a ConvTranspose1d overlap-add so the decoder exports to ONNX and Core ML.
    """

    hop: int = 480  # 24 kHz / 480 = 50 Hz latents (paper: 96 -> 250 Hz)
    latent_dim: int = 32  # paper: 16; the tiny model trades rate for width
    enc_dim: int = 128
    enc_layers: int = 3
    dec_dim: int = 256
    dec_layers: int = 4
    kernel: int = 7
    ffn_mult: int = 3
    latent_scale: float = 3.0  # latents / 3, clipped to [-1, 1] (paper B.1)
    # discriminators (training only)
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mrd_ffts: tuple[int, ...] = (512, 1024, 2048)
    disc_channels: int = 16
    # loss weights (paper B.1)
    w_stft: float = 50.0
    w_mag: float = 50.0  # ours: L1 between the decoder's and the input's log-magnitude (floored), see losses.py
    w_fm: float = 20.0
    w_gan: float = 1.0
    w_kl: float = 5e-3

    @property
    def n_fft(self) -> int:
        return 4 * self.hop

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop


@dataclass(frozen=True)
class ModelConfig:
    """All of one model: the networks' configs and the rates and window they share."""

    name: str = "tiny"
    text: TextConfig = field(default_factory=TextConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    dpd: DPDConfig = field(default_factory=DPDConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    controls: ControlConfig = field(default_factory=ControlConfig)
    window_tokens: int = 256  # 10.24 s at 25 Hz: the training window of the LM and the DPD
    n_chunks: int = 4  # paper: 4 chunks per window, each with its own angle
    guidance: float = 2.5  # default DPD classifier-free guidance scale of this model (paper: 2.5)
    lm_guidance: float = 1.0  # default LM classifier-free guidance scale (1 = off)
    dpd_steps: int = 8  # default DPD sampling steps; a step-distilled student (conversion.distill) records fewer
    temperature: float = 1.0  # default LM sampling temperature of this model

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def token_rate(self) -> int:
        return TOKEN_RATE

    @property
    def frames_per_token(self) -> int:
        return int(round(self.vae.frame_rate / TOKEN_RATE))

    @property
    def window_frames(self) -> int:
        return self.window_tokens * self.frames_per_token

    @property
    def window_seconds(self) -> float:
        return self.window_tokens / TOKEN_RATE

    @property
    def chunk_tokens(self) -> int:
        return self.window_tokens // self.n_chunks

    @property
    def chunk_frames(self) -> int:
        return self.chunk_tokens * self.frames_per_token

    @property
    def lm_max_len(self) -> int:
        """Static KV-cache length: the text and control prefix plus one window of tokens."""
        return self.prefix_len + self.window_tokens

    @property
    def prefix_len(self) -> int:
        """Prefix vectors the LM reads before its tokens: the text's, then the controls'."""
        return self.text.n_prefix + self.controls.n_prefix

    def validate(self) -> ModelConfig:
        if self.dpd.latent_dim != self.vae.latent_dim:
            raise ConfigError(f"dpd.latent_dim {self.dpd.latent_dim} != vae.latent_dim {self.vae.latent_dim}")
        if self.dpd.sem_vocab != self.lm.vocab_size:
            raise ConfigError(f"dpd.sem_vocab {self.dpd.sem_vocab} != lm.vocab_size {self.lm.vocab_size}")
        if SAMPLE_RATE % self.vae.hop or abs(self.vae.frame_rate / TOKEN_RATE - self.frames_per_token) > 1e-9:
            raise ConfigError(f"vae.hop {self.vae.hop} must give a latent rate that is a multiple of {TOKEN_RATE} Hz")
        if not 1 <= self.dpd_steps <= 1000:
            raise ConfigError(f"dpd_steps {self.dpd_steps} must be an integer in [1, 1000]")
        if not 0 < self.temperature <= 100:
            raise ConfigError(f"temperature {self.temperature} must be in (0, 100]")
        if self.window_tokens % self.n_chunks:
            raise ConfigError(f"window_tokens {self.window_tokens} must divide into {self.n_chunks} chunks")
        if self.dpd.segment % 2 or self.dpd.segment % self.dpd.merge:
            raise ConfigError("dpd.segment must be even and a multiple of dpd.merge")
        if self.lm.dim % self.lm.n_heads or self.dpd.dim % self.dpd.n_heads:
            raise ConfigError("model dims must be multiples of their head counts")
        if self.dpd.n_families and (not self.controls.enabled or self.dpd.n_families != self.controls.n_families):
            raise ConfigError(f"dpd.n_families {self.dpd.n_families} must be 0 or, with controls enabled, "
                              f"controls.n_families {self.controls.n_families}")
        if self.dpd.n_keys not in (0, 24) or (self.dpd.n_keys and not self.controls.enabled):
            raise ConfigError(f"dpd.n_keys {self.dpd.n_keys} must be 0 or, with controls enabled, 24")
        if self.controls.enabled and self.controls.key_rotation and self.lm.vocab_size % 12:
            raise ConfigError(f"key_rotation needs a vocabulary of base codes x 12, got {self.lm.vocab_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        try:
            vae = dict(d["vae"])
            for key in ("mpd_periods", "mrd_ffts"):
                if key in vae:
                    vae[key] = tuple(vae[key])
            return cls(
                name=d["name"],
                text=TextConfig(**d["text"]),
                lm=LMConfig(**d["lm"]),
                dpd=DPDConfig(**d["dpd"]),
                vae=VAEConfig(**vae),
                controls=ControlConfig(**d.get("controls", {"enabled": False})),
                window_tokens=d["window_tokens"],
                n_chunks=d["n_chunks"],
                # configs written before these fields existed used the class defaults (paper 2.5, no LM guidance)
                guidance=d.get("guidance", cls.guidance),
                lm_guidance=d.get("lm_guidance", cls.lm_guidance),
                dpd_steps=d.get("dpd_steps", cls.dpd_steps),
                temperature=d.get("temperature", cls.temperature),
            ).validate()
        except (KeyError, TypeError) as e:
            raise ConfigError(f"model config is malformed ({e!r}); re-export the checkpoint with this version") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _debug() -> ModelConfig:
    return ModelConfig(
        name="debug",
        text=TextConfig(n_prefix=4, n_heads=2),
        lm=LMConfig(vocab_size=48, dim=32, n_layers=2, n_heads=2, ffn_dim=64),
        dpd=DPDConfig(latent_dim=8, dim=32, n_blocks=2, n_heads=2, segment=16, merge=4, sem_vocab=48,
                      token_features=24, n_families=9, n_keys=24),
        controls=ControlConfig(enabled=True),
        vae=VAEConfig(hop=480, latent_dim=8, enc_dim=16, enc_layers=1, dec_dim=32, dec_layers=1, disc_channels=4,
                      mrd_ffts=(256, 512)),
        window_tokens=64,  # 2.56 s: 4 chunks of 0.64 s
        n_chunks=4,
    )


def _tiny() -> ModelConfig:
    # dropout: 2,878 clips of 256 tokens overfit a 4-layer LM after ~1,200 steps without it
    # guidance 1: the decoder's log-magnitude is linear in the latents, and CFG 2.5 pushes them past the data's
    # range into loud, clipped audio (test RMS 0.52 vs 0.10 real). lm_guidance 3: chosen on the valid split
    # among 1/3/5/8 by key match (0.08/0.17/0.08/0.00). MODEL_CARD.md has both comparisons.
    # controls: vocab 768 = 64 base codes x 12 rotations (transposition-equivariant tokens, key set by rotation);
    # the DPD hears the asked family and key too (trained on a GPU from the latents: training/gpu_dpd.sh)
    return ModelConfig(name="tiny", lm=LMConfig(vocab_size=768, dropout=0.1),
                       dpd=DPDConfig(sem_vocab=768, token_features=24, n_families=9, n_keys=24),
                       controls=ControlConfig(enabled=True),
                       guidance=1.0, lm_guidance=3.0)


def _paper() -> ModelConfig:
    # Sizes tuned so parameter counts match the paper within 5% (tests/models/test_lm.py, test_dpd.py, test_vae.py).
    return ModelConfig(
        name="paper",
        text=TextConfig(n_prefix=12, n_heads=8),
        lm=LMConfig(vocab_size=1024, dim=1536, n_layers=14, n_heads=16, ffn_dim=4096),
        dpd=DPDConfig(latent_dim=16, dim=768, n_blocks=8, n_heads=12, coarse_layers=2, fine_layers=2,
                      segment=64, merge=8, sem_vocab=1024),
        vae=VAEConfig(hop=96, latent_dim=16, enc_dim=640, enc_layers=12, dec_dim=640, dec_layers=18, ffn_mult=4,
                      disc_channels=32),
        window_tokens=256,
        n_chunks=4,
    )


PRESETS = {"debug": _debug, "tiny": _tiny, "paper": _paper}
PAPER_PARAMS = {"lm": 429.5e6, "dpd": 296.6e6, "vae_encoder": 40.0e6, "vae_decoder": 60.1e6}


def get_config(name: str) -> ModelConfig:
    """Return the config of a preset (``debug``, ``tiny`` or ``paper``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]().validate()
