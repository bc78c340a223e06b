"""The demo world's data sets, registered through `latentbridge_register_datasets` like any plugin's.

    text     real English: WordNet glosses, fortunes (and pydoc as an out-of-domain held-out set)
    images   emoji, emoji scenes and handwritten digits with captions (and photos, out of domain)
    speech   spoken words and names by flite and espeak-ng with their text (and real recordings)

Each is a latentbridge.data.Dataset with a config dataclass (its options under `data.config`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from latentbridge.data import Dataset, ItemDataset

from latentbridge_demo.data.text import TextBatches, load_texts


@dataclasses.dataclass
class TextOptions:
    """Options of the `text` data set."""

    sources: list[str] | None = None
    """Parts to draw from: wordnet, fortunes (null: both); split 98/1/1 by a hash of each text."""
    max_chars: int | None = 240
    """Drop texts longer than this many characters (null keeps all; the codec cuts long ones)."""


class TextData(Dataset):
    """Real texts (latentbridge_demo.data.text): the training split in per-epoch permutations.

    Held-out sets: `test`, and `pydoc` (Python's own documentation, out of domain)."""

    name = "corpus"
    config_class = TextOptions
    fields = {"text": "text"}
    held_out = {"test": "test", "pydoc": "pydoc (out of domain)"}

    def __init__(self, config: TextOptions | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.sources = self.config.sources or ["wordnet", "fortunes"]
        self.train = TextBatches(load_texts(self.sources, "train", self.config.max_chars), seed)

    def __len__(self) -> int:
        return len(self.train)

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict[str, list]:
        return {"text": self.train(step, size)}

    def indices(self, step: int, size: int) -> torch.Tensor:
        return self.train.indices(step, size)

    def items_at(self, idx: torch.Tensor) -> dict[str, list]:
        return {"text": [self.train.texts[i] for i in idx.tolist()]}

    def key(self) -> str:
        return self.train.key()

    def stats_sample(self, n: int) -> dict[str, list]:
        return {"text": self.train(0, min(n, len(self.train)))}

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        """Held-out texts: `validation`/`test` of the configured sources, or `pydoc` (out of domain)."""
        m = self.config.max_chars
        texts = load_texts(["pydoc"], "all", m) if name == "pydoc" else load_texts(self.sources, name, m)
        return {"text": texts[:n] if n else texts}


@dataclasses.dataclass
class ImageOptions:
    """Options of the `images` data set."""

    sources: list[str] | None = None
    """Kinds of image: emoji, scenes, digits (null: all three)."""
    image_size: int = 32
    """Side of the square images in pixels (32 or 64)."""
    scenes: int = 4000
    """Compositional scenes rendered for training (held-out splits get 1/20 as many)."""
    scene_objects: list[str] | None = None
    """The emoji scenes draw from, by name (null: all 32 of latentbridge_demo.data.images.SCENE_VOCABULARY; fewer are
    learned sooner)."""
    held_out_combinations: int | None = None
    """How many 2-3 emoji combinations of `scene_objects` only the test split shows (exactly; a quarter as many more for
    validation): the held-out scenes captioned -> image is scored on. Null: 10% of all combinations, by a hash of
    their names (8 emoji make 84 combinations, so about 8)."""


class ImageData(ItemDataset):
    """Images with captions (latentbridge_demo.data.images): emoji, scenes, digits.

    Splits: train / validation / test of the configured sources together; `emoji`, `scenes`, `digits` for the
    test split of one source; `photos` (real photographs, out of domain)."""

    name = "images"
    config_class = ImageOptions
    fields = {"image": "image", "text": "caption"}

    @property
    def sources(self) -> list[str]:
        from latentbridge_demo.data.images import IMAGE_SOURCES

        return list(self.config.sources or IMAGE_SOURCES)

    @property
    def held_out(self) -> dict[str, str]:  # type: ignore[override]
        return {**{s: f"test {s}" for s in self.sources}, "photos": "photos (out of domain)"}

    def load(self, split: str) -> dict[str, list]:
        from latentbridge_demo.data.images import IMAGE_SOURCES, load_images, load_photos

        c = self.config
        if split == "photos":
            images, captions = load_photos(c.image_size)
        elif split in IMAGE_SOURCES:
            images, captions = load_images([split], "test", c.image_size, c.scenes, scene_objects=c.scene_objects,
                                           held_out=c.held_out_combinations)
        else:
            images, captions = load_images(self.sources, split, c.image_size, c.scenes, scene_objects=c.scene_objects,
                                           held_out=c.held_out_combinations)
        return {"image": list(images), "caption": list(captions)}


@dataclasses.dataclass
class SpeechOptions:
    """Options of the `speech` data set."""

    sources: list[str] | None = None
    """Speech engines: flite, espeak (null: both)."""
    clips: int = 4000
    """Clips synthesized in all with `words: dictionary` (split 90/5/5 by a hash of the text)."""
    sample_rate: int = 16000
    """Hz the clips are resampled to (match the audio codec's sample_rate)."""
    words: Literal["dictionary", "objects"] = "dictionary"
    """What is spoken. `dictionary`: words and names of the system word list, split by word (held-out words are never
    heard); `objects`: the names of the scene emoji (`scene_objects`) and of the 10 digits by every voice at five speeds,
    split 80/10/10 by rendition (a closed vocabulary; `clips` is not used)."""
    scene_objects: list[str] | None = None
    """With `words: objects`: the scene emoji whose names are spoken (null: all 32)."""


class SpeechData(ItemDataset):
    """Spoken words and names with their text (latentbridge_demo.data.speech).

    Splits: train / validation / test of the configured engines together; `flite`, `espeak` for the test split of
    one engine; `recordings` (ALSA's real spoken clips) and `sounds` (freedesktop sound events), out of domain."""

    name = "speech"
    config_class = SpeechOptions
    fields = {"audio": "audio", "text": "text"}

    @property
    def sources(self) -> list[str]:
        from latentbridge_demo.data.speech import SPEECH_SOURCES

        return list(self.config.sources or SPEECH_SOURCES)

    @property
    def held_out(self) -> dict[str, str]:  # type: ignore[override]
        return {**{s: f"test {s}" for s in self.sources}, "recordings": "recordings (out of domain)"}

    def _load(self, split: str):
        from latentbridge_demo.data.speech import load_speech

        c = self.config
        return load_speech(split, c.clips, c.sample_rate, self.sources, c.words, c.scene_objects)

    def load(self, split: str) -> dict[str, list]:
        from latentbridge_demo.data.speech import SPEECH_SOURCES, load_recordings

        if split in ("recordings", "sounds"):
            waves, texts = load_recordings(self.config.sample_rate, split)
        elif split in SPEECH_SOURCES:  # the test clips of the configured set spoken by that engine
            waves, texts, utts = self._load("test")
            keep = [i for i, u in enumerate(utts) if u.engine == split]
            waves, texts = [waves[i] for i in keep], [texts[i] for i in keep]
        else:
            waves, texts, _ = self._load(split)
        return {"audio": list(waves), "text": list(texts)}


@dataclasses.dataclass
class StoryOptions:
    """Options of the `stories` data set."""

    stories: int = 6000
    """Stories rendered for training (held-out splits get 1/20 as many, at least 192)."""
    image_size: int = 32
    """Side of the square images in pixels."""
    scene_objects: list[str] | None = None
    """The emoji the stories are about, by name (null: all 32 scene emoji)."""
    held_out_combinations: int | None = None
    """Pairs and triples of `scene_objects` only the test split shows (as for the `images` data set)."""


class StoryData(ItemDataset):
    """Illustrated stories (latentbridge_demo.data.stories): documents of sentences and scene images, in three kinds
    whose opening sentence says where the document switches modality and ends. One field, `document`."""

    name = "stories"
    config_class = StoryOptions
    fields = {"document": "document"}

    def load(self, split: str) -> dict[str, list]:
        from latentbridge_demo.data.stories import story_documents

        c = self.config
        n = c.stories if split == "train" else max(192, c.stories // 20)
        docs, _ = story_documents(split, n, c.image_size, vocabulary=c.scene_objects, held_out=c.held_out_combinations)
        return {"document": docs}

    def truth(self, split: str, n: int | None = None) -> list:
        """The Story behind each document of split(split, n), in the same order."""
        from latentbridge_demo.data.stories import make_stories
        from latentbridge_demo.data.images import scene_vocabulary

        c = self.config
        count = c.stories if split == "train" else max(192, c.stories // 20)
        return make_stories(split, count, 0, scene_vocabulary(c.scene_objects), c.held_out_combinations)[:n]
