"""The plugin contract: pluggy markers and the hook specifications latentbridge calls.

A plugin is any module or object with functions marked `@hookimpl` whose names match a spec below; it
implements any subset of them. Third-party plugins are found through the entry-point group
`latentbridge.codecs` (one group for every hook); latentbridge's own built-ins register through the
very same hooks. Each hook fills one strict registry (latentbridge.plugins): a name registered twice
is an error naming both distributions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from latentbridge.codecs.base import Codec
    from latentbridge.data.base import Dataset
    from latentbridge.evaluator import Evaluator
    from latentbridge.prior.backbone import PriorBackbone

PROJECT = "latentbridge"
ENTRY_POINT_GROUP = "latentbridge.codecs"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def latentbridge_register_codecs(register: Callable[[type[Codec]], None]) -> None:
    """Register codec classes by calling `register(CodecSubclass)` once for each.

    The class must subclass `latentbridge.codecs.Codec` and define `name`, `modality` and
    `config_class`. Names are global: registering a name another plugin registered is an error.
    """


@hookspec
def latentbridge_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register data-set classes by calling `register(DatasetSubclass)` once for each.

    The class must subclass `latentbridge.data.Dataset` and define `name`, `config_class` (a dataclass
    with a docstring per field: its options under `data.config`) and `fields` (modality -> the item
    field holding it, e.g. {"image": "image", "text": "caption"}). Experiments name it in `data.name`
    or `tasks.<name>.data`.
    """


@hookspec
def latentbridge_register_evaluators(register: Callable[[type[Evaluator]], None]) -> None:
    """Register evaluator classes by calling `register(EvaluatorSubclass)` once for each.

    The class must subclass `latentbridge.evaluate.Evaluator` and define `name` and which tasks it
    scores (`cond` / `target` modalities, or `datasets`). `latentbridge eval` runs every evaluator
    that applies to a task, across the guidance scales and with the shuffled-condition control.
    """


@hookspec
def latentbridge_register_priors(register: Callable[[type[PriorBackbone]], None]) -> None:
    """Register prior backbone classes by calling `register(BackboneSubclass)` once for each.

    The class must subclass `latentbridge.prior.PriorBackbone` and define `name` and `config_class` (a dataclass:
    its options under `prior.config`). It keeps the prior's contract: per-token latents, times and metadata in, one
    velocity per token out, a KV cache for generation, no knowledge of flows or codecs. Experiments pick it with
    `prior.backbone`; latentbridge's own DiT registers through this hook as `dit`.
    """
