"""The key-design ablation's checkpoint preparation (``training.key_ablation``)."""

from __future__ import annotations

import json

import torch

from melody_edge.models.config import get_config
from melody_edge.models.melody import MeLoDy
from melody_edge.tokenizer import SemanticTokenizer
from training.key_ablation import main, token_keys


def test_prepare_keeps_the_dpd_and_vae_and_sets_the_key_design(tmp_path):
    cfg = get_config("debug")
    src = tmp_path / "src"
    MeLoDy.random(cfg, seed=1).save(src)
    SemanticTokenizer.random(cfg.lm.vocab_size, seed=0, rotations=12).save(src / "tokenizer.npz")
    plain_tok = tmp_path / "plain.npz"
    SemanticTokenizer.random(cfg.lm.vocab_size, seed=1).save(plain_tok)
    ship = MeLoDy.load(src)
    for name, flag, tok in (("rot", "--rotation", None), ("plain", "--no-rotation", plain_tok)):
        extra = ["--tokenizer", str(tok)] if tok else []
        main(["prepare", "--out", str(tmp_path / name), flag, "--source", str(src), *extra])
        m = MeLoDy.load(tmp_path / name)
        assert m.cfg.controls.key_rotation is (name == "rot")
        assert m.cfg.controls.n_keys == (2 if name == "rot" else 24)  # the LM's key input: mode, or key
        for part in ("dpd", "vae"):
            a, b = getattr(m, part).state_dict(), getattr(ship, part).state_dict()
            assert all(torch.equal(a[k], b[k]) for k in b)
        meta = json.loads((tmp_path / name / "config.json").read_text())
        assert meta["ablation"]["key_rotation"] is (name == "rot")
        want = (tok or src / "tokenizer.npz").read_bytes()
        assert (tmp_path / name / "tokenizer.npz").read_bytes() == want
        # the LM alone, scored by its tokens' key against the labelled keys
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text(json.dumps({"prompt": "a waltz in D minor", "key": "D minor"}) + "\n"
                           + json.dumps({"prompt": "a hymn", "key": "E-flat major"}) + "\n")
        r = token_keys(tmp_path / name, prompts, [0, 1], seconds=2.0)
        assert r["n"] == 4 and 0.0 <= r["token_key_match"] <= r["token_tonic_match"] <= 1.0
