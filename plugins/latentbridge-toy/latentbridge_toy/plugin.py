"""Entry point of the `latentbridge.codecs` group: registers the toy codecs through the public hook."""

from latentbridge.hookspecs import hookimpl

from latentbridge_toy.codecs import LabelCodec, VectorCodec


@hookimpl
def latentbridge_register_codecs(register):
    register(VectorCodec)
    register(LabelCodec)
