"""Sequences, the attention rule, the DiT, causality, and cached vs uncached generation."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import torch

from latentbridge.flow import LogitNormal, Uniform
from latentbridge.generation import generate_latents
from latentbridge.prior import BlockCausalDiT, TokenMeta, block_causal_mask, prior_config
from latentbridge.prior.masks import index_in_block
from latentbridge.sequence import Segment, SequenceLayout, Stream, drop_conditions, pack, unpack
from latentbridge.train.objective import draw_noise, prior_loss

LAYOUT = SequenceLayout({"text": Stream(dim=4, block_size=3), "image": Stream(dim=6, block_size=4), "label": Stream(dim=2, block_size=1)})


def random_examples(rng: random.Random, n: int, dtype=torch.float32) -> list[list[Segment]]:
    examples = []
    for _ in range(n):
        segments = []
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(LAYOUT.names)
            segments.append(Segment(name, torch.randn(rng.randint(1, 7), LAYOUT.dims[LAYOUT.ids[name]], dtype=dtype),
                                    rng.choice(["cond", "target"])))
        examples.append(segments)
    return examples


def brute_force_mask(meta: TokenMeta, row: int) -> torch.Tensor:
    """The attention rule written out token pair by token pair, straight from ARCHITECTURE.md §4."""
    sample, block, noisy = meta.sample[row].tolist(), meta.block[row].tolist(), meta.noisy[row].tolist()
    n = len(sample)
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            if sample[q] < 0:
                out[q, k] = q == k  # padding sees itself only
            elif sample[q] != sample[k]:
                out[q, k] = False
            elif not noisy[q]:
                out[q, k] = (not noisy[k]) and block[k] <= block[q]
            else:
                out[q, k] = (not noisy[k] and block[k] < block[q]) or (noisy[k] and block[k] == block[q])
    return out


@pytest.mark.parametrize("seed", range(8))
def test_mask_equals_brute_force_on_random_layouts(seed):
    rng = random.Random(seed)
    packed = pack(random_examples(rng, rng.randint(1, 6)), LAYOUT, row_length=rng.choice([None, 60]) if seed % 2 else 60)
    mask = block_causal_mask(packed.meta, packed.meta)
    for row in range(mask.shape[0]):
        assert torch.equal(mask[row], brute_force_mask(packed.meta, row))


def test_pack_layout_blocks_positions_and_copies():
    a = torch.randn(5, 4)
    ex = [Segment("label", torch.randn(1, 2), "cond"), Segment("text", a, "target")]
    p = pack([ex], LAYOUT)
    m = p.meta
    # cond label: 1 token, block 0; text: 5 tokens -> blocks 1,1,1,2,2; then the noisy copy of the text
    assert m.block[0].tolist() == [0, 1, 1, 1, 2, 2, 1, 1, 1, 2, 2]
    assert m.noisy[0].tolist() == [False] * 6 + [True] * 5
    assert m.position[0].tolist() == [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5]  # the noisy copy shares positions
    assert p.cond[0].tolist() == [True] + [False] * 10
    assert p.loss_mask[0].tolist() == [False] * 6 + [True] * 5
    assert torch.equal(p.values[0, 1:6, :4], a) and torch.equal(p.values[0, 6:, :4], a)
    assert p.channel_mask[0, 0].tolist() == [True, True, False, False, False, False]


def test_row_packing_without_padding_and_unpack_round_trip():
    rng = random.Random(0)
    examples = random_examples(rng, 12)
    p = pack(examples, LAYOUT, row_length=64)
    assert p.values.shape[0] < len(examples)  # several examples share a row
    for row in range(p.values.shape[0]):
        ids = p.meta.sample[row][p.meta.sample[row] >= 0]
        assert torch.all(ids[1:] >= ids[:-1])  # each sample contiguous, no padding between samples
    clean = unpack(p, p.values, LAYOUT, noisy=False)
    noisy = unpack(p, p.values, LAYOUT, noisy=True)
    for i, ex in enumerate(examples):
        for s, seg in enumerate(ex):
            assert torch.equal(clean[i][s], seg.latents)
            if seg.role == "target":
                assert torch.equal(noisy[i][s], seg.latents)
            else:
                assert s not in noisy[i]


def test_one_time_per_block_from_each_codec_sampler():
    rng = random.Random(1)
    examples = random_examples(rng, 6)
    samplers = {"text": Uniform(), "image": LogitNormal(2.0, 0.1), "label": Uniform()}
    noise = draw_noise(examples, LAYOUT, samplers, torch.Generator().manual_seed(0))
    for i, ex in enumerate(examples):
        nz = noise[i : i + 1]
        offset = 0
        for seg in (s for s in ex if s.role == "target"):
            n, bs = seg.latents.shape[0], LAYOUT.streams[seg.codec].block_size
            t = nz.t[offset : offset + n]
            for start in range(0, n, bs):
                assert t[start : start + bs].unique().numel() == 1  # one time per block
            if seg.codec == "image":
                assert float(t.min()) > 0.75
            dim = LAYOUT.streams[seg.codec].dim
            assert torch.all(nz.eps[offset : offset + n, dim:] == 0)  # no noise in padding channels
            offset += n
        assert offset == nz.t.shape[0] == nz.eps.shape[0]


def test_loss_of_a_split_batch_equals_the_whole():
    """Split over two "processes" of unequal token counts, the mean of their losses is the whole batch's loss."""
    prior = make_prior(torch.float64)
    examples = random_examples(random.Random(2), 8, torch.float64)
    samplers = {n: Uniform() for n in LAYOUT.names}
    noise = draw_noise(examples, LAYOUT, samplers, torch.Generator().manual_seed(0))
    whole = prior_loss(prior, LAYOUT, examples, noise=noise, row_length=64)
    rows = prior_loss(prior, LAYOUT, examples, noise=noise)  # other packing, same noise
    assert torch.allclose(whole["loss"], rows["loss"], atol=1e-12)
    parts = (slice(0, 2), slice(2, 8))
    counts = []  # each part's token counts, as the all-reduce would gather them
    for sl in parts:
        prior_loss(prior, LAYOUT, examples[sl], noise=noise[sl], mean_count=lambda c: counts.append(c) or c)
    assert counts[0][0] != counts[1][0]  # the parts hold different numbers of tokens
    mean = (counts[0] + counts[1]) / 2
    split = [prior_loss(prior, LAYOUT, examples[sl], noise=noise[sl], mean_count=lambda c: mean) for sl in parts]
    for name in whole:  # the total and every codec's loss: what DDP's mean over processes gives
        assert torch.allclose((split[0][name] + split[1][name]) / 2, whole[name], atol=1e-12), name
    naive = [prior_loss(prior, LAYOUT, examples[sl], noise=noise[sl])["loss"] for sl in parts]  # each part's own mean
    assert abs(float(((naive[0] + naive[1]) / 2 - whole["loss"]).detach())) > 1e-3  # the mean of means weights tokens unequally
    first = prior_loss(prior, LAYOUT, examples[:2], noise=draw_noise(examples, LAYOUT, samplers, torch.Generator().manual_seed(0))[:2])
    assert torch.equal(naive[0], first["loss"])  # slicing the batch's noise is deterministic


