"""`pretrained-audio`: an audio autoencoder read from disk — diffusers' AutoencoderOobleck (Stable Audio's VAE) or
transformers' DacModel (Descript audio codec, its continuous quantized representation).

    wave [L] at the model's rate --model.encode--> [C, ceil(L / hop)] --transpose--> tokens [T, C]

C and hop come from the model's config (Oobleck: decoder_input_channels, the product of downsampling_ratios;
DAC: hidden_size, the product of downsampling_ratios), so the latent frame rate is sampling_rate / hop (Stable
Audio: 44,100 / 2,048 = 21.5 per second). A prior block is `block_frames` latent frames. Items are mono float waves
at `sample_rate` (null: the model's own); they are resampled to the model's rate (torchaudio) and, for a stereo
model, given to both channels; decode mixes down to mono at `sample_rate`. Oobleck has a Gaussian posterior; DAC's
representation is deterministic. Neither publishes a latent scale, so the stats are fitted from data.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentbridge.codecs import LatentSpec, LatentStats, Posterior
from latentbridge.errors import CodecOutputError, ConfigError
from latentbridge.typedconfig import NonNegativeFloat, PositiveFloat, PositiveInt

from latentbridge_pretrained.common import WrappedModelCodec, eval_mode, load_from, model_directory, pick, read_model_config

SUPPORTED = {"AutoencoderOobleck": "diffusers", "DacModel": "transformers"}


@dataclasses.dataclass
class PretrainedAudioConfig:
    """Options of the `pretrained-audio` codec."""

    path: str = ""
    """The model directory (written by save_pretrained), or a pipeline directory with `subfolder`."""
    subfolder: str | None = None
    """Folder of the autoencoder inside `path`, e.g. `vae` in a Stable Audio pipeline directory."""
    sample_rate: PositiveInt | None = None
    """Rate of the items (data and decoded clips); null: the model's own sampling_rate."""
    block_frames: PositiveInt = 8
    """Latent frames per prior block."""
    max_seconds: PositiveFloat = 10.0
    """Longest clip encoded; longer ones are cut."""
    beta: NonNegativeFloat = 1e-6
    """Fine-tuning only (codecs.<role>.steps > 0): weight of the KL term of a Gaussian posterior."""


