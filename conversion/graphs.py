"""The torch graphs that are exported, one small ``nn.Module`` per component, shared by ONNX (``export.py``) and
Core ML (``coreml.py``).

Each wrapper's ``forward`` arguments are the graph's inputs (names and order) and its return values the graph's
outputs, named in ``OUTPUTS``. A new graph input (a control id, a beat phase) is one more ``forward`` argument, one
more entry in ``example_inputs`` and, for Core ML, in ``coreml.input_shapes``.

Core ML tensors have rank <= 5 and no empty tensors, so its LM graphs are ``CoreMLPrefill`` / ``CoreMLStep``: the
same blocks as ``SemanticLM.prefill`` / ``.step`` without the rank-6 cache stack (tests check they are equal).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from melody_edge.bundle import lm_step_cache_inputs
from melody_edge.controls import beat_features
from melody_edge.models.layers import rope_angles
from melody_edge.models.lm import rope_matrix
from melody_edge.models.melody import MeLoDy
from melody_edge.models.vae import ISTFT, STFT
from melody_edge.text import TextTokenizer

# parity is measured on real captions: random word-piece ids are far from what the text encoder sees and
# exaggerate int8 error (measured 8.7 dB on random ids vs 26 dB on captions for the tiny model)
PARITY_PROMPTS = ("a slow chorale for string ensemble in G major, 3/4, 66 BPM",
                  "a lively folk dance for flute in A minor, allegro 132 bpm")

OUTPUTS = {"text_encoder": ["prefix"], "lm_prefill": ["logits", "cache"], "lm_step": ["logits", "kv"],
           "dpd": ["v"], "vae_decoder": ["audio"], "vae_encoder": ["z"]}


class TextPrefix(nn.Module):
    """input_ids, attention_mask (B, 64) -> the LM's soft prefix (B, P, D): MiniLM + the LM's conditioner."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        from melody_edge.models.text import MiniLM

        self.minilm = MiniLM()
        self.cond = model.lm.cond

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.cond(self.minilm(input_ids, attention_mask), attention_mask)


class TextControlPrefix(TextPrefix):
    """input_ids, attention_mask (B, 64), key, metre, family (B,) int64, bpm (B,) float -> prefix (B, P + 4, D):
    the text prefix followed by the control vectors (``melody_edge.controls.control_ids`` writes the inputs)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, key: torch.Tensor | None = None,
                bpm: torch.Tensor | None = None, metre: torch.Tensor | None = None,
                family: torch.Tensor | None = None) -> torch.Tensor:
        controls = None if key is None else (key, bpm, metre, family)
        return self.cond(self.minilm(input_ids, attention_mask), attention_mask, controls)


class LMPrefill(nn.Module):
    """prefix (B, P, D), tokens (B, N) -> logits of the next token (B, V), cache (n_layers, 2, B, H, max_len, hd)."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.lm = model.lm

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm.prefill(prefix, tokens)


class LMPrefillBeat(LMPrefill):
    """``LMPrefill`` with the beat clock: beat (B, N + 1, F) of the given tokens and the next one."""

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor, beat: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm.prefill(prefix, tokens, beat)


