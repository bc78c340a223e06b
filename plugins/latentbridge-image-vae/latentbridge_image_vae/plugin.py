"""Entry point of the `latentbridge.codecs` group: registers the image VAE through the public hook."""

from latentbridge.hookspecs import hookimpl

from latentbridge_image_vae.codec import ImageVAE


@hookimpl
def latentbridge_register_codecs(register):
    register(ImageVAE)
