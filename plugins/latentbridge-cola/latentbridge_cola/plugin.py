"""Entry point of the `latentbridge.codecs` group: the Cola DLM codec and prior backbone."""

from latentbridge.hookspecs import hookimpl

from latentbridge_cola.codec import ColaVAE
from latentbridge_cola.dit import ColaDiT


@hookimpl
def latentbridge_register_codecs(register):
    register(ColaVAE)


@hookimpl
def latentbridge_register_priors(register):
    register(ColaDiT)