def test_a_codec_loss_weight_scales_its_tokens_errors_in_the_total_only():
    """loss_weights {image: w}: the total is (w * image errors + the rest) / all entries; per-codec figures unchanged."""
    prior = make_prior(torch.float64)
    examples = random_examples(random.Random(4), 8, torch.float64)
    noise = draw_noise(examples, LAYOUT, {n: Uniform() for n in LAYOUT.names}, torch.Generator().manual_seed(2))
    plain = prior_loss(prior, LAYOUT, examples, noise=noise, row_length=64)
    only = {name: prior_loss(prior, LAYOUT, examples, noise=noise, row_length=64,
                             loss_weights={n: float(n == name) for n in LAYOUT.names})["loss"] for name in LAYOUT.names}
    assert all(float(v) > 0 for v in only.values())  # every codec has target tokens here
    assert torch.allclose(sum(only.values()), plain["loss"], atol=1e-12)  # the parts add up to the unweighted total
    heavy = prior_loss(prior, LAYOUT, examples, noise=noise, row_length=64, loss_weights={"image": 3.0})
    assert torch.allclose(heavy["loss"], plain["loss"] + 2 * only["image"], atol=1e-12)
    assert all(torch.equal(heavy[k], plain[k]) for k in plain if k != "loss")


@pytest.mark.parametrize("block_positions", [0, 4])
def test_leaving_out_unread_clean_copies_keeps_the_loss(block_positions):
    prior = make_prior(torch.float64, block_positions=block_positions)
    examples = random_examples(random.Random(3), 10, torch.float64)
    noise = draw_noise(examples, LAYOUT, {n: Uniform() for n in LAYOUT.names}, torch.Generator().manual_seed(1))
    full = prior_loss(prior, LAYOUT, examples, noise=noise, row_length=64, unread_clean=True)
    lean = prior_loss(prior, LAYOUT, examples, noise=noise, row_length=64)
    for key in full:
        assert torch.allclose(full[key], lean[key], atol=1e-12), key
    assert pack(examples, LAYOUT, unread_clean=False).valid.sum() < pack(examples, LAYOUT).valid.sum()


