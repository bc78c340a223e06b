"""Interleaved documents: packing and masks over mixed codecs, the switch head's training, generation that switches
codec under one context (cached == uncached), clear errors for bad documents, and `latentbridge sample --document`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentbridge.config import ExperimentConfig
from latentbridge.data import DocItem, as_document
from latentbridge.data.document import flatten
from latentbridge.errors import ConfigError, DatasetOutputError
from latentbridge.flow import LogitNormal
from latentbridge.generation import generate_documents
from latentbridge.pipeline import Pipeline
from latentbridge.prior import BlockCausalDiT, block_causal_mask, prior_config
from latentbridge.sequence import Segment, SequenceLayout, Stream, end_of_document, pack
from latentbridge.train.objective import draw_noise, prior_loss
from latentbridge.typedconfig import from_dict

pytestmark = pytest.mark.usefixtures("autoload_plugins")  # the toy world's codecs and data sets
ROOT = Path(__file__).resolve().parents[1]
LAYOUT = SequenceLayout({"text": Stream(dim=4, block_size=3), "image": Stream(dim=6, block_size=4), "label": Stream(dim=2, block_size=1)})
END = end_of_document(LAYOUT)


def random_documents(rng: random.Random, n: int, dtype=torch.float32) -> list[list[Segment]]:
    docs = []
    for _ in range(n):
        doc = []
        for _ in range(rng.randint(1, 4)):
            name = rng.choice(LAYOUT.names)
            doc.append(Segment(name, torch.randn(rng.randint(1, 7), LAYOUT.dims[LAYOUT.ids[name]], dtype=dtype), "target", boundary=True))
        docs.append(doc)
    return docs


def expected_tokens(doc: list[Segment]) -> list[tuple]:
    """Every token of a document written out by hand: (codec, block, noisy, position, switch label), clean copies of
    all items first, then the noisy copies; each item starts a new block of its own codec's size."""
    clean, noisy, block, position = [], [], 0, 0
    for s, seg in enumerate(doc):
        bs, n = LAYOUT.stream(seg.codec).block_size, seg.latents.shape[0]
        follow = LAYOUT.ids[doc[s + 1].codec] if s + 1 < len(doc) else END
        for j in range(n):
            clean.append((LAYOUT.ids[seg.codec], block + j // bs, False, position + j, follow if j == n - 1 else -1))
            noisy.append((LAYOUT.ids[seg.codec], block + j // bs, True, position + j, -1))
        block += (n + bs - 1) // bs
        position += n
    return clean + noisy


def brute_force_mask(sample, block, noisy) -> torch.Tensor:
    n = len(sample)
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            if sample[q] < 0:
                out[q, k] = q == k
            elif sample[q] != sample[k]:
                out[q, k] = False
            elif not noisy[q]:
                out[q, k] = (not noisy[k]) and block[k] <= block[q]
            else:
                out[q, k] = (not noisy[k] and block[k] < block[q]) or (noisy[k] and block[k] == block[q])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_documents_pack_and_mask_like_the_brute_force_reference_over_mixed_codecs(seed):
    rng = random.Random(seed)
    docs = random_documents(rng, rng.randint(1, 5))
    packed = pack(docs, LAYOUT, two_copies=True, unread_clean=True)
    mask = block_causal_mask(packed.meta, packed.meta)
    for i, doc in enumerate(docs):
        row = i  # one document per row without row packing
        at = packed.meta.sample[row] == i
        got = list(zip(packed.codec[row][at].tolist(), packed.meta.block[row][at].tolist(), packed.meta.noisy[row][at].tolist(),
                       packed.meta.position[row][at].tolist(), packed.switch[row][at].tolist()))
        assert got == expected_tokens(doc)
        want = brute_force_mask(packed.meta.sample[row].tolist(), packed.meta.block[row].tolist(), packed.meta.noisy[row].tolist())
        assert torch.equal(mask[row], want)
        values = packed.values[row][at]  # clean copies carry the items' latents, in order
        flat = torch.cat([torch.nn.functional.pad(seg.latents, (0, LAYOUT.dmax - seg.latents.shape[1])) for seg in doc])
        assert torch.equal(values[: len(flat)], flat)


def test_leaving_out_unread_clean_copies_keeps_the_last_items_switch_label():
    doc = [Segment("text", torch.randn(5, 4), "target", True), Segment("image", torch.randn(4, 6), "target", True)]
    full = pack([doc], LAYOUT, two_copies=True, unread_clean=True)
    short = pack([doc], LAYOUT, two_copies=True, unread_clean=False)
    assert int((short.switch >= 0).sum()) == int((full.switch >= 0).sum()) == 2  # text -> image, image -> end
    assert sorted(short.switch[short.switch >= 0].tolist()) == sorted([LAYOUT.ids["image"], END])
    plain = pack([[Segment("text", torch.randn(5, 4), "cond"), Segment("image", torch.randn(4, 6))]], LAYOUT, two_copies=True)
    assert plain.switch is None  # no document: no labels, no switch head needed


def make_prior(dtype=torch.float64, seed=3) -> BlockCausalDiT:
    torch.manual_seed(seed)
    prior = BlockCausalDiT(prior_config("tiny", LAYOUT.dims, switch_classes=END + 1)).to(dtype)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
        prior.switch_head[1].weight.normal_(0, 3.0)  # decisions that follow the context: documents switch often
        prior.switch_head[1].bias.zero_()
    return prior.eval()


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_cached_generation_equals_uncached_across_modality_switches(guidance):
    prior = make_prior()
    prefixes = [doc for doc in random_documents(random.Random(7), 6, torch.float64)]
    lengths = {"text": 7, "image": 4, "label": 1}
    runs = [generate_documents(prior, LAYOUT, prefixes, lengths, max_items=5, steps=3, guidance=guidance, seed=3, use_cache=c)
            for c in (True, False)]
    switches = 0
    for a, b in zip(*runs):
        assert [g.role for g in a.items] == [g.role for g in b.items] and a.ended == b.ended
        for x, y in zip(a.items, b.items):
            assert float((x.latents - y.latents).abs().max()) <= 1e-5
        roles = [g.role for g in a.items]
        switches += sum(r != s for r, s in zip(roles, roles[1:]))
    assert switches >= 3  # the random head does switch codec inside documents


def test_a_document_does_not_depend_on_its_batch():
    prior = make_prior()
    prefixes = random_documents(random.Random(11), 4, torch.float64)
    lengths = {"text": 7, "image": 4, "label": 1}
    together = generate_documents(prior, LAYOUT, prefixes, lengths, max_items=4, steps=3, seed=5)
    alone = generate_documents(prior, LAYOUT, prefixes[2:3], lengths, max_items=4, steps=3, seed=5, first_index=2)
    assert [g.role for g in alone[0].items] == [g.role for g in together[2].items]
    assert all(torch.allclose(x.latents, y.latents, atol=1e-10) for x, y in zip(alone[0].items, together[2].items))


def test_allowed_streams_restrict_the_switch():
    prior = make_prior()
    out = generate_documents(prior, LAYOUT, random_documents(random.Random(2), 6, torch.float64), {"text": 7, "label": 1},
                             allowed=["text", "label"], max_items=4, steps=2)
    assert {g.role for d in out for g in d.items} <= {"text", "label"}


def test_switch_loss_is_cross_entropy_at_each_items_last_token():
    prior = make_prior(torch.float32)
    docs = random_documents(random.Random(4), 3)
    noise = draw_noise(docs, LAYOUT, {n: LogitNormal() for n in LAYOUT.names}, torch.Generator().manual_seed(0))
    out = prior_loss(prior, LAYOUT, docs, noise=noise, switch_weight=0.5)
    flow = prior_loss(prior, LAYOUT, [[Segment(s.codec, s.latents, s.role) for s in d] for d in docs], noise=noise)
    assert float(flow["switch"].detach()) == 0.0 and float(out["switch"].detach()) > 0  # no boundaries: nothing to classify
    assert torch.allclose(out["loss"], flow["loss"] + 0.5 * out["switch"], rtol=1e-5)
    assert out["switch"] > 0.1 and 0.0 <= float(out["switch_acc"]) <= 1.0


# -- bad documents and configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc, words", [
    ([], "empty document"),
    ([("text", "hi"), ("audio", [1.0])], "modality 'audio' has no role"),
    ([("text", "  ")], "item is empty"),
    ([("image", torch.zeros(0, 3))], "item is empty"),
    ("just a string", "must be a list"),
    ([["text", "hi"]], "expected a (modality, value) pair"),
])
def test_a_bad_document_gets_a_clear_error(doc, words):
    with pytest.raises(DatasetOutputError, match="document 0") as err:
        flatten([doc], {"text": "caption", "image": "picture"}, "data set 'mine'")
    assert words in str(err.value) and "data set 'mine'" in str(err.value)


def test_documents_flatten_to_role_items_in_order():
    docs = [[DocItem("text", "a"), DocItem("image", 1), ("text", "b")], [DocItem("image", 2)]]
    items, structure = flatten(docs, {"text": "caption", "image": "picture"}, "here")
    assert items == {"caption": ["a", "b"], "picture": [1, 2]}
    assert structure == [[("caption", 0), ("picture", 0), ("caption", 1)], [("picture", 1)]]
    assert as_document([("text", "x")], ["text"], "w") == [DocItem("text", "x")]


def _config(**task) -> dict:
    return {"name": "d", "codecs": {"label": {"codec": "label"}, "point": {"codec": "vector"}},
            "tasks": {"docs": {"data": "ring_documents", **task}}}


def test_document_task_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="leave its cond and target empty"):
        from_dict(ExperimentConfig, _config(document=["label", "point"], target="point"))
    with pytest.raises(ValueError, match="more than once"):
        from_dict(ExperimentConfig, _config(document=["label", "label"]))
    with pytest.raises(ValueError, match="not under codecs"):
        from_dict(ExperimentConfig, _config(document=["label", "audio"]))


def test_a_document_task_needs_a_data_set_of_documents(tmp_path):
    from latentbridge.train.experiment import train

    cfg = from_dict(ExperimentConfig, {**_config(document=["label", "point"]),
                                       "tasks": {"docs": {"data": "gaussian_ring", "document": ["label", "point"]}}})
    with pytest.raises(ConfigError, match="document task.*provides labels, points|document task.*'gaussian_ring' provides"):
        train(cfg, tmp_path / "run")


# -- the toy documents, trained ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("docs") / "run"
    subprocess.run([sys.executable, "-m", "latentbridge", "train", str(ROOT / "configs/toy_documents.yaml"), "--run-dir", str(run),
                    "--no-progress", "--train.steps=300", "--train.log_every=25", "--train.checkpoint_every=300"],
                   check=True, env=_env(), capture_output=True)
    return run


def _env():
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


@pytest.mark.slow
def test_the_switch_heads_loss_trains_on_the_toy_documents(toy_run):
    rows = [json.loads(x) for x in (toy_run / "metrics.jsonl").read_text().splitlines()]
    prior = [r for r in rows if r.get("stage") == "prior"]
    assert prior[0]["switch"] > 0.5  # ln 3 at chance over label / point / end
    assert prior[-1]["switch"] < 0.05 and prior[-1]["switch_acc"] == 1.0


@pytest.mark.slow
def test_generated_toy_documents_switch_where_the_rule_says(toy_run):
    from latentbridge_toy.ring import GaussianRing

    pipe = Pipeline.from_pretrained(toy_run)
    docs = pipe.generate_document([[DocItem("label", k)] for k in range(8)] * 2, max_items=6)
    ring, pairs = GaussianRing(8), []
    for d in docs:
        k = d.items[0].value
        want = ["label", "vector", "label", "vector"] if k % 2 == 0 else ["label", "vector"]
        assert [i.modality for i in d.items] == want and d.ended
        if k % 2 == 0:
            assert d.items[2].value == k + 1  # the second label follows the rule
        pairs += [(d.items[j].value, d.items[j + 1].value) for j in range(0, len(d.items), 2)]
    right = sum(int(ring.bayes_label(torch.as_tensor(p, dtype=torch.float32)[None])) == k for k, p in pairs)
    assert right >= 0.6 * len(pairs)  # each point is drawn for the label before it (chance: 1/8)


@pytest.mark.slow
def test_sample_document_writes_a_page_per_document(toy_run, tmp_path):
    subprocess.run([sys.executable, "-m", "latentbridge", "sample", str(toy_run), "--document", "--samples", "3", "--out",
                    str(tmp_path), "--no-progress"], check=True, env=_env(), capture_output=True)
    pages = sorted((tmp_path / "documents" / "g1").glob("doc_*.html"))
    assert len(pages) == 3 and (tmp_path / "documents" / "g1" / "index.html").exists()
    text = pages[0].read_text()
    assert "(prefix)" in text and "(generated)" in text and "end of document" in text


@pytest.mark.slow
def test_two_processes_train_documents_with_the_losses_of_one(tmp_path):
    """A mixture whose documents fall unevenly over the processes (one holds only documents, the other documents and
    directional examples): the flow and switch losses per step are those of one process."""
    args = ["train", str(ROOT / "configs/toy_documents.yaml"), "--no-progress", "--train.codec_steps=0", "--train.steps=12",
            "--train.log_every=1", "--train.batch_size=32", "--train.checkpoint_every=12", "--train.warmup_steps=3"]
    bin_dir = Path(sys.executable).parent
    for name, launcher in (("one", [str(bin_dir / "latentbridge")]),
                           ("two", [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "-m", "latentbridge"])):
        proc = subprocess.run([*launcher, *args, "--run-dir", str(tmp_path / name)], env=_env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in ("one", "two")}
    one, two = ({r["step"]: r for r in rows[n] if r["stage"] == "prior"} for n in ("one", "two"))
    assert sorted(one) == sorted(two) == list(range(12))
    for key in ("loss", "switch"):
        assert max(abs(one[s][key] - two[s][key]) for s in one) <= 1e-5, key


# -- your own documents: the generic `documents` data set ------------------------------------------------------

def write_documents(folder: Path) -> Path:
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (40, 30), colour).save(folder / "img" / f"{i}.png")
    lines = [{"document": [{"text": f"picture {i}."}, {"image": f"img/{i % 3}.png"}, {"text": "the end."}]} for i in range(40)]
    lines[5] = {"document": [{"text": "a missing picture"}, {"image": "img/none.png"}]}  # a bad line, skipped and counted
    lines[6] = {"document": []}
    path = folder / "docs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


