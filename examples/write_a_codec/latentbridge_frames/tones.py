"""A data set and an evaluator for the `signal` modality: pure tones and their pitch.

    tones   sine tones of `pitches` frequencies with random phase and amplitude, each with its pitch as a one-hot
            vector [1, P] (the built-in `identity` codec takes it as is): fields {"signal": "wave", "latent": "pitch"}
    pitch   for a pitch -> signal task: the share of generated signals whose strongest frequency (FFT) is nearest the
            conditioning pitch's; latentbridge adds the guidance sweep and the shuffled-pitch control

Dimensions: N items, L samples, P pitches.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from latentbridge.data import ItemDataset
from latentbridge.evaluate import EvalSet, Evaluator


@dataclasses.dataclass
class ToneOptions:
    """Options of the `tones` data set."""

    pitches: int = 4
    """Number of pitch classes P."""
    samples: int = 64
    """Samples per signal L (a multiple of the frames codec's frame)."""
    items: int = 2048
    """Training signals; validation and test have a tenth as many each."""


def frequencies(pitches: int) -> torch.Tensor:
    """Cycles per sample of each pitch class, spread between 0.05 and 0.25."""
    return torch.linspace(0.05, 0.25, pitches)


class ToneData(ItemDataset):
    """Sine tones with their pitch; every split is drawn from its own seed, so it is deterministic."""

    name = "tones"
    config_class = ToneOptions
    fields = {"signal": "wave", "latent": "pitch"}

    def load(self, split: str) -> dict[str, list]:
        c = self.config
        n = c.items if split == "train" else max(8, c.items // 10)
        gen = torch.Generator().manual_seed(1000 * self.seed + {"train": 0, "validation": 1, "test": 2}.get(split, 3))
        label = torch.randint(0, c.pitches, (n,), generator=gen)  # [N]
        phase = 2 * math.pi * torch.rand(n, 1, generator=gen)  # [N, 1]
        amplitude = 0.5 + 0.5 * torch.rand(n, 1, generator=gen)  # [N, 1]
        t = torch.arange(c.samples, dtype=torch.float32)  # [L]
        waves = amplitude * torch.sin(2 * math.pi * frequencies(c.pitches)[label][:, None] * t + phase)  # [N, L]
        pitch = torch.nn.functional.one_hot(label, c.pitches).float()[:, None, :]  # [N, 1, P]
        return {"wave": list(waves), "pitch": list(pitch)}


class PitchEvaluator(Evaluator):
    """Does a generated tone have the pitch it was asked for?"""

    name = "pitch"
    cond, target, datasets = ("latent",), "signal", ("tones",)
    description = "share of generated tones whose strongest frequency is the conditioning pitch's"

    def sets(self) -> list[EvalSet]:
        held = self.ctx.held_out(self.ctx.samples)
        pitch_role = self.ctx.task.cond[0]
        labels = [int(p.argmax()) for p in held[pitch_role]]
        return [EvalSet("tones", {pitch_role: held[pitch_role]}, labels)]

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        freqs = frequencies(self.ctx.dataset.config.pitches)  # [P]
        hits = []
        for signal, label in zip(generated, references):
            spectrum = torch.fft.rfft(torch.as_tensor(signal).float()).abs()  # [L/2 + 1]
            peak = int(spectrum[1:].argmax()) + 1  # skip the constant term
            freq = peak / len(signal)
            hits.append(int((freqs - freq).abs().argmin()) == label)
        return {"pitch accuracy": sum(hits) / len(hits)}
