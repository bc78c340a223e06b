"""The built-in plugin of evaluators: the generic ones, registered through the public hook like any other."""

from latentbridge.evaluate.generic import DocumentSwitches, PriorFit, Reconstruction, Samples
from latentbridge.hookspecs import hookimpl


@hookimpl
def latentbridge_register_evaluators(register):
    register(PriorFit)
    register(Reconstruction)
    register(Samples)
    register(DocumentSwitches)
