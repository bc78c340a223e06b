"""Image VAE: conformance, wrapping a diffusers-format AutoencoderKL directory, metrics, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentbridge.errors import CodecOutputError, ConfigError
from latentbridge.testing import CodecConformance
from latentbridge_image_vae import ImageVAE, psnr, ssim


class TestImageVAE(CodecConformance):
    codec_class = ImageVAE


class TestImageVAEPatch1(CodecConformance):
    codec_class = ImageVAE
    codec_config = {"patch": 1, "latent_channels": 2}


def test_one_image_is_one_block_of_patchified_tokens():
    codec = ImageVAE({"image_size": 32, "patch": 2, "latent_channels": 4})
    spec = codec.latent_spec
    assert (spec.dim, spec.tokens_per_item, spec.block_size) == (16, 16, 16)  # 32 px / f 4 = 8 latents a side, 2x2 patches
    assert codec.stats.shift.shape == (16,)


def test_wraps_a_diffusers_autoencoder_directory(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                        norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp_path / "diffusers_vae")  # diffusers' own format: config.json + weights
    codec = ImageVAE({"diffusers_dir": str(tmp_path / "diffusers_vae"), "image_size": 16, "patch": 2}).eval()
    assert codec.latent_spec.dim == 3 * 4 and codec.latent_spec.tokens_per_item == 16  # f = 2: 8 x 8 latents, 2x2 patches
    assert torch.equal(codec.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)  # its weights, not a fresh VAE
    images = [np.full((16, 16, 3), v, dtype=np.uint8) for v in (0, 128, 255)]
    x = codec.collate(images)
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean
    post = codec.raw_encode(x)
    # token 0 holds the top-left 2x2 latent pixels, channels-major: entry c * 4 is channel c at pixel (0, 0)
    assert torch.allclose(post.mean[:, 0, ::4], want[:, :, 0, 0], atol=1e-6)
    codec.save_pretrained(tmp_path / "codec")
    again = ImageVAE.from_pretrained(tmp_path / "codec").eval()
    with torch.no_grad():
        assert torch.allclose(again.raw_encode(x).mean, post.mean, atol=1e-6)


def test_ssim_is_the_standard_one():
    """The same figure as scikit-image's SSIM with the paper's settings (Gaussian 11 x 11, sigma 1.5)."""
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = ssim(y, x)
    for i in range(2):
        ref = metrics.structural_similarity(((x[i] + 1) / 2).permute(1, 2, 0).double().numpy(), ((y[i] + 1) / 2).permute(1, 2, 0).double().numpy(),
                                            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert abs(float(ours[i]) - ref) < 2e-2, (float(ours[i]), ref)


def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert bool((psnr(x, x) > 90).all())
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    very = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert bool((psnr(noisy, x) > psnr(very, x)).all()) and bool((ssim(noisy, x) > ssim(very, x)).all())
    assert abs(float(psnr(noisy, x)[0]) - 10 * np.log10(4 / 0.01)) < 1.0  # ~26 dB for noise std 0.1 (range 2)


def test_bad_input_is_named(tmp_path):
    codec = ImageVAE()
    with pytest.raises(CodecOutputError, match=r"uint8 image of shape \(16, 16, 3\); expected \(32, 32, 3\)"):
        codec.collate([np.zeros((16, 16, 3), dtype=np.uint8)])
    with pytest.raises(ConfigError, match="not a diffusers AutoencoderKL directory"):
        ImageVAE({"diffusers_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="preset must be one of tiny, small"):
        ImageVAE({"preset": "huge"})
    with pytest.raises(ConfigError, match="divisible"):
        ImageVAE({"image_size": 30})


@pytest.mark.slow
def test_learns_to_reconstruct_emoji(tmp_path, monkeypatch):
    load_emoji = pytest.importorskip("latentbridge_demo.data.emoji").load_emoji  # real images from the demo's data

    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path))
    images, _ = load_emoji(32, "train")
    torch.manual_seed(0)
    codec = ImageVAE()
    batch = codec.collate(list(images[:32]))
    before = codec.eval().diagnostics(batch)
    codec.train()
    opt = torch.optim.Adam(codec.parameters(), lr=2e-3)
    for _ in range(60):
        opt.zero_grad()
        codec.loss(batch)["loss"].backward()
        opt.step()
    after = codec.eval().diagnostics(batch)
    assert after["psnr"] > before["psnr"] + 5 and after["ssim"] > before["ssim"] + 0.2, (before, after)
