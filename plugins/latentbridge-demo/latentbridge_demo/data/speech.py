"""Speech that works offline (DATA.md, "Audio"): spoken words and names with their text, and real recordings.

    synthesized  words and names of Debian's `wamerican` word list spoken by flite (voices slt, kal16,
                 awb, rms: fairly natural) and espeak-ng (several English voices: robotic), each text by
                 one voice picked by a hash of the text; mono float32 at `sample_rate` (resampled with
                 torchaudio). Split 90/5/5 by a hash of the text, so a held-out word is never heard in
                 training. Rendered once per (count, rate) and cached (int16).
    objects      the names of the scene emoji (all 32, or data.config.scene_objects) and the 10 digits ("owl",
                 "seven"), each spoken by every voice at five speeds; split 80/10/10 by a hash of (word,
                 voice, speed), so a held-out clip is a new rendition of a word heard in training (a closed
                 vocabulary: data.config.words = objects)
    recordings   the nine spoken clips of alsa-utils (/usr/share/sounds/alsa, 48 kHz): held-out only
    sounds       the named sound events of sound-theme-freedesktop (.oga): held-out only, not speech
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from latentbridge_demo.data.emoji import cached_npz
from latentbridge_demo.data.images import hash_split
from latentbridge.errors import ConfigError

WORDS = Path("/usr/share/dict/words")
ALSA = Path("/usr/share/sounds/alsa")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
FLITE_VOICES = ("slt", "kal16", "awb", "rms")
ESPEAK_VOICES = ("en-us", "en-gb-x-rp", "en-us+f3", "en-029")
SPEECH_SOURCES = ("flite", "espeak")


WORD_SETS = ("dictionary", "objects")
SPEEDS = (0.8, 0.9, 1.0, 1.12, 1.25)  # duration stretch of the `objects` renditions


@dataclasses.dataclass(frozen=True)
class Utterance:
    text: str
    engine: str  # flite | espeak
    voice: str
    stretch: float = 1.0  # duration stretch (> 1: slower)


def vocabulary(words_file: Path = WORDS) -> tuple[list[str], list[str]]:
    """Lower-case words and capitalised names (3-10 letters, ASCII) of the system word list."""
    if not words_file.is_file():
        raise ConfigError(f"word list not found at {words_file}. Install the Debian package `wamerican` (`make setup` does it).")
    words, names = [], []
    for w in words_file.read_text(encoding="utf-8", errors="ignore").split():
        if not (3 <= len(w) <= 10 and w.isascii() and w.isalpha()):
            continue
        if w.islower():
            words.append(w)
        elif w[0].isupper() and w[1:].islower():
            names.append(w)
    return words, names


def _u(key: str) -> float:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def utterances(n: int, engines: Sequence[str] = SPEECH_SOURCES, words: str = "dictionary",
               objects: Sequence[str] | None = None) -> list[Utterance]:
    """`dictionary`: n texts (3 words : 1 name), each with one voice of the given engines; `objects`: every scene
    object name (`objects`, null: all 32) and digit name by every voice at every speed (n is not used). A pure
    function of the arguments."""
    bad = [e for e in engines if e not in SPEECH_SOURCES]
    if bad or not engines:
        raise ConfigError(f"data.config.sources: unknown speech engine(s) {bad or list(engines)}; choose from {', '.join(SPEECH_SOURCES)}")
    if words not in WORD_SETS:
        raise ConfigError(f"data.config.words: unknown word set {words!r}; choose from {', '.join(WORD_SETS)}")
    voices = [(e, v) for e in engines for v in (FLITE_VOICES if e == "flite" else ESPEAK_VOICES)]
    if words == "objects":
        from latentbridge_demo.data.images import DIGIT_NAMES, scene_vocabulary

        return [Utterance(t, e, v, s) for t in (*scene_vocabulary(objects), *DIGIT_NAMES) for e, v in voices for s in SPEEDS]
    words, names = vocabulary()
    pool = sorted(words, key=lambda w: _u("w" + w))[: (3 * n) // 4] + sorted(names, key=lambda w: _u("n" + w))[: n - (3 * n) // 4]
    return [Utterance(t, *voices[int(_u("v" + t) * len(voices))]) for t in sorted(pool, key=lambda t: _u("o" + t))]


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigError(f"`{tool}` not found. Install the Debian package `{package}` (`make setup` does it).")
    return path


def synthesize(u: Utterance, sample_rate: int = 16000) -> np.ndarray:
    """Speak one utterance: mono float32 at sample_rate."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.wav")
        if u.engine == "flite":
            cmd = [_need("flite", "flite"), "-voice", u.voice, "-t", u.text, "-o", out]
            if u.stretch != 1.0:
                cmd[1:1] = ["--setf", f"duration_stretch={u.stretch:g}"]
        else:
            cmd = [_need("espeak-ng", "espeak-ng"), "-v", u.voice, "-w", out, u.text]
            if u.stretch != 1.0:
                cmd[1:1] = ["-s", str(round(175 / u.stretch))]  # words per minute (175 is espeak-ng's default)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wave, sr = sf.read(out, dtype="float32", always_2d=True)
    return resample(wave.mean(1), sr, sample_rate)


