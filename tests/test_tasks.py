"""Tasks and mixtures: layouts per example, shares by weight, config validation, finding a task, data per task."""

from __future__ import annotations

import pytest
import torch

from latentbridge.config import ExperimentConfig, load_config
from latentbridge.errors import ConfigError, UnknownNameError
from latentbridge.tasks import Task, TaskMixture, find_task, shares, tasks_of
from latentbridge.typedconfig import from_dict

ROLES = {"text": {"codec": "text-vae"}, "image": {"codec": "image-vae"}, "speech": {"codec": "audio-vae"}}


def cfg_with(tasks=None, task=None, **extra) -> ExperimentConfig:
    data = {"name": "x", "codecs": ROLES, **extra}
    if tasks is not None:
        data["tasks"] = tasks
    if task is not None:
        data["task"] = task
    return from_dict(ExperimentConfig, data)


@pytest.mark.parametrize("weights, size", [([3, 3, 2, 2], 64), ([1, 1], 7), ([10, 1], 11), ([1, 1, 1], 3), ([5, 1, 1], 2)])
def test_shares_add_up_follow_the_weights_and_keep_every_task(weights, size):
    out = shares(weights, size)
    assert sum(out) == size
    if size >= len(weights):
        assert min(out) >= 1
    exact = [size * w / sum(weights) for w in weights]
    assert all(abs(o - e) <= 1 + (e < 1) for o, e in zip(out, exact))


def test_shares_are_exact_when_the_batch_divides():
    assert shares([3, 3, 2, 2], 60) == [18, 18, 12, 12]


def test_single_task_and_mixture(autoload_plugins):
    one = tasks_of(cfg_with(task={"cond": ["text"], "target": "image"}, data={"name": "images"}))
    assert [(t.name, t.cond, t.target) for t in one] == [("text_to_image", ("text",), "image")]
    mix = tasks_of(cfg_with(tasks={"c2i": {"cond": ["text"], "target": "image", "weight": 3, "data": "images"},
                                   "i2c": {"cond": ["image"], "target": "text", "data_config": {"scenes": 10}},
                                   "t2s": {"cond": ["text"], "target": "speech", "data": "speech", "data_config": {"sources": ["flite"]}}},
                            data={"name": "images", "config": {"sources": ["emoji"]}}))
    assert [t.name for t in mix] == ["c2i", "i2c", "t2s"]
    assert mix[0].data.name == "images" and mix[0].data.config.sources == ["emoji"]  # the data section's own options
    assert mix[1].data.config.sources == ["emoji"] and mix[1].data.config.scenes == 10  # the task's options on top of them
    assert mix[2].data.name == "speech" and mix[2].data.config.sources == ["flite"] and mix[2].weight == 1.0
    assert type(mix[2].data.config).__name__ == "SpeechOptions"  # the data set's own config dataclass
    assert mix[0].direction == "text -> image"


@pytest.mark.parametrize("tasks, data, error, pattern", [
    (None, {"name": "imges"}, UnknownNameError, r"^data\.name: unknown data set 'imges'\. Did you mean 'images'\? Installed data sets: "),
    ({"t2s": {"cond": ["text"], "target": "speech", "data": "speach"}}, {"name": "images"}, UnknownNameError,
     r"^tasks\.t2s\.data: unknown data set 'speach'\. Did you mean 'speech'\?"),
    (None, {"name": "images", "config": {"scene": 3}}, ConfigError, r"unknown config key 'data\.config\.scene'\. Did you mean 'scenes'\?"),
    ({"t2s": {"cond": ["text"], "target": "speech", "data": "speech", "data_config": {"clips": "many"}}}, {"name": "images"},
     ConfigError, r"tasks\.t2s\.data_config\.clips: expected int, got str 'many'"),
    ({"i2c": {"cond": ["image"], "target": "text", "data_config": {"image_sise": 64}}}, {"name": "images"}, ConfigError,
     r"unknown config key 'tasks\.i2c\.data_config\.image_sise'\. Did you mean 'image_size'\?"),
    (None, {}, ConfigError, r"data\.name is empty"),
])
def test_data_set_names_and_options_are_checked_against_the_registry(autoload_plugins, tasks, data, error, pattern):
    task = None if tasks else {"cond": ["text"], "target": "image"}
    cfg = cfg_with(tasks=tasks, task=task, data=data)
    with pytest.raises(error, match=pattern) as info:
        tasks_of(cfg)
    assert "\n" not in str(info.value)  # one line


