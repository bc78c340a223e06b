"""Real English text that works offline (DATA.md): WordNet glosses, fortunes, Python's pydoc topics.

    wordnet   "word: definition" for every synset of /usr/share/wordnet/data.{noun,verb,adj,adv}
    fortunes  the quotes of /usr/share/games/fortunes/* (entries split by a line holding `%`)
    pydoc     paragraphs of Python's own `pydoc_data.topics` (an out-of-domain test set)

Whitespace is collapsed to single spaces. The split is a pure function of the text (a hash), so it is
deterministic, independent of the order files are read in, and a text never lands in two splits;
exact duplicates are dropped.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal, Sequence

import torch

from latentbridge.data import epoch_indices
from latentbridge.errors import ConfigError

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
SOURCES = ("wordnet", "fortunes", "pydoc")
Split = Literal["train", "validation", "test"]
_SPACE = re.compile(r"\s+")


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _missing(what: str, path: Path, package: str) -> ConfigError:
    return ConfigError(f"{what} not found at {path}. Install the Debian package `{package}` (`make setup` does it: "
                       f"sudo apt-get install {package}).")


def wordnet_glosses(root: Path = WORDNET_DIR) -> list[str]:
    """'word: definition' for each WordNet synset (its first word; underscores become spaces)."""
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise _missing("WordNet", root, "wordnet-base")
    out = []
    for f in files:
        for line in f.read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            word = head.split()[4].replace("_", " ")
            word = re.sub(r"\([a-z]+\)$", "", word)  # adjective markers like good(a)
            out.append(_clean(f"{word}: {gloss}"))
    return out


def fortunes(root: Path = FORTUNES_DIR) -> list[str]:
    """Every quote of the fortune files (offensive ones are not installed by the packages used)."""
    if not root.is_dir():
        raise _missing("fortunes", root, "fortunes")
    out = []
    for f in sorted(root.iterdir()):
        if f.suffix or not f.is_file():  # skip .dat indexes and .u8 links
            continue
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = _clean(entry.strip("%\n"))
            if text:
                out.append(text)
    return out


def pydoc_paragraphs() -> list[str]:
    """Prose paragraphs of Python's help topics (code blocks and tables dropped)."""
    from pydoc_data.topics import topics

    out = []
    for body in topics.values():
        for para in body.split("\n\n"):
            if para.startswith(("   ", "\t")) or "===" in para or "---" in para or ">>>" in para:
                continue
            text = _clean(para)
            if len(text.split()) >= 5 and text[0].isalpha():
                out.append(text)
    return out


def split_of(text: str, fractions: tuple[float, float] = (0.98, 0.01)) -> Split:
    """The split a text belongs to, from a hash of the text: train 98%, validation 1%, test 1% by default."""
    u = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


@lru_cache(maxsize=8)
def _load(source: str) -> tuple[str, ...]:
    if source == "wordnet":
        return tuple(wordnet_glosses())
    if source == "fortunes":
        return tuple(fortunes())
    if source == "pydoc":
        return tuple(pydoc_paragraphs())
    raise ConfigError(f"unknown text source {source!r}; choose from {', '.join(SOURCES)}")


def load_texts(sources: Sequence[str], split: Split | Literal["all"] = "train", max_chars: int | None = None) -> list[str]:
    """Texts of `sources` in `split`, deduplicated, in a fixed order. `pydoc` is whole (out-of-domain)."""
    if split not in ("train", "validation", "test", "all"):
        raise ConfigError(f"unknown split {split!r}; use train, validation, test or all")
    seen: set[str] = set()
    out = []
    for source in sources:
        for text in _load(source):
            if text in seen or (max_chars is not None and len(text) > max_chars):
                continue
            if source != "pydoc" and split != "all" and split_of(text) != split:
                continue
            seen.add(text)
            out.append(text)
    return out


class TextBatches:
    """Deterministic batches of texts: step i always gives the same texts (a new permutation each epoch)."""

    def __init__(self, texts: Sequence[str], seed: int = 0) -> None:
        if not texts:
            raise ConfigError("the text data set is empty; check data.config.sources and data.config.max_chars.")
        self.texts, self.seed = list(texts), seed

    def __len__(self) -> int:
        return len(self.texts)

    def indices(self, step: int, size: int) -> torch.Tensor:
        return epoch_indices(len(self.texts), self.seed, step, size)

    def __call__(self, step: int, size: int) -> list[str]:
        return [self.texts[i] for i in self.indices(step, size).tolist()]

    def key(self) -> str:
        h = hashlib.sha256("\n".join(self.texts).encode())
        return h.hexdigest()[:12]


def corpus_for_tokenizer(sources: Iterable[str] = ("wordnet", "fortunes")) -> list[str]:
    """The training split of the sources: what the project's BPE tokenizer is trained on."""
    return load_texts(list(sources), "train")
