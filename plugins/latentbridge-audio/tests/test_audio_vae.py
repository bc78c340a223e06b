"""Audio VAE: conformance (variable and fixed length), latent geometry, batch independence, Griffin-Lim
round trip, the STFT distance, bad input, and learning on real synthesized speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentbridge.errors import CodecOutputError
from latentbridge.testing import CodecConformance
from latentbridge_audio import AudioVAE, mr_stft_distance

SMALL = {"width": 32, "blocks": 1, "n_mels": 32, "latent_dim": 8}


class TestAudioVAE(CodecConformance):
    codec_class = AudioVAE
    codec_config = SMALL


class TestAudioVAEFixedLength(CodecConformance):
    codec_class = AudioVAE
    codec_config = {**SMALL, "fixed_seconds": 1.0, "downsample": 2}


def _speech(n: int, split: str = "train") -> list[np.ndarray]:
    load_speech = pytest.importorskip("latentbridge_demo.data.speech").load_speech  # real speech from the demo's data

    waves, _, _ = load_speech(split, 40)
    return waves[:n]


def test_latent_geometry_follows_the_frame_rate():
    codec = AudioVAE()
    assert codec.latent_rate == pytest.approx(16000 / 256 / 4)  # 15.6 latents a second
    spec = codec.latent_spec
    assert spec.tokens_per_item is None and spec.block_size == 8 and spec.max_tokens == codec.num_tokens(np.zeros(10**6, np.float32))
    one_second = np.zeros(16000, np.float32)
    assert codec.num_tokens(one_second) == -(-(16000 // 256 + 1) // 4) == 16
    batch = codec.collate([one_second, one_second[:4000]])
    with torch.no_grad():
        assert codec.encode(batch).lengths.tolist() == [16, 4]
    fixed = AudioVAE({"fixed_seconds": 2.048})
    assert fixed.latent_spec.tokens_per_item == 33 and fixed.collate([one_second])["wave"].shape[-1] == 32768


def test_an_items_latents_do_not_depend_on_its_batch():
    codec = AudioVAE(SMALL).eval()
    waves = codec.example_items(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = codec.encode(codec.collate(waves))
        for i, w in enumerate(waves):
            alone = codec.encode(codec.collate([w])).values[0]
            n = int(together.lengths[i])
            assert torch.allclose(together.values[i, :n], alone, atol=1e-5)


def test_griffin_lim_round_trip_of_a_real_clip():
    codec = AudioVAE()
    wave = _speech(1)[0]
    log_mel = codec.log_mel(torch.from_numpy(wave))
    back = codec.vocode(log_mel, len(wave))
    assert back.dtype == np.float32 and abs(len(back) - len(wave)) < 256
    assert mr_stft_distance(back, wave) < 1.5  # phase is re-estimated; magnitudes come back close
    assert mr_stft_distance(np.zeros_like(wave) + 1e-3 * np.random.default_rng(0).standard_normal(len(wave)), wave) > 3.0


def test_stft_distance_is_zero_for_equal_waves_and_grows_with_noise():
    rng = np.random.default_rng(0)
    wave = (0.3 * np.sin(np.arange(16000) * 0.05) + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    assert mr_stft_distance(wave, wave) == 0.0
    small = mr_stft_distance(wave + 0.003 * rng.standard_normal(16000), wave)
    large = mr_stft_distance(wave + 0.1 * rng.standard_normal(16000), wave)
    assert 0 < small < large


@pytest.mark.parametrize("item", [np.zeros((2, 100), np.float32), np.zeros(0, np.float32), np.arange(10), np.array([np.nan] * 10, np.float32)])
def test_bad_items_are_refused_with_the_fix(item):
    with pytest.raises(CodecOutputError, match="item 0"):
        AudioVAE(SMALL).collate([item])


def test_augmentation_only_while_the_codec_trains():
    codec = AudioVAE(SMALL)
    silence = [np.zeros(8000, np.float32), 0.1 * np.ones(8000, np.float32)]
    codec.train()
    assert codec.augments
    a = codec.augment(silence, torch.Generator().manual_seed(0))
    b = codec.augment(silence, torch.Generator().manual_seed(0))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # drawn from the generator
    noisy = [codec.augment(silence[:1], torch.Generator().manual_seed(s))[0] for s in range(20)]
    rms = [float(np.sqrt((x**2).mean())) for x in noisy]
    assert 0 < sum(r > 0 for r in rms) < 20 and max(rms) < 0.02  # some clips get a quiet noise floor
    gains = [float(codec.augment(silence[1:], torch.Generator().manual_seed(s))[0].max()) for s in range(20)]
    assert min(gains) < 0.1 < max(gains) and 0.05 < min(gains) and max(gains) < 0.2 + 0.05  # +-6 dB
    frozen = codec.freeze().augment(silence, torch.Generator().manual_seed(0))
    assert all(x is y for x, y in zip(frozen, silence))  # the prior stage sees the data as it is
    assert not codec.augments  # so its latents can be cached (train.cache_latents)
    assert not AudioVAE({**SMALL, "gain_db": 0.0, "noise_probability": 0.0}).train().augments


def test_long_clips_are_cut_to_max_seconds():
    codec = AudioVAE({**SMALL, "max_seconds": 1.0})
    batch = codec.collate([np.zeros(40000, np.float32)])
    assert batch["wave"].shape[-1] == 16000 and int(batch["tokens"][0]) == codec.latent_spec.max_tokens


@pytest.mark.parametrize("samples", [1, 10, 512])
def test_clips_shorter_than_half_a_window_encode_as_one_token(samples):
    """A 10-sample WAV used to end in torch's "Padding size should be less than the corresponding input dimension"."""
    codec = AudioVAE(SMALL)
    latents = codec.encode_items([np.ones(samples, np.float32) * 0.1])
    assert latents.lengths.tolist() == [1] and bool(torch.isfinite(latents.values).all())
    assert len(codec.decode(latents)) == 1


@pytest.mark.slow
def test_learns_to_reconstruct_real_speech():
    torch.manual_seed(0)
    codec = AudioVAE({"width": 64, "blocks": 1})
    train = codec.collate(_speech(24))
    before = codec.eval().diagnostics(train)
    codec.train()
    opt = torch.optim.AdamW(codec.parameters(), 2e-3)
    for _ in range(80):
        loss = codec.loss(train)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = codec.eval().diagnostics(train)
    assert after["log_mel_l1"] < 0.5 * before["log_mel_l1"], (before, after)
    assert after["mr_stft"] < before["mr_stft"]
    out = codec.decode(codec.encode(train))
    assert len(out) == 24 and all(o.dtype == np.float32 for o in out)
