"""The contract every prior backbone keeps, so the trainer and generation never know which one they run.

A backbone maps a packed sequence of codec latents, each token with its own flow time and metadata
(TokenMeta: sample, block, noisy copy or clean, position), to one velocity per token. It knows codec
streams only as integer ids with a latent width; it knows neither codecs nor flows (ARCHITECTURE.md §2).

    forward(x [B, L, Dmax], t [B, L], codec [B, L], meta, cache=None, commit=False) -> v [B, L, Dmax]
    new_cache() -> a cache object that forward(cache=...) fills; committed tokens (t = 0) stay in it
    takes_step -> True if forward also takes step [B, L] (the span of a jump, for shortcut models; default False)
    switch_classes -> size of the switch head (codec streams + 1 for the end of a document; 0: none, the default);
                      a backbone with one returns (v, logits [B, L, switch_classes]) from forward(..., switch=True)

The attention rule is the two-copy block-causal one of latentbridge.prior.masks (`block_causal_mask` gives it
for any query/key metadata). Backbones register through the `latentbridge_register_priors` hook and are picked by
`prior.backbone`; their options sit under `prior.config` (a dataclass, `config_class`). latentbridge's own
BlockCausalDiT registers the same way, as `dit` (its options are the `prior` section's own fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor, nn


@dataclasses.dataclass
class NoOptions:
    """A backbone without options."""


class PriorBackbone(nn.Module):
    """Base class of prior backbones (see the module docstring for the contract)."""

    name: ClassVar[str]
    config_class: ClassVar[type] = NoOptions
    """Dataclass of the options under `prior.config`."""

    @classmethod
    def create(cls, options: Any, codec_dims: tuple[int, ...]) -> PriorBackbone:
        """Build the backbone for an experiment: its options and the latent width of each codec stream (codec-id
        order). A backbone that imports released weights loads them here (training starts from them)."""
        return cls(options, codec_dims)  # type: ignore[call-arg]

    @classmethod
    def experiment_for(cls, directory: Any) -> dict[str, Any] | None:
        """An experiment (plain config data) that runs the released model stored at `directory`, when this backbone
        recognises the directory as one; None otherwise. With it, `Pipeline.from_pretrained(directory)` and
        `latentbridge sample directory` open a release directly, with no run directory."""
        return None

    @property
    def ships_weights(self) -> bool:
        """True when create() loaded weights trained elsewhere (a released model): a run of it samples before training."""
        return False

    @property
    def takes_step(self) -> bool:
        """True when forward accepts `step` (the span a jump's averaged velocity is for: shortcut training/solver)."""
        return False

    @property
    def switch_classes(self) -> int:
        """Outputs of the switch head forward(..., switch=True) returns beside the velocities (document tasks: which
        codec stream comes next, or the end); 0 when the backbone has none."""
        return 0

    def new_cache(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement new_cache() (the KV cache generation commits to)")

    def forward(self, x: Tensor, t: Tensor, codec: Tensor, meta: Any, cache: Any = None, commit: bool = False) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, t, codec, meta, cache, commit)")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
