"""An example latentbridge plugin: a new modality (`signal`), its codec, a data set and an evaluator.

The codec `frames`: a signal of L = k * frame samples becomes k latent tokens of `latent_dim` channels
(variable-length, or a fixed k with `tokens_per_item`). Encoder and decoder are linear maps per frame;
the posterior is Gaussian with a learned log-variance. The data set `tones` and the evaluator `pitch`
are in latentbridge_frames.tones; all three register below through latentbridge's public hooks.

Dimensions: B signals, N frames (padded), F samples per frame, D latent channels.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.codecs import Codec, LatentSpec, Posterior
from latentbridge.hookspecs import hookimpl


@dataclasses.dataclass
class FramesConfig:
    """Options of the `frames` codec."""

    frame: int = 16
    """Samples per frame (F); a signal's length must be a multiple of it."""
    latent_dim: int = 4
    """Latent channels per frame (D)."""
    block_size: int = 4
    """Frames per prior block."""
    tokens_per_item: int | None = None
    """Frames of every signal when they all have the same length (generation then makes exactly that many); null:
    variable."""
    beta: float = 1e-3
    """Weight of the KL term in the loss."""


class FramesCodec(Codec):
    """Linear Gaussian VAE applied frame by frame."""

    name = "frames"
    modality = "signal"
    config_class = FramesConfig

    def __init__(self, config: FramesConfig | dict | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.encoder = nn.Linear(c.frame, 2 * c.latent_dim)  # -> mean, logvar
        self.decoder = nn.Linear(c.latent_dim, c.frame)

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        return LatentSpec(dim=c.latent_dim, block_size=c.block_size, tokens_per_item=c.tokens_per_item,
                          max_tokens=None if c.tokens_per_item else 4 * c.block_size)

    def num_tokens(self, signal: Tensor) -> int:
        return signal.shape[0] // self.config.frame

    def collate(self, signals: list[Tensor]) -> dict[str, Tensor]:
        f = self.config.frame
        for i, s in enumerate(signals):
            if s.ndim != 1 or s.shape[0] == 0 or s.shape[0] % f:
                raise ValueError(f"frames codec: signal {i} has shape {tuple(s.shape)}; need 1-D with a length that is a multiple of {f}")
        frames = [s.reshape(-1, f) for s in signals]  # each [n_i, F]
        return {
            "frames": nn.utils.rnn.pad_sequence(frames, batch_first=True),  # [B, N, F]
            "lengths": torch.tensor([len(x) for x in frames], dtype=torch.long),  # [B]
        }

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        x = batch["frames"].to(self.encoder.weight.dtype)
        mean, logvar = self.encoder(x).chunk(2, dim=-1)  # [B, N, D] each
        return Posterior(mean=mean, logvar=logvar.clamp(-10, 2), lengths=batch["lengths"].to(mean.device))

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[Tensor]:
        frames = self.decoder(z)  # [B, N, F]
        return [f[: int(n)].reshape(-1) for f, n in zip(frames, lengths)]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        post = self.raw_encode(batch)
        mask = post.mask()  # [B, N]
        recon = self.decoder(post.sample())  # [B, N, F]
        reconstruction = F.mse_loss(recon[mask], batch["frames"].to(recon.dtype)[mask])
        kl = post.kl()[mask].mean()
        return {"loss": reconstruction + self.config.beta * kl, "reconstruction": reconstruction, "kl": kl}

    def example_items(self, n: int, generator: torch.Generator) -> list[Tensor]:
        f = self.config.frame
        signals = []
        for _ in range(n):
            k = self.config.tokens_per_item or int(torch.randint(1, 3 * self.config.block_size, (1,), generator=generator))
            freq = float(torch.rand(1, generator=generator)) * 0.3
            t = torch.arange(k * f, dtype=torch.float32)
            signals.append(torch.sin(2 * math.pi * freq * t))
        return signals


    def write_items(self, items: list[Tensor], directory, names=None) -> list[Path]:
        """Each signal as NN_name.npy (what `latentbridge sample` and `eval` write for this modality)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, s in enumerate(items):
            slug = "".join(ch if ch.isalnum() else "_" for ch in str(names[i]))[:30] if names else ""
            paths.append(directory / f"{i:02d}_{slug}.npy")
            np.save(paths[-1], torch.as_tensor(s).float().numpy())
        return paths

    def read_items(self, paths) -> list[Tensor]:
        """Signals saved as .npy files (`latentbridge reconstruct --files`)."""
        return [torch.from_numpy(np.load(p)).float() for p in paths]


@hookimpl
def latentbridge_register_codecs(register):
    register(FramesCodec)


@hookimpl
def latentbridge_register_datasets(register):
    from latentbridge_frames.tones import ToneData

    register(ToneData)


@hookimpl
def latentbridge_register_evaluators(register):
    from latentbridge_frames.tones import PitchEvaluator

    register(PitchEvaluator)


__all__ = ["FramesCodec", "FramesConfig"]
