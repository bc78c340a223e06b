"""Entry point of the demo world: its data sets and evaluators, through latentbridge's public hooks."""

from latentbridge.hookspecs import hookimpl

from latentbridge_demo.datasets import ImageData, SpeechData, StoryData, TextData
from latentbridge_demo.evaluators import CaptionToImage, ImageToCaption, SpeechToText, Stories, TextContinuation, TextToSpeech


@hookimpl
def latentbridge_register_datasets(register):
    register(TextData)
    register(ImageData)
    register(SpeechData)
    register(StoryData)


@hookimpl
def latentbridge_register_evaluators(register):
    for evaluator in (CaptionToImage, ImageToCaption, TextToSpeech, SpeechToText, TextContinuation, Stories):
        register(evaluator)
