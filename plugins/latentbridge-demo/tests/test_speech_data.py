"""Speech: words and names spoken by flite and espeak-ng, split by text, cached; real recordings."""

from __future__ import annotations

import numpy as np
import pytest
import torch


from latentbridge_demo.data import speech as sp
from latentbridge_demo.data.images import hash_split
from latentbridge_demo.datasets import SpeechData, SpeechOptions
from latentbridge.errors import ConfigError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path))
    return tmp_path


def test_utterances_are_deterministic_and_use_several_voices():
    a = sp.utterances(400)
    assert a == sp.utterances(400) and len({u.text for u in a}) == 400
    assert {u.engine for u in a} == {"flite", "espeak"} and len({u.voice for u in a}) >= 6
    assert sum(u.text[0].isupper() for u in a) == 100  # a quarter are names
    assert {u.engine for u in sp.utterances(50, ["flite"])} == {"flite"}
    with pytest.raises(ConfigError, match="unknown speech engine"):
        sp.utterances(5, ["festival"])


def test_synthesized_clips_are_speech_at_the_asked_rate_and_cached(cache):
    waves, texts, utts = sp.load_speech("all", 12, 16000)
    assert len(waves) == len(texts) == 12 and all(w.dtype == np.float32 for w in waves)
    assert all(0.2 < len(w) / 16000 < 3.0 for w in waves)  # single words
    assert all(float(np.abs(w).max()) > 0.05 for w in waves)  # not silence
    assert list(cache.glob("speech_*_12_16000.npz"))
    again, _, _ = sp.load_speech("all", 12, 16000)
    assert all(np.array_equal(a, b) for a, b in zip(waves, again))
    train, _, _ = sp.load_speech("train", 12, 16000)
    assert 0 < len(train) <= 12


def test_splits_are_by_text():
    utts = sp.utterances(1000)
    splits = {hash_split("speech-" + u.text) for u in utts}
    assert splits == {"train", "validation", "test"}


def test_real_recordings_resampled():
    waves, names = sp.load_recordings(16000)
    assert len(waves) == 9 and "Front Center" in names
    assert all(1.0 < len(w) / 16000 < 2.0 for w in waves)
    sounds, _ = sp.load_recordings(16000, "sounds")
    assert len(sounds) > 20


def test_resample_keeps_a_tone():
    sr, f = 48000, 440.0
    tone = np.sin(2 * np.pi * f * np.arange(sr) / sr).astype(np.float32)
    out = sp.resample(tone, sr, 16000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(spectrum.argmax()) - f) <= 1  # 1 Hz bins over one second


def test_bad_audio_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.wav"
    bad.write_text("not audio")
    with pytest.raises(ConfigError, match="cannot read audio"):
        sp.read_audio(bad)


def test_speech_source_pairs_audio_with_text(cache):
    src = SpeechData(SpeechOptions(clips=24), seed=0)
    assert isinstance(src, SpeechData) and src.fields == {"audio": "audio", "text": "text"}
    batch = src.batch(0, 4, torch.Generator())
    assert len(batch["audio"]) == len(batch["text"]) == 4
    rec = src.split("recordings")
    assert len(rec["audio"]) == 9


def test_object_words_are_a_closed_vocabulary_split_by_rendition():
    from latentbridge_demo.data.images import DIGIT_NAMES, SCENE_VOCABULARY

    utts = sp.utterances(0, ["flite", "espeak"], "objects")
    assert len(utts) == 42 * 8 * 5 and {u.text for u in utts} == {*SCENE_VOCABULARY, *DIGIT_NAMES}
    assert {u.stretch for u in utts} == set(sp.SPEEDS)
    with pytest.raises(ConfigError, match="unknown word set"):
        sp.utterances(0, ["flite"], "sentences")
    few = sp.utterances(0, ["flite"], "objects", ["frog", "tomato", "lemon"])
    assert len(few) == 13 * 4 * 5 and {u.text for u in few} == {"frog", "tomato", "lemon", *DIGIT_NAMES}


@pytest.mark.slow
def test_object_words_spoken_at_several_speeds(cache):
    waves, texts, utts = sp.load_speech("all", 0, 16000, ["flite"], "objects")
    assert len(waves) == 42 * 4 * 5
    owl = {u.stretch: len(w) for w, u in zip(waves, utts) if u.text == "owl" and u.voice == "slt"}
    assert owl[1.25] > owl[1.0] > owl[0.8]  # the stretch slows the voice down
    test = sp.load_speech("test", 0, 16000, ["flite"], "objects")[1]
    train = set(sp.load_speech("train", 0, 16000, ["flite"], "objects")[1])
    assert test and set(test) <= train  # held-out renditions of words heard in training
    src = SpeechData(SpeechOptions(sources=["flite"], words="objects"), 0)
    assert set(src.split("test")["text"]) <= set(src.train["text"])
