"""Entry point of the `latentbridge.codecs` group: registers the Text VAE through the public hook."""

from latentbridge.hookspecs import hookimpl

from latentbridge_text_vae.codec import TextVAE


@hookimpl
def latentbridge_register_codecs(register):
    register(TextVAE)
