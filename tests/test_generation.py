"""Generation semantics: guidance for continuation, samples independent of their batch, repaint, the cache."""

from __future__ import annotations

import pytest
import torch

from latentbridge.generation import _guidance_variants, generate_latents
from latentbridge.prior import BlockCausalDiT, prior_config
from latentbridge.prior.cache import KVCache
from latentbridge.sequence import Segment, SequenceLayout, Stream

LAYOUT = SequenceLayout({"text": Stream(dim=4, block_size=3), "image": Stream(dim=6, block_size=4), "label": Stream(dim=2, block_size=1)})


def make_prior(dtype=torch.float64, seed=0) -> BlockCausalDiT:
    torch.manual_seed(seed)
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims)).to(dtype)
    with torch.no_grad():  # leave zero-init so outputs depend on every path
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return prior.eval()


def text(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def continuation_prompts() -> list[list[Segment]]:
    """Text prompts (no conditions) of 7, 2 and 4 latents: prefix blocks plus a partial block, or a partial block only."""
    return [[Segment("text", text(n, i), "target")] for i, n in enumerate((7, 2, 4))]


def test_guidance_changes_a_text_continuation_under_cola_dlm_unconditional():
    prior = make_prior()
    prompts = continuation_prompts()
    kw = dict(target="text", num_tokens=6, steps=3, seed=0)
    g1 = generate_latents(prior, LAYOUT, prompts, guidance=1.0, **kw)
    for mode in ("block", "auto"):
        g3 = generate_latents(prior, LAYOUT, prompts, guidance=3.0, unconditional=mode, **kw)
        assert min(float((a - b).abs().max()) for a, b in zip(g1, g3)) > 1e-3, mode  # every sample has context at some block
    # dropping conditions leaves a prompt without conditions unchanged: guidance does nothing (the old behaviour)
    same = generate_latents(prior, LAYOUT, prompts, guidance=3.0, unconditional="conditions", **kw)
    assert all(torch.equal(a, b) for a, b in zip(g1, same))


def test_block_alone_rows_see_no_context_and_cost_nothing_when_guidance_is_off():
    prompts = [[Segment("label", torch.zeros(1, 2), "cond"), Segment("text", text(5, 0), "target")], [Segment("text", text(2, 1), "target")]]
    rows, groups, alone = _guidance_variants(prompts, [3.0], "auto")
    assert [s.role for s in rows[2]] == ["target"] and rows[2][0] is prompts[0][1] and not alone[2]  # the condition dropped
    assert rows[3] == [] and alone[3]  # without conditions: the block alone
    assert groups == [[2, 3]]
    rows, groups, alone = _guidance_variants(prompts[1:], [3.0], "conditions")
    assert len(rows) == 1 and groups == [[]]  # nothing to drop: no extra rows run
    rows, groups, alone = _guidance_variants(prompts[1:], [2.0, 3.0], "block")
    assert len(rows) == 2 and groups == [[1], [1]]  # one block-alone row serves every scale


def test_first_block_without_context_gets_no_guidance():
    """Cola DLM switches guidance off for a first block with no prefix: here the two rows agree there."""
    prior = make_prior()
    prompts = [[Segment("text", text(2, 5), "target")]]  # shorter than a block: no context before the first block
    kw = dict(target="text", num_tokens=1, steps=3, seed=0, unconditional="block")  # the first block only
    g1 = generate_latents(prior, LAYOUT, prompts, guidance=1.0, **kw)
    g5 = generate_latents(prior, LAYOUT, prompts, guidance=5.0, **kw)
    assert torch.allclose(g1[0], g5[0], atol=1e-10)


def test_block_alone_equals_generating_the_block_with_no_prompt():
    """The unconditional row of a later block is exactly the prior's velocity for that block on its own."""
    prior = make_prior()
    given = text(3, 7)
    alone = generate_latents(prior, LAYOUT, [[]], "text", 3, steps=2, seed=4)
    # with guidance 0 the guided velocity is the unconditional one: v_full + (0 - 1)(v_full - v_alone) = v_alone
    ctx = generate_latents(prior, LAYOUT, [[Segment("text", given, "target")]], "text", 3, steps=2, seed=4, guidance=0.0,
                           unconditional="block")
    assert torch.allclose(alone[0], ctx[0], atol=1e-8)


@pytest.mark.parametrize("whole_blocks", [False, True])
def test_a_sample_does_not_depend_on_its_batch(whole_blocks):
    prior = make_prior()
    prompts = continuation_prompts()  # different prompt lengths: blocks of different lengths at the end
    kw = dict(target="text", num_tokens=5, steps=2, guidance=2.0, seed=3, whole_blocks=whole_blocks)
    together = generate_latents(prior, LAYOUT, prompts, **kw)
    split = generate_latents(prior, LAYOUT, prompts[:2], **kw) + generate_latents(prior, LAYOUT, prompts[2:], first_index=2, **kw)
    assert [x.shape for x in together] == [x.shape for x in split] == [(5, 4)] * 3
    assert max(float((a - b).abs().max()) for a, b in zip(together, split)) < 1e-10
    alone = generate_latents(prior, LAYOUT, prompts[1:2], first_index=1, **kw)  # the second sample by itself
    assert float((alone[0] - together[1]).abs().max()) < 1e-10


def test_repaint_keeps_the_given_latents_of_the_partial_block_exactly():
    prior = make_prior()
    prompts = continuation_prompts()
    blocks = []
    generate_latents(prior, LAYOUT, prompts, "text", 4, steps=3, guidance=2.0, on_block=lambda i, b: blocks.append(b.clone()))
    first = blocks[0]  # [S, K, D]: the block each prompt's partial block was completed in
    for s, p in enumerate(prompts):
        given = p[0].latents
        pins = given.shape[0] % 3
        assert torch.equal(first[s, :pins], given[given.shape[0] - pins :])  # bit for bit, not approximately
        if pins:
            assert not torch.allclose(first[s, pins:], torch.zeros_like(first[s, pins:]))


def test_cache_buffers_grow_past_their_first_allocation_and_stay_exact(monkeypatch):
    prior = make_prior()
    capacities = []
    extend = KVCache.extend

    def watch(self, layer, k, v):
        out = extend(self, layer, k, v)
        capacities.append(self.keys[layer].shape[2])
        return out

    monkeypatch.setattr(KVCache, "extend", watch)
    prompts = [[Segment("label", torch.ones(1, 2, dtype=torch.float64), "cond")], [Segment("text", text(40, 9), "target")]]
    a = generate_latents(prior, LAYOUT, prompts, "text", 45, steps=1, guidance=2.0, use_cache=True, seed=0)
    monkeypatch.setattr(KVCache, "extend", extend)
    b = generate_latents(prior, LAYOUT, prompts, "text", 45, steps=1, guidance=2.0, use_cache=False, seed=0)
    assert capacities[0] == 64 and max(capacities) >= 128  # the first buffer (64) was outgrown at least once
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) < 1e-8