def test_unread_clean_copies_are_the_last_target_block_and_after():
    cond, target = torch.randn(5, 4), torch.randn(6, 6)  # text 2 blocks of 3; image blocks of 4: 4 + 2
    ex = [Segment("text", cond, "cond"), Segment("image", target, "target")]
    p = pack([ex], LAYOUT, unread_clean=False)
    meta = p.meta
    clean = ~meta.noisy[0] & p.valid[0]
    assert meta.block[0][clean].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]  # the image's last block (3) has no clean copy
    assert meta.noisy[0].sum() == 6
    one_block = pack([[Segment("text", cond, "cond"), Segment("image", target[:4], "target")]], LAYOUT, unread_clean=False)
    assert one_block.valid.sum() == 5 + 4  # a one-block target: its condition, then its noisy copy only
    no_target = pack([[Segment("text", cond, "cond")]], LAYOUT, unread_clean=False)
    assert no_target.valid.sum() == 5


def test_first_fit_packing_fills_rows_and_keeps_each_row_in_order():
    lengths = [48, 96, 80, 32, 48]  # tokens per example in the two-copy layout
    examples = [[Segment("label", torch.randn(n // 2, 2), "target")] for n in lengths]
    p = pack(examples, LAYOUT, row_length=128)
    assert p.values.shape[0] == 3  # 48+80 | 96+32 | 48; a new row whenever the next does not fit would take 4
    for row in range(p.values.shape[0]):
        ids = p.meta.sample[row][p.valid[row]]
        assert torch.all(ids[1:] >= ids[:-1]) and not (~p.valid[row][: len(ids)]).any()  # no gap before the padding
    assert sorted(set(p.meta.sample[p.valid].tolist())) == list(range(len(lengths)))


def test_drop_conditions():
    ex = [Segment("label", torch.zeros(1, 2), "cond"), Segment("text", torch.zeros(2, 4))]
    kept = drop_conditions([ex] * 200, 0.25, torch.Generator().manual_seed(0))
    dropped = sum(len(e) == 1 for e in kept)
    assert 30 < dropped < 70 and all(e[-1].role == "target" for e in kept)


def test_drop_conditions_each_drops_conditions_independently():
    ex = [Segment("label", torch.zeros(1, 2), "cond"), Segment("image", torch.zeros(4, 6), "cond"), Segment("text", torch.zeros(2, 4))]
    together = drop_conditions([ex] * 400, 0.5, torch.Generator().manual_seed(0))
    assert {len(e) for e in together} == {1, 3}  # all conditions or none: one-condition variants never trained
    each = drop_conditions([ex] * 400, 0.5, torch.Generator().manual_seed(0), each=True)
    kinds = {tuple(s.codec for s in e) for e in each}
    assert kinds == {("label", "image", "text"), ("label", "text"), ("image", "text"), ("text",)}
    only_label = sum(tuple(s.codec for s in e) == ("label", "text") for e in each)
    assert 70 < only_label < 130  # p(keep label, drop image) = 0.25 of 400


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------


def make_prior(dtype=torch.float32, seed=0, block_positions=0) -> BlockCausalDiT:
    torch.manual_seed(seed)
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, block_positions=block_positions)).to(dtype)
    with torch.no_grad():  # leave zero-init so outputs depend on every path
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return prior.eval()


def test_zero_initialised_output():
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims))
    p = pack(random_examples(random.Random(0), 3), LAYOUT)
    assert torch.equal(prior(p.values, p.t, p.codec, p.meta), torch.zeros_like(p.values))