def resample(wave: np.ndarray, sr: int, sample_rate: int) -> np.ndarray:
    """Mono float32 wave from sr to sample_rate (torchaudio's band-limited resampler)."""
    if sr == sample_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), sr, sample_rate).numpy()


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Any file soundfile reads (WAV, FLAC, OGG) as mono float32 at sample_rate."""
    import soundfile as sf

    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ConfigError(f"{path}: cannot read audio ({err}); pass a WAV, FLAC or OGG file.") from None
    return resample(wave.mean(1), sr, sample_rate)


def load_speech(split: str = "train", n: int = 3000, sample_rate: int = 16000,
                engines: Sequence[str] = SPEECH_SOURCES, words: str = "dictionary",
                objects: Sequence[str] | None = None) -> tuple[list[np.ndarray], list[str], list[Utterance]]:
    """Synthesized clips of `split` out of n rendered (cached): waves, texts and who spoke them (`words` and
    `objects`: the word set, see `utterances`)."""
    from latentbridge_demo.data.images import vocabulary_tag

    if split not in ("train", "validation", "test", "all"):
        raise ConfigError(f"unknown split {split!r}; use train, validation, test or all")
    utts = utterances(n, engines, words, objects)

    def build():
        workers = max(1, min(8, os.cpu_count() or 1))
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = lambda x, **_: x  # noqa: E731
        with ThreadPoolExecutor(workers) as pool:  # the engines run as subprocesses
            waves = list(tqdm(pool.map(lambda u: synthesize(u, sample_rate), utts), total=len(utts),
                              desc=f"synthesizing {len(utts)} clips (once; cached)", disable=len(utts) < 200))
        lengths = np.array([len(w) for w in waves])
        audio = np.concatenate(waves).clip(-1, 1)
        return {"audio": (audio * 32767).round().astype(np.int16), "lengths": lengths}

    name = f"speech_{'-'.join(engines)}_{n}_{sample_rate}.npz" if words == "dictionary" else f"speech_{words}_{'-'.join(engines)}_{sample_rate}{vocabulary_tag(objects)}.npz"
    data = cached_npz(name, build)
    ends = np.cumsum(data["lengths"])
    waves = [data["audio"][e - l : e].astype(np.float32) / 32767 for e, l in zip(ends, data["lengths"])]
    key = (lambda u: "speech-" + u.text) if words == "dictionary" else (lambda u: f"speech-{u.text}-{u.voice}-{u.stretch:g}")
    fractions = (0.9, 0.95) if words == "dictionary" else (0.8, 0.9)  # objects: a small set, so a larger test share
    keep = [i for i, u in enumerate(utts) if split == "all" or hash_split(key(u), fractions) == split]
    return [waves[i] for i in keep], [utts[i].text for i in keep], [utts[i] for i in keep]


def load_recordings(sample_rate: int = 16000, which: str = "recordings") -> tuple[list[np.ndarray], list[str]]:
    """Real recordings: `recordings` (ALSA's nine spoken clips) or `sounds` (freedesktop's sound events)."""
    if which == "recordings":
        root, pattern, package = ALSA, "*.wav", "alsa-utils"
    elif which == "sounds":
        root, pattern, package = FREEDESKTOP, "*.oga", "sound-theme-freedesktop"
    else:
        raise ConfigError(f"unknown recordings {which!r}; use recordings or sounds")
    files = sorted(root.glob(pattern))
    if not files:
        raise ConfigError(f"no {pattern} files in {root}. Install the Debian package `{package}` (`make setup` does it).")
    return [read_audio(f, sample_rate) for f in files], [f.stem.replace("_", " ") for f in files]
