"""The built-in plugin: registers latentbridge's own codecs through the public hook."""

from latentbridge.codecs.identity import IdentityCodec
from latentbridge.hookspecs import hookimpl


@hookimpl
def latentbridge_register_codecs(register):
    register(IdentityCodec)
