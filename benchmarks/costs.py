"""Analytic cost of a workload: parameter counts per network, FLOPs per stage and the bytes the LM's decode steps
move, to set against the machine's ceilings (``benchmarks.machine``).

The shapes come from the real generation loop: ``Generator`` runs the workload on a stand-in backend that records
each call's input shapes and returns zeros. Each distinct call is then counted once with
``torch.utils.flop_counter.FlopCounterMode`` on the model built on the meta device (no weights, no compute), so the
counts follow the code as it is (static KV cache, CFG batch of 2 in the DPD, segment padding) at any preset size.
The text stage (MiniLM) is not counted: it runs once per call.

LM bytes per decode step = the LM's weights at the bundle's precision (the text conditioner and the token embedding
table, of which a step reads one row, left out) + the fp32 KV cache read once (the step graph returns only the new
position's keys and values, written in place); per prefill, the weights + the cache written. Decode steps are
bandwidth-bound, so their GB/s is the figure to hold against the copy bandwidth.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

import numpy as np

from benchmarks.workloads import Workload, run_once
from melody_edge import Audio, Generator
from melody_edge.backends.base import Backend
from melody_edge.models.config import ModelConfig

log = logging.getLogger(__name__)

WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
Call = tuple[str, tuple[tuple[int, ...], ...]]


class _Tokens:
    """Stand-in semantic tokenizer: zeros, one per 40 ms of audio."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.spt = cfg.sample_rate // cfg.token_rate

        self.n_features = 12 + 3  # chroma first, as ``SemanticTokenizer.token_features`` (values are not used)
        self.vocab = cfg.lm.vocab_size
        # transposition-equivariant ids (base x 12) where the model rotates keys: key guidance then works per base code
        self.rotations = 12 if cfg.controls.enabled and cfg.controls.key_rotation else 1

    def encode(self, audio: np.ndarray) -> np.ndarray:
        return np.zeros(-(-len(audio) // self.spt), np.int64)

    def token_features(self) -> np.ndarray:
        """Per-token features (chroma first): scoring key drafts reads them; ones (a flat chroma) do for counting."""
        return np.ones((self.vocab, self.n_features), np.float32)


class ShapeRecorder(Backend):
    """A backend that records every call's input shapes and returns zeros of the right output shapes."""

    name = "shapes"

    def __init__(self, cfg: ModelConfig) -> None:
        self.config = cfg
        self.semantic_tokenizer = _Tokens(cfg)
        self.calls: list[Call] = []

    def encode_text(self, input_ids, attention_mask, controls=None):
        self.calls.append(("text", (input_ids.shape,)))
        return self.null_prefix(input_ids.shape[0])

    def null_prefix(self, batch):
        return np.zeros((batch, self.config.prefix_len, self.config.lm.dim), np.float32)

    def lm_prefill(self, prefix, tokens, beat=None):
        self.calls.append(("lm_prefill", (prefix.shape, tokens.shape)))
        return np.zeros((prefix.shape[0], self.config.lm.vocab_size), np.float32), None

    def lm_step(self, token, pos, cache, beat=None):
        self.calls.append(("lm_step", (token.shape,)))
        return np.zeros((token.shape[0], self.config.lm.vocab_size), np.float32), None

    def dpd(self, z, angles, tokens, controls=None):
        self.calls.append(("dpd", (z.shape, tokens.shape)))
        return np.zeros_like(z)

    def vae_decode(self, z):
        self.calls.append(("vae_decode", (z.shape,)))
        return np.zeros((z.shape[0], z.shape[1] * self.config.vae.hop), np.float32)

    def vae_encode(self, audio):
        self.calls.append(("vae_encode", (audio.shape,)))
        hop = self.config.vae.hop
        return np.zeros((audio.shape[0], -(-audio.shape[1] // hop), self.config.vae.latent_dim), np.float32)


def record_calls(cfg: ModelConfig, wl: Workload, steps: int, key_candidates: int | None = None) -> list[Call]:
    """Every backend call (component, input shapes) that ``wl`` makes with ``steps`` diffusion steps (and
    ``key_candidates`` key drafts, None: the generator's default)."""
    rec = ShapeRecorder(cfg)
    prompt_audio = Audio(np.zeros(int(wl.prompt_seconds * cfg.sample_rate), np.float32), cfg.sample_rate)
    run_once(Generator.from_backend(rec), wl, steps=steps, seed=0,
             prompt_audio=prompt_audio if wl.kind == "cont" else None, key_candidates=key_candidates)
    return rec.calls


@lru_cache(maxsize=8)
def _meta_model(cfg_json: str) -> Any:
    import torch

    from melody_edge.models.melody import MeLoDy

    with torch.device("meta"):
        return MeLoDy(ModelConfig.from_dict(json.loads(cfg_json))).eval()


def _model(cfg: ModelConfig) -> Any:
    return _meta_model(cfg.to_json())


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per network (MiniLM text encoder, text conditioner, LM, DPD, VAE encoder and decoder) and total."""
    import torch
    from transformers import AutoConfig, AutoModel

    from melody_edge.models.layers import count_params
    from melody_edge.text import minilm_dir

    m = _model(cfg)
    with torch.device("meta"):
        minilm = AutoModel.from_config(AutoConfig.from_pretrained(str(minilm_dir())))
    counts = {"text_encoder": count_params(minilm), "text_conditioner": count_params(m.lm.cond),
              "lm": count_params(m.lm) - count_params(m.lm.cond), "dpd": count_params(m.dpd),
              "vae_encoder": count_params(m.vae.encoder), "vae_decoder": count_params(m.vae.decoder)}
    counts["total"] = sum(counts.values())
    return counts


def _call_flops(cfg: ModelConfig, call: Call) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    m, (comp, shapes) = _model(cfg), call
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as fc:
        if comp == "lm_prefill":
            (prefix, tokens) = shapes
            m.lm.prefill(torch.zeros(prefix), torch.zeros(tokens, dtype=torch.int64))
        elif comp == "lm_step":
            (batch,) = shapes[0]
            m.lm.step(torch.zeros(batch, dtype=torch.int64), torch.tensor(cfg.lm_max_len - 1), m.lm.empty_cache(batch))
        elif comp == "dpd":
            z, tokens = shapes
            m.dpd(torch.zeros(z), torch.zeros(z[:2]), torch.zeros(tokens, dtype=torch.int64))
        elif comp == "vae_decode":
            m.vae.decode_from_diffusion(torch.zeros(shapes[0]))
        elif comp == "vae_encode":
            m.vae.encode_for_diffusion(torch.zeros(shapes[0]))
    return int(fc.get_total_flops())


def _lm_bytes(cfg: ModelConfig, call: Call, precision: str) -> int:
    from melody_edge.models.layers import count_params

    m, (_, shapes) = _model(cfg), call
    weights = (count_params(m.lm) - count_params(m.lm.cond) - m.lm.tok_emb.weight.numel()) * WEIGHT_BYTES[precision]
    batch = shapes[0][0]
    c = cfg.lm
    cache = c.n_layers * 2 * batch * c.n_heads * cfg.lm_max_len * c.head_dim * 4
    return weights + cache  # a step reads the cache, a prefill writes it


STAGE = {"text": "text", "lm_prefill": "lm", "lm_step": "lm", "dpd": "dpd", "vae_decode": "vae", "vae_encode": "vae"}


def workload_costs(cfg: ModelConfig, wl: Workload, steps: int, precision: str,
                   key_candidates: int | None = None) -> dict[str, Any]:
    """FLOPs per stage (lm, dpd, vae) and LM bytes for one run of ``wl``, plus the forward passes the count saw."""
    calls = record_calls(cfg, wl, steps, key_candidates)
    flops = {"lm": 0, "dpd": 0, "vae": 0}
    passes = {"text": 0, "lm": 0, "dpd": 0, "vae": 0}
    lm_bytes, lm_step_bytes = 0, 0
    counted: dict[Call, int] = {}
    for call in calls:
        stage = STAGE[call[0]]
        passes[stage] += 1
        if stage == "text":
            continue
        if call not in counted:
            counted[call] = _call_flops(cfg, call)
        flops[stage] += counted[call]
        if stage == "lm":
            b = _lm_bytes(cfg, call, precision)
            lm_bytes += b
            if call[0] == "lm_step":
                lm_step_bytes = b
    log.debug("%s %s: %d calls, %d distinct shapes", cfg.name, wl.name, len(calls), len(counted))
    return {"flops": flops, "lm_bytes": lm_bytes, "lm_step_bytes": lm_step_bytes, "calls": passes,
            "weight_bytes_per_param": WEIGHT_BYTES[precision]}
