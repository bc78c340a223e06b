"""The illustrated stories: their truth, their held-out pairs, and the stories evaluator's scoring on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from latentbridge.data import DocItem
from latentbridge.pipeline import GeneratedDocument
from latentbridge_demo.data import stories as st
from latentbridge_demo.data.images import render_scene
from latentbridge_demo.evaluate.images import SceneChecker
from latentbridge_demo.evaluators import Stories, _item

OBJECTS = ["frog", "tomato", "grapes", "lemon", "penguin", "bear", "pig", "carrot"]


def test_stories_follow_their_opening_and_swap_inverts_the_relation():
    stories = st.make_stories("train", 60, vocabulary=OBJECTS, held_out=24)
    assert [s.kind for s in stories[:6]] == ["caption", "describe", "swap"] * 2
    for s in stories:
        a, b = (o.name for o in s.scene.objects)
        assert a in s.texts[0] and b in s.texts[0]
        if s.kind == "caption":
            assert s.texts == (s.scene.caption,) and s.follows() == ["image", "end"]
        else:
            assert s.texts[1].endswith(f"{s.scene.relation} {'grapes' if b == 'grapes' else 'the ' + b}.")
            assert ("swap places" in s.texts[0]) == (s.kind == "swap")
        if s.kind == "swap":
            t = s.second
            assert t.relation == st.OPPOSITE[s.scene.relation] and s.follows() == ["image", "text", "image", "end"]
            assert (t.objects[0].x, t.objects[0].y) == (s.scene.objects[1].x, s.scene.objects[1].y)


def test_held_out_pairs_appear_only_in_the_test_split():
    def pairs(split):
        return {tuple(sorted(o.name for o in s.scene.objects)) for s in st.make_stories(split, 300, vocabulary=OBJECTS, held_out=24)}

    test, train = pairs("test"), pairs("train")
    assert test and not test & train


def test_story_documents_render_the_truth():
    docs, stories = st.story_documents("test", 9, vocabulary=OBJECTS, held_out=24)
    checker = SceneChecker(32, OBJECTS)
    _, first = checker.check([d[1].value for d in docs], [s.scene for s in stories])
    swaps = [(d, s) for d, s in zip(docs, stories) if s.kind == "swap"]
    _, second = checker.check([d[3].value for d, _ in swaps], [s.second for _, s in swaps])
    assert all(first) and all(second)
    assert [len(d) for d in docs] == [len(s.structure) for s in stories]


def _doc(items, prefix=1, ended=True):
    return GeneratedDocument([DocItem(m, v) for m, v in items], prefix, ended)


def test_structure_scores_the_truth_as_right_and_a_wrong_switch_as_wrong():
    story = st.make_stories("test", 3, vocabulary=OBJECTS, held_out=24)[2]  # a swap story: text image text image end
    img = np.zeros((32, 32, 3), np.uint8)
    right = _doc([("text", "x"), ("image", img), ("text", "y"), ("image", img)])
    early = _doc([("text", "x"), ("image", img), ("text", "y")])  # ended after the sentence: one wrong switch
    scores = Stories._structure([right, early], [story, story], "")
    assert scores["whole structure"].values == [1.0, 0.0]
    assert scores["switch accuracy"].values == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert _item(early, 3, "image") is None and _item(right, 1, "image") is img


@pytest.mark.parametrize("relation_ok", [True, False])
def test_arrangement_scores_a_rendered_scene_against_its_truth(relation_ok):
    story = st.make_stories("test", 1, vocabulary=OBJECTS, held_out=24)[0]
    scene = story.scene if relation_ok else st.swapped(story.scene)
    score = Stories._arrangement(SceneChecker(32, OBJECTS), [render_scene(scene, 32), None], [story.scene, story.scene])
    assert score.values == [float(relation_ok), 0.0]


def test_a_generated_story_is_scored_against_what_its_own_sentence_says():
    stories = [s for s in st.make_stories("test", 12, vocabulary=OBJECTS, held_out=24) if s.kind == "swap"]
    docs = [_doc([("text", s.texts[0]), ("image", render_scene(s.scene, 32)), ("text", s.texts[1]),
                  ("image", render_scene(s.second, 32))]) for s in stories]
    lying = _doc([("text", stories[0].texts[0]), ("image", render_scene(st.swapped(stories[0].scene), 32)),
                  ("text", stories[0].texts[1]), ("image", render_scene(stories[0].scene, 32))])
    scores = Stories._self_consistent(SceneChecker(32, OBJECTS), docs + [lying], docs + [lying], OBJECTS, 0)
    assert scores["story: sentence says what its image shows"].values == [1.0] * len(docs) + [0.0]
    assert scores["story: second image is the swap the sentence says"].values == [1.0] * len(docs) + [0.0]
    assert st.parse_relation("the frog is above the lemon.", OBJECTS) == ("frog", "above", "lemon")
    assert st.parse_relation("a frog above a lemon", OBJECTS) is None
