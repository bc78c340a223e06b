"""The whole test suite a plugin needs: subclass latentbridge's conformance kits."""

from latentbridge.testing import CodecConformance, DatasetConformance

from latentbridge_frames import FramesCodec
from latentbridge_frames.tones import ToneData


class TestFramesCodec(CodecConformance):
    codec_class = FramesCodec


class TestFramesCodecWide(CodecConformance):
    codec_class = FramesCodec
    codec_config = {"frame": 8, "latent_dim": 6, "block_size": 2}


class TestFramesCodecFixed(CodecConformance):
    codec_class = FramesCodec
    codec_config = {"tokens_per_item": 4}


class TestToneData(DatasetConformance):
    dataset_class = ToneData
    dataset_config = {"items": 64}
