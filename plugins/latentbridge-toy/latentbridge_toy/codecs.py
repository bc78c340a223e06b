"""Two small VAEs that make the prior's test fixtures: points in R^n and class labels.

`vector`: a point x in R^n -> one latent token z in R^d by a linear Gaussian encoder, back by a
linear decoder. With n = d it starts as the identity.
`label`: a class id -> one latent token, the class's learned embedding plus Gaussian noise of a fixed
level; decoded to the class whose embedding is nearest.

Dimensions: B items, n input channels, d latent channels, K classes. One latent token per item.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.codecs import Codec, LatentSpec, Posterior
from latentbridge.errors import CodecOutputError


def _one_token(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------------------
# vector
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VectorConfig:
    """Options of the `vector` codec."""

    input_dim: int = 2
    """Dimension n of the points."""
    latent_dim: int = 2
    """Latent channels d of the one latent token per point."""
    beta: float = 1e-3
    """Weight of KL(q(z|x) || N(0, I)) in the loss."""
    init_logvar: float = -4.0
    """Initial posterior log-variance (learned per channel, clamped to [-10, 2])."""


class VectorCodec(Codec):
    """Linear Gaussian VAE for points in R^n."""

    name = "vector"
    modality = "vector"
    config_class = VectorConfig

    def __init__(self, config: VectorConfig | dict | None = None) -> None:
        super().__init__(config)
        n, d = self.config.input_dim, self.config.latent_dim
        self.encoder = nn.Linear(n, d)
        self.decoder = nn.Linear(d, n)
        self.logvar = nn.Parameter(torch.full((d,), self.config.init_logvar))
        if n == d:
            with torch.no_grad():
                for layer in (self.encoder, self.decoder):
                    layer.weight.copy_(torch.eye(n))
                    layer.bias.zero_()

    @property
    def latent_spec(self) -> LatentSpec:
        return LatentSpec(dim=self.config.latent_dim, block_size=1, tokens_per_item=1)

    def collate(self, items: Sequence[Tensor]) -> Tensor:
        x = torch.stack([torch.as_tensor(p, dtype=torch.float32) for p in items])  # [B, n]
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise CodecOutputError(
                f"codec 'vector': points must be vectors of length {self.config.input_dim} "
                f"(config input_dim), got a batch of shape {tuple(x.shape)}"
            )
        return x

    def raw_encode(self, x: Tensor) -> Posterior:
        mean = self.encoder(x.to(self.encoder.weight.dtype))[:, None, :]  # [B, 1, d]
        logvar = self.logvar.clamp(-10.0, 2.0).expand_as(mean)  # [B, 1, d]
        return Posterior(mean=mean, logvar=logvar, lengths=_one_token(x.shape[0], mean.device))

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[Tensor]:
        return list(self.decoder(z[:, 0]).unbind(0))  # B x [n]

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        post = self.raw_encode(x)
        recon = self.decoder(post.sample()[:, 0])  # [B, n]
        reconstruction = F.mse_loss(recon, x.to(recon.dtype))
        kl = post.kl().mean()
        return {"loss": reconstruction + self.config.beta * kl, "reconstruction": reconstruction, "kl": kl}

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict[str, float]:
        out = super().diagnostics(x)
        post = self.raw_encode(x)
        out["reconstruction_mse"] = float(F.mse_loss(self.decoder(post.mean[:, 0]), x.to(post.mean.dtype)))
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[Tensor]:
        return list(torch.randn(n, self.config.input_dim, generator=generator).unbind(0))


# --------------------------------------------------------------------------------------------------
# label
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LabelConfig:
    """Options of the `label` codec."""

    num_classes: int = 10
    """Number of classes K; labels are ints in [0, K)."""
    latent_dim: int = 4
    """Latent channels d of the one latent token per label."""
    noise_logvar: float = -2.0
    """Fixed posterior log-variance around each class embedding."""
    beta: float = 1e-3
    """Weight of KL(q(z|y) || N(0, I)) in the loss."""


class LabelCodec(Codec):
    """Class labels as noisy learned embeddings; decoding picks the nearest embedding."""

    name = "label"
    modality = "label"
    config_class = LabelConfig

    def __init__(self, config: LabelConfig | dict | None = None) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(self.config.num_classes, self.config.latent_dim)  # [K, d]

    @property
    def latent_spec(self) -> LatentSpec:
        return LatentSpec(dim=self.config.latent_dim, block_size=1, tokens_per_item=1)

    def collate(self, items: Sequence[int]) -> Tensor:
        y = torch.as_tensor([int(v) for v in items], dtype=torch.long)  # [B]
        k = self.config.num_classes
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise CodecOutputError(f"codec 'label': labels must lie in [0, {k}) (config num_classes), got {y.tolist()}")
        return y

    def raw_encode(self, y: Tensor) -> Posterior:
        mean = self.embedding(y)[:, None, :]  # [B, 1, d]
        logvar = torch.full_like(mean, self.config.noise_logvar)
        return Posterior(mean=mean, logvar=logvar, lengths=_one_token(y.shape[0], mean.device))

    def logits(self, z: Tensor) -> Tensor:
        """Raw latents [B, d] -> class logits [B, K]: negative squared distance to each embedding."""
        return -(z[:, None, :] - self.embedding.weight[None]).pow(2).sum(-1)

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[int]:
        return self.logits(z[:, 0]).argmax(-1).tolist()

    def loss(self, y: Tensor) -> dict[str, Tensor]:
        post = self.raw_encode(y)
        cross_entropy = F.cross_entropy(self.logits(post.sample()[:, 0]), y)
        kl = post.kl().mean()
        return {"loss": cross_entropy + self.config.beta * kl, "cross_entropy": cross_entropy, "kl": kl}

    @torch.no_grad()
    def diagnostics(self, y: Tensor) -> dict[str, float]:
        out = super().diagnostics(y)
        post = self.raw_encode(y)
        out["accuracy"] = float((self.logits(post.mean[:, 0]).argmax(-1) == y).float().mean())
        out["accuracy_sampled"] = float((self.logits(post.sample()[:, 0]).argmax(-1) == y).float().mean())
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[int]:
        return torch.randint(0, self.config.num_classes, (n,), generator=generator).tolist()
