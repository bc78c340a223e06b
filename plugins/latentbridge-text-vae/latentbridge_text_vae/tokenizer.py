"""Tokenizers for the Text VAE: any Hugging Face tokenizer directory on disk, and a command that trains one.

    latentbridge-tokenizer --out DIR [--vocab-size 4096] [--sources wordnet fortunes]

trains a byte-level BPE tokenizer with `tokenizers` on the training split of the project's corpus
and saves it as a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json), which
`load_tokenizer(DIR)` (transformers' AutoTokenizer, offline) reads back. The plugin ships one such
directory, trained by this command, as its default (`latentbridge_text_vae/tokenizer/`).
"""

from __future__ import annotations

import argparse
import os
import time
from functools import lru_cache
from pathlib import Path

from latentbridge.errors import ConfigError

BUNDLED = Path(__file__).parent / "tokenizer"
SPECIALS = {"pad_token": "[PAD]", "eos_token": "[EOS]", "mask_token": "[MASK]", "unk_token": "[UNK]"}


def train_tokenizer(texts, out: str | os.PathLike, vocab_size: int = 4096) -> Path:
    """Train a byte-level BPE tokenizer on `texts` and save it as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    out = Path(out)
    fast.save_pretrained(str(out))
    return out


@lru_cache(maxsize=4)
def load_tokenizer(directory: str | None = None):
    """A Hugging Face tokenizer directory (None: the bundled one), loaded offline through transformers.

    It must define pad, eos and mask tokens (the Text VAE pads, ends texts and masks encoder inputs).
    """
    from transformers import AutoTokenizer

    path = Path(directory) if directory else BUNDLED
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer: {path} is not a Hugging Face tokenizer directory (no tokenizer.json or "
                          "tokenizer_config.json). Train one with `latentbridge-tokenizer --out DIR`, or leave "
                          "`tokenizer` unset for the bundled one.")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    missing = [name for name in ("pad_token_id", "eos_token_id", "mask_token_id") if getattr(tok, name) is None]
    if missing:
        raise ConfigError(f"tokenizer {path} defines no {', '.join(m.removesuffix('_id') for m in missing)}; the Text VAE "
                          "needs pad, eos and mask tokens. Add them (tokenizer.add_special_tokens) and save it again.")
    return tok


def main(argv=None) -> int:
    try:
        from latentbridge_demo.data.text import corpus_for_tokenizer
    except ImportError:
        raise SystemExit("latentbridge-tokenizer trains on the demo world's English text: pip install latentbridge-demo "
                         "(plugins/latentbridge-demo) first.") from None

    p = argparse.ArgumentParser(prog="latentbridge-tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory to write the tokenizer to")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--sources", nargs="+", default=["wordnet", "fortunes"], help="text sources (latentbridge_demo.data.text)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    texts = corpus_for_tokenizer(args.sources)
    out = train_tokenizer(texts, args.out, args.vocab_size)
    tok = load_tokenizer(str(out))
    sample = texts[0]
    print(f"trained a {len(tok)}-token byte-level BPE on {len(texts):,} texts in {time.perf_counter() - start:.1f} s -> {out}")
    print(f"example: {sample!r} -> {len(tok(sample)['input_ids'])} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