class LMStep(nn.Module):
    """token (B,), pos (), the cache as one (B, H, max_len, hd) input per layer and keys/values (``cache_k0``,
    ``cache_v0``, ``cache_k1``, ...: ``bundle.lm_step_cache_inputs``) holding positions < pos -> logits (B, V) and
    the new keys and values kv (n_layers, 2, B, H, 1, hd) of position ``pos`` (``SemanticLM.step_kv``). The cache is
    only read: the backend keeps it and writes kv in place. Separate inputs because onnxruntime copies every slice it
    takes of a tensor. Bundles exported before issue 13 take one ``cache`` input and return the updated copy as
    ``cache_out``; the backends tell the two apart by that output name."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.lm = model.lm

    def forward(self, token: torch.Tensor, pos: torch.Tensor, *cache: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm.step_kv(token, pos, _pairs(cache))


class LMStepBeat(LMStep):
    """``LMStep`` with the beat clock: beat (B, F) of the token this step predicts (before the cache inputs)."""

    def forward(self, token: torch.Tensor, pos: torch.Tensor, beat: torch.Tensor, *cache: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lm.step_kv(token, pos, _pairs(cache), beat)


def _pairs(cache: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(cache[i], cache[i + 1]) for i in range(0, len(cache), 2)]


class DPDDenoiser(nn.Module):
    """z (B, L, C), angles (B, L), semantic tokens (B, ceil(L / frames_per_token)) -> v prediction (B, L, C)."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.dpd = model.dpd

    def forward(self, z: torch.Tensor, angles: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.dpd(z, angles, tokens)


class DPDControlDenoiser(DPDDenoiser):
    """``DPDDenoiser`` of a DPD with a controls input: + controls (B, 2) int64 ``[family, key]`` (``n_families`` /
    ``n_keys`` = none asked)."""

    def forward(self, z: torch.Tensor, angles: torch.Tensor, tokens: torch.Tensor,  # type: ignore[override]
                controls: torch.Tensor) -> torch.Tensor:
        return self.dpd(z, angles, tokens, controls)


def _kernels_in_graph(vae: nn.Module) -> nn.Module:
    """A copy of ``vae`` whose STFT/iSTFT compute their DFT kernels in the graph (``vae.dft_kernel``): an exported
    graph then stores no 14.8 MB table (tiny model), onnxruntime folds the kernel at session load. The model itself
    keeps reading its buffers."""
    vae = copy.deepcopy(vae)
    for m in vae.modules():
        if isinstance(m, (STFT, ISTFT)):
            m.kernel_in_graph = True
    return vae


class VAEDecoder(nn.Module):
    """Diffusion latents (B, L, C) -> audio (B, L * hop). ``kernel_in_graph``: see ``_kernels_in_graph`` (the ONNX
    graphs; Core ML keeps the stored bases, which ``coreml.compress`` leaves uncompressed by name)."""

    def __init__(self, model: MeLoDy, kernel_in_graph: bool = False) -> None:
        super().__init__()
        self.vae = _kernels_in_graph(model.vae) if kernel_in_graph else model.vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_from_diffusion(z)


class VAEEncoder(nn.Module):
    """Audio (B, T) -> diffusion latents (B, ceil(T / hop), C); ``kernel_in_graph`` as for ``VAEDecoder``."""

    def __init__(self, model: MeLoDy, kernel_in_graph: bool = False) -> None:
        super().__init__()
        self.vae = _kernels_in_graph(model.vae) if kernel_in_graph else model.vae

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.vae.encode_for_diffusion(audio)


class CoreMLPrefill(nn.Module):
    """``SemanticLM.prefill`` without rank-6 tensors: prefix (B, P, D) + tokens (B, N >= 1) -> (logits of the
    last two positions (B, 2, V), unpadded cache (2 * n_layers, B, H, P + N, head_dim))."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.lm = model.lm

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor, beat: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.lm
        x = lm._add_beat(torch.cat([prefix, lm.tok_emb(tokens)], dim=1), beat)
        T = x.shape[1]
        cos, sin = rope_angles(torch.arange(T, device=x.device), lm.cfg.head_dim, lm.cfg.rope_theta)
        mask = torch.triu(torch.full((T, T), -1e9, device=x.device), diagonal=1)
        kvs = []
        for blk in lm.blocks:
            x, kv = blk(x, cos, sin, mask)  # kv (2, B, H, T, head_dim)
            kvs.append(kv)
        return lm.head(lm.norm(x[:, -2:])), torch.cat(kvs)


class CoreMLStep(nn.Module):
    """``SemanticLM.step_kv`` without rank-6 tensors: token (B,), pos (1,), cache (2 * n_layers, B, H, max_len,
    head_dim) holding positions < pos -> (logits (B, V), the new keys and values kv (2 * n_layers, B, H, 1,
    head_dim) that the backend writes at ``pos``)."""

    def __init__(self, model: MeLoDy) -> None:
        super().__init__()
        self.lm = model.lm

    def forward(self, token: torch.Tensor, pos: torch.Tensor, cache: torch.Tensor, beat: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        lm = self.lm
        p = pos.reshape(())
        x = lm.tok_emb(token)[:, None]  # (B, 1, D)
        if beat is not None and lm.beat_proj is not None:
            x = x + lm.beat_proj(beat)[:, None]
        rot = rope_matrix(p, lm.cfg.head_dim, lm.cfg.rope_theta)
        past_mask = torch.where(torch.arange(cache.shape[-2], device=x.device) < p, 0.0, -1e9)[None, None, None, :]
        kvs = []
        for i, blk in enumerate(lm.blocks):
            x, kv = blk.decode(x, rot, past_mask, cache[2 * i : 2 * i + 2])
            kvs.append(kv)
        return lm.head(lm.norm(x[:, 0])), torch.cat(kvs)


def onnx_graphs(model: MeLoDy) -> dict[str, nn.Module]:
    """The six graphs of an ONNX bundle, in eval mode."""
    ctl = model.cfg.controls.enabled
    return {"text_encoder": (TextControlPrefix if ctl else TextPrefix)(model).eval(),
            "lm_prefill": (LMPrefillBeat if ctl else LMPrefill)(model).eval(),
            "lm_step": (LMStepBeat if ctl else LMStep)(model).eval(),
            "dpd": (DPDControlDenoiser if model.cfg.dpd.controlled else DPDDenoiser)(model).eval(),
            "vae_decoder": VAEDecoder(model, kernel_in_graph=True).eval(),
            "vae_encoder": VAEEncoder(model, kernel_in_graph=True).eval()}


def coreml_graphs(model: MeLoDy) -> dict[str, nn.Module]:
    """The six graphs of a Core ML bundle: the ONNX ones with the LM prefill and step in the rank-5 layout and the
    VAE reading its stored DFT bases."""
    return {**onnx_graphs(model), "lm_prefill": CoreMLPrefill(model).eval(), "lm_step": CoreMLStep(model).eval(),
            "vae_decoder": VAEDecoder(model).eval(), "vae_encoder": VAEEncoder(model).eval()}


def example_inputs(model: MeLoDy, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs each ONNX graph is traced and checked with (deterministic in ``seed``)."""
    c = model.cfg
    g = torch.Generator().manual_seed(seed)
    B, N, L = 2, 24, 24 * c.frames_per_token + 3
    ids, mask = (torch.from_numpy(a) for a in TextTokenizer()(list(PARITY_PROMPTS[:B])))  # real captions
    prefix = torch.randn(B, c.prefix_len, c.lm.dim, generator=g) * 0.5
    tokens = torch.randint(0, c.lm.vocab_size, (B, N), generator=g)
    ctl = c.controls
    beat = torch.from_numpy(beat_features(N + 2, 3.0, 96.0, ctl.beat_harmonics, c.token_rate))[None].repeat(B, 1, 1)
    with torch.inference_mode():
        _, cache = model.lm.prefill(prefix, tokens, beat[:, : N + 1] if ctl.enabled else None)
    text = {"input_ids": ids, "attention_mask": mask}
    prefill = {"prefix": prefix, "tokens": tokens}
    step = {"token": tokens[:, 0].clone(), "pos": torch.tensor(c.prefix_len + N, dtype=torch.int64)}
    if ctl.enabled:  # one sample with every control given, one with none
        text.update(key=torch.tensor([1, ctl.n_keys]), bpm=torch.tensor([96.0, 0.0]),
                    metre=torch.tensor([4, ctl.n_metres]), family=torch.tensor([2, ctl.n_families]))
        prefill["beat"] = beat[:, : N + 1].clone()
        step["beat"] = beat[:, N + 1].clone()
    # the cache inputs come last (LMStep's *cache)
    step.update(zip(lm_step_cache_inputs(c.lm.n_layers), cache.flatten(0, 1).clone(), strict=True))
    return {
        "text_encoder": text,
        "lm_prefill": prefill,
        "lm_step": step,
        "dpd": {"z": torch.randn(B, L, c.dpd.latent_dim, generator=g), "angles": torch.rand(B, L, generator=g) * 1.5,
                "tokens": torch.randint(0, c.dpd.sem_vocab + 1, (B, -(-L // c.frames_per_token)), generator=g),
                # one sample with a family and a key asked, one with neither
                **({"controls": torch.tensor([[2, 14], [c.dpd.n_families, c.dpd.n_keys]])} if c.dpd.controlled
                   else {})},
        "vae_decoder": {"z": torch.rand(B, L, c.vae.latent_dim, generator=g) * 2 - 1},
        "vae_encoder": {"audio": torch.randn(B, L * c.vae.hop + 17, generator=g) * 0.1},
    }


def coreml_example_inputs(model: MeLoDy, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``example_inputs`` in the Core ML layout: ``pos`` (1,) and the cache (2 * n_layers, B, H, L, hd)."""
    inputs = example_inputs(model, seed)
    step = inputs["lm_step"]
    names = lm_step_cache_inputs(model.cfg.lm.n_layers)
    cache = torch.stack([step.pop(n) for n in names])
    inputs["lm_step"] = {"token": step["token"], "pos": step["pos"].reshape(1), "cache": cache,
                         **({"beat": step["beat"]} if "beat" in step else {})}
    return inputs
