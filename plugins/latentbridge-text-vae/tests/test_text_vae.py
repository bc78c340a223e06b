"""Text VAE: conformance, token grids and prompt alignment, cached block decoding, tokenizer, learning."""

from __future__ import annotations

import pytest
import torch

from latentbridge.codecs import Latents
from latentbridge.errors import CheckpointError, CodecOutputError, ConfigError
from latentbridge.testing import CodecConformance
from latentbridge_text_vae import TextItem, TextVAE, load_tokenizer, train_tokenizer

TINY = {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "block_size": 4, "max_tokens": 32}


class TestTextVAE(CodecConformance):
    codec_class = TextVAE
    codec_config = TINY


class TestTextVAETwoTokensPerLatent(CodecConformance):
    codec_class = TextVAE
    codec_config = {**TINY, "tokens_per_latent": 2}


class TestTextVAEFourTokensPerLatent(CodecConformance):
    codec_class = TextVAE
    codec_config = {**TINY, "tokens_per_latent": 4, "latent_dim": 8}


def ids(codec: TextVAE, text: str) -> list[int]:
    return codec.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("p", [1, 2, 4])
def test_token_grid_phase_end_marker_and_padding(p):
    codec = TextVAE({**TINY, "tokens_per_latent": p})
    text = "a small domesticated canine"
    n = len(ids(codec, text))
    for phase in range(p):
        grid = codec.token_ids(TextItem(text, phase=phase))
        assert grid[:phase] == [codec.pad_id] * phase
        assert grid[phase : phase + n] == ids(codec, text)
        assert grid[phase + n] == codec.eos_id
        assert len(grid) % p == 0 and set(grid[phase + n + 1 :]) <= {codec.pad_id}
        assert codec.num_tokens(TextItem(text, phase=phase)) == len(grid) // p


@pytest.mark.parametrize("p", [2, 4])
def test_prompts_of_every_length_end_on_a_latent_boundary(p):
    """The fix for Cola DLM's odd-length collapse: a prompt's phase makes its last token end a latent."""
    codec = TextVAE({**TINY, "tokens_per_latent": p}).eval()
    words = "the quick brown fox jumps over the lazy dog near the river bank".split()
    lengths = set()
    for k in range(1, len(words)):
        prompt = " ".join(words[:k])
        n = len(ids(codec, prompt))
        lengths.add(n % p)
        item = TextItem(prompt, phase=-n % p, end=False)
        grid = codec.token_ids(item)
        assert len(grid) == -n % p + n and len(grid) % p == 0  # no [EOS], no trailing padding
        assert grid[-1] != codec.pad_id
        latents = codec.encode_prompt([prompt])
        assert int(latents.lengths[0]) == len(grid) // p
    assert lengths == set(range(p)), "the prompts should cover every remainder"


def test_augment_draws_every_phase_and_keeps_text():
    codec = TextVAE({**TINY, "tokens_per_latent": 4})
    items = codec.augment(["one two"] * 200, torch.Generator().manual_seed(0))
    assert {it.phase for it in items} == {0, 1, 2, 3}
    assert all(it.text == "one two" and it.end for it in items)
    assert TextVAE(TINY).augment(["x"], torch.Generator()) == ["x"]  # p = 1: nothing to draw