@pytest.mark.parametrize("seed,places", [(0, 0), (1, 0), (2, 0), (0, 4)])
def test_causality_later_blocks_and_noisy_tokens_do_not_leak(seed, places):
    rng = random.Random(seed)
    prior = make_prior(torch.float64, block_positions=places)
    examples = random_examples(rng, 3, torch.float64)
    p = pack(examples, LAYOUT, row_length=80)
    t = torch.rand(p.t.shape, dtype=torch.float64) * p.meta.noisy
    base = prior(p.values, t, p.codec, p.meta)
    k = 1
    later = (p.meta.block >= k)[..., None]
    out = prior(p.values + later * torch.randn_like(p.values), t, p.codec, p.meta)
    earlier = (p.meta.block < k) & (p.meta.sample >= 0)
    assert torch.allclose(out[earlier], base[earlier], atol=1e-12, rtol=0)  # blocks < k unchanged
    noisy = p.meta.noisy[..., None]
    out = prior(p.values + noisy * torch.randn_like(p.values), t, p.codec, p.meta)
    clean = ~p.meta.noisy & (p.meta.sample >= 0)
    assert torch.allclose(out[clean], base[clean], atol=1e-12, rtol=0)  # clean tokens never see noisy ones
    first = p.meta.sample == 0
    other = torch.where((p.meta.sample > 0)[..., None], torch.randn_like(p.values), 0.0)
    out = prior(p.values + other, t, p.codec, p.meta)
    assert torch.allclose(out[first], base[first], atol=1e-12, rtol=0)  # nothing crosses samples


