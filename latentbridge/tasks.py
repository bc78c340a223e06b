"""Tasks: how a training example becomes segments, and mixtures of tasks with weights.

A task names the roles given as clean context (`cond`), the role generated (`target`) and the data set
its examples come from. The layouts latentbridge trains on are all of this one shape:

    text               []        -> text     (text continuation: the prior of text alone)
    caption -> image   [text]    -> image
    image -> caption   [image]   -> text
    text -> speech     [text]    -> speech
    speech -> text     [speech]  -> text

A mixture (`tasks:` in the config) draws each batch from several tasks in proportion to their weights
(largest-remainder shares of the batch, the same at every step), each from its own data set. Roles are
codec slots under `codecs:`, so a codec added by a plugin joins a task by config alone: name it under
`codecs:` and use its role in a task. Data sets are plugins too (`latentbridge datasets list`): a task
names one and its options, checked against the data set's config dataclass. Condition dropout for
guidance applies to every task's examples.

    tasks = tasks_of(cfg, reg)            # [Task]: the mixture, or the single `task`; data checked against reg
    mix = TaskMixture(tasks, seed, reg)   # data for each task
    raw = mix.batch(step, 256)            # [(task, {field: items})], shares by weight
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from latentbridge.config import ExperimentConfig
from latentbridge.data.base import Dataset, epoch_indices
from latentbridge.errors import ConfigError
from latentbridge.plugins import Registries, registries
from latentbridge.sequence import Example, Segment, task_examples


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A registered data set and its resolved options: what a task's examples come from."""

    name: str
    config: Any
    """The data set's config dataclass."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One layout of training examples: clean `cond` roles, then the generated `target` role."""

    name: str
    cond: tuple[str, ...]
    target: str
    weight: float = 1.0
    data: DataSpec | None = None
    document: tuple[str, ...] = ()
    """A document task: the roles its documents' items go to (cond and target empty; see latentbridge.data.document)."""

    @property
    def roles(self) -> tuple[str, ...]:
        return self.document if self.document else (*self.cond, self.target)

    @property
    def direction(self) -> str:
        if self.document:
            return f"documents of {', '.join(self.document)}"
        return f"{' + '.join(self.cond) or '(nothing)'} -> {self.target}"

    def examples(self, latents: Mapping[str, Sequence[Tensor]], documents: Sequence[Sequence[tuple[str, int]]] | None = None
                 ) -> list[Example]:
        """Example i = the cond roles' i-th latents as clean context, then the target's i-th latents. A document task:
        example i = document i's items in order, `documents[i]` = [(role, index into latents[role])], each a target
        segment and a boundary (the switch head learns what follows it)."""
        if self.document:
            if documents is None:
                raise ValueError(f"task {self.name} is a document task: pass each document's (role, index) items")
            return [[Segment(role, latents[role][j], "target", boundary=True) for role, j in doc] for doc in documents]
        n = len(latents[self.target])
        bad = [r for r in self.cond if len(latents[r]) != n]
        if bad:
            raise ValueError(f"task {self.name}: role(s) {', '.join(bad)} have a different number of items than {self.target} ({n})")
        return task_examples(self.cond, self.target, latents)


def data_of(cfg: ExperimentConfig, reg: Registries | None = None) -> DataSpec:
    """The experiment's `data` section, checked against the installed data sets."""
    reg = reg or registries()
    if not cfg.data.name:
        raise ConfigError("data.name is empty: name the data set to train on (`latentbridge datasets list` shows the installed "
                          "ones), e.g. --data.name=gaussian_ring.")
    return DataSpec(cfg.data.name, reg.datasets.config_of(cfg.data.name, cfg.data.config))


