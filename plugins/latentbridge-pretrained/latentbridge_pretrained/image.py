"""`pretrained-image`: a diffusers image autoencoder read from disk (AutoencoderKL — SD, SDXL, FLUX — or AutoencoderDC).

    image [3, S, S] in [-1, 1] --model.encode--> [C, S/f, S/f] --patchify p x p--> (S/f/p)^2 tokens of D = C p^2

One image is one prior block. C and f come from the model's config (AutoencoderKL: 2^(len(block_out_channels) - 1);
AutoencoderDC: 2^(len(encoder_block_out_channels) - 1)). The latent scale and shift the model publishes are the
codec's LatentStats: z_normalized = (z - shift_factor) * scaling_factor, or per channel (z - latents_mean) *
scaling_factor / latents_std where the config has them; a model without scaling_factor gets its stats fitted from
data as any codec. AutoencoderKL has a Gaussian posterior (mean, logvar); AutoencoderDC is deterministic.

Items: uint8 arrays [S, S, 3] or float tensors [3, S, S] in [-1, 1]; decode returns uint8 arrays [S, S, 3].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from latentbridge.codecs import LatentSpec, LatentStats, Posterior
from latentbridge.errors import CodecOutputError, ConfigError
from latentbridge.typedconfig import NonNegativeFloat, PositiveInt

from latentbridge_pretrained.common import WrappedModelCodec, eval_mode, load_from, model_directory, pick, read_model_config

SUPPORTED = ("AutoencoderKL", "AutoencoderDC")


@dataclasses.dataclass
class PretrainedImageConfig:
    """Options of the `pretrained-image` codec."""

    path: str = ""
    """The model directory (written by save_pretrained), or a pipeline directory with `subfolder`."""
    subfolder: str | None = None
    """Folder of the autoencoder inside `path`, e.g. `vae` in a Stable Diffusion pipeline directory."""
    image_size: PositiveInt = 256
    """Side S of the (square) images in pixels; must divide by the model's downsampling f times `patch`."""
    patch: PositiveInt = 2
    """p: latent pixels per token side; D = C p^2 channels per token, (S/f/p)^2 tokens per image."""
    beta: NonNegativeFloat = 1e-6
    """Fine-tuning only (codecs.<role>.steps > 0): weight of the KL term of a Gaussian posterior."""


def _down(name: str, config: Any) -> int:
    blocks = config["block_out_channels"] if name == "AutoencoderKL" else config["encoder_block_out_channels"]
    return 2 ** (len(blocks) - 1)


