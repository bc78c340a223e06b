"""The experiment schema: one typed config per run (codecs by role, tasks, data, prior, training, sampling, eval).

Each field carries a one-line docstring (`latentbridge config show --docs` prints them). Files are read by the
general loader in latentbridge.typedconfig; `load_config` applies it to this schema. Names of codecs, data sets
and evaluators are plain strings here and are checked against the plugin registries when a run is built
(latentbridge.build), so this module knows no plugin.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from latentbridge.typedconfig import Check, Count, NonNegativeFloat, PositiveFloat, PositiveInt, Probability, load_typed


# --------------------------------------------------------------------------------------------------
# Schema of an experiment
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TimeSamplerConfig:
    """How training draws the flow time t of a codec's blocks (one t per block)."""

    kind: Literal["logit_normal", "uniform"] = "logit_normal"
    """`logit_normal`: t = sigmoid(loc + scale * N(0, 1)); `uniform`: t ~ U(0, 1)."""
    loc: float | None = None
    """Logit-normal location; null picks it from the latent width (Cola DLM: ~1.0 at 16, ~2.3 at 128)."""
    scale: PositiveFloat = 1.0
    """Logit-normal scale."""


@dataclasses.dataclass
class CodecSlot:
    """One codec used by an experiment, under a role name such as `text` or `image`."""

    codec: str
    """Registered codec name; `latentbridge codecs list` shows the installed ones."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of the codec's own config dataclass to change from their defaults."""
    pretrained: str | None = None
    """Directory written by the codec's save_pretrained to load config and weights from."""
    time_sampler: TimeSamplerConfig = dataclasses.field(default_factory=TimeSamplerConfig)
    """Flow-time sampler of this role's blocks during prior training."""
    loss_weight: PositiveFloat = 1.0
    """Weight of this role's tokens in the prior's flow-matching loss (their squared errors count this many times)."""
    latents: Literal["mean", "sample"] = "sample"
    """Feed the prior the posterior mean or a posterior sample during training."""
    steps: Count | None = None
    """Codec pre-stage (a codec without `pretrained` trains on its own loss before the prior): steps (null: train.codec_steps)."""
    lr: NonNegativeFloat | None = None
    """Codec pre-stage learning rate (null: train.codec_lr)."""
    batch_size: PositiveInt | None = None
    """Codec pre-stage batch size (null: train.batch_size)."""


@dataclasses.dataclass
class PriorSection:
    """The prior: a backbone (latentbridge's block-causal DiT by default: a preset plus optional overrides)."""

    backbone: str = "dit"
    """Registered prior backbone (`latentbridge priors list`): `dit` is latentbridge's own; plugins add others (e.g.
    `cola-dit` from latentbridge-cola). The fields below (preset .. block_positions) configure `dit` only."""
    config: dict[str, Any] | None = None
    """Options of a plugin backbone (its own config dataclass, e.g. the path of released weights); null: its defaults.
    Not used by `dit`, whose options are the fields below."""

    preset: Literal["tiny", "small", "base", "large"] = "small"
    """Size preset: tiny (tests), small (CPU), base/large (GPU)."""
    width: PositiveInt | None = None
    """Model width; null keeps the preset's."""
    depth: PositiveInt | None = None
    """Number of DiT blocks; null keeps the preset's."""
    heads: PositiveInt | None = None
    """Attention heads; null keeps the preset's."""
    mlp_ratio: PositiveFloat | None = None
    """MLP width multiple; null keeps 4."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel; `flex` applies on CUDA only."""
    block_positions: bool | list[str] = False
    """Also give each token a learned embedding of its place within its block (for an image of one block: which
    patch), beside RoPE's position in the sequence: true for every codec's tokens, a list of codec roles (e.g.
    [image]) for theirs only; false: RoPE alone."""
    step_conditioning: bool = False
    """Condition the network on a second time, the span of the step its velocity is for (0: the instantaneous
    velocity), so it can jump: needed by train.objective=shortcut and sampling.solver=shortcut."""


