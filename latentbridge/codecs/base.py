"""The codec contract (ARCHITECTURE.md §3): the base class every codec plugin subclasses.

A codec author writes:
    name, modality, config_class     class attributes
    latent_spec                      property (may depend on the config)
    collate(items) -> batch          items -> whatever raw_encode and loss take
    raw_encode(batch) -> Posterior   raw (unnormalized) posterior, [B, N, D]
    raw_decode(z, lengths) -> items  raw latents [B, N, D] -> a list of B items
    loss(batch) -> {"loss": ..., term: ...}
    example_items(n, generator)      valid random items, used by the conformance checks
and optionally num_tokens(item) (variable length) and diagnostics(batch).

The base class supplies encode/decode, which apply the codec's own LatentStats and validate what the
plugin returned at the boundary, plus save_pretrained/from_pretrained (config JSON + safetensors).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from latentbridge.codecs.spec import Latents, LatentSpec, LatentStats, Posterior
from latentbridge.typedconfig import from_dict, to_dict
from latentbridge.errors import CheckpointError, CodecOutputError, ConfigError

CONFIG_FILE = "codec.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "latentbridge-codec"
FORMAT_VERSION = 1


def write_text_lines(items: Sequence[Any], directory: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """Texts in `directory`/items.txt, one a line (`name<TAB>text` when names are given; line breaks become spaces): the
    write_items of codecs whose items are texts."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = [" ".join(str(x).split()) for x in items]
    lines = [f"{' '.join(str(n).split())}\t{x}" for n, x in zip(names, flat)] if names is not None else flat
    (directory / "items.txt").write_text("".join(line + "\n" for line in lines))
    return [directory / "items.txt"]