@pytest.mark.parametrize("tasks, task, pattern", [
    ({"a": {"target": "image"}}, {"target": "image"}, "either `task`"),
    ({"a": {"cond": ["caption"], "target": "image"}}, None, r"tasks\.a names role 'caption'"),
    ({"a": {"cond": ["text"]}}, None, r"tasks\.a\.target is empty"),
    ({"a": {"cond": ["image"], "target": "image"}}, None, "both a condition and the target"),
    ({"a": {"target": "image", "weight": 0}}, None, r"tasks\.a\.weight: must be > 0, got 0"),
])
def test_bad_mixtures_are_named(tasks, task, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cfg_with(tasks=tasks, task=task)


def test_find_task_by_conditions_and_target():
    tasks = [Task("c2i", ("text",), "image"), Task("i2c", ("image",), "text"), Task("t2s", ("text",), "speech"), Task("text", (), "text")]
    assert find_task(tasks, ["image"], None).name == "i2c"
    assert find_task(tasks, ["text"], "speech").name == "t2s"
    assert find_task(tasks, [], "text").name == "text"
    with pytest.raises(ConfigError, match="several tasks fit"):
        find_task(tasks, ["text"], None)
    with pytest.raises(ConfigError, match="has no task speech -> image"):
        find_task(tasks, ["speech"], "image")


def test_examples_put_conditions_first_as_clean_context():
    t = Task("c2i", ("text",), "image")
    ex = t.examples({"text": [torch.zeros(3, 4), torch.ones(2, 4)], "image": [torch.ones(5, 4), torch.zeros(5, 4)]})
    assert [[(s.codec, s.role, s.latents.shape[0]) for s in e] for e in ex] == [[("text", "cond", 3), ("image", "target", 5)],
                                                                             [("text", "cond", 2), ("image", "target", 5)]]
    with pytest.raises(ValueError, match="different number of items"):
        t.examples({"text": [torch.zeros(3, 4)], "image": [torch.ones(5, 4), torch.zeros(5, 4)]})


@pytest.mark.slow
def test_mixture_batches_hold_each_tasks_share_from_its_own_data(autoload_plugins):
    weights = ["--tasks.caption_to_image.weight=3", "--tasks.image_to_caption.weight=3",
               "--tasks.text_to_speech.weight=2", "--tasks.speech_to_text.weight=2"]  # pinned: the demo's own may move
    cfg = load_config("configs/demo.yaml", ["--data.config.scenes=40", *weights])
    mix = TaskMixture(tasks_of(cfg), cfg.seed)
    assert len(mix.sources) == 3  # images, speech (all voices), speech (flite only)
    parts = mix.batch(0, 20)
    assert [(t.name, len(next(iter(raw.values())))) for t, raw in parts] == [
        ("caption_to_image", 6), ("image_to_caption", 6), ("text_to_speech", 4), ("speech_to_text", 4)]
    c2i, i2c = parts[0][1], parts[1][1]
    assert set(c2i) == {"image", "caption"} and isinstance(c2i["caption"][0], str) and c2i["image"][0].shape == (32, 32, 3)
    assert c2i["caption"] != i2c["caption"]  # two tasks on one data set walk it in their own orders
    again = TaskMixture(tasks_of(cfg), cfg.seed).batch(0, 20)
    assert [raw["caption" if "caption" in raw else "text"] for _, raw in again] == [raw["caption" if "caption" in raw else "text"] for _, raw in parts]
    flite = mix.source(parts[2][0])
    assert flite.sources == ["flite"]
    text_parts = mix.role_batch("text", 0, 20)  # the text codec's own data: every task that uses the role
    assert [t.name for t, _ in text_parts] == ["caption_to_image", "image_to_caption", "text_to_speech", "speech_to_text"]
    with pytest.raises(ConfigError, match="no task uses role 'nothing'"):
        mix.role_batch("nothing", 0, 4)


def test_plugin_codecs_join_a_mixture_by_config_alone(tmp_path, autoload_plugins):
    """The toy plugin's codecs, both directions in one prior: nothing but config names them."""
    import json

    from latentbridge.pipeline import Pipeline
    from latentbridge.train.experiment import train

    cfg = load_config("configs/toy_label_to_vector.yaml", [
        "--task.cond=[]", "--task.target=", "--train.steps=4", "--train.batch_size=32", "--train.log_every=1",
        "--train.codec_steps=3", "--train.checkpoint_every=0", "--tasks.to_point.cond=[label]", "--tasks.to_point.target=point",
        "--tasks.to_point.weight=3", "--tasks.to_label.cond=[point]", "--tasks.to_label.target=label"])
    assert [t.name for t in tasks_of(cfg)] == ["to_point", "to_label"]
    codecs, prior, layout = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    prior_rows = [r for r in rows if r["stage"] == "prior"]
    assert len(prior_rows) == 4 and {"loss/point", "loss/label"} <= set(prior_rows[0])
    pipe = Pipeline(cfg, codecs, prior, layout)
    points = pipe.generate({"label": [0, 3, 5]}, target="point", seed=0)
    labels = pipe.generate({"point": points}, target="label", seed=0)
    assert len(points) == 3 and len(labels) == 3