def tasks_of(cfg: ExperimentConfig, reg: Registries | None = None, need_data: bool = True) -> list[Task]:
    """The experiment's tasks: its `tasks` mixture, or the single `task` (named after its direction), each with its data
    set checked against the installed ones and its options against that data set's config dataclass. Generation from
    given items (`need_data=False`) also takes a single task without data (e.g. a released model never trained here):
    its `data` is None."""
    reg = reg or registries()
    if not cfg.tasks:
        if not cfg.task.target and not cfg.task.document:
            raise ConfigError("task.target is empty: name the role to generate (e.g. --task.target=image), or give a `tasks` mixture.")
        if cfg.task.document:
            return [Task("documents", (), "", 1.0, data_of(cfg, reg) if need_data or cfg.data.name else None,
                         tuple(cfg.task.document))]
        name = "_to_".join([*cfg.task.cond, cfg.task.target]) if cfg.task.cond else cfg.task.target
        data = data_of(cfg, reg) if need_data or cfg.data.name else None
        return [Task(name, tuple(cfg.task.cond), cfg.task.target, 1.0, data)]
    out = []
    for name, t in cfg.tasks.items():
        where = f"tasks.{name}"
        if t.data is None or t.data == cfg.data.name:
            if not cfg.data.name:
                raise ConfigError(f"{where}.data is empty and so is data.name: name the data set of this task "
                                  "(`latentbridge datasets list` shows the installed ones).")
            data_of(cfg, reg)  # data.config on its own first, so its errors name data.config
            options = {**cfg.data.config, **(t.data_config or {})}
            data = DataSpec(cfg.data.name, reg.datasets.config_of(cfg.data.name, options, where))
        else:
            data = DataSpec(t.data, reg.datasets.config_of(t.data, t.data_config or {}, where))
        out.append(Task(name, tuple(t.cond), t.target, float(t.weight), data, tuple(t.document)))
    return out


def find_task(tasks: Sequence[Task], cond: Sequence[str] | None, target: str | None) -> Task:
    """The task with these cond roles (in any order; None: any) and target (None: the only one)."""
    found = [t for t in tasks if not t.document and (target is None or t.target == target)
             and (cond is None or sorted(t.cond) == sorted(cond))]
    if len(found) == 1:
        return found[0]
    have = "; ".join(f"{t.name}: {t.direction}" for t in tasks)
    what = f"{' + '.join(cond or []) or '(nothing)'} -> {target or '?'}"
    if not found:
        raise ConfigError(f"this run has no task {what} (its tasks: {have}). Pass conditions for a task it was trained on.")
    raise ConfigError(f"several tasks fit {what} ({have}); name the target and give the conditions of one of them.")


def document_roles(task: Task, modalities: Mapping[str, str]) -> dict[str, str]:
    """A document task's modality -> role (its roles' codecs must differ in modality: an item names only its modality)."""
    out: dict[str, str] = {}
    for role in task.document:
        m = modalities[role]
        if m in out:
            raise ConfigError(f"task {task.name}: roles {out[m]!r} and {role!r} both hold {m} items, so a document's {m} item "
                              f"could go to either; a document task takes one role per modality (tasks.{task.name}.document).")
        out[m] = role
    return out


def role_items(task: Task, source: Dataset, raw: Mapping[str, list], role: str, modalities: Mapping[str, str]) -> list:
    """`role`'s items in a task's raw items by field: its modality's field, or (a document task) the items of its
    modality taken out of the documents in order. `modalities`: role -> its codec's modality."""
    if not task.document:
        return list(raw[source.field(modalities[role], role)])
    from latentbridge.data.document import flatten

    roles = document_roles(task, {r: modalities[r] for r in task.document})
    items, _ = flatten(raw[source.field("document")], roles, f"data set '{source.name}' (task {task.name})")
    return items[role]


def shares(weights: Sequence[float], size: int) -> list[int]:
    """Split `size` examples over tasks in proportion to `weights` (largest remainder; every task gets at
    least one example when size allows, so each task is seen at every step)."""
    total = sum(weights)
    exact = [size * w / total for w in weights]
    out = [math.floor(x) for x in exact]
    if size >= len(weights):
        for i, n in enumerate(out):
            if n == 0:
                out[i] = 1
    while sum(out) > size:  # the minimum of one took examples from the largest shares
        i = max(range(len(out)), key=lambda j: (out[j] - exact[j], out[j]))
        out[i] -= 1
    order = sorted(range(len(out)), key=lambda j: exact[j] - out[j], reverse=True)
    for i in order[: size - sum(out)]:
        out[i] += 1
    return out


