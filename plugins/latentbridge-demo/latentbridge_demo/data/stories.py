"""Illustrated stories: short interleaved documents of text and scene images, made with known truth.

A story is about two scene emoji (a pair of latentbridge_demo.data.images' scene vocabulary) in one of three kinds,
each told by its opening sentence:

    caption    "a frog above a lemon"                      image (the frog above the lemon)                       end
    describe   "here are a frog and a lemon."              image (some arrangement)   "the frog is above the lemon."   end
    swap       "a frog and a lemon swap places."           image (some arrangement)   "the frog is above the lemon."
               image (the two swapped: the frog below the lemon)                                                    end

So where a document switches modality, and where it ends, follows from its opening sentence; a caption fixes the
image; the sentence after a `describe` or `swap` image says what the image shows; the second `swap` image follows
from that sentence. Pairs whose combination is held out of training (images.py, `held_out_combinations`) appear
only in the test split. Everything is a pure function of (split, count, seed).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from latentbridge_demo.data.images import (
    RELATIONS, Scene, SceneObject, article, cached_npz, held_out_tag, render_scene, scene_vocabulary, scenes, vocabulary_tag,
)

KINDS = ("caption", "describe", "swap")
OPPOSITE = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}
assert set(OPPOSITE) == set(RELATIONS)


def _the(name: str) -> str:
    return name if name == "grapes" else f"the {name}"


def opening(kind: str, scene: Scene) -> str:
    a, b = (o.name for o in scene.objects)
    if kind == "caption":
        return scene.caption
    if kind == "describe":
        return f"here are {article(a)} and {article(b)}."
    return f"{article(a)} and {article(b)} swap places."


def relation_sentence(scene: Scene) -> str:
    """What the image shows, as the story's second sentence says it: "the frog is above the lemon."."""
    a, b = (o.name for o in scene.objects)
    verb = "are" if a == "grapes" else "is"
    return f"{_the(a)} {verb} {scene.relation} {_the(b)}."


def swapped(scene: Scene) -> Scene:
    """The two emoji exchanged: each drawn where the other was (so the first stands to the second the opposite way)."""
    a, b = scene.objects
    objs = (SceneObject(a.name, b.x, b.y, a.size), SceneObject(b.name, a.x, a.y, b.size))
    relation = OPPOSITE[scene.relation]
    return Scene(objs, f"{article(a.name)} {relation} {article(b.name)}", relation)


@dataclasses.dataclass(frozen=True)
class Story:
    kind: str
    scene: Scene
    """The first image's truth."""
    texts: tuple[str, ...]
    """The story's sentences, in order."""

    @property
    def second(self) -> Scene | None:
        """The second image's truth (swap stories only)."""
        return swapped(self.scene) if self.kind == "swap" else None

    @property
    def structure(self) -> list[str]:
        """The modality of each item in order."""
        return {"caption": ["text", "image"], "describe": ["text", "image", "text"],
                "swap": ["text", "image", "text", "image"]}[self.kind]

    def follows(self) -> list[str]:
        """What follows each item: the next item's modality, or "end"."""
        s = self.structure
        return [s[i + 1] if i + 1 < len(s) else "end" for i in range(len(s))]


def make_stories(split: str, n: int, seed: int = 0, vocabulary: Sequence[str] | None = None,
                 held_out: int | None = None) -> list[Story]:
    """The first n stories of `split`: the split's two-emoji scenes in order, kinds in turn (caption, describe, swap)."""
    drawn = 3 * n + 16
    pairs = [s for s in scenes(split, drawn, seed + 101, vocabulary, held_out) if len(s.objects) == 2]
    while len(pairs) < n:  # a split where pairs are rarer: draw more (the first scenes stay the same)
        drawn *= 2
        pairs = [s for s in scenes(split, drawn, seed + 101, vocabulary, held_out) if len(s.objects) == 2]
    out = []
    for i, scene in enumerate(pairs[:n]):
        kind = KINDS[i % 3]
        texts = (opening(kind, scene),) if kind == "caption" else (opening(kind, scene), relation_sentence(scene))
        out.append(Story(kind, scene, texts))
    return out


def story_documents(split: str, n: int, size: int = 32, seed: int = 0, vocabulary: Sequence[str] | None = None,
                    held_out: int | None = None) -> tuple[list[list[tuple[str, object]]], list[Story]]:
    """n stories of `split` as documents [(modality, value)] (images rendered at size, cached) and their truth."""
    from latentbridge.data import DocItem

    vocabulary = scene_vocabulary(vocabulary)
    stories = make_stories(split, n, seed, vocabulary, held_out)

    def build():
        first = np.stack([render_scene(s.scene, size) for s in stories])
        second = np.stack([render_scene(s.second, size) if s.second else np.zeros_like(first[0]) for s in stories])
        return {"first": first, "second": second}

    tag = f"stories_{size}_{split}_{n}_{seed}{vocabulary_tag(vocabulary)}{held_out_tag(held_out)}.npz"
    images = cached_npz(tag, build)
    docs = []
    for i, s in enumerate(stories):
        doc = [DocItem("text", s.texts[0]), DocItem("image", images["first"][i])]
        if s.kind != "caption":
            doc.append(DocItem("text", s.texts[1]))
        if s.kind == "swap":
            doc.append(DocItem("image", images["second"][i]))
        docs.append(doc)
    return docs, stories


PLACES = {"above": ((0.5, 0.27), (0.5, 0.73)), "below": ((0.5, 0.73), (0.5, 0.27)),
          "to the left of": ((0.27, 0.5), (0.73, 0.5)), "to the right of": ((0.73, 0.5), (0.27, 0.5))}
"""Where a pair scene draws its first and second emoji for each relation (images.make_scene, without the jitter)."""


def pair_scene(a: str, relation: str, b: str) -> Scene:
    """The scene "a <relation> b" laid out as the data draws it: what a sentence says an image should show."""
    (xa, ya), (xb, yb) = PLACES[relation]
    return Scene((SceneObject(a, xa, ya, 0.45), SceneObject(b, xb, yb, 0.45)), f"{article(a)} {relation} {article(b)}", relation)


def parse_relation(sentence: str, names: Sequence[str]) -> tuple[str, str, str] | None:
    """(a, relation, b) of a sentence "the a is <relation> the b." over the emoji `names`, or None when it says
    something else."""
    import re

    words = " ".join(re.findall(r"[a-z']+", sentence.lower()))
    alt = "|".join(map(re.escape, names))
    for relation in RELATIONS:
        m = re.fullmatch(rf"(?:the )?({alt}) (?:is|are) {relation} (?:the )?({alt})", words)
        if m and m.group(1) != m.group(2):
            return m.group(1), relation, m.group(2)
    return None
