"""Waveforms <-> latent frames through log-mel spectrograms and a convolutional VAE over time.

    wave [L] at sample_rate --torchaudio MelSpectrogram--> log-mel [M, T] (T = L // hop + 1 frames,
        padded with silence to a multiple of `downsample`)
        --encoder: 1-D convs, log2(downsample) stride-2 stages--> posterior over N = T / downsample
        latent frames of D channels
    decoder: the mirror image back to log-mel --InverseMelScale + GriffinLim (torchaudio)--> wave

At the defaults (16 kHz, hop 256, downsample 4) a latent covers 64 ms: 15.6 latents a second, and a
prior block of 8 latents spans 0.512 s. Items are mono float32 waves at `sample_rate` (numpy arrays or
tensors; resample first, e.g. with AudioVAE.read_items); decode returns mono
float32 numpy waves. Clips are cut to `max_seconds`, or padded/cut to `fixed_seconds` when set (every
item then has the same number of latents, which a prior can generate without knowing a length).

Every convolution reads zeros beyond an item's own frames (hidden states are masked), so an item's
latents do not depend on what else is in its batch.

Dimensions: B items, M mel bins, T mel frames, N latent frames, D latent channels, W width.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.codecs import Codec, LatentSpec, Posterior
from latentbridge.errors import CodecOutputError, ConfigError

LOG_FLOOR = 1e-5  # mel magnitudes below this are silence
LOG_SHIFT, LOG_SCALE = -4.0, 4.0  # ln-mel -> roughly unit range for the network: (ln mel - shift) / scale
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop) of the multi-resolution STFT distance


@dataclasses.dataclass
class AudioVAEConfig:
    """Options of the `audio-vae` codec."""

    sample_rate: int = 16000
    """Hz of the waves the codec takes and returns."""
    n_fft: int = 1024
    """STFT size of the mel spectrogram (and of Griffin-Lim)."""
    hop: int = 256
    """Samples between mel frames."""
    n_mels: int = 64
    """M: mel bins."""
    f_max: float | None = None
    """Highest mel frequency (null: sample_rate / 2)."""
    latent_dim: int = 16
    """D: latent channels per latent frame."""
    downsample: int = 4
    """Mel frames per latent frame (a power of two: one stride-2 stage each)."""
    width: int = 128
    """W: channels of the convolutional encoder and decoder."""
    blocks: int = 2
    """Residual blocks per resolution."""
    block_latents: int = 8
    """Latent frames per prior block (8 x 64 ms = 0.512 s at the defaults)."""
    max_seconds: float = 4.096
    """Longest clip kept; longer ones are cut."""
    fixed_seconds: float | None = None
    """Pad or cut every clip to this duration, giving a fixed number of latents (null: variable length)."""
    beta: float = 1e-3
    """Weight of KL(q(z|x) || N(0, I)) per latent frame in the loss."""
    griffin_lim_iters: int = 32
    """Griffin-Lim iterations when decoding to a wave."""
    gain_db: float = 6.0
    """Codec training only: scale each clip by a random gain in [-gain_db, +gain_db] dB (0 disables)."""
    noise_probability: float = 0.5
    """Codec training only: chance of adding white noise to a clip (synthesized speech has digital silence;
    real recordings have a noise floor)."""
    noise_db: tuple[float, float] = (-70.0, -40.0)
    """Codec training only: the added noise's RMS level, uniform in this range of dB re full scale."""

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        if not 0 < self.hop <= self.n_fft:
            raise ValueError(f"hop must lie in 1..n_fft={self.n_fft}, got {self.hop}")
        for name in ("sample_rate", "n_mels", "latent_dim", "width", "block_latents", "griffin_lim_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_seconds <= 0 or (self.fixed_seconds is not None and self.fixed_seconds <= 0):
            raise ValueError("max_seconds and fixed_seconds must be positive")
        if not 0 <= self.noise_probability <= 1 or self.gain_db < 0 or self.noise_db[0] > self.noise_db[1]:
            raise ValueError("noise_probability must lie in [0, 1], gain_db be >= 0 and noise_db be (low, high)")


@lru_cache(maxsize=8)
def _transforms(sample_rate: int, n_fft: int, hop: int, n_mels: int, f_max: float | None, iters: int):
    """CPU torchaudio transforms (kept out of the module's state: they hold no learned weights)."""
    import torchaudio.transforms as T

    f_max = f_max or sample_rate / 2
    mel = T.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels, f_max=f_max, power=1.0, center=True)
    # float64 and momentum 0.9 (not 0.99): phase retrieval then moves by ~1e-5 when its input moves by
    # float32 round-off, instead of ~1e-4; measured quality on real speech is the same
    inverse = T.InverseMelScale(n_fft // 2 + 1, n_mels, sample_rate, f_max=f_max).double()
    griffin_lim = T.GriffinLim(n_fft, n_iter=iters, hop_length=hop, power=1.0, momentum=0.9, rand_init=False).double()
    return mel, inverse, griffin_lim


class _FrameNorm(nn.Module):
    """LayerNorm over channels at each frame (no statistics across time, so padding cannot leak in)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class _ResBlock(nn.Module):
    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = _FrameNorm(width), _FrameNorm(width)
        self.conv1 = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x [B, W, T] zero beyond each item, mask [B, 1, T]
        h = self.conv1(F.silu(self.norm1(x)) * mask)
        h = self.conv2(F.silu(self.norm2(h)) * mask)
        return x + h * mask


def _mask(valid: Tensor, frames: int) -> Tensor:
    """[B, 1, frames]: 1 where the frame lies inside its item."""
    return (torch.arange(frames, device=valid.device)[None, :] < valid[:, None]).unsqueeze(1)


class _Encoder(nn.Module):
    def __init__(self, c: AudioVAEConfig) -> None:
        super().__init__()
        levels = int(math.log2(c.downsample))
        self.conv_in = nn.Conv1d(c.n_mels, c.width, 3, padding=1)
        self.stages = nn.ModuleList(nn.ModuleList(_ResBlock(c.width, 3 ** (i % 2)) for i in range(c.blocks)) for _ in range(levels + 1))
        self.down = nn.ModuleList(nn.Conv1d(c.width, c.width, 4, stride=2, padding=1) for _ in range(levels))
        self.norm = _FrameNorm(c.width)
        self.conv_out = nn.Conv1d(c.width, 2 * c.latent_dim, 3, padding=1)

    def forward(self, mel: Tensor, tokens: Tensor, downsample: int) -> tuple[Tensor, Tensor]:
        frames = tokens * downsample
        mask = _mask(frames, mel.shape[-1]).to(mel.dtype)
        x = self.conv_in(mel * mask) * mask
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, mask)
            if i < len(self.down):
                frames = frames // 2
                x = self.down[i](x)
                mask = _mask(frames, x.shape[-1]).to(x.dtype)
                x = x * mask
        mean, logvar = self.conv_out(F.silu(self.norm(x)) * mask).chunk(2, dim=1)
        return mean.transpose(1, 2), logvar.transpose(1, 2)  # [B, N, D] each


class _Decoder(nn.Module):
    def __init__(self, c: AudioVAEConfig) -> None:
        super().__init__()
        levels = int(math.log2(c.downsample))
        self.conv_in = nn.Conv1d(c.latent_dim, c.width, 3, padding=1)
        self.stages = nn.ModuleList(nn.ModuleList(_ResBlock(c.width, 3 ** (i % 2)) for i in range(c.blocks)) for _ in range(levels + 1))
        self.up = nn.ModuleList(nn.Conv1d(c.width, c.width, 3, padding=1) for _ in range(levels))
        self.norm = _FrameNorm(c.width)
        self.conv_out = nn.Conv1d(c.width, c.n_mels, 3, padding=1)

    def forward(self, z: Tensor, tokens: Tensor) -> Tensor:  # z [B, N, D] -> normalized log-mel [B, M, N * downsample]
        frames = tokens
        mask = _mask(frames, z.shape[1]).to(z.dtype)
        x = self.conv_in(z.transpose(1, 2) * mask) * mask
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, mask)
            if i < len(self.up):
                frames = frames * 2
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                mask = _mask(frames, x.shape[-1]).to(x.dtype)
                x = self.up[i](x * mask) * mask
        return self.conv_out(F.silu(self.norm(x)) * mask)


class AudioVAE(Codec):
    """Log-mel convolutional VAE with a Griffin-Lim vocoder; a prior block spans `block_latents` latent frames."""

    name = "audio-vae"
    modality = "audio"
    config_class = AudioVAEConfig

    def __init__(self, config: AudioVAEConfig | dict | None = None) -> None:
        super().__init__(config)
        self.encoder = _Encoder(self.config)
        self.decoder = _Decoder(self.config)

    # geometry ---------------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def latent_rate(self) -> float:
        """Latent frames per second."""
        return self.config.sample_rate / self.config.hop / self.config.downsample

    def _max_samples(self) -> int:
        c = self.config
        return round((c.fixed_seconds or c.max_seconds) * c.sample_rate)

    def _tokens(self, samples: int) -> int:
        frames = samples // self.config.hop + 1  # centred STFT frames
        return -(-frames // self.config.downsample)

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        longest = self._tokens(self._max_samples())
        if c.fixed_seconds is not None:
            return LatentSpec(dim=c.latent_dim, block_size=c.block_latents, tokens_per_item=longest)
        return LatentSpec(dim=c.latent_dim, block_size=c.block_latents, tokens_per_item=None, max_tokens=longest)

    def num_tokens(self, item: Any) -> int:
        if self.config.fixed_seconds is not None:
            return self.latent_spec.tokens_per_item
        return self._tokens(min(len(item), self._max_samples()))

    # items <-> tensors ------------------------------------------------------------------------------------

    def _wave(self, i: int, item: Any) -> Tensor:
        x = torch.as_tensor(np.asarray(item) if not isinstance(item, Tensor) else item)
        if x.ndim != 1 or not x.is_floating_point() or x.numel() == 0:
            raise CodecOutputError(f"codec 'audio-vae': item {i} is {type(item).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}; "
                                   f"expected a non-empty mono float wave [L] at {self.sample_rate} Hz (resample and mix down first: "
                                   "AudioVAE.read_items)")
        x = x.detach().float().cpu()
        if not bool(torch.isfinite(x).all()):
            raise CodecOutputError(f"codec 'audio-vae': item {i} holds NaN or inf samples")
        n = self._max_samples()
        if self.config.fixed_seconds is not None:
            return F.pad(x[:n], (0, max(0, n - x.numel())))
        return x[:n]

    @property
    def augments(self) -> bool:
        """Only while the codec itself trains (and its config draws a gain or a noise floor): a frozen codec's latents
        of an item are fixed, so a prior stage may cache them (train.cache_latents)."""
        c = self.config
        return self.training and (c.gain_db != 0 or c.noise_probability != 0)

    def augment(self, items: Sequence[Any], generator: torch.Generator) -> list[Any]:
        """While the codec itself trains: a random gain and, sometimes, a white-noise floor per clip. A frozen
        codec (the prior stage) passes items through unchanged, so the prior models the data as it is."""
        c = self.config
        if not self.training or (c.gain_db == 0 and c.noise_probability == 0):
            return list(items)
        out = []
        for i, item in enumerate(items):
            x = self._wave(i, item)
            u = torch.rand(3, generator=generator)
            x = x * 10 ** (c.gain_db * (2 * float(u[0]) - 1) / 20)
            if float(u[1]) < c.noise_probability:
                level = 10 ** ((c.noise_db[0] + (c.noise_db[1] - c.noise_db[0]) * float(u[2])) / 20)
                x = x + level * torch.randn(x.shape, generator=generator)
            out.append(x.clamp(-1, 1).numpy())
        return out

    def log_mel(self, wave: Tensor) -> Tensor:
        """Natural-log mel magnitudes [M, T] of one wave [L] (floored at LOG_FLOOR)."""
        c = self.config
        mel, _, _ = _transforms(c.sample_rate, c.n_fft, c.hop, c.n_mels, c.f_max, c.griffin_lim_iters)
        wave = wave.float().cpu()
        if wave.numel() <= c.n_fft // 2:  # the centred STFT reflects n_fft/2 samples at each end: a shorter clip gets silence
            wave = F.pad(wave, (0, c.n_fft // 2 + 1 - wave.numel()))
        return mel(wave).clamp_min(LOG_FLOOR).log()

    def collate(self, items: Sequence[Any]) -> dict[str, Tensor]:
        """{"mel": normalized log-mel [B, M, T] (silence-padded), "tokens": [B], "wave": [B, L] (zero-padded), "samples": [B]}."""
        waves = [self._wave(i, item) for i, item in enumerate(items)]
        ds = self.config.downsample
        tokens = torch.tensor([self._tokens(w.numel()) for w in waves], dtype=torch.long)
        frames = int(tokens.max()) * ds
        silence = (math.log(LOG_FLOOR) - LOG_SHIFT) / LOG_SCALE
        mels = []
        for w in waves:
            m = (self.log_mel(w) - LOG_SHIFT) / LOG_SCALE
            mels.append(F.pad(m, (0, frames - m.shape[-1]), value=silence))
        wave = torch.zeros(len(waves), max(w.numel() for w in waves))
        for i, w in enumerate(waves):
            wave[i, : w.numel()] = w
        return {"mel": torch.stack(mels), "tokens": tokens, "wave": wave, "samples": torch.tensor([w.numel() for w in waves])}

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        mel = batch["mel"].to(self.device, self.dtype)
        tokens = batch["tokens"].to(self.device)
        mean, logvar = self.encoder(mel, tokens, self.config.downsample)
        mask = _mask(tokens, mean.shape[1]).transpose(1, 2).to(mean.dtype)  # [B, N, 1]
        return Posterior(mean=mean * mask, logvar=logvar * mask, lengths=tokens)

    def decode_mel(self, z: Tensor, lengths: Tensor) -> Tensor:
        """Raw latents [B, N, D] -> natural-log mel [B, M, N * downsample]."""
        return self.decoder(z.to(self.dtype), lengths.to(z.device)) * LOG_SCALE + LOG_SHIFT

    def vocode(self, log_mel: Tensor, samples: int | None = None) -> np.ndarray:
        """Natural-log mel [M, T] -> mono float32 wave (InverseMelScale + Griffin-Lim, on the CPU)."""
        c = self.config
        _, inverse, griffin_lim = _transforms(c.sample_rate, c.n_fft, c.hop, c.n_mels, c.f_max, c.griffin_lim_iters)
        magnitude = inverse(log_mel.detach().double().cpu().exp())
        wave = griffin_lim(magnitude).clamp(-1, 1).numpy().astype(np.float32)
        return wave[:samples] if samples is not None else wave

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[np.ndarray]:
        mel = self.decode_mel(z, lengths)
        ds, hop = self.config.downsample, self.config.hop
        return [self.vocode(mel[i, :, : int(n) * ds], (int(n) * ds - 1) * hop) for i, n in enumerate(lengths.tolist())]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        post = self.raw_encode(batch)
        tokens = post.lengths
        target = batch["mel"].to(self.device, self.dtype) * LOG_SCALE + LOG_SHIFT
        recon = self.decode_mel(post.sample(), tokens)
        mask = _mask(tokens * self.config.downsample, target.shape[-1]).to(recon.dtype)  # [B, 1, T]
        l1 = ((recon - target).abs() * mask).sum() / (mask.sum() * target.shape[1])
        kl = post.kl()[post.mask()].mean()
        return {"loss": l1 + self.config.beta * kl, "log_mel_l1": l1, "kl": kl}

    @torch.no_grad()
    def diagnostics(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """Rate and active channels; log-mel L1 (natural log); multi-resolution STFT distance of the decoded
        wave to the input, and of Griffin-Lim on the input's own mel (the vocoder's share of the error)."""
        out = super().diagnostics(batch)
        post = self.raw_encode(batch)
        ds = self.config.downsample
        target = batch["mel"].float() * LOG_SCALE + LOG_SHIFT
        recon = self.decode_mel(post.mean, post.lengths).float().cpu()
        l1, stft, vocoder = [], [], []
        for i, n in enumerate(post.lengths.tolist()):
            frames = n * ds
            l1.append(float((recon[i, :, :frames] - target[i, :, :frames]).abs().mean()))
            samples = int(batch["samples"][i])
            original = batch["wave"][i, :samples]
            stft.append(mr_stft_distance(self.vocode(recon[i, :, :frames], samples), original))
            vocoder.append(mr_stft_distance(self.vocode(target[i, :, :frames], samples), original))
        out.update(log_mel_l1=float(np.mean(l1)), mr_stft=float(np.mean(stft)), mr_stft_vocoder_only=float(np.mean(vocoder)))
        return out

    def write_items(self, items: Sequence[Any], directory, names: Sequence[str] | None = None) -> list[Path]:
        """Each clip as NN_name.wav (16-bit PCM at sample_rate, through soundfile)."""
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
        """Any file soundfile reads (WAV, FLAC, OGG), mixed down to mono and resampled to sample_rate (torchaudio)."""
        import soundfile as sf
        import torchaudio.functional as AF

        out = []
        for path in paths:
            try:
                wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise ConfigError(f"{path}: cannot read audio ({err}); pass a WAV, FLAC or OGG file.") from None
            mono = torch.from_numpy(np.ascontiguousarray(wave.mean(1)))
            out.append((AF.resample(mono, sr, self.sample_rate) if sr != self.sample_rate else mono).numpy())
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[np.ndarray]:
        """Clips of 0.25-1 s: two random tones under a decaying envelope plus a little noise."""
        sr = self.sample_rate
        out = []
        for _ in range(n):
            length = int(sr * (0.25 + 0.75 * float(torch.rand((), generator=generator))))
            t = torch.arange(length) / sr
            f = 100 + 2000 * torch.rand(2, generator=generator)
            wave = 0.3 * (torch.sin(2 * math.pi * f[0] * t) + 0.5 * torch.sin(2 * math.pi * f[1] * t)) * torch.exp(-2 * t)
            wave = wave + 0.01 * torch.randn(length, generator=generator)
            out.append(wave.numpy().astype(np.float32))
        return out


def mr_stft_distance(a: Any, b: Any) -> float:
    """Multi-resolution STFT distance of two mono waves (cut to the shorter): the mean over resolutions of
    spectral convergence ||S_b - S_a|| / ||S_b|| plus mean |ln S_a - ln S_b| (magnitudes; 0 for equal waves)."""
    a, b = torch.as_tensor(np.asarray(a), dtype=torch.float32), torch.as_tensor(np.asarray(b), dtype=torch.float32)
    n = min(a.numel(), b.numel())
    a, b = a[:n], b[:n]
    total = 0.0
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft)
        pad = max(0, n_fft - n)
        sa, sb = (torch.stft(F.pad(x, (0, pad)), n_fft, hop, window=window, return_complex=True).abs() for x in (a, b))
        sc = float((sb - sa).norm() / sb.norm().clamp_min(1e-8))
        mag = float((sa.clamp_min(LOG_FLOOR).log() - sb.clamp_min(LOG_FLOOR).log()).abs().mean())
        total += sc + mag
    return total / len(STFT_RESOLUTIONS)