def _geometry(name: str, config: Any) -> tuple[int, int, int, int]:
    """(latent channels, hop in samples, the model's sampling rate, audio channels)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    if name == "AutoencoderOobleck":
        return (int(get("decoder_input_channels")), math.prod(get("downsampling_ratios")), int(get("sampling_rate")),
                int(get("audio_channels")))
    return int(get("hidden_size")), math.prod(get("downsampling_ratios")), int(get("sampling_rate")), 1


def _load(name: str, directory: Path, codec: str) -> Any:
    if SUPPORTED[name] == "diffusers":
        from diffusers import AutoencoderOobleck

        return load_from(AutoencoderOobleck.from_pretrained, directory, codec)
    from transformers import DacModel

    return load_from(DacModel.from_pretrained, directory, codec)


def _fold_weight_norm(model: Any) -> Any:
    """Replace torch's legacy weight_norm hooks (Oobleck uses them) by the weights they compute, g v / |v|: the same
    forward, and a module that can be copied and moved like any other."""
    for module in model.modules():
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
    return model


class PretrainedAudioVAE(WrappedModelCodec):
    """A diffusers AutoencoderOobleck or a transformers DacModel, frozen; `block_frames` latent frames per block."""

    name = "pretrained-audio"
    modality = "audio"
    config_class = PretrainedAudioConfig

    def __init__(self, config: PretrainedAudioConfig | dict | None = None, *, model: Any = None) -> None:
        self._geometry: tuple[int, int, int, int] | None = None
        super().__init__(config)
        c = self.config
        if model is None:
            directory = model_directory(self.name, c.path, c.subfolder)
            raw = read_model_config(directory)
            name, _ = pick(self.name, directory, raw, SUPPORTED)
            model = eval_mode(_load(name, directory, self.name))
        self.model = _fold_weight_norm(model)
        self._geometry = _geometry(type(model).__name__, model.config)
        self.stats = LatentStats(self.latent_spec.dim)

    @property
    def model_rate(self) -> int:
        return self._geometry[2]

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate or self.model_rate

    @property
    def hop(self) -> int:
        return self._geometry[1]

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        if self._geometry is None:  # during the base __init__: a placeholder until the model is known
            return LatentSpec(dim=1, block_size=c.block_frames)
        channels, hop, rate, _ = self._geometry
        return LatentSpec(dim=channels, block_size=c.block_frames, max_tokens=max(1, math.ceil(c.max_seconds * rate / hop)))

    def num_tokens(self, item: Any) -> int:
        return self._frames(len(self._wave(0, item)))

    def _frames(self, samples: int) -> int:
        return max(1, min(math.ceil(samples / self.hop), self.latent_spec.max_tokens))

    # items <-> tensors -------------------------------------------------------------------------------------

    def _wave(self, i: int, item: Any) -> Tensor:
        """A mono float wave at the model's rate, cut to max_seconds."""
        x = torch.as_tensor(np.asarray(item) if not isinstance(item, Tensor) else item)
        if x.ndim != 1 or not x.is_floating_point() or x.numel() == 0:
            raise CodecOutputError(f"codec '{self.name}': item {i} is {type(item).__name__} of shape {tuple(x.shape)} and dtype "
                                   f"{x.dtype}; expected a non-empty mono float wave [L] at {self.sample_rate} Hz")
        x = x.detach().float().cpu()
        if not bool(torch.isfinite(x).all()):
            raise CodecOutputError(f"codec '{self.name}': item {i} holds NaN or inf samples")
        if self.sample_rate != self.model_rate:
            import torchaudio.functional as AF

            x = AF.resample(x, self.sample_rate, self.model_rate)
        return x[: self.latent_spec.max_tokens * self.hop]

    def collate(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """{"wave": [B, channels, frames * hop] zero-padded at the model's rate, "tokens": [B], "samples": [B]}."""
        waves = [self._wave(i, item) for i, item in enumerate(items)]
        tokens = torch.tensor([self._frames(w.numel()) for w in waves], dtype=torch.long)
        wave = torch.zeros(len(waves), int(tokens.max()) * self.hop)
        for i, w in enumerate(waves):
            wave[i, : w.numel()] = w
        channels = self._geometry[3]
        return {"wave": wave[:, None].expand(-1, channels, -1).contiguous(), "tokens": tokens,
                "samples": torch.tensor([w.numel() for w in waves])}

    def _encode(self, wave: Tensor) -> tuple[Tensor, Tensor | None]:
        """The model's own encode of waves [B, channels, L]: (mean, logvar or None), each [B, frames, C]."""
        if type(self.model).__name__ == "DacModel":
            return self.model.encode(wave).quantized_representation.transpose(1, 2), None
        dist = self.model.encode(wave).latent_dist
        return dist.mean.transpose(1, 2), dist.logvar.transpose(1, 2)

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        """Clips of equal length are encoded together, each group cut to its own length: the convolutions never see
        another clip's padding, so a clip's latents do not depend on its batch."""
        wave = batch["wave"].to(self.device, self.dtype)
        tokens = batch["tokens"].to(self.device)
        n = int(tokens.max())
        mean = wave.new_zeros(wave.shape[0], n, self.latent_spec.dim)
        logvar = None
        for frames in sorted(set(tokens.tolist())):
            rows = (tokens == frames).nonzero().flatten()
            m, lv = self._encode(wave[rows, :, : frames * self.hop])
            mean[rows, :frames] = m[:, :frames]
            if lv is not None:
                logvar = wave.new_zeros(mean.shape) if logvar is None else logvar
                logvar[rows, :frames] = lv[:, :frames]
        return Posterior(mean=mean, logvar=logvar, lengths=tokens)

    def _waves(self, z: Tensor) -> Tensor:
        """Raw latents [B, T, C] -> waves [B, channels, T * hop] at the model's rate."""
        z = z.to(self.dtype).transpose(1, 2)
        if type(self.model).__name__ == "DacModel":
            return self.model.decode(quantized_representation=z).audio_values.reshape(z.shape[0], 1, -1)
        return self.model.decode(z).sample

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[np.ndarray]:
        """Each clip decoded from its own frames only (grouped by length), mixed down to mono at sample_rate."""
        out: list[np.ndarray | None] = [None] * z.shape[0]
        for frames in sorted(set(lengths.tolist())):
            rows = (lengths == frames).nonzero().flatten().tolist()
            waves = self._waves(z[rows, :frames]).mean(dim=1)  # mono
            for row, wave in zip(rows, waves):
                w = wave[: frames * self.hop].float().cpu()
                if self.sample_rate != self.model_rate:
                    import torchaudio.functional as AF

                    w = AF.resample(w, self.model_rate, self.sample_rate)
                out[row] = w.numpy().astype(np.float32)
        return out

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fine-tuning (only when codecs.<role>.steps asks): L1 of the wave, + beta KL if Gaussian."""
        post = self.raw_encode(batch)
        wave = batch["wave"].to(self.device, self.dtype)
        recon = self._waves(post.sample() if post.logvar is not None else post.mean)[..., : wave.shape[-1]]
        l1 = F.l1_loss(recon, wave[..., : recon.shape[-1]])
        kl = post.kl()[post.mask()].mean() if post.logvar is not None else torch.zeros((), device=wave.device)
        return {"loss": l1 + self.config.beta * kl, "l1": l1, "kl": kl}

    def write_items(self, items: Sequence[Any], directory, names: Sequence[str] | None = None) -> list[Path]:
        import soundfile as sf

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = list(names) if names is not None else [""] * len(items)
        written = []
        for i, (wave, name) in enumerate(zip(items, names)):
            slug = "".join(ch if ch.isalnum() else "_" for ch in str(name))[:40]
            path = directory / (f"{i:02d}_{slug}.wav" if slug else f"{i:02d}.wav")
            sf.write(str(path), np.clip(np.asarray(wave, dtype=np.float32), -1, 1), self.sample_rate, subtype="PCM_16")
            written.append(path)
        return written

    def read_items(self, paths: Sequence[Any]) -> list[np.ndarray]:
        import soundfile as sf
        import torchaudio.functional as AF

        out = []
        for path in paths:
            try:
                wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
            except (RuntimeError, OSError) as err:
                raise ConfigError(f"{path} is not audio soundfile can read ({err})") from None
            mono = torch.from_numpy(wave.mean(axis=1))
            out.append((AF.resample(mono, sr, self.sample_rate) if sr != self.sample_rate else mono).numpy())
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[np.ndarray]:
        """Clips of 2-6 latent frames: a tone plus a little noise."""
        sr, out = self.sample_rate, []
        for _ in range(n):
            frames = 2 + int(torch.randint(0, 5, (), generator=generator))
            length = int(frames * self.hop * sr / self.model_rate)
            t = torch.arange(length) / sr
            f0 = 110 + 440 * float(torch.rand((), generator=generator))
            wave = 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.01 * torch.randn(length, generator=generator)
            out.append(wave.numpy().astype(np.float32))
        return out

    @classmethod
    def build_for_directory(cls, config: PretrainedAudioConfig, directory: Path) -> PretrainedAudioVAE:
        saved = cls.saved_model_config(directory)
        name = saved.get("_class_name")
        if name not in SUPPORTED:
            raise ConfigError(f"{directory}: the saved model is a {name}, which '{cls.name}' does not wrap ({', '.join(SUPPORTED)}).")
        plain = {k: v for k, v in saved.items() if not k.startswith("_")}
        if name == "AutoencoderOobleck":
            from diffusers import AutoencoderOobleck

            model = AutoencoderOobleck.from_config(plain)
        else:
            from transformers import DacConfig, DacModel

            model = DacModel(DacConfig.from_dict(plain))
        return cls(config, model=eval_mode(model))