def read_text_lines(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Every non-empty line of the text files is one item: the read_items of codecs whose items are texts."""
    return [line.strip() for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


@dataclasses.dataclass
class NoConfig:
    """Config of a codec that has no options."""


class Codec(nn.Module):
    """Base class of all codecs: maps items of one modality to latent tokens and back."""

    name: ClassVar[str]
    modality: ClassVar[str]
    config_class: ClassVar[type] = NoConfig
    trainable: ClassVar[bool] = True
    """False for codecs with nothing to learn (their loss raises; the codec stage refuses them)."""
    runs_on_meta: ClassVar[bool] = True
    """False for codecs around third-party models whose forward reads tensor values (e.g. `.item()`), which torch's
    `meta` device cannot; the conformance kit then checks device placement on real devices only."""
    decodes: ClassVar[bool] = True
    """False for condition-only codecs (e.g. a frozen text encoder): they encode `cond` segments and have no decoder,
    so a task can never generate them (refused as a target) and decode() raises."""

    @property
    def ships_weights(self) -> bool:
        """True when the codec wraps weights trained elsewhere (a pretrained model read from disk): it is used frozen,
        with no codec pre-stage unless the experiment asks for one (`codecs.<role>.steps`)."""
        return False

    @property
    def publishes_stats(self) -> bool:
        """True when the latent shift and scale come from the wrapped model (set in __init__), so training does not fit
        them from data."""
        return False

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        if config is None:
            config = self.config_class()
        elif isinstance(config, dict):
            config = from_dict(self.config_class, config, path="config")
        elif not isinstance(config, self.config_class):
            raise ConfigError(
                f"codec '{self.name}' takes a {self.config_class.__name__} (or a dict of its fields), "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.stats = LatentStats(self.latent_spec.dim)

    # ---------------------------------------------------------------------------------------------
    # What a codec author implements
    # ---------------------------------------------------------------------------------------------

    @property
    def latent_spec(self) -> LatentSpec:
        raise NotImplementedError(f"{type(self).__name__} must define the latent_spec property")

    def num_tokens(self, item: Any) -> int:
        """Latent tokens `item` encodes to. Variable-length codecs override this."""
        if self.latent_spec.tokens_per_item is None:
            raise NotImplementedError(
                f"codec '{self.name}' has variable-length latents, so it must implement num_tokens(item)"
            )
        return self.latent_spec.tokens_per_item

    def collate(self, items: Sequence[Any]) -> Any:
        """Items -> one batch for raw_encode and loss. Default: stack tensors."""
        return torch.stack([torch.as_tensor(x) for x in items])

    def raw_encode(self, batch: Any) -> Posterior:
        raise NotImplementedError(f"{type(self).__name__} must implement raw_encode(batch) -> Posterior")

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement raw_decode(z, lengths) -> items")

    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Stage-1 training loss: {"loss": total, "<term>": each named term}."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(batch)")

    def example_items(self, n: int, generator: torch.Generator) -> list[Any]:
        """n valid items drawn with `generator`, for conformance checks and smoke tests."""
        raise NotImplementedError(f"{type(self).__name__} must implement example_items(n, generator)")

    def augment(self, items: Sequence[Any], generator: torch.Generator) -> list[Any]:
        """Training view of raw items, drawn with `generator` (default: unchanged).

        The trainer applies it to every training item of this codec, in the codec stage and in the
        prior stage, so the prior sees the same variety the codec was trained on (the Text VAE draws
        each text's alignment to latent boundaries here).
        """
        return list(items)

    @property
    def augments(self) -> bool:
        """Whether `augment` changes items (then their latents differ from step to step and cannot be cached).
        Default: whether the class overrides augment; a codec whose config can turn augmentation off says so here."""
        return type(self).augment is not Codec.augment

    def write_items(self, items: Sequence[Any], directory: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
        """Write items as files a researcher opens (images, sound, text) into `directory`; returns the paths.

        `sample`, `eval` and `reconstruct` write every codec's items through here. The default writes items
        that are plain values (text, numbers) one per line to items.txt; codecs of other items override it
        (and `read_items` to match)."""
        items = list(items)
        if not all(isinstance(x, (str, int, float)) for x in items):
            raise NotImplementedError(f"codec '{self.name}' does not implement write_items for its {self.modality} items; "
                                      "add write_items(items, directory, names) to the codec to write files.")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "items.txt"
        labels = list(names) if names is not None else [None] * len(items)
        path.write_text("".join(f"{label}\t{json.dumps(x)}\n" if label is not None else f"{json.dumps(x)}\n"
                                for x, label in zip(items, labels)))
        return [path]

    def read_items(self, paths: Sequence[str | os.PathLike]) -> list[Any]:
        """Items of this codec read from your files (`latentbridge reconstruct --files`); codecs override it."""
        raise NotImplementedError(f"codec '{self.name}' cannot read {self.modality} files: it does not implement "
                                  "read_items(paths).")

    def encode_prompt(self, items: Sequence[Any]) -> Latents:
        """Latents of items that generation will continue (default: encode_items, the posterior mean).

        Codecs whose latents group several input units override it so a prompt ends on a latent
        boundary and carries no end marker (see the Text VAE).
        """
        return self.encode_items(items)

    def decoder_stream(self, prefix: Latents) -> DecodeStream:
        """A decoder for latents generated block by block after `prefix` (see DecodeStream)."""
        if self.latent_spec.end == "marker":
            raise NotImplementedError(
                f"codec '{self.name}' ends items by a marker (latent_spec.end='marker'), so it must implement "
                "decoder_stream(prefix) to tell generation when an item has ended"
            )
        return DecodeStream(self, prefix)

    @torch.no_grad()
    def diagnostics(self, batch: Any) -> dict[str, float]:
        """Rate and active channels from the posterior; codecs add reconstruction quality."""
        post = self.raw_encode(batch)
        self.check_posterior(post)
        mask = post.mask()
        tokens = post.mean[mask]  # [M, D]
        out = {"rate_nats_per_latent": float(post.kl()[mask].mean())}
        if tokens.shape[0] > 1:
            out["active_channels"] = int((tokens.float().var(0) > 1e-2).sum())
        return out

    # ---------------------------------------------------------------------------------------------
    # What the base class supplies
    # ---------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return self.stats.shift.device

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            return t.dtype
        return self.stats.shift.dtype

    def encode(self, batch: Any, *, sample: bool = False, generator: torch.Generator | None = None) -> Latents:
        """Batch -> normalized latents: the posterior mean (or a sample), checked against latent_spec."""
        post = self.raw_encode(batch)
        self.check_posterior(post)
        return self.latents_from_posterior(post, sample=sample, generator=generator)

    def latents_from_posterior(self, post: Posterior, *, sample: bool = False, generator: torch.Generator | None = None) -> Latents:
        """Raw posterior (e.g. from a latent cache) -> normalized latents, exactly as encode() makes them."""
        z = post.sample(generator) if sample else post.mean
        z = self.stats.normalize(z) * post.mask().unsqueeze(-1).to(z.dtype)  # [B, N, D], zero padding
        return Latents(self.name, z, post.lengths)

    def encode_items(self, items: Sequence[Any], **kwargs) -> Latents:
        """Items -> latents, collating first."""
        return self.encode(self.collate(items), **kwargs)

    def decode(self, latents: Latents) -> list[Any]:
        """Normalized latents -> a list of B items."""
        if not self.decodes:
            raise CodecOutputError(f"codec '{self.name}' only encodes (a condition-only codec): it has no decoder. Use it as a "
                                   "`cond` role; generate another role.")
        if latents.codec != self.name:
            raise CodecOutputError(
                f"codec '{self.name}' was asked to decode latents made by codec '{latents.codec}'. "
                f"Decode them with '{latents.codec}'."
            )
        v = latents.values
        if v.ndim != 3 or v.shape[-1] != self.latent_spec.dim:
            raise CodecOutputError(
                f"codec '{self.name}' decodes latents of shape [B, N, {self.latent_spec.dim}], "
                f"got {tuple(v.shape)}"
            )
        v = v.to(self.stats.shift.device, self.dtype)  # the prior may run on another device or dtype than the codec
        return self.check_decoded(self.raw_decode(self.stats.denormalize(v), latents.lengths), v.shape[0])

    def freeze(self) -> Codec:
        """Eval mode and no gradients: what the prior stage does to a codec."""
        self.eval()
        self.requires_grad_(False)
        return self

    @torch.no_grad()
    def fit_stats(self, batches: Sequence[Any]) -> None:
        """Set LatentStats from the posterior means of some batches (valid tokens only)."""
        means = []
        for batch in batches:
            post = self.raw_encode(batch)
            self.check_posterior(post)
            means.append(post.mean[post.mask()])
        self.stats.fit(torch.cat(means))

    def fingerprint(self) -> str:
        """Short hash of name, config and stats: two codecs with equal fingerprints make the same latents scale."""
        h = hashlib.sha256()
        h.update(json.dumps({"codec": self.name, "config": to_dict(self.config)}, sort_keys=True).encode())
        for t in (self.stats.shift, self.stats.scale):
            h.update(t.detach().double().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # ---------------------------------------------------------------------------------------------
    # Validation at the plugin boundary
    # ---------------------------------------------------------------------------------------------

    def _fail(self, problem: str) -> CodecOutputError:
        return CodecOutputError(
            f"codec '{self.name}' ({type(self).__module__}.{type(self).__qualname__}): {problem} "
            f"Fix the codec's raw_encode or its latent_spec."
        )

    def check_decoded(self, items: Any, count: int) -> list[Any]:
        """Raise CodecOutputError unless `items` is a list of `count` items without NaN or infinite numbers (what
        raw_decode and a DecoderStream's items() hand back); return them as a list."""
        if not isinstance(items, (list, tuple)):
            raise CodecOutputError(f"codec '{self.name}' ({type(self).__module__}.{type(self).__qualname__}): decoding must "
                                   f"return a list of items, got {type(items).__name__}. Fix the codec's raw_decode.")
        if len(items) != count:
            raise CodecOutputError(f"codec '{self.name}' ({type(self).__module__}.{type(self).__qualname__}): decoding "
                                   f"{count} latent sequences returned {len(items)} items. Fix the codec's raw_decode.")
        for i, item in enumerate(items):
            for part in (item.values() if isinstance(item, dict) else item if isinstance(item, tuple) else (item,)):
                bad = (isinstance(part, Tensor) and part.is_floating_point() and not bool(torch.isfinite(part).all())) or \
                    (type(part).__module__ == "numpy" and getattr(part, "dtype", None) is not None and part.dtype.kind in "fc"
                     and not bool(np.isfinite(part).all()))
                if bad or (isinstance(part, float) and not math.isfinite(part)):
                    raise CodecOutputError(f"codec '{self.name}' ({type(self).__module__}.{type(self).__qualname__}): decoded "
                                           f"item {i} holds NaN or infinite values. Fix the codec's raw_decode (or check the "
                                           "latents it was given).")
        return list(items)

    def check_posterior(self, post: Any) -> None:
        """Raise CodecOutputError unless `post` fits latent_spec (shape, dtype, device, lengths, finite values)."""
        spec = self.latent_spec
        if not isinstance(post, Posterior):
            raise self._fail(f"raw_encode must return a latentbridge.codecs.Posterior, got {type(post).__name__}.")
        mean, lengths = post.mean, post.lengths
        if not isinstance(mean, Tensor) or mean.ndim != 3 or mean.shape[-1] != spec.dim:
            shape = tuple(mean.shape) if isinstance(mean, Tensor) else type(mean).__name__
            raise self._fail(f"raw_encode returned a mean of shape {shape}; expected [B, N, {spec.dim}] (D = latent_spec.dim).")
        if not mean.is_floating_point():
            raise self._fail(f"raw_encode returned a mean of dtype {mean.dtype}; expected a floating dtype.")
        if mean.dtype != self.dtype and not _autocast_dtype(mean):
            raise self._fail(f"raw_encode returned {mean.dtype} latents but the codec's weights are {self.dtype}; build tensors from the inputs' dtype.")
        if mean.device != self.device:
            raise self._fail(f"raw_encode returned latents on {mean.device} but the codec lives on {self.device}; create tensors on the module's device.")
        if post.logvar is not None and (not isinstance(post.logvar, Tensor) or post.logvar.shape != mean.shape):
            raise self._fail(f"raw_encode returned a logvar of shape {getattr(post.logvar, 'shape', None)}; expected the mean's shape {tuple(mean.shape)}.")
        b, n, _ = mean.shape
        if not isinstance(lengths, Tensor) or lengths.shape != (b,) or lengths.dtype != torch.long:
            raise self._fail(f"raw_encode returned lengths {lengths!r}; expected an int64 tensor of shape ({b},).")
        if mean.device.type == "meta":
            return  # no values to check on the meta device
        if b and (int(lengths.min()) < 1 or int(lengths.max()) > n):
            raise self._fail(f"raw_encode returned lengths {lengths.tolist()}; each must lie in 1..N={n}.")
        if spec.fixed and (n != spec.tokens_per_item or bool((lengths != spec.tokens_per_item).any())):
            raise self._fail(f"raw_encode returned {n} tokens (lengths {lengths.tolist()}); latent_spec fixes {spec.tokens_per_item} tokens per item.")
        if spec.max_tokens is not None and b and int(lengths.max()) > spec.max_tokens:
            raise self._fail(f"raw_encode returned an item of {int(lengths.max())} tokens; latent_spec.max_tokens is {spec.max_tokens}.")
        valid = post.mask()
        for what, t in (("mean", mean), ("logvar", post.logvar)):
            if t is None:
                continue
            bad = ~torch.isfinite(t[valid])
            if bool(bad.any()):
                items = sorted({int(i) for i in (~torch.isfinite(t) & valid[..., None]).any(-1).any(-1).nonzero().flatten()})
                raise self._fail(f"raw_encode returned NaN or inf in the {what}: {int(bad.sum())} values, in items {items}.")

    # ---------------------------------------------------------------------------------------------
    # Save and load: one directory, config JSON + safetensors, no pickle
    # ---------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write codec.json (name, config, spec, versions) and model.safetensors; atomic."""
        from latentbridge import __version__
        from latentbridge.versions import provider_of

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "codec": self.name,
            "modality": self.modality,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "provider": provider_of(type(self)),
            "latentbridge_version": __version__,
            "fingerprint": self.fingerprint(),
            "latent_spec": dataclasses.asdict(self.latent_spec),
            "config": to_dict(self.config),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_model(self, str(tmp / WEIGHTS_FILE), metadata={"codec": self.name})
        self.save_extra(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
        return directory

    def save_extra(self, directory: Path) -> None:
        """Write files beside the weights that loading needs (e.g. a tokenizer). Default: none."""

    @classmethod
    def build_for_directory(cls, config: Any, directory: Path) -> Codec:
        """Build the (untrained) codec that from_pretrained loads weights into; codecs with files from
        save_extra read them here. Default: cls(config)."""
        return cls(config)

    @staticmethod
    def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
        """Read and check codec.json of a saved codec directory."""
        directory = Path(directory)
        cfg_file = directory / CONFIG_FILE
        if not cfg_file.is_file():
            raise CheckpointError(
                f"{directory} is not a saved codec: {CONFIG_FILE} is missing. "
                "Pass a directory written by save_pretrained."
            )
        try:
            meta = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{cfg_file} is not valid JSON ({err}); the save is corrupt — re-save the codec.") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "codec" not in meta:
            raise CheckpointError(f"{cfg_file} is not a latentbridge codec file (format {meta.get('format')!r}).")
        return meta

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Codec:
        """Rebuild the codec saved in `directory` (its class must match; see plugins.load_codec for any).

        `overrides` changes config fields that leave the weights' shapes alone (e.g. an audio codec's
        `fixed_seconds`); a field that changes them fails the strict weight load with a clear error."""
        directory = Path(directory)
        meta = cls.read_meta(directory)
        if meta["codec"] != cls.name:
            raise CheckpointError(
                f"{directory} holds codec '{meta['codec']}', not '{cls.name}'. "
                "Load it with latentbridge.plugins.load_codec(directory), which picks the right class."
            )
        try:
            config = from_dict(cls.config_class, meta.get("config", {}), path="config")
        except ConfigError as err:
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: the saved config no longer fits {cls.__name__}'s config: {err}"
            ) from None
        if overrides:
            config = from_dict(cls.config_class, {**to_dict(config), **overrides}, path="config")
        codec = cls.build_for_directory(config, directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing; the save is incomplete — re-save the codec.")
        try:
            load_model(codec, str(weights), strict=True)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{weights} could not be read ({err}); the file is corrupt or truncated — re-save the codec.") from None
        except RuntimeError as err:  # strict load: missing/unexpected keys or changed shapes
            detail = " ".join(str(err).split())
            raise CheckpointError(
                f"{weights} does not match codec '{cls.name}' as installed now ({detail}). "
                "Was it saved by another version of the codec or with another config?"
            ) from None
        return codec

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modality={self.modality!r}, latent_spec={self.latent_spec}"


def _autocast_dtype(t: Tensor) -> bool:
    """True when autocast is on for t's device and t has its lower-precision dtype (a codec run under autocast)."""
    kind = t.device.type
    return kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind) and t.dtype == torch.get_autocast_dtype(kind)


class DecodeStream:
    """Decodes latents generated block by block after a prefix, and says when an item has ended.

    `push(block)` takes the next generated block of every sample, [S, K, D] normalized latents (the
    first block includes the prefix's partial last block, as the generation loop pins it), and
    returns a bool [S]: items that are complete. `items()` returns the decoded continuations. This
    generic version suits codecs that end by length: it never ends an item early and decodes the
    generated latents alone. Codecs that end by a marker override it (with a cache, ideally).
    """

    def __init__(self, codec: Codec, prefix: Latents) -> None:
        self.codec = codec
        self.pins = (prefix.lengths % codec.latent_spec.block_size).cpu()  # [S] prefix tokens inside the first block
        self.blocks: list[list[Tensor]] = []  # per pushed block: each sample's new latents
        self.first = True

    def push(self, block: Tensor) -> Tensor:
        if self.first:
            self.blocks.append([b[int(p):] for b, p in zip(block, self.pins)])
            self.first = False
        else:
            self.blocks.append(list(block))
        return torch.zeros(block.shape[0], dtype=torch.bool)

    def items(self) -> list[Any]:
        per_sample = [torch.cat(parts) for parts in zip(*self.blocks)]
        return self.codec.decode(Latents.from_list(self.codec.name, per_sample))