def test_block_alone_rows_see_each_block_at_positions_from_zero():
    """Cola DLM's unconditional pass attends to the current block alone with positions 0.. (its K/V hold that block only),
    at every block, not at the block's place in the sequence."""
    prior = make_prior()
    seen = []
    forward = prior.forward

    def spy(x, t, codec, meta, cache=None, commit=False):
        if bool(meta.noisy.any()):
            seen.append(meta.position.clone())
        return forward(x, t, codec, meta, cache=cache, commit=commit)

    prior.forward = spy
    generate_latents(prior, LAYOUT, [[Segment("text", text(4, 3), "target")]], "text", 5, steps=1, guidance=3.0, unconditional="block",
                     whole_blocks=True)
    assert len(seen) == 2  # two blocks, one step each: rows [the prompt's, the block alone]
    assert seen[0].tolist() == [[3, 4, 5], [0, 1, 2]]  # prompt row: after its 3 whole latents (the 4th is pinned here)
    assert seen[1].tolist() == [[6, 7, 8], [0, 1, 2]]  # the block-alone row starts at 0 again


def test_given_noise_replaces_the_samples_own_generators():
    from latentbridge.pipeline import sample_generator

    prior = make_prior()
    prompts = continuation_prompts()
    kw = dict(target="text", num_tokens=5, steps=2, seed=3, guidance=2.0, whole_blocks=True)
    own = generate_latents(prior, LAYOUT, prompts, **kw)
    gens = [sample_generator(3, i) for i in range(3)]
    blocks = [torch.stack([torch.randn(3, 4, generator=g) for g in gens]) for _ in range(3)]  # drawn in fp32
    given = generate_latents(prior, LAYOUT, prompts, noise=lambda i: blocks[i], **kw)
    assert all(torch.equal(a, b) for a, b in zip(own, given))
    other = generate_latents(prior, LAYOUT, prompts, noise=lambda i: -blocks[i], **kw)
    assert all(not torch.allclose(a, b) for a, b in zip(own, other))


def _toy_pipeline():
    from latentbridge.build import build_codecs, build_prior, layout_of
    from latentbridge.config import ExperimentConfig
    from latentbridge.pipeline import Pipeline
    from latentbridge.plugins import registries
    from latentbridge.typedconfig import from_dict

    cfg = from_dict(ExperimentConfig, {"name": "x", "codecs": {"c": {"codec": "identity", "config": {"dim": 4, "block_size": 1, "tokens_per_item": 1}},
                                                               "v": {"codec": "identity", "config": {"dim": 6, "tokens_per_item": 4}}},
                                       "task": {"cond": ["c"], "target": "v"}, "prior": {"preset": "tiny"}})
    reg = registries()
    codecs = {r: c.freeze() for r, c in build_codecs(cfg, reg).items()}
    layout = layout_of(cfg, codecs)
    torch.manual_seed(0)
    prior = build_prior(cfg, layout, reg)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Pipeline(cfg, codecs, prior.eval(), layout, reg)


def test_pipeline_to_moves_the_prior_and_every_codec():
    pipe = _toy_pipeline().to("meta", torch.bfloat16)
    prior = [t for t in [*pipe.prior.parameters(), *pipe.prior.buffers()] if t.is_floating_point()]
    assert all(t.device.type == "meta" and t.dtype == torch.bfloat16 for t in prior)
    codec = [t for c in pipe.codecs.values() for t in [*c.parameters(), *c.buffers()]]
    assert codec and all(t.device.type == "meta" and t.dtype == torch.float32 for t in codec)  # codecs keep their dtype


def test_a_prior_in_another_dtype_than_its_codecs_generates_the_same_items():
    items = [torch.randn(1, 4, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    fp32 = _toy_pipeline().generate({"c": items}, target="v", steps=2)
    fp64 = _toy_pipeline().to(dtype=torch.float64).generate({"c": items}, target="v", steps=2)  # codecs stay fp32
    assert all(a.dtype == b.dtype == torch.float32 for a, b in zip(fp32, fp64))
    assert max(float((a - b).abs().max()) for a, b in zip(fp32, fp64)) < 1e-4
