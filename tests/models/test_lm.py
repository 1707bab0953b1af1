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