@pytest.mark.parametrize("p", [1, 2])
def test_cached_block_decoding_matches_full_decoding(p):
    torch.manual_seed(0)
    codec = TextVAE({**TINY, "tokens_per_latent": p}).eval()
    bs = codec.config.block_size
    prefix_lengths = [1, 4, 6, 9]  # inside a block, on a boundary, across blocks
    total = 16
    z = torch.randn(len(prefix_lengths), total, codec.config.latent_dim)
    prefix = Latents.from_list(codec.name, [z[i, :n] for i, n in enumerate(prefix_lengths)])
    stream = codec.decoder_stream(prefix)
    # feed whole blocks as the generation loop does: the first one holds the prefix's partial block
    done = [n // bs * bs for n in prefix_lengths]
    while max(done) + bs <= total:
        stream.push(torch.stack([z[i, d : d + bs] for i, d in enumerate(done)]))
        done = [d + bs for d in done]
    full = codec.logits(codec.stats.denormalize(z), torch.full((len(z),), total)).argmax(-1)
    for i, n in enumerate(prefix_lengths):
        upto = (done[i]) * p
        want = full[i, n * p : upto].tolist()
        got = stream.tokens[i]
        eos = want.index(codec.eos_id) if codec.eos_id in want else len(want)
        assert got == want[:eos]


def test_tokenizer_trains_saves_loads_and_travels_with_the_codec(tmp_path):
    corpus = ["the cat sat on the mat", "a dog is a domesticated canine", "the river runs to the sea"] * 20
    out = train_tokenizer(corpus, tmp_path / "tok", vocab_size=300)
    tok = load_tokenizer(str(out))
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"
    assert {tok.pad_token, tok.eos_token, tok.mask_token} == {"[PAD]", "[EOS]", "[MASK]"}
    codec = TextVAE({**TINY, "tokenizer": str(out)})
    assert codec.head.out_features == len(tok)
    codec.save_pretrained(tmp_path / "codec")
    (out / "tokenizer.json").unlink()  # the saved codec must not depend on the original directory
    load_tokenizer.cache_clear()
    again = TextVAE.from_pretrained(tmp_path / "codec")
    assert again.fingerprint() == codec.fingerprint()
    assert again.collate(["the cat"])["tokens"].tolist() == codec.collate(["the cat"])["tokens"].tolist()


def test_bad_input_is_named(tmp_path):
    codec = TextVAE(TINY)
    with pytest.raises(CodecOutputError, match="encodes str or TextItem"):
        codec.collate([3])
    with pytest.raises(CodecOutputError, match=r"phase must lie in \[0, 1\)"):
        codec.collate([TextItem("a", phase=1)])
    with pytest.raises(CodecOutputError, match="empty prompt"):
        codec.encode_prompt([""])
    with pytest.raises(ConfigError, match="not a Hugging Face tokenizer directory"):
        TextVAE({**TINY, "tokenizer": str(tmp_path)})
    with pytest.raises(ValueError, match="tokens_per_latent must be 1, 2 or 4"):
        TextVAE({**TINY, "tokens_per_latent": 3})
    codec.save_pretrained(tmp_path / "saved")
    import shutil

    shutil.rmtree(tmp_path / "saved" / "tokenizer")
    with pytest.raises(CheckpointError, match="no tokenizer/ directory"):
        TextVAE.from_pretrained(tmp_path / "saved")


TEXTS = ["the cat sat on the mat", "a dog barked at the moon", "rain fell on the old stone bridge",
         "she sang a song of the sea", "wind in the tall pine trees", "an owl hooted twice at night",
         "green leaves turn gold in autumn", "the river runs past the mill"]


@pytest.fixture(scope="module")
def trained_p2():
    """A small p = 2 Text VAE fitted to a few texts at random phases (seconds on a CPU)."""
    torch.manual_seed(0)
    codec = TextVAE({**TINY, "tokens_per_latent": 2, "width": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2,
                     "mask_rate": 0.1})
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = codec.collate(codec.augment(TEXTS * 4, gen))
        opt.zero_grad()
        codec.loss(batch)["loss"].backward()
        opt.step()
    return codec.eval()


@pytest.mark.slow
def test_learns_to_reconstruct_at_every_phase_and_odd_prompts(trained_p2):
    codec = trained_p2
    for phase in (0, 1):
        diag = codec.diagnostics(codec.collate([TextItem(t, phase) for t in TEXTS]))
        assert diag["token_accuracy"] > 0.97, (phase, diag)
    prompt = codec.prompt_diagnostics(TEXTS * 4, torch.Generator().manual_seed(1))
    assert prompt["prompts_odd"] > 0 and prompt["prompts_even"] > 0
    assert prompt["token_accuracy_odd_prompts"] > 0.97 and prompt["token_accuracy_even_prompts"] > 0.97, prompt
    assert prompt["prompt_latents_compared"] >= len(TEXTS) * 2, prompt  # most prompts compared, not none
    assert prompt["prompt_latent_max_diff"] < 1e-5, prompt  # a prompt's latents are the whole text's first latents


@pytest.mark.slow
def test_stream_stops_at_the_end_marker(trained_p2):
    codec = trained_p2
    latents = codec.encode_items(TEXTS[:3])
    bs = codec.config.block_size
    stream = codec.decoder_stream(Latents.from_list(codec.name, [v[:1] for v in latents.unbind()]))
    ended = torch.zeros(3, dtype=torch.bool)
    start = 0
    while not bool(ended.all()) and start < latents.values.shape[1]:
        ended = stream.push(latents.values[:, start : start + bs])
        start += bs
    assert bool(ended.all())
    # the continuation after the first latent (two tokens) is the rest of the text, up to [EOS]
    for text, out in zip(TEXTS[:3], stream.items()):
        first = codec.tokenizer.decode(ids(codec, text)[:2])
        assert first + out == text


@pytest.mark.parametrize("p", [1, 2])
def test_fill_block_repeats_the_end_marker_to_a_whole_block(p):
    codec = TextVAE({**TINY, "tokens_per_latent": p, "fill_block": True})
    grid = codec.token_ids("a big owl")
    words = ids(codec, "a big owl")
    assert len(grid) % (p * TINY["block_size"]) == 0
    assert grid[: len(words)] == words and set(grid[len(words):]) == {codec.eos_id}
    assert codec.num_tokens("a big owl") % TINY["block_size"] == 0
    prompt = codec.token_ids(TextItem("a big", end=False))
    assert codec.eos_id not in prompt  # prompts are not filled: they go on
    assert codec.tokens_to_text(grid) == "a big owl"  # decoding stops at the first [EOS]
    with pytest.raises(ValueError, match="fill_block: max_tokens"):
        TextVAE({**TINY, "fill_block": True, "max_tokens": 30})


def test_a_text_cut_at_max_tokens_gets_no_end_marker():
    codec = TextVAE(TINY)
    long = " ".join(["word"] * 100)
    grid = codec.token_ids(long)
    assert len(grid) == TINY["max_tokens"] and codec.eos_id not in grid  # it goes on: it did not end here
    exact = codec.tokenizer.decode(ids(codec, long)[: TINY["max_tokens"] - 1])  # one short of the limit: room for [EOS]
    assert codec.token_ids(exact)[-1] == codec.eos_id


@pytest.mark.parametrize("p", [1, 2])
def test_a_long_prompt_keeps_its_end_and_warns(p):
    codec = TextVAE({**TINY, "tokens_per_latent": p}).eval()
    words = [f"w{i}" for i in range(60)]
    prompt = " ".join(words)
    n = len(ids(codec, prompt))
    limit = TINY["max_tokens"] - p
    assert n > limit
    with pytest.warns(UserWarning, match=rf"1 prompt\(s\) longer than {limit} tokens keep only their last {limit}"):
        got = codec.encode_prompt([prompt, "short"])
    tail = ids(codec, prompt)[-limit:]
    want = codec.encode_items([TextItem("", phase=-limit % p, end=False, ids=tail)])
    assert got.lengths[0] == want.lengths[0] == -(-limit // p)
    assert torch.allclose(got.values[0, : int(got.lengths[0])], want.values[0, : int(want.lengths[0])], atol=1e-6)
    grid = codec.token_ids(TextItem(prompt, phase=-limit % p, end=False, ids=tail))
    assert codec.tokenizer.decode([i for i in grid if i != codec.pad_id]).endswith(codec.tokenizer.decode(tail[-5:]))  # the end survives


def test_no_attention_row_is_empty_for_a_sample_without_a_prefix_block():
    """A decoder stream whose samples' prefixes differ: one has no whole block. Its prefill rows must still see a key
    (a row of -inf everywhere is NaN on some GPU kernels)."""
    from latentbridge_text_vae.layers import block_mask

    bs = TINY["block_size"]
    full = torch.tensor([2 * bs, 0])  # sample 1: no complete prefix block
    pos = torch.arange(2 * bs).expand(2, -1)
    mask = block_mask(pos // bs, pos // bs, pos < full[:, None])  # [B, 1, L, L] as the stream's prefill builds it
    assert bool(mask.any(dim=-1).all())
    assert torch.equal(mask[0, 0], (pos[0] // bs)[None, :] <= (pos[0] // bs)[:, None])  # valid rows are unchanged
    codec = TextVAE(TINY).eval()
    z = torch.randn(2, 2 * bs, TINY.get("latent_dim", 16))
    stream = codec.decoder_stream(Latents(codec.name, z, torch.tensor([2 * bs, 1])))
    assert all(torch.isfinite(k).all() and torch.isfinite(v).all() for k, v in stream.past)
