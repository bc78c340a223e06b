"""The whole test suite a codec plugin needs: subclass the conformance kit."""

from latentbridge.testing import CodecConformance

from latentbridge_frames import FramesCodec


class TestFramesCodec(CodecConformance):
    codec_class = FramesCodec


class TestFramesCodecWide(CodecConformance):
    codec_class = FramesCodec
    codec_config = {"frame": 8, "latent_dim": 6, "block_size": 2}
