"""Image and audio codecs end to end through the CLI: codec stage from the shipped YAML -> held-out report
(in-domain and real out-of-domain data) and reconstructions in the run directory; `latentbridge
reconstruct` on a run, on a saved codec and on your own files.

A handful of steps: this checks the wiring, not quality (the quality figures come from the full configs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from latentbridge.cli import main

pytest.importorskip("latentbridge_image_vae")
pytest.importorskip("latentbridge_audio")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, autoload_plugins):
    run = tmp_path_factory.mktemp("image") / "vae"
    code = main(["train", "configs/image_vae.yaml", "--run-dir", str(run), "--no-progress", "--train.steps=2",
                 "--train.batch_size=4", "--train.log_every=1", "--eval.samples=8", "--data.config.scenes=160",
                 "--train.mixed_precision=no"])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory, autoload_plugins):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LATENTBRIDGE_CACHE", str(cache))
    run = tmp_path_factory.mktemp("audio") / "vae"
    code = main(["train", "configs/audio_vae.yaml", "--run-dir", str(run), "--no-progress", "--train.steps=2",
                 "--train.batch_size=4", "--train.log_every=1", "--eval.samples=4", "--data.config.clips=200",
                 "--codecs.audio.config.width=16", "--codecs.audio.config.blocks=1", "--train.mixed_precision=no"])
    assert code == 0
    yield run
    mp.undo()


@pytest.mark.slow
def test_image_codec_stage_reports_held_out_and_photos_and_writes_grids(image_run):
    report = json.loads((image_run / "report.json").read_text())["codecs"]["image"]
    assert report["codec"] == "image-vae" and report["train_steps"] == 2
    assert list(report["held_out"]) == ["test emoji", "test scenes", "test digits", "photos (out of domain)"]
    for row in report["held_out"].values():
        assert row["items"] == 8 and {"psnr", "ssim", "rate_nats_per_latent", "active_channels"} <= set(row)
    from PIL import Image

    for split in ("emoji", "scenes", "digits", "photos"):  # originals and reconstructions through the codec's write_items
        for part in ("originals", "reconstructions"):
            folder = image_run / "samples" / f"reconstructions_{split}" / part
            grid = np.asarray(Image.open(folder / "grid.png"))
            assert grid.shape[0] >= 4 * 32 and grid.ndim == 3 and len(list(folder.glob("0*.png"))) == 8  # upscaled


@pytest.mark.slow
def test_audio_codec_stage_reports_held_out_and_recordings_and_writes_wavs(audio_run):
    report = json.loads((audio_run / "report.json").read_text())["codecs"]["audio"]
    assert report["codec"] == "audio-vae"
    assert list(report["held_out"]) == ["test flite", "test espeak", "recordings (out of domain)"]
    assert report["held_out"]["recordings (out of domain)"]["items"] == 4  # eval.samples
    for row in report["held_out"].values():
        assert 2 <= row["items"] <= 4 and {"log_mel_l1", "mr_stft", "mr_stft_vocoder_only", "rate_nats_per_latent"} <= set(row)
    wavs = sorted((audio_run / "samples" / "reconstructions_recordings" / "reconstructions").glob("*.wav"))
    assert len(wavs) == 4 and any("Front_Center" in w.name for w in wavs)
    assert len(list((audio_run / "samples" / "reconstructions_recordings" / "originals").glob("*.wav"))) == 4
    wave, sr = sf.read(wavs[0])
    assert sr == 16000 and wave.ndim == 1 and len(wave) > 8000


@pytest.mark.slow
def test_reconstruct_a_saved_codec_on_your_own_files(image_run, audio_run, tmp_path, capsys):
    from PIL import Image

    img = np.zeros((50, 70, 3), np.uint8)
    img[:, :35] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "red.png")
    assert main(["reconstruct", str(image_run / "codecs" / "image"), "--files", str(tmp_path / "red.png"),
                 "--out", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "reconstructions_files" / "reconstructions" / "00_red.png").is_file()
    assert "psnr" in json.loads((tmp_path / "img" / "reconstructions.json").read_text())["held_out"]["files (out of domain)"]

    sf.write(tmp_path / "tone.wav", (0.3 * np.sin(np.arange(24000) * 0.1)).astype(np.float32), 24000)  # resampled to 16 kHz
    assert main(["reconstruct", str(audio_run / "codecs" / "audio"), "--files", str(tmp_path / "tone.wav"),
                 "--out", str(tmp_path / "aud")]) == 0
    assert (tmp_path / "aud" / "reconstructions_files" / "reconstructions" / "00_tone.wav").is_file()
    assert "mr_stft" in capsys.readouterr().out


def test_reconstruct_a_run_directory_on_chosen_splits(audio_run, tmp_path):
    assert main(["reconstruct", str(audio_run), "--split", "test", "-n", "2", "--out", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r" / "reconstructions_test").rglob("*.wav"))) == 4


def test_reconstruct_refuses_what_is_not_a_codec(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path)]) == 2
    assert "neither a saved codec" in capsys.readouterr().err


@pytest.mark.slow
def test_reconstruct_a_saved_codec_needs_files_or_a_data_set(image_run, tmp_path, capsys):
    assert main(["reconstruct", str(image_run / "codecs" / "image"), "--out", str(tmp_path / "x")]) == 2
    assert "--files (your files) or --data NAME" in capsys.readouterr().err
    assert main(["reconstruct", str(image_run / "codecs" / "image"), "--data", "images", "--split", "digits", "-n", "3",
                 "--out", str(tmp_path / "y")]) == 0
    assert len(list((tmp_path / "y" / "reconstructions_digits" / "reconstructions").glob("0*.png"))) == 3
