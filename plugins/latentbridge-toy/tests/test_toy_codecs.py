"""Toy codecs: the conformance kit plus what each must do as a prior fixture."""

from __future__ import annotations

import pytest
import torch

from latentbridge.errors import CodecOutputError
from latentbridge.testing import CodecConformance, DatasetConformance
from latentbridge_toy import LabelCodec, RingData, VectorCodec


class TestVectorCodec(CodecConformance):
    codec_class = VectorCodec


class TestVectorCodecCompressing(CodecConformance):
    codec_class = VectorCodec
    codec_config = {"input_dim": 5, "latent_dim": 3}


class TestLabelCodec(CodecConformance):
    codec_class = LabelCodec


class TestLabelCodecWide(CodecConformance):
    codec_class = LabelCodec
    codec_config = {"num_classes": 3, "latent_dim": 16}


def train(codec, batch, steps=200, lr=5e-2):
    opt = torch.optim.Adam(codec.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        codec.loss(batch)["loss"].backward()
        opt.step()
    return codec.eval()


def test_vector_codec_starts_as_identity_and_round_trips():
    codec = VectorCodec().eval()
    points = [torch.tensor([0.5, -2.0]), torch.tensor([3.0, 1.0])]
    decoded = codec.decode(codec.encode_items(points))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(decoded, points))


def test_label_codec_learns_to_decode_every_class():
    torch.manual_seed(0)
    codec = LabelCodec({"num_classes": 8, "latent_dim": 4})
    labels = codec.collate(list(range(8)) * 8)
    train(codec, labels)
    diag = codec.diagnostics(labels)
    assert diag["accuracy"] == 1.0 and diag["accuracy_sampled"] > 0.95
    assert codec.decode(codec.encode_items(list(range(8)))) == list(range(8))


def test_compressing_vector_codec_learns_a_low_rank_cloud():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(256, 2, generator=g) @ torch.randn(2, 4, generator=g)  # rank 2 in R^4
    torch.manual_seed(0)
    codec = train(VectorCodec({"input_dim": 4, "latent_dim": 2}), points, steps=400)
    assert codec.diagnostics(points)["reconstruction_mse"] < 0.05 * float(points.var())


def test_bad_items_are_named():
    with pytest.raises(CodecOutputError, match=r"labels must lie in \[0, 10\)"):
        LabelCodec().collate([3, 10])
    with pytest.raises(CodecOutputError, match="points must be vectors of length 2"):
        VectorCodec().collate([torch.zeros(3)])


class TestRingData(DatasetConformance):
    dataset_class = RingData


class TestFixedRingData(DatasetConformance):
    """The ring from a fixed set of points (data.config.path): finite, walked in per-epoch permutations."""

    dataset_class = RingData

    @pytest.fixture(autouse=True)
    def _points(self, tmp_path):
        from safetensors.torch import save_file

        save_file({"points": torch.randn(20, 2), "labels": torch.arange(20) % 8}, str(tmp_path / "ring.safetensors"))
        type(self).dataset_config = {"path": str(tmp_path / "ring.safetensors")}
        yield
        type(self).dataset_config = None
