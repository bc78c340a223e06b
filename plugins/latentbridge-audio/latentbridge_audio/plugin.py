"""Entry point of the `latentbridge.codecs` group: registers the audio VAE through the public hook."""

from latentbridge.hookspecs import hookimpl

from latentbridge_audio.codec import AudioVAE


@hookimpl
def latentbridge_register_codecs(register):
    register(AudioVAE)
