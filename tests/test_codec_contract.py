"""The codec base class: boundary validation, stats, Latents, save/load and its failure modes."""

from __future__ import annotations

import json

import pytest
import torch

from latentbridge.codecs import Latents, LatentSpec, LatentStats, Posterior
from latentbridge.codecs.identity import IdentityCodec
from latentbridge.errors import CheckpointError, CodecOutputError


class Misbehaving(IdentityCodec):
    """Identity codec whose raw_encode output is spoiled by `spoil` (a Posterior -> Posterior function)."""

    name = "misbehaving"
    spoil = staticmethod(lambda post: post)

    def raw_encode(self, batch):
        return self.spoil(super().raw_encode(batch))


def encode_spoiled(spoil, **config):
    codec = type("Spoiled", (Misbehaving,), {"spoil": staticmethod(spoil)})(config or None)
    items = codec.example_items(3, torch.Generator().manual_seed(0))
    return codec.encode(codec.collate(items))


def with_nan(post):
    post.mean[1, 0, 2] = float("nan")
    return post


@pytest.mark.parametrize(
    "spoil, config, pattern",
    [
        (lambda p: Posterior(p.mean[..., :5], p.lengths), {}, r"mean of shape \(3, \d+, 5\); expected \[B, N, 8\]"),
        (lambda p: Posterior(p.mean[0], p.lengths), {}, r"expected \[B, N, 8\]"),
        (with_nan, {}, r"NaN or inf in the mean: 1 values, in items \[1\]"),
        (lambda p: Posterior(p.mean.double(), p.lengths), {}, r"returned torch.float64 latents but the codec's weights are torch.float32"),
        (lambda p: Posterior(p.mean.long(), p.lengths), {}, r"dtype torch.int64; expected a floating dtype"),
        (lambda p: Posterior(p.mean, p.lengths + 100), {}, r"each must lie in 1\.\.N"),
        (lambda p: Posterior(p.mean, p.lengths.int()), {}, r"expected an int64 tensor of shape \(3,\)"),
        (lambda p: Posterior(p.mean, p.lengths - 1), {"tokens_per_item": 4}, r"latent_spec fixes 4 tokens per item"),
        (lambda p: Posterior(p.mean, p.lengths, p.mean[:, :1]), {}, r"logvar of shape"),
        (lambda p: p.mean, {}, r"must return a latentbridge.codecs.Posterior, got Tensor"),
    ],
)
def test_raw_encode_output_is_validated_at_the_boundary(spoil, config, pattern):
    with pytest.raises(CodecOutputError, match=pattern) as err:
        encode_spoiled(spoil, **config)
    assert "codec 'misbehaving'" in str(err.value)
    assert "Fix the codec's raw_encode or its latent_spec" in str(err.value)


def test_encode_normalizes_and_zeros_padding_decode_inverts():
    codec = IdentityCodec({"dim": 3})
    codec.stats.set(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0]))
    items = [torch.randn(2, 3), torch.randn(5, 3)]
    lat = codec.encode_items(items)
    assert lat.values.shape == (2, 5, 3) and lat.lengths.tolist() == [2, 5]
    assert torch.allclose(lat.values[0, :2], (items[0] - codec.stats.shift) / codec.stats.scale)
    assert torch.equal(lat.values[0, 2:], torch.zeros(3, 3))
    back = codec.decode(lat)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(back, items))


def test_decode_refuses_foreign_or_misshapen_latents():
    codec = IdentityCodec({"dim": 3})
    with pytest.raises(CodecOutputError, match="made by codec 'label'. Decode them with 'label'"):
        codec.decode(Latents("label", torch.zeros(1, 1, 3), torch.ones(1, dtype=torch.long)))
    with pytest.raises(CodecOutputError, match=r"decodes latents of shape \[B, N, 3\], got \(1, 1, 4\)"):
        codec.decode(Latents("identity", torch.zeros(1, 1, 4), torch.ones(1, dtype=torch.long)))


def test_posterior_sample_and_kl():
    mean = torch.zeros(2, 3, 4)
    post = Posterior(mean, torch.tensor([3, 1]), logvar=torch.zeros(2, 3, 4))
    assert torch.equal(post.kl(), torch.zeros(2, 3))  # q = N(0, I)
    post = Posterior(torch.ones(2, 3, 4), torch.tensor([3, 1]), logvar=torch.zeros(2, 3, 4))
    assert torch.allclose(post.kl(), torch.tensor([[2.0, 2.0, 2.0], [2.0, 0.0, 0.0]]))  # 0.5 * |mu|^2, masked
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(post.sample(g1), post.sample(g2)) and not torch.equal(post.sample(), post.mean)


