"""Word error rate of speech against its text, with pocketsphinx (CMU Sphinx; its US-English acoustic model
and dictionary ship inside the PyPI wheel, so it works offline).

The clips are single words and names, so recognition runs with a closed vocabulary: a JSGF grammar of
one word out of the evaluated texts (the ones the dictionary can pronounce). On real flite clips this
recognises ~95% of the words (measured in the tests), so a WER on generated speech measures the speech,
not the recognizer's open-vocabulary language model (which gets most isolated words wrong).

    asr = WordRecognizer(texts)            # vocabulary: the texts' words that the dictionary knows
    hyps = asr.transcribe(waves, 16000)
    word_error_rate(refs, hyps)
"""

from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from typing import Sequence

import numpy as np

from latentbridge.errors import ConfigError


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Total word edits over total reference words (lower-cased, punctuation dropped)."""
    if len(refs) != len(hyps):
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    edits = sum(edit_distance(_words(r), _words(h)) for r, h in zip(refs, hyps))
    total = sum(len(_words(r)) for r in refs)
    return edits / max(1, total)


def word_errors(refs: Sequence[str], hyps: Sequence[str]):
    """The word error rate item by item, for its interval: each item's edits / reference words, weighted by its words
    (the weighted mean is word_error_rate)."""
    from latentbridge.evaluate import PerItem

    if len(refs) != len(hyps):
        raise ValueError(f"word_errors: {len(refs)} references but {len(hyps)} hypotheses")
    words = [max(1, len(_words(r))) for r in refs]
    return PerItem([edit_distance(_words(r), _words(h)) / n for r, h, n in zip(refs, hyps, words)], words)


@lru_cache(maxsize=1)
def _dictionary() -> frozenset[str]:
    from pocketsphinx import get_model_path

    path = os.path.join(get_model_path(), "en-us", "cmudict-en-us.dict")
    with open(path, encoding="utf-8", errors="ignore") as f:
        return frozenset(line.split(maxsplit=1)[0] for line in f if line.strip() and "(" not in line.split(maxsplit=1)[0])


def _require_pocketsphinx() -> None:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        raise ConfigError("the speech evaluator needs pocketsphinx: pip install pocketsphinx (make setup installs it).") from None


def pronounceable(texts: Sequence[str]) -> list[bool]:
    """Whether every word of each text is in the recognizer's dictionary."""
    _require_pocketsphinx()
    known = _dictionary()
    return [bool(_words(t)) and all(w in known for w in _words(t)) for t in texts]


class WordRecognizer:
    """pocketsphinx restricted to one word (or short phrase) out of `texts` per clip."""

    def __init__(self, texts: Sequence[str], sample_rate: int = 16000) -> None:
        _require_pocketsphinx()
        from pocketsphinx import Decoder

        phrases = sorted({" ".join(_words(t)) for t, ok in zip(texts, pronounceable(texts)) if ok})
        if not phrases:
            raise ConfigError("WordRecognizer: none of the texts is in the pocketsphinx dictionary; nothing to recognise.")
        self.vocabulary = phrases
        with tempfile.NamedTemporaryFile("w", suffix=".jsgf", delete=False) as f:
            f.write("#JSGF V1.0;\ngrammar words;\npublic <w> = " + " | ".join(phrases) + ";\n")
            grammar = f.name
        try:
            self.decoder = Decoder(samprate=sample_rate, loglevel="FATAL", jsgf=grammar)
        finally:
            os.unlink(grammar)
        self.sample_rate = sample_rate

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        out = []
        for wave in waves:
            pcm = (np.clip(np.asarray(wave, dtype=np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            out.append(hyp.hypstr.strip() if hyp is not None else "")
        return out
