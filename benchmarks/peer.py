"""The peer: MusicGen-small's architecture (Copet et al. 2023) built from local ``transformers`` configs with random
weights (nothing is downloaded), generating with classifier-free guidance as it ships (scale 3.0).

Random weights cost the same compute as trained ones: the decoder runs one forward pass per 50 Hz frame whatever the
weights say. The sub-model configs copy ``facebook/musicgen-small``'s ``config.json``: a T5-base text encoder (that
is what every MusicGen size uses), a 24-layer, 1024-wide, 16-head decoder over 4 codebooks of 2,048 codes, and the
32 kHz EnCodec (4 codebooks at 50 Hz = 2.2 kbps).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

FRAME_RATE = 50  # EnCodec 32 kHz: 32000 / (8 * 5 * 4 * 4) frames per second
SAMPLE_RATE = 32_000
GUIDANCE = 3.0  # MusicGen's shipped generation_config
TEXT_TOKENS = 12  # length of the fixed random "prompt" (a short caption is ~10-15 T5 tokens)
WARMUP_TOKENS = 10

# Forward passes to make 10 s of audio, from the papers (MeLoDy sec. 1 and 4; DESIGN.md): the MusicLM figure counts
# its three autoregressive stages, MeLoDy's its LM tokens, 2 x 10 DPD steps and one VAE decode.
REFERENCE_PASSES_10S: dict[str, dict[str, int]] = {
    "MusicLM": {"semantic": 250, "coarse acoustic": 2000, "fine acoustic": 4000},
    "MeLoDy": {"lm": 250, "dpd": 20, "vae": 1},
}


def musicgen_small_config() -> Any:
    """``MusicgenConfig`` of MusicGen-small, built from the three sub-model configs (no hub access)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                    relative_attention_num_buckets=32, feed_forward_proj="relu")
    audio = EncodecConfig(sampling_rate=SAMPLE_RATE, audio_channels=1, num_filters=64, upsampling_ratios=[8, 5, 4, 4],
                          codebook_size=2048, codebook_dim=128, hidden_size=128, num_lstm_layers=2,
                          num_residual_layers=1, residual_kernel_size=3, dilation_growth_rate=2, kernel_size=7,
                          last_kernel_size=7, compress=2, norm_type="weight_norm", normalize=False,
                          use_causal_conv=False, pad_mode="reflect", trim_right_ratio=1.0, target_bandwidths=[2.2],
                          use_conv_shortcut=False)
    decoder = MusicgenDecoderConfig(vocab_size=2048, num_codebooks=4, hidden_size=1024, num_hidden_layers=24,
                                    num_attention_heads=16, ffn_dim=4096, max_position_embeddings=2048,
                                    activation_function="gelu", audio_channels=1, pad_token_id=2048,
                                    bos_token_id=2048)
    config = MusicgenConfig.from_sub_models_config(text, audio, decoder)
    config.decoder_start_token_id = config.pad_token_id = 2048
    return config


def run_peer(seconds: float, repeats: int, threads: int, seed: int = 0) -> dict[str, Any]:
    """Build MusicGen-small with random weights and time ``repeats`` generations of ``seconds`` of audio (after one
    short warm-up); meant to run in its own process so that the peak RSS is the peer's alone."""
    import numpy as np
    import torch
    from transformers import MusicgenForConditionalGeneration

    from benchmarks.machine import peak_rss_mb

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = MusicgenForConditionalGeneration(musicgen_small_config()).eval()
    load_s = time.perf_counter() - t0
    model.generation_config.decoder_start_token_id = model.generation_config.pad_token_id = 2048
    model.generation_config.bos_token_id = 2048
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.text_encoder.vocab_size, (1, TEXT_TOKENS), generator=g)
    ids[0, -1] = 1  # T5's </s>
    mask = torch.ones_like(ids)
    new_tokens = int(round(seconds * FRAME_RATE))

    def generate(n: int) -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=GUIDANCE,
                                  max_new_tokens=n)

    log.info("peer: MusicGen-small (random weights) built in %.1f s; warm-up of %d tokens", load_s, WARMUP_TOKENS)
    generate(WARMUP_TOKENS)
    samples, audio_seconds = [], 0.0
    for i in range(repeats):
        t0 = time.perf_counter()
        audio = generate(new_tokens)
        samples.append(time.perf_counter() - t0)
        audio_seconds = audio.shape[-1] / SAMPLE_RATE
        log.info("peer run %d/%d: %.1f s for %.2f s of audio", i + 1, repeats, samples[-1], audio_seconds)
    sub = {"text_encoder": model.text_encoder, "decoder": model.decoder, "audio_encoder": model.audio_encoder}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in sub.items()}
    params["total"] = sum(params.values())
    return {
        "model": "MusicGen-small architecture", "weights": "random", "precision": "fp32", "backend": "torch",
        "threads": threads, "guidance": GUIDANCE, "max_new_tokens": new_tokens, "text_tokens": TEXT_TOKENS,
        "params": params, "load_s": load_s, "warmup": f"{WARMUP_TOKENS} tokens", "repeats": repeats,
        "samples": samples, "audio_seconds": audio_seconds,
        "rtf": float(np.median(samples)) / audio_seconds if audio_seconds else None,
        "passes": {"text": 1, "decoder": new_tokens, "audio_decoder": 1},
        "reference_passes_10s": REFERENCE_PASSES_10S, "peak_rss_mb": peak_rss_mb(),
    }