class PretrainedImageVAE(WrappedModelCodec):
    """A diffusers AutoencoderKL or AutoencoderDC, eval_mode, with patchified latents; one image = one prior block."""

    name = "pretrained-image"
    modality = "image"
    config_class = PretrainedImageConfig

    def __init__(self, config: PretrainedImageConfig | dict | None = None, *, model: Any = None) -> None:
        self._geometry: tuple[str, int, int] | None = None  # class, f, C: known once the model is
        super().__init__(config)
        c = self.config
        published: dict[str, Any] | None = None
        if model is None:
            directory = model_directory(self.name, c.path, c.subfolder)
            raw = read_model_config(directory)
            name, loader = pick(self.name, directory, raw, {k: k for k in SUPPORTED})
            import diffusers

            model = eval_mode(load_from(getattr(diffusers, loader).from_pretrained, directory, self.name))
            published, where = raw, directory
        else:
            where = Path(c.path or ".")
        self.model = model
        name = type(model).__name__
        self._geometry = (name, _down(name, model.config), int(model.config["latent_channels"]))
        f = self._geometry[1]
        if c.image_size % (f * c.patch):
            raise ConfigError(f"codec '{self.name}': {where} is a {name} with downsampling f = {f}: image_size {c.image_size} "
                              f"must divide by f x patch = {f * c.patch} (e.g. image_size {f * c.patch * max(1, c.image_size // (f * c.patch))}).")
        self.stats = LatentStats(self.latent_spec.dim)
        self._published = bool(published and published.get("scaling_factor"))
        if self._published:
            self._set_published_stats(published)

    # geometry and stats -------------------------------------------------------------------------------------

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        if self._geometry is None:  # during the base __init__: a placeholder until the model is known
            return LatentSpec(dim=c.patch**2, block_size=1, tokens_per_item=1)
        _, f, channels = self._geometry
        n = (c.image_size // f // c.patch) ** 2
        return LatentSpec(dim=channels * c.patch**2, block_size=n, tokens_per_item=n)

    @property
    def publishes_stats(self) -> bool:
        return self._published

    def _set_published_stats(self, raw: dict[str, Any]) -> None:
        """z_normalized = (z - shift) / scale with the model's own numbers, per token channel (c p q)."""
        channels, p = self._geometry[2], self.config.patch
        scaling = float(raw["scaling_factor"])
        mean, std = raw.get("latents_mean"), raw.get("latents_std")
        if mean is not None and std is not None:
            shift_c = torch.tensor(mean, dtype=torch.float32)
            scale_c = torch.tensor(std, dtype=torch.float32) / scaling
        else:
            shift_c = torch.full((channels,), float(raw.get("shift_factor") or 0.0))
            scale_c = torch.full((channels,), 1.0 / scaling)
        self.stats.set(repeat(shift_c, "c -> (c k)", k=p * p), repeat(scale_c, "c -> (c k)", k=p * p))

    # items <-> tensors -------------------------------------------------------------------------------------

    def collate(self, items: Sequence[Any]) -> Tensor:
        s = self.config.image_size
        out = []
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray) and item.dtype == np.uint8:
                if item.shape != (s, s, 3):
                    raise CodecOutputError(f"codec '{self.name}': item {i} is a uint8 image of shape {item.shape}; expected "
                                           f"({s}, {s}, 3) (config.image_size)")
                x = torch.tensor(item).permute(2, 0, 1).float() / 127.5 - 1.0
            else:
                x = torch.as_tensor(item, dtype=torch.float32)
                if x.shape != (3, s, s):
                    raise CodecOutputError(f"codec '{self.name}': item {i} has shape {tuple(x.shape)}; expected a uint8 array "
                                           f"({s}, {s}, 3) or a float tensor (3, {s}, {s}) in [-1, 1]")
            out.append(x)
        return torch.stack(out)

    def _tokens(self, grid: Tensor) -> Tensor:
        p = self.config.patch
        return rearrange(grid, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)

    def raw_encode(self, x: Tensor) -> Posterior:
        out = self.model.encode(x.to(self.device, self.dtype))
        if hasattr(out, "latent_dist"):  # AutoencoderKL: a Gaussian posterior
            mean, logvar = self._tokens(out.latent_dist.mean), self._tokens(out.latent_dist.logvar)
        else:  # AutoencoderDC: deterministic latents
            mean, logvar = self._tokens(out.latent), None
        lengths = torch.full((x.shape[0],), mean.shape[1], dtype=torch.long, device=mean.device)
        return Posterior(mean=mean, logvar=logvar, lengths=lengths)

    def _pixels(self, z: Tensor) -> Tensor:
        side = self.config.image_size // self._geometry[1] // self.config.patch
        p = self.config.patch
        grid = rearrange(z, "b (h w) (c p q) -> b c (h p) (w q)", h=side, w=side, p=p, q=p)
        return self.model.decode(grid.to(self.dtype)).sample  # [B, 3, S, S]

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[np.ndarray]:
        x = self._pixels(z).clamp(-1, 1)
        return list(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Fine-tuning (only when codecs.<role>.steps asks): L1 + MSE of the reconstruction, + beta KL if Gaussian."""
        x = x.to(self.device, self.dtype)
        post = self.raw_encode(x)
        recon = self._pixels(post.sample() if post.logvar is not None else post.mean)
        l1, mse = F.l1_loss(recon, x), F.mse_loss(recon, x)
        kl = post.kl().mean() if post.logvar is not None else torch.zeros((), device=x.device)
        return {"loss": l1 + mse + self.config.beta * kl, "l1": l1, "mse": mse, "kl": kl}

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict[str, float]:
        out = super().diagnostics(x)
        x = x.to(self.device, self.dtype)
        recon = self._pixels(self.raw_encode(x).mean).clamp(-1, 1)
        out["psnr"] = float((10 * torch.log10(4.0 / ((recon - x) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10))).mean())
        return out

    def write_items(self, items: Sequence[Any], directory, names: Sequence[str] | None = None) -> list[Path]:
        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = list(names) if names is not None else [""] * len(items)
        written = []
        for i, (img, name) in enumerate(zip(items, names)):
            slug = "".join(ch if ch.isalnum() else "_" for ch in str(name))[:40]
            path = directory / (f"{i:02d}_{slug}.png" if slug else f"{i:02d}.png")
            Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)
            written.append(path)
        return written

    def read_items(self, paths: Sequence[Any]) -> list[np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        size, out = self.config.image_size, []
        for path in paths:
            try:
                img = np.asarray(Image.open(path).convert("RGB"))
            except (UnidentifiedImageError, OSError):
                raise ConfigError(f"{path} is not an image PIL can read") from None
            h, w = img.shape[:2]
            s = min(h, w)
            square = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
            out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.LANCZOS), dtype=np.uint8))
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[np.ndarray]:
        s = self.config.image_size
        return list(torch.randint(0, 256, (n, s, s, 3), generator=generator, dtype=torch.uint8).numpy())

    @classmethod
    def build_for_directory(cls, config: PretrainedImageConfig, directory: Path) -> PretrainedImageVAE:
        import diffusers

        saved = cls.saved_model_config(directory)
        name = saved.get("_class_name")
        if name not in SUPPORTED:
            raise ConfigError(f"{directory}: the saved model is a {name}, which '{cls.name}' does not wrap ({', '.join(SUPPORTED)}).")
        model = getattr(diffusers, name).from_config({k: v for k, v in saved.items() if not k.startswith("_")})
        return cls(config, model=eval_mode(model))
