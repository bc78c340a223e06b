"""Public conformance kits for plugin authors: `CodecConformance`, `DatasetConformance`.

Subclass `CodecConformance` in your plugin's tests and name your codec; pytest then runs every check:

    from latentbridge.testing import CodecConformance
    from my_plugin import MyCodec

    class TestMyCodec(CodecConformance):
        codec_class = MyCodec
        codec_config = {"latent_dim": 8}      # optional

A codec that passes these checks trains and samples through the whole pipeline with no other change.
The same checks run from the command line: `latentbridge codecs check NAME`. `DatasetConformance` does the
same for a data set (`dataset_class`, `dataset_config`): declared fields, deterministic batches and splits.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import tempfile
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor

from latentbridge.codecs import Codec, Latents, LatentSpec
from latentbridge.data import Dataset
from latentbridge.errors import LatentbridgeError

CHECKS = (
    "test_latent_spec",
    "test_encode_matches_spec",
    "test_num_tokens_agree",
    "test_stats_round_trip",
    "test_encode_deterministic_in_eval",
    "test_save_load_round_trip",
    "test_decode_type_and_shape",
    "test_device_follows_module",
    "test_frozen_codec_builds_no_graph",
    "test_loss_terms",
    "test_diagnostics",
    "test_write_and_read_items",
)


def _require(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check(fn: Callable) -> Callable:
    """Turn latentbridge's own validation errors inside a check into plain check failures."""

    @functools.wraps(fn)
    def wrapper(self: CodecConformance) -> None:
        try:
            fn(self)
        except LatentbridgeError as err:
            raise AssertionError(f"{type(err).__name__}: {err}") from err

    return wrapper