def task_seed(seed: int, name: str) -> int:
    return seed + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16)


class TaskMixture:
    """The data of several tasks: per step, each task's share of the batch from its own data set.

    Tasks on the same data set (caption -> image and image -> caption) share one loaded source but walk
    through it in their own order (a seed per task)."""

    def __init__(self, tasks: Sequence[Task], seed: int, reg: Registries | None = None) -> None:
        if not tasks:
            raise ConfigError("a task mixture needs at least one task")
        reg = reg or registries()
        self.tasks, self.seed = list(tasks), seed
        self.sources: dict[str, Dataset] = {}
        for t in self.tasks:
            key = self.key(t)
            if key not in self.sources and t.data is not None:
                self.sources[key] = reg.datasets.create(t.data.name, t.data.config, seed)
        self._weights = [t.weight for t in self.tasks]

    @staticmethod
    def key(task: Task) -> str:
        """Which loaded data set a task reads: tasks naming the same data set with the same options share one."""
        return repr(task.data)

    def source(self, task: Task) -> Dataset:
        if task.data is None:
            raise ConfigError(f"task {task.name}: the run names no data set (data.name is empty), so there are no held-out "
                              "examples to start from; give the items to generate from (e.g. --prompt).")
        return self.sources[self.key(task)]

    def check_fields(self, modalities: Mapping[str, str]) -> None:
        """Every role of every task has a field of its codec's modality in the task's data, or a clear error."""
        for t in self.tasks:
            if t.document:
                document_roles(t, modalities)
                try:
                    self.source(t).field("document")
                except ConfigError as err:
                    raise ConfigError(f"task {t.name} ({t.direction}, data {t.data.name}) is a document task: {err}") from None
                continue
            for role in t.roles:
                try:
                    self.source(t).field(modalities[role], role)
                except ConfigError as err:
                    raise ConfigError(f"task {t.name} ({t.direction}, data {t.data.name}): {err}") from None

    def take(self, task: Task, step: int, n: int, lo: int = 0, hi: int | None = None,
             gen: torch.Generator | None = None) -> tuple[dict[str, list], Tensor | None]:
        """Items lo:hi of `task`'s n examples of step `step` (raw, by field), and their indices into a finite data set
        (None for one that draws its items: they are drawn whole from `gen`, then cut)."""
        src = self.source(task)
        if not src.finite:
            whole = src.batch(step, n, gen if gen is not None else torch.Generator().manual_seed(step))
            return {k: list(v[lo:hi]) for k, v in whole.items()}, None
        idx = epoch_indices(len(src), task_seed(self.seed, task.name), step, n)[lo:hi]
        return src.items_at(idx), idx

    def tasks_using(self, role: str) -> list[Task]:
        """The tasks whose examples hold `role` (a codec's own training data), or a clear error when none does."""
        using = [t for t in self.tasks if role in t.roles]
        if not using:
            raise ConfigError(f"no task uses role {role!r}, so there is no data to train its codec on")
        return using

    def batch(self, step: int, size: int, gen: torch.Generator | None = None) -> list[tuple[Task, dict[str, list]]]:
        """[(task, raw items by field)] for this step: each task's share of `size` examples."""
        return [(t, self.take(t, step, n, gen=gen)[0]) for t, n in zip(self.tasks, shares(self._weights, size)) if n]

    def role_batch(self, role: str, step: int, size: int, gen: torch.Generator | None = None) -> list[tuple[Task, dict[str, list]]]:
        """Items for one codec's own training: from the tasks that use `role`, by their weights."""
        using = self.tasks_using(role)
        return [(t, self.take(t, step, n, gen=gen)[0]) for t, n in zip(using, shares([t.weight for t in using], size)) if n]

    def stats_sample(self, role: str, n: int) -> list[tuple[Task, dict[str, list]]]:
        """A fixed sample of `role`'s items (latent statistics), spread over the tasks that use it."""
        using = [t for t in self.tasks if role in t.roles]
        return [(t, self.source(t).stats_sample(k)) for t, k in zip(using, shares([t.weight for t in using], n))]