def test_prior_loss_trains_down():
    torch.manual_seed(0)
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims))
    examples = random_examples(random.Random(3), 8)
    samplers = {n: Uniform() for n in LAYOUT.names}
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        out = prior_loss(prior, LAYOUT, examples, samplers, row_length=96, generator=torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert {"loss/text", "loss/image", "loss/label"} <= set(out)


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def mixed_prompts(dtype):
    g = torch.Generator().manual_seed(5)
    r = lambda n, d: torch.randn(n, d, generator=g, dtype=dtype)  # noqa: E731
    return [
        [Segment("label", r(1, 2), "cond"), Segment("image", r(4, 6), "cond")],
        [Segment("image", r(4, 6), "cond"), Segment("text", r(4, 4), "target")],  # continues text mid-block
        [Segment("text", r(2, 4), "target")],  # given prefix inside the first block
    ]


@pytest.mark.parametrize("guidance", [1.0, 3.0, [2.0, 0.5]])
@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("places", [0, 4])
def test_cached_generation_equals_uncached(guidance, solver, places):
    prior = make_prior(torch.float32, block_positions=places)
    kwargs = dict(target="text", num_tokens=8, steps=3, solver=solver, guidance=guidance)
    a = generate_latents(prior, LAYOUT, mixed_prompts(torch.float32), use_cache=True, seed=0, **kwargs)
    b = generate_latents(prior, LAYOUT, mixed_prompts(torch.float32), use_cache=False, seed=0, **kwargs)
    assert [x.shape for x in a] == [(8, 4)] * 3
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-5


def test_cached_equals_uncached_over_many_blocks_without_a_prompt():
    prior = make_prior(torch.float64)
    a = generate_latents(prior, LAYOUT, [[], []], "text", 15, steps=2, use_cache=True, seed=0)
    b = generate_latents(prior, LAYOUT, [[], []], "text", 15, steps=2, use_cache=False, seed=0)
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-12


def test_index_in_block_counts_places_within_each_block_of_each_sample():
    p = pack(random_examples(random.Random(4), 5), LAYOUT, row_length=80)
    got = index_in_block(p.meta)
    for r in range(got.shape[0]):
        for sample, block in {(int(a), int(b)) for a, b in zip(p.meta.sample[r], p.meta.block[r]) if a >= 0}:
            where = (p.meta.sample[r] == sample) & (p.meta.block[r] == block)
            pos = p.meta.position[r][where]
            assert torch.equal(got[r][where], pos - pos.min())  # the clean and noisy copies share places
    assert int(got.max()) == max(s.block_size for s in LAYOUT.streams.values()) - 1


def test_block_positions_feed_each_token_its_place():
    assert make_prior().block_pos is None  # off by default: RoPE alone, as before
    prior = make_prior(torch.float64, block_positions=4)
    p = pack(random_examples(random.Random(6), 3, torch.float64), LAYOUT, row_length=80)
    t = torch.rand(p.t.shape, dtype=torch.float64) * p.meta.noisy
    base = prior(p.values, t, p.codec, p.meta)
    with torch.no_grad():
        prior.block_pos.weight.copy_(prior.block_pos.weight.roll(1, dims=0))  # every place gets another's embedding
    moved = prior(p.values, t, p.codec, p.meta)
    real = p.meta.sample >= 0
    assert not torch.allclose(moved[real], base[real], atol=1e-6)


def test_block_positions_for_chosen_codecs_only():
    torch.manual_seed(0)
    image_only = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, block_positions=4, block_position_codecs=(LAYOUT.ids["image"],)))
    image_only = image_only.double().eval()
    with torch.no_grad():  # leave zero-init, as make_prior does
        for w in image_only.parameters():
            w.add_(0.05 * torch.randn_like(w))
    examples = random_examples(random.Random(8), 8, torch.float64)
    p = pack(examples, LAYOUT, row_length=80)
    t = torch.rand(p.t.shape, dtype=torch.float64) * p.meta.noisy
    base = image_only(p.values, t, p.codec, p.meta)
    with torch.no_grad():
        image_only.block_pos.weight.add_(torch.randn_like(image_only.block_pos.weight))
    moved = image_only(p.values, t, p.codec, p.meta)
    with_image = {i for i, ex in enumerate(examples) if any(seg.codec == "image" for seg in ex)}
    assert with_image and len(with_image) < len(examples)
    for i in range(len(examples)):
        where = p.meta.sample == i
        same = torch.allclose(moved[where], base[where], atol=1e-12)
        assert same == (i not in with_image), i  # only examples with image tokens feel the table


def test_block_positions_config_names_codec_roles():
    from latentbridge.config import load_config
    from latentbridge.errors import ConfigError
    from latentbridge.build import experiment_prior_config

    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    layout = SequenceLayout({"text": Stream(16, 16), "image": Stream(16, 16), "speech": Stream(16, 8)})
    assert cfg.prior.block_positions == ["image"]  # the demo's choice
    pc = experiment_prior_config(cfg, layout)
    assert (pc.block_positions, pc.block_position_codecs) == (16, (1,))
    cfg.prior.block_positions = False
    assert experiment_prior_config(cfg, layout).block_positions == 0
    cfg.prior.block_positions = True
    pc = experiment_prior_config(cfg, layout)
    assert (pc.block_positions, pc.block_position_codecs) == (16, ())
    cfg.prior.block_positions = ["speech"]
    pc = experiment_prior_config(cfg, layout)
    assert (pc.block_positions, pc.block_position_codecs) == (8, (2,))
    cfg.prior.block_positions = ["imgae"]
    with pytest.raises(ConfigError, match="'imgae' names no codec role.*text, image, speech"):
        experiment_prior_config(cfg, layout)