@dataclasses.dataclass
class TaskConfig:
    """Which roles are given (clean context) and which role the prior generates."""

    cond: list[str] = dataclasses.field(default_factory=list)
    """Roles given as clean `cond` segments, in sequence order."""
    target: str = ""
    """Role generated as the `target` segment."""
    weight: PositiveFloat = 1.0
    """In a mixture (`tasks`): this task's share of each training batch, relative to the other tasks' weights."""
    data: str | None = None
    """In a mixture: the registered data set its examples come from (null: `data.name`)."""
    data_config: dict[str, Any] | None = None
    """In a mixture: options of that data set (its own config dataclass). On `data.name` they change `data.config`;
    on another data set they are its whole options (null: its defaults)."""
    document: list[str] = dataclasses.field(default_factory=list)
    """A document task: the codec roles its documents' items go to (one role per modality, e.g. [text, image]); cond
    and target stay empty. The data set yields documents -- ordered items of any of those modalities -- and every
    item is a target, each block conditioned on everything before it; the prior's switch head learns which role
    comes next, or the end (docs/documents.md)."""


@dataclasses.dataclass
class SamplingConfig:
    """How generation integrates each block."""

    steps: PositiveInt = 16
    """ODE steps per block (Cola DLM: 8-10 already saturate)."""
    solver: Literal["euler", "heun", "midpoint", "shortcut"] = "euler"
    """Fixed-grid ODE solver. `shortcut`: each step is one jump with the velocity averaged over the step, for a prior
    trained with train.objective=shortcut (then 1, 2 or 4 steps per block do what 16 Euler steps did)."""
    shift: PositiveFloat = 1.0
    """Time shift of the grid (> 1 spends more steps near noise)."""
    guidance: Annotated[list[float], Check(min_len=1)] = dataclasses.field(default_factory=lambda: [1.0])
    """Classifier-free guidance when a caller names none (Pipeline.generate, latentbridge sample): one scale for all
    conditions, or one per cond segment. `latentbridge eval` sweeps eval.guidance_scales instead."""
    guidance_interval: tuple[Probability, Probability] | None = None
    """Apply guidance only for t in [lo, hi]; null applies it everywhere."""
    unconditional: Literal["auto", "conditions", "block"] = "auto"
    """What guidance compares against. conditions: the example without its cond segments (what train.cond_dropout
    trains); block: the block being generated alone, all context removed (Cola DLM's text guidance; a first block
    with no context gets no guidance); auto: conditions for tasks with conditions, block for tasks without (text
    continuation, where dropping conditions would leave guidance with nothing to do)."""
    compile: bool = False
    """Generate with the prior under torch.compile (the KV-cached block step and the prefill; inductor on CPU and
    GPU). The first blocks pay for compiling; worth it for long generations on a GPU."""


