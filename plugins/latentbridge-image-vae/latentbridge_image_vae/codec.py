"""Images <-> latent tokens with diffusers' AutoencoderKL.

    image [3, S, S] in [-1, 1] --AutoencoderKL.encode--> posterior over [C, S/f, S/f]
        --patchify (p x p latent pixels per token)--> N = (S / f / p)^2 tokens of D = C p^2 channels

One image is one prior block (block_size = N). The VAE is either built from a small preset that
trains on a CPU (`preset: tiny | small`) or read from any diffusers-format AutoencoderKL directory
on disk (`diffusers_dir`, e.g. one written by `AutoencoderKL.save_pretrained`). Per-channel latent
stats are fitted from data by the codec stage (LatentStats) and saved with the codec; the VAE's own
scaling factor is not used.

Items are uint8 arrays [S, S, 3] (what the datasets hold) or float tensors [3, S, S] in [-1, 1];
decode returns uint8 arrays [S, S, 3].

Dimensions: B images, S pixels a side, f the VAE's downsampling, C latent channels, p patch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from latentbridge.codecs import Codec, LatentSpec, LatentStats, Posterior
from latentbridge.errors import CheckpointError, CodecOutputError, ConfigError

VAE_DIR = "vae"
PRESETS: dict[str, dict[str, Any]] = {
    # two downsamplings (f = 4): 32 px -> 8 x 8 latents
    "tiny": {"block_out_channels": (32, 64, 64), "layers_per_block": 1, "norm_num_groups": 16},
    "small": {"block_out_channels": (64, 128, 128), "layers_per_block": 1, "norm_num_groups": 32},
}


@dataclasses.dataclass
class ImageVAEConfig:
    """Options of the `image-vae` codec."""

    preset: str = "tiny"
    """AutoencoderKL size when building one: tiny or small (f = 4, CPU-trainable)."""
    diffusers_dir: str | None = None
    """A diffusers-format AutoencoderKL directory to wrap instead of a preset (weights included)."""
    image_size: int = 32
    """Side S of the (square) images in pixels."""
    latent_channels: int = 4
    """C: latent channels of a preset VAE (a wrapped VAE brings its own)."""
    patch: int = 2
    """p: latent pixels per token side; D = C * p^2 channels per token."""
    beta: float = 1e-4
    """Weight of KL(q(z|x) || N(0, I)) per latent token in the loss."""

    def __post_init__(self) -> None:
        if self.diffusers_dir is None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")


def _build_vae(c: ImageVAEConfig):
    from diffusers import AutoencoderKL

    if c.diffusers_dir is not None:
        path = Path(c.diffusers_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(f"diffusers_dir: {path} is not a diffusers AutoencoderKL directory (no config.json). "
                              "Write one with AutoencoderKL.save_pretrained(DIR).")
        return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    p = PRESETS[c.preset]
    depth = len(p["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=c.latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * depth, up_block_types=("UpDecoderBlock2D",) * depth,
                         block_out_channels=p["block_out_channels"], layers_per_block=p["layers_per_block"],
                         norm_num_groups=p["norm_num_groups"], sample_size=c.image_size, mid_block_add_attention=False)


class ImageVAE(Codec):
    """AutoencoderKL with patchified latents; one image = one prior block."""

    name = "image-vae"
    modality = "image"
    config_class = ImageVAEConfig

    def __init__(self, config: ImageVAEConfig | dict | None = None, *, vae=None) -> None:
        super().__init__(config)
        self.vae = vae if vae is not None else _build_vae(self.config)  # `vae`: rebuilt by from_pretrained
        self._check_geometry()
        self.stats = LatentStats(self.latent_spec.dim)  # the VAE fixes D (a wrapped one brings its own channels)

    # geometry -------------------------------------------------------------------------------------------

    @property
    def down(self) -> int:
        """f: the VAE's downsampling factor."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def tokens(self) -> int:
        side = self.config.image_size // self.down // self.config.patch
        return side * side

    def _check_geometry(self) -> None:
        c = self.config
        if c.image_size % (self.down * c.patch):
            raise ConfigError(f"image_size {c.image_size} must be divisible by the VAE's downsampling {self.down} x patch {c.patch}")

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        if not hasattr(self, "vae"):  # during base __init__: geometry from the config alone
            f = 2 ** (len(PRESETS.get(c.preset, PRESETS["tiny"])["block_out_channels"]) - 1)
            n = (c.image_size // f // c.patch) ** 2
            return LatentSpec(dim=c.latent_channels * c.patch**2, block_size=max(n, 1), tokens_per_item=max(n, 1))
        return LatentSpec(dim=self.channels * c.patch**2, block_size=self.tokens, tokens_per_item=self.tokens)

    # items <-> tensors -------------------------------------------------------------------------------------

    def collate(self, items: Sequence[Any]) -> Tensor:
        s = self.config.image_size
        out = []
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray) and item.dtype == np.uint8:
                if item.shape != (s, s, 3):
                    raise CodecOutputError(f"codec 'image-vae': item {i} is a uint8 image of shape {item.shape}; expected ({s}, {s}, 3)")
                x = torch.tensor(item).permute(2, 0, 1).float() / 127.5 - 1.0  # a copy: cached arrays are read-only
            else:
                x = torch.as_tensor(item, dtype=torch.float32)
                if x.shape != (3, s, s):
                    raise CodecOutputError(f"codec 'image-vae': item {i} has shape {tuple(x.shape)}; expected a uint8 array "
                                           f"({s}, {s}, 3) or a float tensor (3, {s}, {s}) in [-1, 1]")
            out.append(x)
        return torch.stack(out)

    def raw_encode(self, x: Tensor) -> Posterior:
        dist = self.vae.encode(x.to(self.device, self.dtype)).latent_dist
        p = self.config.patch
        mean = rearrange(dist.mean, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        logvar = rearrange(dist.logvar, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        lengths = torch.full((x.shape[0],), mean.shape[1], dtype=torch.long, device=mean.device)
        return Posterior(mean=mean, logvar=logvar, lengths=lengths)

    def _pixels(self, z: Tensor) -> Tensor:
        side = self.config.image_size // self.down // self.config.patch
        p = self.config.patch
        grid = rearrange(z, "b (h w) (c p q) -> b c (h p) (w q)", h=side, w=side, p=p, q=p)
        return self.vae.decode(grid.to(self.dtype)).sample  # [B, 3, S, S]

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[np.ndarray]:
        x = self._pixels(z).clamp(-1, 1)
        return list(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        x = x.to(self.device, self.dtype)
        post = self.raw_encode(x)
        recon = self._pixels(post.sample())
        l1 = F.l1_loss(recon, x)
        mse = F.mse_loss(recon, x)
        kl = post.kl().mean()
        return {"loss": l1 + mse + self.config.beta * kl, "l1": l1, "mse": mse, "kl": kl}

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict[str, float]:
        out = super().diagnostics(x)
        x = x.to(self.device, self.dtype)
        recon = self._pixels(self.raw_encode(x).mean).clamp(-1, 1)
        out["psnr"] = float(psnr(recon, x).mean())
        out["ssim"] = float(ssim(recon, x).mean())
        return out

    def write_items(self, items: Sequence[Any], directory, names: Sequence[str] | None = None) -> list[Path]:
        """Each image as NN_name.png, and all of them in grid.png (torchvision's make_grid, 4x nearest upscale)."""
        from PIL import Image
        from torchvision.utils import make_grid

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = list(names) if names is not None else [""] * len(items)
        written = []
        for i, (img, name) in enumerate(zip(items, names)):
            slug = "".join(ch if ch.isalnum() else "_" for ch in str(name))[:40]
            path = directory / (f"{i:02d}_{slug}.png" if slug else f"{i:02d}.png")
            Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)
            written.append(path)
        if items:
            batch = torch.as_tensor(np.stack([np.asarray(x, dtype=np.uint8) for x in items])).permute(0, 3, 1, 2)  # [B, 3, S, S]
            big = F.interpolate(batch.float(), scale_factor=4, mode="nearest")
            grid = make_grid(big, nrow=8, padding=4, pad_value=200).round().clamp(0, 255).byte()  # [3, H, W]
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(directory / "grid.png")
            written.append(directory / "grid.png")
        return written

    def read_items(self, paths: Sequence[Any]) -> list[np.ndarray]:
        """Any image PIL reads: RGB, centre-cropped to a square, resized (Lanczos) to image_size."""
        from PIL import Image, UnidentifiedImageError

        out = []
        for path in paths:
            try:
                img = np.asarray(Image.open(path).convert("RGB"))
            except UnidentifiedImageError:
                raise ConfigError(f"{path} is not an image PIL can read") from None
            h, w = img.shape[:2]
            s = min(h, w)
            square = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
            size = self.config.image_size
            out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.LANCZOS), dtype=np.uint8))
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[np.ndarray]:
        s = self.config.image_size
        return list(torch.randint(0, 256, (n, s, s, 3), generator=generator, dtype=torch.uint8).numpy())

    # save / load: the VAE's diffusers config travels with the weights ---------------------------------

    def save_extra(self, directory: Path) -> None:
        (directory / VAE_DIR).mkdir()
        (directory / VAE_DIR / "config.json").write_text(json.dumps(dict(self.vae.config), indent=2, default=list) + "\n")

    @classmethod
    def build_for_directory(cls, config: ImageVAEConfig, directory: Path) -> ImageVAE:
        from diffusers import AutoencoderKL

        saved = directory / VAE_DIR / "config.json"
        if not saved.is_file():
            raise CheckpointError(f"{directory}: the saved image VAE has no {VAE_DIR}/config.json; the save is incomplete — re-save it.")
        vae = AutoencoderKL.from_config(json.loads(saved.read_text()))
        return cls(config, vae=vae)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (data range 2): [B] (torchmetrics)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a.float(), b.float(), data_range=2.0, reduction="none", dim=(1, 2, 3))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Structural similarity per image, images in [-1, 1]: [B]. torchmetrics' implementation with the standard
    settings of Wang et al. 2004 (11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), so figures compare with papers."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure((a.float() + 1) / 2, (b.float() + 1) / 2, gaussian_kernel=True, sigma=1.5,
                                               kernel_size=11, data_range=1.0, reduction="none")