def test_generation_is_deterministic_and_repaint_keeps_prefix_context():
    prior = make_prior(torch.float64)
    prompts = mixed_prompts(torch.float64)
    a = generate_latents(prior, LAYOUT, prompts, "text", 5, steps=2, seed=1)
    b = generate_latents(prior, LAYOUT, prompts, "text", 5, steps=2, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # The given prefix conditions the output: change it and the continuation changes.
    changed = [list(p) for p in prompts]
    changed[2] = [Segment("text", prompts[2][0].latents + 1.0, "target")]
    c = generate_latents(prior, LAYOUT, changed, "text", 5, steps=2, seed=1)
    assert torch.equal(a[0], c[0]) and not torch.allclose(a[2], c[2])


def test_stop_rule_ends_samples_early():
    prior = make_prior()
    prompts = [[Segment("label", torch.zeros(1, 2), "cond")]] * 2
    calls = []

    def stop(block):
        calls.append(block.shape)
        return torch.tensor([True, len(calls) >= 2])

    out = generate_latents(prior, LAYOUT, prompts, "text", 30, steps=1, stop=stop)
    assert [o.shape[0] for o in out] == [3, 6]


def test_import_rules_prior_and_flow_stay_apart():
    root = Path(__file__).parents[1] / "latentbridge"
    forbidden = {"prior": ("latentbridge.flow", "latentbridge.codecs", "latentbridge.train", "latentbridge.pipeline", "latentbridge.generation", "latentbridge.sequence"),
                 "flow": ("latentbridge.prior", "latentbridge.codecs", "latentbridge.train", "latentbridge.pipeline", "latentbridge.generation", "latentbridge.sequence")}
    for package, banned in forbidden.items():
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    assert not name.startswith(banned), f"{path} imports {name}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention is used on CUDA only")
def test_flex_attention_matches_sdpa_on_gpu():
    rng = random.Random(0)
    p = pack(random_examples(rng, 6), LAYOUT, row_length=128)
    prior = make_prior().cuda()
    args = (p.values.cuda(), (torch.rand(p.t.shape) * p.meta.noisy).cuda(), p.codec.cuda(),
            TokenMeta(*(x.cuda() for x in (p.meta.sample, p.meta.block, p.meta.noisy, p.meta.position))))
    ref = prior(*args)
    prior.config.attention = "flex"
    out = prior(*args)
    valid = args[3].sample >= 0
    assert torch.allclose(out[valid], ref[valid], atol=1e-4)


@pytest.mark.parametrize("step_conditioning", [False, True])
def test_conditioning_once_per_distinct_time_gives_the_per_token_result(monkeypatch, step_conditioning):
    """The time (and step) conditioning and its adaLN projections run once per distinct value (TokenConditioning):
    the loss and every gradient equal the per-token computation (forced here as under torch.compile), and a packed
    batch holds far fewer distinct times than tokens."""
    from latentbridge.prior.layers import TokenConditioning

    torch.manual_seed(0)
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, step_conditioning=step_conditioning)).double()
    with torch.no_grad():
        for p in prior.parameters():  # adaLN-Zero starts at zero: give every projection weight to compare
            p.normal_(0, 0.2)
    examples = random_examples(random.Random(3), 8, torch.float64)
    noise = draw_noise(examples, LAYOUT, {n: Uniform() for n in LAYOUT.names}, torch.Generator().manual_seed(0))
    seen = []
    original = prior.conditioning
    monkeypatch.setattr(prior, "conditioning", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])

    def loss_and_grads():
        prior.zero_grad()
        loss = prior_loss(prior, LAYOUT, examples, noise=noise)["loss"]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in prior.parameters()]

    once, once_grads = loss_and_grads()
    assert isinstance(seen[-1], TokenConditioning)
    assert seen[-1].values.shape[0] * 4 < seen[-1].index.numel()  # few distinct times among the tokens
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    dense, dense_grads = loss_and_grads()
    assert isinstance(seen[-1], torch.Tensor)
    assert torch.allclose(once, dense, rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(once_grads, dense_grads))