@dataclasses.dataclass
class TrainConfig:
    """Training: which stage, optimisation, checkpoints."""

    stage: Literal["codec", "prior", "joint"] = "prior"
    """codec: one codec on its own loss; prior: codecs frozen; joint: a codec trains with the prior."""
    codec_role: str | None = None
    """Role whose codec trains in the codec and joint stages (default: the task's target)."""
    steps: PositiveInt = 2000
    """Optimizer steps of the stage."""
    batch_size: PositiveInt = 256
    """Examples per micro-step, over all processes (must divide by the process count)."""
    grad_accum: PositiveInt = 1
    """Micro-steps accumulated per optimizer step."""
    row_length: PositiveInt | None = 256
    """Tokens per packed row (several examples share a row); null packs one example per row."""
    lr: NonNegativeFloat = 1e-3
    """Peak learning rate."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """`adamw`, or `muon`: torch.optim.Muon on the prior's transformer-block weight matrices and AdamW on the rest, one
    lr for both (Muon's matched to AdamW's update size; latentbridge.train.optim). Codec pre-stages always use AdamW."""
    muon_momentum: Annotated[float, Check(ge=0, lt=1)] = 0.95
    """Muon's momentum (with train.optimizer muon)."""
    betas: tuple[Annotated[float, Check(ge=0, lt=1)], Annotated[float, Check(ge=0, lt=1)]] = (0.9, 0.95)
    """AdamW betas (Cola DLM: 0.9, 0.95)."""
    weight_decay: NonNegativeFloat = 0.01
    """Weight decay."""
    warmup_steps: Count = 100
    """Linear warm-up steps before the schedule."""
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """After warm-up: `cosine` decay to zero, `wsd` (constant, then a linear cool-down to zero over the last
    train.cooldown share of the steps) or `constant`."""
    cooldown: Probability = 0.2
    """Share of the steps the wsd schedule cools down over."""
    grad_clip: PositiveFloat = 1.0
    """Gradient norm clip."""
    cond_dropout: Annotated[float, Check(ge=0, lt=1)] = 0.1
    """Probability of dropping the cond segments of an example (trains the unconditional pass for guidance)."""
    cond_dropout_mode: Literal["together", "each"] = "together"
    """together: an example's cond segments are dropped all at once (the variant one guidance scale uses); each:
    every cond segment on its own draw, which also trains the one-condition-dropped variants that guidance with one
    scale per condition (sampling.guidance as a list) compares against. Use `each` for per-condition guidance."""
    codec_steps: Count = 300
    """Steps of the codec stage (each trainable codec on its own loss) before the prior stage."""
    codec_lr: NonNegativeFloat = 1e-2
    """Learning rate of the codec stage."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """bf16 autocast; under train.parallel=fsdp also FSDP's policy: bf16 parameters in compute, gradients reduced in
    fp32. `auto`: bf16 where it pays -- GPUs with bf16, and CPUs with AVX512-BF16 or AMX whose bf16 products time
    clearly faster than fp32 (measured once per process) -- fp32 elsewhere: on an AVX2-only CPU bf16 is emulated and a
    step takes tens of times longer (an explicit bf16 there warns)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How several processes (torchrun / accelerate launch) share the work. ddp: every process holds the whole
    model and optimizer; fsdp: FSDP2 shards the prior (each block) and a trained codec over the processes, and
    checkpoints are sharded (torch.distributed.checkpoint) with a full-weights export beside them. Both give the
    same losses as one process; a run may resume with another process count."""
    compile: bool = False
    """Compile the prior's training step with torch.compile (inductor). Costs a minute of compiling at the start."""
    switch_weight: NonNegativeFloat = 1.0
    """Document tasks: weight of the switch head's cross-entropy (which codec follows each item, or the end) beside
    the flow loss."""
    objective: Literal["flow", "shortcut", "distill"] = "flow"
    """flow: flow matching (the instantaneous velocity). shortcut: flow matching plus self-consistency of jumps (a
    shortcut model: the velocity averaged over a span d, trained so one jump of 2d equals two jumps of d), which
    lets a block be generated in 1-4 steps (sampling.solver=shortcut). Needs prior.step_conditioning. distill: the
    same jumps, learnt from a trained flow prior (train.teacher) instead: every target block regresses, at a jump
    2d, what the frozen teacher's Euler steps reach over that span; the student starts from the teacher's weights
    and works in its codecs' latents."""
    shortcut_fraction: Probability = 0.25
    """Objective shortcut: share of target blocks that train self-consistency of jumps instead of flow matching."""
    shortcut_finest: Annotated[int, Check(ge=2)] = 64
    """Objective shortcut: the finest step trained is 1/shortcut_finest (a power of two); jumps of 2/finest .. 1."""
    teacher: str | None = None
    """Objective distill: the run directory of the trained flow prior to distil (its EMA prior and its codecs)."""
    teacher_substeps: PositiveInt = 8
    """Objective distill: Euler steps of the teacher over each jump the student learns."""
    teacher_guidance: NonNegativeFloat = 1.0
    """Objective distill: the classifier-free guidance scale of the teacher's velocity (1: none). Above 1 guidance is
    folded into the student: it learns the guided teacher's jumps and samples them at guidance 1, with no
    unconditional pass (sample it at sampling.guidance 1; eval.guidance_scales [1.0])."""
    log_every: PositiveInt = 50
    """Steps between metrics.jsonl lines."""
    checkpoint_every: Count = 500
    """Steps between checkpoints (and one at the end); 0 writes none."""
    keep_checkpoints: Count = 3
    """Newest checkpoints kept; older ones are deleted once a new one is complete (0 keeps all)."""
    cache_latents: bool = False
    """Prior/joint stage: encode the items of every task's data set (of fixed items) once with the frozen codecs and keep
    their posteriors on disk as safetensors shards, instead of encoding each step's items (one task or a mixture; not
    document tasks, not codecs that augment)."""
    latent_cache_dir: str | None = None
    """Where the latent cache lives (default <run dir>/latent_cache); share it between runs to reuse it."""
    ema_decay: Annotated[float, Check(ge=0, lt=1)] = 0.999
    """Decay of the EMA of the trained weights; 0 turns EMA off."""
    ema_warmup: bool = True
    """Warm the EMA up: update n uses decay min(ema_decay, (1 + n) / (10 + n)), so the first steps' weights fade
    out instead of keeping a share decay^steps of the EMA (9% after 1,200 steps at 0.998)."""
    joint_kl_weight: NonNegativeFloat = 1.0
    """Joint stage: weight of KL(q(z|x) || q_stage1(z|x)), which keeps the codec near its stage-1 encoder."""
    joint_codec_weight: NonNegativeFloat = 1.0
    """Joint stage: weight of the codec's own loss."""


