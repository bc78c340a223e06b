"""Prompts for text continuation: held-out texts cut into a given start and a held-out rest."""

from __future__ import annotations

from typing import Sequence


def cut_prompts(texts: Sequence[str], fraction: float = 0.5) -> tuple[list[str], list[str]]:
    """Split each text after `fraction` of its words (at least one word each side): prompts and references."""
    prompts, refs = [], []
    for text in texts:
        words = text.split(" ")
        if len(words) < 2:
            continue
        k = min(len(words) - 1, max(1, round(len(words) * fraction)))
        prompts.append(" ".join(words[:k]))
        refs.append(" ".join(words[k:]))
    return prompts, refs