def move_to(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor inside a batch (tensors, dicts, lists, tuples) to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def _same_item(a: Any, b: Any, atol: float) -> bool:
    """Equal items; arrays and tensors within atol (quantized ones, e.g. uint8 images, within one level)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        tol = atol if a.is_floating_point() else max(atol, 1.0)
        return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # documents: items (modality, value) in order
        return type(a) is type(b) and len(a) == len(b) and all(_same_item(x, y, atol) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _accelerators() -> list[str]:
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


class CodecConformance:
    """Checks of the codec contract (ARCHITECTURE.md §3). Subclass it; set `codec_class` or `codec_name`."""

    codec_class: ClassVar[type[Codec] | None] = None
    """The codec class to check."""
    codec_name: ClassVar[str | None] = None
    """Or a registered codec name, looked up in the installed plugins."""
    codec_config: ClassVar[dict[str, Any] | None] = None
    """Fields of the codec's config to set (defaults otherwise)."""
    batch_size: ClassVar[int] = 4
    seed: ClassVar[int] = 0
    atol: ClassVar[float] = 1e-5
    check_meta_device: ClassVar[bool] = True
    """Also run encode on torch's `meta` device, which catches tensors created on a fixed device on CPU-only machines."""

    # ---- what a subclass may override -----------------------------------------------------------

    def make_codec(self) -> Codec:
        torch.manual_seed(self.seed)
        if self.codec_class is not None:
            return self.codec_class(copy.deepcopy(self.codec_config))
        if self.codec_name is not None:
            from latentbridge.plugins import create_codec

            return create_codec(self.codec_name, copy.deepcopy(self.codec_config))
        raise TypeError(f"{type(self).__name__}: set codec_class or codec_name, or override make_codec()")

    def make_items(self, codec: Codec) -> list[Any]:
        return codec.example_items(self.batch_size, torch.Generator().manual_seed(self.seed))

    # ---- helpers ---------------------------------------------------------------------------------

    def _setup(self) -> tuple[Codec, list[Any], Any]:
        codec = self.make_codec().eval()
        items = self.make_items(codec)
        return codec, items, codec.collate(items)

    def _nontrivial_stats(self, codec: Codec) -> None:
        g = torch.Generator().manual_seed(self.seed + 1)
        d = codec.latent_spec.dim
        codec.stats.set(0.5 * torch.randn(d, generator=g), 0.5 + torch.rand(d, generator=g))

    # ---- the checks -------------------------------------------------------------------------------

    @_check
    def test_latent_spec(self) -> None:
        codec = self.make_codec()
        spec = codec.latent_spec
        _require(isinstance(spec, LatentSpec), f"latent_spec must be a LatentSpec, got {type(spec).__name__}")
        for attr in ("name", "modality"):
            _require(isinstance(getattr(codec, attr, None), str), f"codec.{attr} must be a string")
        _require(dataclasses.is_dataclass(codec.config), "codec.config must be a dataclass instance")
        _require(tuple(codec.stats.shift.shape) == (spec.dim,), f"stats have {tuple(codec.stats.shift.shape)} channels, spec.dim is {spec.dim}")
        if not spec.fixed:
            _require(
                type(codec).num_tokens is not Codec.num_tokens,
                "variable-length latent_spec (tokens_per_item=None) but num_tokens(item) is not implemented",
            )

    @_check
    def test_encode_matches_spec(self) -> None:
        codec, items, batch = self._setup()
        spec = codec.latent_spec
        with torch.no_grad():
            lat = codec.encode(batch)
        _require(isinstance(lat, Latents), f"encode must return Latents, got {type(lat).__name__}")
        _require(lat.codec == codec.name, f"latents name codec {lat.codec!r}, expected {codec.name!r}")
        b = len(items)
        _require(lat.values.ndim == 3 and lat.values.shape[0] == b and lat.values.shape[2] == spec.dim,
                 f"latents have shape {tuple(lat.values.shape)}, expected [{b}, N, {spec.dim}]")
        _require(tuple(lat.lengths.shape) == (b,), f"lengths have shape {tuple(lat.lengths.shape)}, expected ({b},)")
        if spec.fixed:
            _require(lat.values.shape[1] == spec.tokens_per_item, f"N = {lat.values.shape[1]}, spec fixes {spec.tokens_per_item}")
        _require(bool(torch.isfinite(lat.values).all()), "latents hold NaN or inf")
        _require(bool((lat.values[~lat.mask] == 0).all()), "latents are not zero past each item's length")

    @_check
    def test_num_tokens_agree(self) -> None:
        codec, items, batch = self._setup()
        with torch.no_grad():
            lengths = codec.encode(batch).lengths.tolist()
            alone = [int(codec.encode_items([item]).lengths[0]) for item in items]
        expected = [codec.num_tokens(item) for item in items]
        _require(lengths == expected, f"encode gave lengths {lengths} but num_tokens(item) says {expected}")
        _require(alone == expected, f"items encoded one at a time gave lengths {alone}, num_tokens says {expected}")

    @_check
    def test_stats_round_trip(self) -> None:
        codec, items, batch = self._setup()
        with torch.no_grad():
            plain = codec.decode(codec.encode(batch)) if codec.decodes else None
            self._nontrivial_stats(codec)
            raw = codec.raw_encode(batch)
            lat = codec.encode(batch)
            mask = lat.mask
            expected = codec.stats.normalize(raw.mean)[mask]
            _require(torch.allclose(lat.values[mask], expected, atol=self.atol),
                     "encode() is not (raw mean - stats.shift) / stats.scale: do not normalize inside raw_encode")
            back = codec.stats.denormalize(lat.values)[mask]
            _require(torch.allclose(back, raw.mean[mask], atol=self.atol), "stats.denormalize does not invert stats.normalize")
            if not codec.decodes:  # a condition-only codec: nothing to decode
                return
            scaled = codec.decode(lat)
        same = all(_same_item(a, b, 1e-4) for a, b in zip(plain, scaled))
        _require(same, "decode(encode(x)) changes when the stats change: raw_encode/raw_decode must work in raw units "
                       "and leave the stats to the base class")

    @_check
    def test_encode_deterministic_in_eval(self) -> None:
        codec, items, batch = self._setup()
        with torch.no_grad():
            a, b = codec.encode(batch).values, codec.encode(batch).values
            _require(torch.equal(a, b), "encode in eval mode gave different latents for the same batch")
            s1 = codec.encode(batch, sample=True, generator=torch.Generator().manual_seed(3)).values
            s2 = codec.encode(batch, sample=True, generator=torch.Generator().manual_seed(3)).values
            _require(torch.equal(s1, s2), "posterior samples with the same generator seed differ")

    @_check
    def test_save_load_round_trip(self) -> None:
        codec, items, batch = self._setup()
        self._nontrivial_stats(codec)
        with tempfile.TemporaryDirectory() as tmp:
            codec.save_pretrained(tmp)
            loaded = type(codec).from_pretrained(tmp).eval()
        _require(loaded.config == codec.config, f"config changed on reload: {loaded.config} != {codec.config}")
        _require(loaded.fingerprint() == codec.fingerprint(), "fingerprint changed on reload")
        with torch.no_grad():
            a, b = codec.encode(batch).values, loaded.encode(batch).values
        _require(torch.allclose(a, b, atol=self.atol),
                 f"reloaded codec encodes differently (max diff {float((a - b).abs().max()):.3g}): state lives outside "
                 "registered parameters/buffers")

    @_check
    def test_decode_type_and_shape(self) -> None:
        codec, items, batch = self._setup()
        if not codec.decodes:  # a condition-only codec: decode must refuse, saying what it is
            try:
                codec.decode(codec.encode(batch))
            except LatentbridgeError as err:
                _require("only encodes" in str(err), f"a condition-only codec's decode must say it only encodes, got: {err}")
                return
            raise AssertionError("a condition-only codec (decodes = False) decoded instead of refusing")
        with torch.no_grad():
            out = codec.decode(codec.encode(batch))
        _require(isinstance(out, list) and len(out) == len(items), f"decode must return a list of {len(items)} items, got {type(out).__name__}")
        for i, (x, y) in enumerate(zip(items, out)):
            if isinstance(x, Tensor):
                _require(isinstance(y, Tensor) and y.shape == x.shape,
                         f"item {i}: decoded {type(y).__name__} {tuple(getattr(y, 'shape', ()))}, input was Tensor {tuple(x.shape)}")
            else:
                _require(type(y) is type(x), f"item {i}: decoded a {type(y).__name__}, input was a {type(x).__name__}")

    @_check
    def test_device_follows_module(self) -> None:
        codec, items, batch = self._setup()
        devices = (["meta"] if self.check_meta_device and codec.runs_on_meta else []) + _accelerators()
        for device in devices:
            moved = copy.deepcopy(codec).to(device)
            try:
                with torch.no_grad():
                    lat = moved.encode(move_to(batch, device))
            except (RuntimeError, NotImplementedError) as err:
                raise AssertionError(f"encode on {device} failed: {err} (create tensors on the module's device)") from err
            _require(lat.values.device.type == device and lat.lengths.device.type == device,
                     f"codec on {device} returned latents on {lat.values.device} and lengths on {lat.lengths.device}")
        double = copy.deepcopy(codec).double()
        with torch.no_grad():
            lat = double.encode(batch)
        _require(lat.values.dtype == torch.float64, f"codec in float64 returned {lat.values.dtype} latents")

    @_check
    def test_frozen_codec_builds_no_graph(self) -> None:
        codec, items, batch = self._setup()
        codec.freeze()
        _require(not codec.training, "freeze() must put the codec in eval mode")
        with torch.enable_grad():
            lat = codec.encode(batch)
        _require(not lat.values.requires_grad and lat.values.grad_fn is None,
                 "a frozen codec still built an autograd graph: some trainable tensor is not a registered parameter")

    @_check
    def test_loss_terms(self) -> None:
        codec, items, batch = self._setup()
        if not codec.trainable:
            return
        codec.train()
        torch.manual_seed(self.seed)
        out = codec.loss(batch)
        _require(isinstance(out, dict) and "loss" in out, f"loss(batch) must return a dict with a 'loss' entry, got {type(out).__name__}")
        _require(len(out) >= 2, "loss(batch) must name its terms (e.g. 'reconstruction', 'kl') beside the total 'loss'")
        for key, value in out.items():
            _require(isinstance(value, Tensor) and value.ndim == 0 and bool(torch.isfinite(value)),
                     f"loss term {key!r} must be a finite scalar tensor, got {value!r}")
        out["loss"].backward()
        grads = [p.grad for p in codec.parameters() if p.requires_grad]
        _require(any(g is not None and bool(g.abs().sum() > 0) for g in grads), "the loss gives no gradient to any parameter")
        _require(all(g is None or bool(torch.isfinite(g).all()) for g in grads), "the loss gives NaN or inf gradients")

    @_check
    def test_diagnostics(self) -> None:
        codec, items, batch = self._setup()
        out = codec.diagnostics(batch)
        _require(isinstance(out, dict) and out, f"diagnostics(batch) must return a non-empty dict, got {out!r}")
        for key, value in out.items():
            _require(isinstance(key, str) and isinstance(value, (int, float)) and not isinstance(value, bool),
                     f"diagnostic {key!r} must be a plain number, got {type(value).__name__}")
            _require(value == value and abs(value) != float("inf"), f"diagnostic {key!r} is {value}")

    @_check
    def test_write_and_read_items(self) -> None:
        """write_items writes files that exist; where read_items is implemented, reading them back gives items the
        codec collates (`sample`, `eval` and `reconstruct --files` rely on both)."""
        codec, items, _ = self._setup()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                paths = codec.write_items(items, tmp, [f"item {i}" for i in range(len(items))])
            except NotImplementedError:
                return  # a codec that writes no files: sample/eval write nothing for it
            _require(isinstance(paths, list) and paths and all(p.exists() for p in paths),
                     f"write_items must return the paths it wrote, got {paths!r}")
            try:
                back = codec.read_items([p for p in paths if p.name != "grid.png"])
            except NotImplementedError:
                return
            _require(len(back) == len(items), f"read_items read {len(back)} items back from the files of {len(items)}")
            codec.collate(back)


class DatasetConformance:
    """Checks of the data-set protocol (latentbridge.data). Subclass it; set `dataset_class` (and `dataset_config`)."""

    dataset_class: ClassVar[type[Dataset] | None] = None
    dataset_config: ClassVar[dict[str, Any] | None] = None
    """Fields of the data set's config to set (defaults otherwise); keep it small, the checks load it twice."""
    seed: ClassVar[int] = 0
    batch_size: ClassVar[int] = 4

    def make_dataset(self, seed: int | None = None) -> Dataset:
        from latentbridge.typedconfig import from_dict

        cls = self.dataset_class
        if cls is None:
            raise TypeError(f"{type(self).__name__}: set dataset_class")
        return cls(from_dict(cls.config_class, copy.deepcopy(self.dataset_config or {}), "data.config"), self.seed if seed is None else seed)

    def _fields(self, data: Dataset, items: Any, what: str) -> int:
        from latentbridge.data import as_document, check_items

        check_items(data, items, what)
        if "document" in data.fields:  # each document a non-empty list of (modality, value) items with content
            docs = items[data.fields["document"]]
            kinds = {item[0] for doc in docs for item in doc if isinstance(item, tuple) and item}
            for i, doc in enumerate(docs):
                as_document(doc, kinds, f"data set '{data.name}' {what}, document {i}")
        return len(items[next(iter(data.fields.values()))])

    def test_declares_name_fields_and_options(self) -> None:
        cls = self.dataset_class
        _require(isinstance(getattr(cls, "name", None), str) and cls.name, "set a `name` class attribute")
        _require(isinstance(cls.fields, dict) and cls.fields, "declare `fields`: modality -> item field")
        _require(dataclasses.is_dataclass(cls.config_class), "config_class must be a dataclass")

    def test_batches_are_deterministic_and_complete(self) -> None:
        a, b = self.make_dataset(), self.make_dataset()
        if getattr(a, "streaming", False):  # a streaming data set: two loads stream the same batches
            from latentbridge.data.stream import StreamReader

            readers = [StreamReader(d, "train", self.batch_size, seed=self.seed, rank=0, world=1) for d in (a, b)]
            for step in range(3):
                x, y = (r.next() for r in readers)
                _require(self._fields(a, x, f"stream batch {step}") == self.batch_size, f"stream batch {step} has another size")
                for f in a.fields.values():
                    _require(all(_same_item(u, v, 0.0) for u, v in zip(x[f], y[f])), f"stream batch {step} differs between two loads")
            for r in readers:
                r.close()
            return
        for step in (0, 3):
            x = a.batch(step, self.batch_size, torch.Generator().manual_seed(step))
            y = b.batch(step, self.batch_size, torch.Generator().manual_seed(step))
            _require(self._fields(a, x, f"batch({step})") == self.batch_size, f"batch({step}, {self.batch_size}) has another size")
            for f in a.fields.values():
                _require(all(_same_item(u, v, 0.0) for u, v in zip(x[f], y[f])), f"batch({step}) differs between two loads")

    def test_splits_are_deterministic_and_sized(self) -> None:
        a, b = self.make_dataset(), self.make_dataset()
        for name in ("test", *a.held_out):
            x, y = a.split(name, 3), b.split(name, 3)
            n = self._fields(a, x, f"split({name!r})")
            _require(n <= 3, f"split({name!r}, 3) returned {n} items")
            for f in a.fields.values():
                _require(all(_same_item(u, v, 0.0) for u, v in zip(x[f], y[f])), f"split({name!r}) differs between two loads")

    def test_stats_sample_and_finite_access(self) -> None:
        data = self.make_dataset()
        _require(self._fields(data, data.stats_sample(5), "stats_sample(5)") <= 5, "stats_sample(5) returned more than 5 items")
        if data.finite:
            idx = data.indices(0, self.batch_size)
            _require(len(idx) == self.batch_size and int(idx.max()) < len(data), "indices(step, size) must index the data set")
            self._fields(data, data.items_at(idx), "items_at(indices)")
            _require(isinstance(data.key(), str) and data.key() == self.make_dataset().key(), "key() must identify the data")
        if getattr(data, "streaming", False):
            _require(isinstance(data.key(), str) and data.key() == self.make_dataset().key(), "key() must identify the data")
            _require(len(data.shards("train")) >= 1, "a streaming data set lists at least one training shard")


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    message: str = ""


def run_checks(case: CodecConformance) -> list[CheckResult]:
    """Run every check of `case` outside pytest; each result carries the failure message."""
    results = []
    for name in CHECKS:
        try:
            getattr(case, name)()
            results.append(CheckResult(name, True))
        except AssertionError as err:
            results.append(CheckResult(name, False, str(err)))
        except Exception as err:  # a crash inside the codec is a failed check, not a crash of the tool
            results.append(CheckResult(name, False, f"{type(err).__name__}: {err}"))
    return results