@dataclasses.dataclass
class DataConfig:
    """The data set: a name registered by a plugin (`latentbridge datasets list`) and that data set's own options."""

    name: str = ""
    """Registered data set name, e.g. `images` (latentbridge-demo) or `gaussian_ring` (latentbridge-toy)."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of the data set's own config dataclass to change from their defaults (`latentbridge datasets show NAME`)."""


@dataclasses.dataclass
class EvalConfig:
    """Evaluation after training."""

    samples: PositiveInt = 2000
    """Generated samples scored (per guidance scale)."""
    guidance_scales: Annotated[list[float], Check(min_len=1)] = dataclasses.field(default_factory=lambda: [1.0, 2.0, 4.0])
    """Guidance scales swept to show what guidance does to the conditional score."""
    evaluators: list[str] | None = None
    """Evaluators to run, by registered name (`latentbridge evaluators list`); null: every installed one that applies."""
    options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Options of evaluators by name (each evaluator's own config dataclass), e.g. {prior-fit: {examples: 128}}."""


@dataclasses.dataclass
class ExperimentConfig:
    """A whole experiment: codecs, the task, the prior, its training, sampling and evaluation."""

    name: str
    """Experiment name, written into every run directory and checkpoint."""
    seed: int = 0
    """Seed of every random generator of the run."""
    codecs: dict[str, CodecSlot] = dataclasses.field(default_factory=dict)
    """Codecs by role name (e.g. `text`, `image`); each role is one segment type of the prior."""
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    """Which roles condition and which is generated (one task; for several, use `tasks`)."""
    tasks: dict[str, TaskConfig] = dataclasses.field(default_factory=dict)
    """A mixture of tasks by name (caption_to_image, image_to_caption, ...), each with its own layout, data
    and weight; when set, `task` stays empty. See latentbridge.tasks."""
    prior: PriorSection = dataclasses.field(default_factory=PriorSection)
    """The block-causal DiT."""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """Generation settings."""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """Training settings."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Data settings."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Evaluation settings."""

    def __post_init__(self) -> None:
        roles = set(self.codecs)
        if self.tasks and (self.task.target or self.task.cond or self.task.document):
            raise ValueError("set either `task` (one task) or `tasks` (a mixture), not both; move the single task into `tasks`")
        named = [("task", self.task), *((f"tasks.{n}", t) for n, t in self.tasks.items())]
        for where, task in named:
            for role in [*task.cond, task.target, *task.document]:
                if role and role not in roles:
                    raise ValueError(f"{where} names role {role!r}, which is not under codecs (roles: {', '.join(sorted(roles)) or 'none'})")
            if task.document:
                if task.cond or task.target:
                    raise ValueError(f"{where}: a document task (document: {task.document}) generates every item of its "
                                     "documents; leave its cond and target empty")
                twice = sorted({r for r in task.document if task.document.count(r) > 1})
                if twice:
                    raise ValueError(f"{where}.document names {', '.join(map(repr, twice))} more than once; name each role once")
                continue
            # the same role rules under `task:` and `tasks:` (a mixture's task also needs its target named)
            if where != "task" and not task.target:
                raise ValueError(f"{where}.target is empty: name the role the task generates")
            if task.target and task.target in task.cond:
                raise ValueError(f"{where}: role {task.target!r} is both a condition and the target; a role is one or the "
                                 f"other (remove it from {where}.cond)")
            twice = sorted({r for r in task.cond if task.cond.count(r) > 1})
            if twice:
                raise ValueError(f"{where}.cond names {', '.join(map(repr, twice))} more than once; name each role once")
        if self.sampling.guidance_interval and self.sampling.guidance_interval[0] > self.sampling.guidance_interval[1]:
            lo, hi = self.sampling.guidance_interval
            raise ValueError(f"sampling.guidance_interval [{lo}, {hi}] is empty: write it as [low, high] with low <= high")
        if self.train.codec_role and self.train.codec_role not in roles:
            raise ValueError(f"train.codec_role names role {self.train.codec_role!r}, which is not under codecs "
                             f"(roles: {', '.join(sorted(roles)) or 'none'})")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an experiment YAML file, applying `--dotted.key=value` overrides first."""
    return load_typed(path, ExperimentConfig, overrides)
