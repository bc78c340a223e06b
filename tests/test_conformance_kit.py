"""The public conformance kit: a good codec passes every check; each check catches its own broken codec."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentbridge.codecs import Codec, LatentSpec, Posterior
from latentbridge.codecs.identity import IdentityCodec
from latentbridge.testing import CHECKS, CodecConformance, run_checks


@dataclasses.dataclass
class GoodConfig:
    dim: int = 4
    """Channels."""


class Good(Codec):
    """A small learned variable-length codec that honours the whole contract."""

    name = "good"
    modality = "test"
    config_class = GoodConfig

    def __init__(self, config=None):
        super().__init__(config)
        d = self.config.dim
        self.encoder = nn.Linear(d, d)
        self.decoder = nn.Linear(d, d)
        self.logvar = nn.Parameter(torch.full((d,), -3.0))

    @property
    def latent_spec(self):
        return LatentSpec(dim=self.config.dim, block_size=2)

    def num_tokens(self, item):
        return item.shape[0]

    def collate(self, items):
        values = nn.utils.rnn.pad_sequence(items, batch_first=True)
        return {"x": values, "lengths": torch.tensor([len(i) for i in items])}

    def raw_encode(self, batch):
        mean = self.encoder(batch["x"].to(self.encoder.weight.dtype))
        return Posterior(mean, batch["lengths"].to(mean.device), self.logvar.expand_as(mean))

    def raw_decode(self, z, lengths):
        return [v[: int(n)] for v, n in zip(self.decoder(z), lengths)]

    def loss(self, batch):
        post = self.raw_encode(batch)
        m = post.mask()
        rec = F.mse_loss(self.decoder(post.sample())[m], batch["x"][m])
        kl = post.kl()[m].mean()
        return {"loss": rec + 1e-3 * kl, "reconstruction": rec, "kl": kl}

    def example_items(self, n, generator):
        return [torch.randn(int(k), self.config.dim, generator=generator) for k in torch.randint(1, 6, (n,), generator=generator)]


class TestGoodCodec(CodecConformance):
    codec_class = Good


class TestIdentityCodec(CodecConformance):
    codec_class = IdentityCodec


class TestIdentityCodecFixedLength(CodecConformance):
    codec_class = IdentityCodec
    codec_config = {"dim": 3, "tokens_per_item": 5, "block_size": 5}


# --------------------------------------------------------------------------------------------------
# One deliberately broken codec per check
# --------------------------------------------------------------------------------------------------


class NoNumTokens(Good):
    num_tokens = Codec.num_tokens  # variable-length spec without a length rule


class WrongWidth(Good):
    def raw_encode(self, batch):
        post = super().raw_encode(batch)
        return Posterior(post.mean[..., :2], post.lengths)


class OffByOne(Good):
    def num_tokens(self, item):
        return item.shape[0] + 1


class NormalizesItself(Good):
    def raw_encode(self, batch):
        post = super().raw_encode(batch)
        return Posterior(self.stats.normalize(post.mean), post.lengths, post.logvar)


class NoisyInEval(Good):
    def raw_encode(self, batch):
        post = super().raw_encode(batch)
        return Posterior(post.mean + 0.1 * torch.randn_like(post.mean), post.lengths, post.logvar)


class UnregisteredState(Good):
    def __init__(self, config=None):
        super().__init__(config)
        self.offset = torch.randn(self.config.dim)  # a plain attribute: not saved, not moved

    def raw_encode(self, batch):
        post = super().raw_encode(batch)
        return Posterior(post.mean + self.offset, post.lengths, post.logvar)


class FlatDecode(Good):
    def raw_decode(self, z, lengths):
        return [v.flatten() for v in super().raw_decode(z, lengths)]


class FixedDevice(Good):
    def raw_encode(self, batch):
        post = super().raw_encode(batch)
        return Posterior(post.mean + torch.zeros(post.mean.shape), post.lengths, post.logvar)


class HiddenParameter(Good):
    def __init__(self, config=None):
        super().__init__(config)
        self.hidden = [nn.Parameter(torch.zeros(self.config.dim))]  # inside a list: freeze() misses it

    def raw_encode(self, batch):
        post = super().raw_encode(batch)
        return Posterior(post.mean + self.hidden[0], post.lengths, post.logvar)


class UnnamedLoss(Good):
    def loss(self, batch):
        return {"loss": super().loss(batch)["loss"]}


class NaNDiagnostics(Good):
    def diagnostics(self, batch):
        return {"rate_nats_per_latent": float("nan")}


class LostFiles(Good):
    """Writes files but reads back fewer items than it wrote."""

    def write_items(self, items, directory, names=None):
        from pathlib import Path

        path = Path(directory) / "items.pt"
        torch.save([torch.as_tensor(x) for x in items], path)
        return [path]

    def read_items(self, paths):
        return torch.load(paths[0])[:1]


BROKEN = {
    "test_latent_spec": (NoNumTokens, "num_tokens\\(item\\) is not implemented"),
    "test_encode_matches_spec": (WrongWidth, "expected \\[B, N, 4\\]"),
    "test_num_tokens_agree": (OffByOne, "num_tokens\\(item\\) says"),
    "test_stats_round_trip": (NormalizesItself, "do not normalize inside raw_encode|changes when the stats change"),
    "test_encode_deterministic_in_eval": (NoisyInEval, "encode in eval mode gave different latents"),
    "test_save_load_round_trip": (UnregisteredState, "reloaded codec encodes differently"),
    "test_decode_type_and_shape": (FlatDecode, "item 0: decoded Tensor"),
    "test_device_follows_module": (FixedDevice, "encode on meta failed"),
    "test_frozen_codec_builds_no_graph": (HiddenParameter, "a frozen codec still built an autograd graph"),
    "test_loss_terms": (UnnamedLoss, "must name its terms"),
    "test_diagnostics": (NaNDiagnostics, "diagnostic 'rate_nats_per_latent' is nan"),
    "test_write_and_read_items": (LostFiles, "read_items read 1 items back from the files of 4"),
}


def case_for(cls):
    return type(f"Case{cls.__name__}", (CodecConformance,), {"codec_class": cls})()


def test_every_check_has_a_broken_codec():
    assert set(BROKEN) == set(CHECKS)


@pytest.mark.parametrize("check", CHECKS)
def test_check_fails_on_its_broken_codec(check):
    broken, pattern = BROKEN[check]
    with pytest.raises(AssertionError, match=pattern):
        getattr(case_for(broken), check)()


@pytest.mark.parametrize("check", CHECKS)
def test_broken_codecs_break_only_what_they_break_on_the_good_codec(check):
    getattr(case_for(Good), check)()  # the base of every broken codec passes each check


def test_run_checks_reports_failures_as_rows():
    results = {r.name: r for r in run_checks(case_for(OffByOne))}
    assert not results["test_num_tokens_agree"].passed
    assert "num_tokens(item) says" in results["test_num_tokens_agree"].message
    assert results["test_latent_spec"].passed