class TestJsonlDocuments:
    def test_documents_stream_with_their_media_and_bad_lines_are_skipped(self, tmp_path):
        from latentbridge.data.generic import DocumentOptions, JsonlDocuments
        from latentbridge.data.stream import StreamReader

        data = JsonlDocuments(DocumentOptions(path=str(write_documents(tmp_path)), image_size=16, num_workers=0,
                                              test_fraction=0.1, validation_fraction=0.1))
        reader = StreamReader(data, "train", 8, seed=0, rank=0, world=1)
        docs = [d for _ in range(4) for d in reader.next()["document"]]
        reader.close()
        assert all([i.modality for i in d] == ["text", "image", "text"] for d in docs)
        assert all(d[1].value.shape == (16, 16, 3) and d[1].value.dtype.name == "uint8" for d in docs)
        assert reader.skipped >= 1  # the missing picture and the empty document never reach training

    def test_a_document_line_that_is_not_a_document_is_a_bad_record(self, tmp_path):
        from latentbridge.data.generic import DocumentOptions, JsonlDocuments
        from latentbridge.data.stream import BadRecord, Record

        data = JsonlDocuments(DocumentOptions(path=str(write_documents(tmp_path))))
        for line, words in ((b'{"document": [{"video": "x.mp4"}]}', "each item is one of"), (b"not json", "not a JSON line"),
                            (b'{"items": []}', "no items under 'document'")):
            with pytest.raises(BadRecord, match=words):
                data.decode(Record("k", (str(tmp_path / "docs.jsonl"), line), "here"))


@pytest.mark.slow
def test_eval_scores_the_document_task_with_its_evaluators_only(toy_run):
    """`eval --evaluator document-switches` on a mixture: the document task is scored (switch accuracy far above its
    shuffled-document control), the directional task it does not apply to is left out rather than refused."""
    proc = subprocess.run([sys.executable, "-m", "latentbridge", "eval", str(toy_run), "--evaluator", "document-switches",
                           "--samples", "64", "--no-progress"], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((toy_run / "report.json").read_text())["tasks"]
    assert "label_to_point" not in report and "left out" in proc.stdout
    figures = report["documents"]["document-switches"]["teacher forced"]
    interval = report["documents"]["document-switches"]["ci95"]["teacher forced"]
    assert figures["switch accuracy"] >= 0.95 and interval["switch accuracy"][0] > interval["shuffled switch accuracy"][1]
