"""Entry point of the toy world: its codecs, its data set and its evaluator, through latentbridge's public hooks."""

from latentbridge.hookspecs import hookimpl

from latentbridge_toy.codecs import LabelCodec, VectorCodec
from latentbridge_toy.evaluators import RingEvaluator
from latentbridge_toy.ring import RingData, RingDocuments


@hookimpl
def latentbridge_register_codecs(register):
    register(VectorCodec)
    register(LabelCodec)


@hookimpl
def latentbridge_register_datasets(register):
    register(RingData)
    register(RingDocuments)


@hookimpl
def latentbridge_register_evaluators(register):
    register(RingEvaluator)
