"""The demo's data sets pass latentbridge's public data-set conformance kit, as a third party's would."""

from __future__ import annotations

from latentbridge.testing import DatasetConformance
from latentbridge_demo.datasets import ImageData, SpeechData, StoryData, TextData


class TestTextData(DatasetConformance):
    dataset_class = TextData


class TestImageData(DatasetConformance):
    dataset_class = ImageData
    dataset_config = {"sources": ["digits", "scenes"], "scenes": 40}


class TestSpeechData(DatasetConformance):
    dataset_class = SpeechData
    dataset_config = {"sources": ["flite"], "words": "objects", "scene_objects": ["frog", "tomato", "lemon"]}


class TestStoryData(DatasetConformance):
    dataset_class = StoryData
    dataset_config = {"stories": 30, "scene_objects": ["frog", "tomato", "lemon", "pig"], "held_out_combinations": 3}