def test_stats_fit_and_validation():
    stats = LatentStats(2)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 0.1]) + torch.tensor([5.0, -1.0])
    stats.fit(z)
    normalized = stats.normalize(z)
    assert torch.allclose(normalized.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(normalized.std(0), torch.ones(2), atol=1e-4)
    with pytest.raises(ValueError, match="scale finite and > 0"):
        stats.set(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"expected shift and scale of shape \(2,\)"):
        stats.set(torch.zeros(3), torch.ones(3))


def test_fit_stats_on_codec_gives_unit_variance_latents():
    codec = IdentityCodec({"dim": 2, "tokens_per_item": 1})
    items = [torch.tensor([[10.0 + i, -3.0 * i]]) for i in range(50)]
    codec.fit_stats([codec.collate(items)])
    values = codec.encode_items(items).values[:, 0]
    assert torch.allclose(values.std(0), torch.ones(2), atol=1e-4)


def test_latent_spec_validation():
    assert LatentSpec(dim=4, block_size=16).num_blocks(33) == 3
    with pytest.raises(ValueError, match="dim must be a positive int"):
        LatentSpec(dim=0, block_size=1)
    with pytest.raises(ValueError, match="end must be 'length' or 'marker'"):
        LatentSpec(dim=1, block_size=1, end="eos")


def test_latents_helpers():
    lat = Latents.from_list("identity", [torch.ones(2, 3), torch.ones(4, 3)])
    assert lat.values.shape == (2, 4, 3) and lat.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert [t.shape[0] for t in lat.unbind()] == [2, 4]
    assert lat.to(torch.float64).values.dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------------------


def test_save_writes_json_and_safetensors_and_round_trips(tmp_path):
    codec = IdentityCodec({"dim": 3, "block_size": 2})
    codec.stats.set(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
    codec.save_pretrained(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "codec.json").read_text())
    assert meta["codec"] == "identity" and meta["config"]["dim"] == 3 and meta["latent_spec"]["block_size"] == 2
    assert meta["fingerprint"] == codec.fingerprint()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["codec.json", "model.safetensors"]
    loaded = IdentityCodec.from_pretrained(tmp_path / "c")
    assert torch.equal(loaded.stats.scale, codec.stats.scale) and loaded.fingerprint() == codec.fingerprint()
    codec.save_pretrained(tmp_path / "c")  # overwriting is allowed and leaves no temporary directory
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="is not a saved codec: codec.json is missing"):
        IdentityCodec.from_pretrained(tmp_path / "nowhere")

    IdentityCodec({"dim": 3}).save_pretrained(tmp_path / "c")
    meta_file = tmp_path / "c" / "codec.json"
    meta = json.loads(meta_file.read_text())

    class Other(IdentityCodec):
        name = "other"

    with pytest.raises(CheckpointError, match="holds codec 'identity', not 'other'.*load_codec"):
        Other.from_pretrained(tmp_path / "c")

    meta_file.write_text(json.dumps({**meta, "config": {**meta["config"], "dimm": 3}}))
    with pytest.raises(CheckpointError, match=r"no longer fits IdentityCodec's config: unknown config key 'config.dimm'"):
        IdentityCodec.from_pretrained(tmp_path / "c")

    meta_file.write_text(json.dumps({**meta, "config": {**meta["config"], "dim": 5}}))
    with pytest.raises(CheckpointError, match="does not match codec 'identity' as installed now"):
        IdentityCodec.from_pretrained(tmp_path / "c")

    meta_file.write_text(json.dumps(meta))
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        IdentityCodec.from_pretrained(tmp_path / "c")

    meta_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        IdentityCodec.from_pretrained(tmp_path / "c")


def test_autocast_dtype_is_accepted_only_under_autocast():
    to_bf16 = lambda p: Posterior(p.mean.bfloat16(), p.lengths)  # noqa: E731  what a codec's layers return under autocast
    with pytest.raises(CodecOutputError, match="returned torch.bfloat16 latents"):
        encode_spoiled(to_bf16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert encode_spoiled(to_bf16).values.dtype == torch.bfloat16
        with pytest.raises(CodecOutputError, match="returned torch.float64 latents"):
            encode_spoiled(lambda p: Posterior(p.mean.double(), p.lengths))


def test_generic_decode_stream_drops_the_pinned_prefix_and_never_ends_early():
    codec = IdentityCodec().eval()  # block size 4, ends by length
    prefix = Latents.from_list(codec.name, [torch.randn(n, 8) for n in (2, 4, 5)])
    stream = codec.decoder_stream(prefix)
    first, second = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    assert not stream.push(first).any() and not stream.push(second).any()
    pins = [2, 0, 1]  # prefix tokens inside the first pushed block
    for item, block0, block1, p in zip(stream.items(), first, second, pins):
        want = codec.decode(Latents(codec.name, torch.cat([block0[p:], block1])[None], torch.tensor([8 - p])))[0]
        assert torch.allclose(torch.as_tensor(item), torch.as_tensor(want))
