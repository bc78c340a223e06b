"""Entry point of the `latentbridge.codecs` group: the pretrained-model codecs."""

from latentbridge.hookspecs import hookimpl

from latentbridge_pretrained.audio import PretrainedAudioVAE
from latentbridge_pretrained.image import PretrainedImageVAE
from latentbridge_pretrained.text import MiniLM, TextEncoder


@hookimpl
def latentbridge_register_codecs(register):
    for codec in (PretrainedImageVAE, PretrainedAudioVAE, TextEncoder, MiniLM):
        register(codec)
