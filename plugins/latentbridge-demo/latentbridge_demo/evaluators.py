"""The demo world's evaluators, registered through `latentbridge_register_evaluators` like any plugin's.

    caption-to-image    text -> image on `images`: emoji retrieval top-1/5 (seen and held-out names), digit
                        accuracy, scene arrangement on held-out combinations (and, without control, seen ones)
    image-to-caption    image -> text on `images`: exact-name accuracy and MiniLM similarity to the true caption
    text-to-speech      text -> audio on `speech`: word error rate of pocketsphinx (closed vocabulary) on the speech
    speech-to-text      audio -> text on `speech`: word accuracy and word error rate of the transcripts
    text-continuation   (nothing) -> text on any data set: MiniLM similarity of continued held-out prompts to their rest
    stories             documents on `stories`: switch placement, caption -> image, image -> sentence and sentence ->
                        swapped image, each continued from held-out story prefixes, against shuffled-document controls

latentbridge runs each across the guidance scales and with the shuffled-condition control
(latentbridge.evaluator); the reference figures (the evaluators' own ceilings) come from `prepare`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import torch

from latentbridge.evaluate import EvalSet, Evaluator, PerItem


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text)


class CaptionToImage(Evaluator):
    name = "caption-to-image"
    cond, target, datasets = ("text",), "image", ("images",)
    description = "emoji retrieval, digit accuracy, scene arrangement of generated images"

    def prepare(self) -> dict[str, Any]:
        from latentbridge_demo.data.emoji import load_emoji
        from latentbridge_demo.data.images import DIGIT_NAMES, IMAGE_SOURCES
        from latentbridge_demo.evaluate.images import DigitClassifier, EmojiRetrieval, SceneChecker, multi_object_scenes

        ctx = self.ctx
        task, opts, seed, n = ctx.task, ctx.task.data.config, ctx.seed, ctx.samples
        self.caption_role, image_role = task.cond[0], task.target
        size = int(getattr(ctx.codecs[image_role].config, "image_size", 32))
        trained_on = set(opts.sources or IMAGE_SOURCES)  # score the kinds of image the task learned
        self.retrieval = EmojiRetrieval(size) if "emoji" in trained_on else None
        self.classifier, classifier_acc = DigitClassifier.train_on_digits(size) if "digits" in trained_on else (None, float("nan"))
        self.checker = SceneChecker(size, opts.scene_objects)
        self.emoji: dict[str, list[str]] = {}
        if "emoji" in trained_on:
            _, seen = load_emoji(size, "train")
            _, unseen = load_emoji(size, "test")
            pick = torch.randperm(len(seen), generator=torch.Generator().manual_seed(seed))[:n].tolist()
            self.emoji = {"emoji (seen names)": [seen[i] for i in pick], "emoji (held-out names)": unseen[: max(1, n // 4)]}
        k = n // 4 if self.emoji else n // 2  # digit and scene captions: more when there are no emoji to score
        self.digit_labels = [i % 10 for i in range(max(10, k))] if "digits" in trained_on else []
        self.digit_captions = [f"a handwritten digit {DIGIT_NAMES[d]}" for d in self.digit_labels]
        # held-out combinations of 2-3 emoji, and as a diagnostic (fit, not generalisation) combinations seen in training
        vocabulary, held = opts.scene_objects, opts.held_out_combinations
        scenes = "scenes" in trained_on
        real, self.scene_captions, self.scene_truth = multi_object_scenes(size, "test", max(8, k), vocabulary, held) if scenes else ([], [], [])
        _, self.seen_captions, self.seen_truth = multi_object_scenes(size, "train", max(8, k), vocabulary, held) if scenes else ([], [], [])
        _, real_ok = self.checker.check(real, self.scene_truth)
        codec = ctx.codecs[image_role]
        _, recon_ok = self.checker.check(codec.decode(codec.encode_items(real, sample=False)), self.scene_truth) if real else ([], [])
        return {"digit_classifier_test_accuracy": classifier_acc,  # the evaluators' ceilings
                "scene_checker_accuracy_on_real_scenes": float(np.mean(real_ok)) if real_ok else float("nan"),
                "scene_checker_accuracy_on_codec_reconstructions": float(np.mean(recon_ok)) if recon_ok else float("nan"),
                "held-out combinations": len({tuple(sorted(o.name for o in s.objects)) for s in self.scene_truth})}

    def sets(self) -> list[EvalSet]:
        role, seed = self.caption_role, self.ctx.seed
        out = [EvalSet(label, {role: names}, names, control_seed=seed + 1) for label, names in self.emoji.items()]
        out.append(EvalSet("digits", {role: self.digit_captions}, self.digit_labels, control_seed=seed + 2))
        out.append(EvalSet("scenes (held-out combinations)", {role: self.scene_captions}, self.scene_truth, control_seed=seed + 3))
        if self.scene_truth:  # no control: a diagnostic of fit
            out.append(EvalSet("scenes (seen combinations)", {role: self.seen_captions}, self.seen_truth, control=False))
        return out

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        from latentbridge_demo.evaluate.images import scene_scores

        label = eval_set.label
        if label.startswith("emoji"):
            ranks = self.retrieval.ranks(generated, references)
            return {f"{label} top1": PerItem(ranks < 1), f"{label} top5": PerItem(ranks < 5)}
        if label == "digits":
            return {"digit accuracy": PerItem(self.classifier.predict(generated) == torch.tensor(references))}
        scores = scene_scores(self.checker, generated, references)
        if label == "scenes (seen combinations)":
            return {f"{k} (seen combinations)": v for k, v in scores.items() if k in ("scene arrangement", "scene objects placed")}
        return scores

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        from latentbridge_demo.evaluate.images import caption_grid

        captions = eval_set.conditions[self.caption_role]
        folder, task = self.ctx.samples_dir(), self.ctx.task.name
        if eval_set.label == "emoji (seen names)":
            caption_grid(generated[:32], captions[:32], folder / f"{task}_emoji_g{guidance:g}.png")
        elif eval_set.label == "digits":
            caption_grid(generated[:20], captions[:20], folder / f"{task}_digits_g{guidance:g}.png", per_row=10)
        elif eval_set.label == "scenes (held-out combinations)":
            caption_grid(generated[:16], captions[:16], folder / f"{task}_scenes_g{guidance:g}.png")


class ImageToCaption(Evaluator):
    name = "image-to-caption"
    cond, target, datasets = ("image",), "text", ("images",)
    description = "exact-name accuracy and MiniLM similarity of generated captions"

    def prepare(self) -> dict[str, Any]:
        self.lines: dict[float, list[str]] = {}
        return {}

    def sets(self) -> list[EvalSet]:
        from latentbridge_demo.data.emoji import load_emoji
        from latentbridge_demo.data.images import IMAGE_SOURCES, load_images, load_scenes

        ctx = self.ctx
        opts, n, role = ctx.task.data.config, ctx.samples, ctx.task.cond[0]
        size = int(getattr(ctx.codecs[role].config, "image_size", 32))
        trained_on = set(opts.sources or IMAGE_SOURCES)  # score the kinds of image the task learned
        found: dict[str, tuple[list, list[str]]] = {}
        if "emoji" in trained_on:
            images, names = load_emoji(size, "train")
            pick = torch.randperm(len(names), generator=torch.Generator().manual_seed(ctx.seed))[:n].tolist()
            held_images, held_names = load_emoji(size, "test")
            found["emoji (seen)"] = ([images[i] for i in pick], [names[i] for i in pick])
            found["emoji (held-out)"] = (list(held_images[: n // 4]), held_names[: n // 4])
        if "digits" in trained_on:
            digit_images, digit_captions = load_images(["digits"], "test", size)
            found["digits (held-out images)"] = (list(digit_images[: n // 2]), digit_captions[: n // 2])
        if "scenes" in trained_on:
            scene_images, scene_captions, _ = load_scenes(size, "test", max(8, n // 2), vocabulary=opts.scene_objects,
                                                    held_out=opts.held_out_combinations)
            found["scenes (held-out)"] = (list(scene_images[: n // 2]), scene_captions[: n // 2])
        self.grid_set = next(iter(found), None)
        return [EvalSet(label, {role: images}, truth, control_seed=ctx.seed + 5) for label, (images, truth) in found.items()]

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        from latentbridge_demo.evaluate.text import minilm_similarity

        label = eval_set.label
        return {f"{label} exact": PerItem([_norm(o) == _norm(t) for o, t in zip(generated, references)]),
                f"{label} minilm": PerItem(minilm_similarity(generated, references))}

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        from latentbridge_demo.evaluate.images import caption_grid

        folder, task = self.ctx.samples_dir(), self.ctx.task.name
        lines = self.lines.setdefault(guidance, [])
        lines += [f"[{eval_set.label}] truth: {t!r} -> generated: {o!r}" for t, o in zip(eval_set.references[:16], generated[:16])]
        (folder / f"{task}_g{guidance:g}.txt").write_text("\n".join(lines) + "\n")
        if eval_set.label == self.grid_set:
            images = eval_set.conditions[self.ctx.task.cond[0]]
            caption_grid(images[:24], [f"→ {o}" for o in generated[:24]], folder / f"{task}_g{guidance:g}.png")


def _held_out_speech(ctx) -> tuple[list, list[str]]:
    """Clips no training step saw, with their text: the test split, then the validation split (more items, narrower
    intervals: a closed vocabulary holds out few renditions of each word)."""
    waves, texts = [], []
    for split in ("test", "validation"):
        held = ctx.dataset.split(split)
        waves += list(held[ctx.dataset.field("audio")])
        texts += list(held[ctx.dataset.field("text")])
    return waves, texts


class TextToSpeech(Evaluator):
    name = "text-to-speech"
    cond, target, datasets = ("text",), "audio", ("speech",)
    description = "word error rate of pocketsphinx on generated speech"

    def prepare(self) -> dict[str, Any]:
        from latentbridge_demo.evaluate.speech import WordRecognizer, pronounceable, word_error_rate

        ctx = self.ctx
        waves, texts = _held_out_speech(ctx)
        keep = [i for i, ok in enumerate(pronounceable(texts)) if ok][: ctx.samples]
        self.waves, self.texts = [waves[i] for i in keep], [texts[i] for i in keep]
        codec = ctx.codecs[ctx.task.target]
        self.sample_rate = int(getattr(codec.config, "sample_rate", 16000))
        self.asr = WordRecognizer(self.texts, self.sample_rate)
        return {"recognizer_vocabulary": len(self.asr.vocabulary),
                "real clips WER": word_error_rate(self.texts, self.asr.transcribe(self.waves)),
                "codec reconstructions WER": word_error_rate(self.texts, self.asr.transcribe(
                    codec.decode(codec.encode_items(self.waves, sample=False))))}

    def sets(self) -> list[EvalSet]:
        return [EvalSet("speech", {self.ctx.task.cond[0]: self.texts}, self.texts, control_seed=self.ctx.seed + 6)]

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        from latentbridge_demo.evaluate.speech import word_errors

        self.heard = self.asr.transcribe(generated)
        return {"WER": word_errors(references, self.heard)}

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        from latentbridge_demo.evaluate.media import save_wav

        folder = self.ctx.samples_dir() / f"{self.ctx.task.name}_g{guidance:g}"
        for i in range(min(8, len(generated))):
            save_wav(np.asarray(generated[i]), self.sample_rate, folder / f"{i:02d}_{_slug(eval_set.references[i])}.wav")
        (folder / "transcripts.txt").write_text("".join(f"{t} -> heard: {h}\n" for t, h in zip(eval_set.references, self.heard)))


class SpeechToText(Evaluator):
    name = "speech-to-text"
    cond, target, datasets = ("audio",), "text", ("speech",)
    description = "word accuracy and word error rate of transcripts"

    def sets(self) -> list[EvalSet]:
        ctx = self.ctx
        waves, texts = _held_out_speech(ctx)
        return [EvalSet("speech", {ctx.task.cond[0]: waves[: ctx.samples]}, texts[: ctx.samples], control_seed=ctx.seed + 7)]

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        from latentbridge_demo.evaluate.speech import word_errors

        return {"word accuracy": PerItem([_norm(o) == _norm(t) for o, t in zip(generated, references)]),
                "WER": word_errors(references, generated)}

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        path = self.ctx.samples_dir() / f"{self.ctx.task.name}_g{guidance:g}.txt"
        path.write_text("".join(f"{t} -> {o}\n" for t, o in zip(eval_set.references, generated)))


class TextContinuation(Evaluator):
    name = "text-continuation"
    cond, target = (), "text"
    description = "MiniLM similarity of continued held-out prompts to their held-out rest"

    def sets(self) -> list[EvalSet]:
        from latentbridge_demo.evaluate.continuation import cut_prompts

        ctx = self.ctx
        texts = [t for t in ctx.held_out()[ctx.task.target] if len(t.split()) >= 4][: ctx.samples]
        prompts, rests = cut_prompts(texts)
        return [EvalSet("continuation", None, [p + " " + r for p, r in zip(prompts, rests)], prompts=prompts,
                        control_seed=ctx.seed + 8)]

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        from latentbridge_demo.evaluate.text import minilm_similarity

        whole = [p + o for p, o in zip(eval_set.prompts, generated)]  # continuations carry their own leading space
        return {"minilm to own reference": PerItem(minilm_similarity(whole, references))}

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        path = self.ctx.samples_dir() / f"{self.ctx.task.name}_continuations.txt"
        path.write_text("".join(f"{p} >>> {o}\n" for p, o in zip(eval_set.prompts, generated)))


@dataclasses.dataclass
class StoriesConfig:
    """Options of the stories evaluator."""

    per_kind: int = 64
    """Held-out stories of each kind (caption, describe, swap) to continue."""
    pages: int = 12
    """Continued stories written as HTML pages per guidance scale."""


class Stories(Evaluator):
    """Interleaved stories (the `stories` data set), continued by the prior from held-out prefixes, each with its
    shuffled-document control (the prefix of another story, scored against this story's truth):

        from the opening sentence   switch placement (what follows each item, and the end) and the whole structure;
                                    for caption stories, whether the generated image matches the caption (arrangement)
        from sentence + image       (describe, swap) whether the generated sentence says what the image shows
        from sentence, image,       (swap) whether the generated second image is the swapped scene the sentence and
        sentence                    the opening call for
    """

    name = "stories"
    target, datasets = "document", ("stories",)
    config_class = StoriesConfig
    description = "switch placement, image-matches-text and text-describes-image on held-out illustrated stories"

    def evaluate(self) -> dict[str, Any]:
        from latentbridge.document_page import write_document_pages
        from latentbridge.evaluator import derangement, summarize
        from latentbridge_demo.evaluate.images import SceneChecker

        ctx, k = self.ctx, self.options.per_kind
        opts = ctx.dataset.config
        docs, truth = ctx.held_out()["document"], ctx.dataset.truth("test")
        picked = [i for kind in ("caption", "describe", "swap") for i in [j for j, s in enumerate(truth) if s.kind == kind][:k]]
        docs, truth = [docs[i] for i in picked], [truth[i] for i in picked]
        checker = SceneChecker(opts.image_size, opts.scene_objects)
        _, real_ok = checker.check([d[1][1] for d in docs], [s.scene for s in truth])
        rows: dict[str, Any] = {"scene_checker_accuracy_on_real_scenes": float(np.mean(real_ok)),
                                "items": {k2: sum(s.kind == k2 for s in truth) for k2 in ("caption", "describe", "swap")},
                                "held-out pairs": len({tuple(sorted(o.name for o in s.scene.objects)) for s in truth})}
        describe = [i for i, s in enumerate(truth) if s.kind != "caption"]
        swap = [i for i, s in enumerate(truth) if s.kind == "swap"]
        intervals = {}
        codecs = {ctx.codecs[r].modality: ctx.codecs[r] for r in ctx.task.document}
        for g in ctx.guidance_scales:
            row, scores = {}, {}
            for shuffled in (False, True):
                tag = "shuffled " if shuffled else ""

                def source(idx: list[int], salt: int) -> list[int]:  # whose prefix each evaluated story starts from
                    order = derangement(len(idx), ctx.seed + salt) if shuffled else list(range(len(idx)))
                    return [idx[j] for j in order]

                every = list(range(len(docs)))
                made = ctx.generate_documents([docs[i][:1] for i in source(every, 1)], g, max_items=4)
                scores.update(self._structure(made, truth, tag))
                cap = [i for i in every if truth[i].kind == "caption"]
                images = [_item(made[i], 1, "image") for i in cap]
                scores[f"{tag}caption -> image arrangement"] = self._arrangement(checker, images, [truth[i].scene for i in cap])
                if not shuffled:  # a whole generated story agreeing with itself; its control pairs two stories' items
                    scores.update(self._self_consistent(checker, [made[i] for i in describe], [made[i] for i in swap],
                                                        checker.names, ctx.seed))
                    write_document_pages([(d.items, d.prefix, d.ended) for d in made[:: max(1, len(made) // self.options.pages)]],
                                         codecs, ctx.samples_dir() / ctx.task.name / f"g{g:g}", title=f"stories (guidance {g:g})")
                made = ctx.generate_documents([docs[i][:2] for i in source(describe, 2)], g, max_items=3)
                said = [_item(d, 2, "text") for d in made]
                scores[f"{tag}image -> sentence exact"] = PerItem([s is not None and _norm(s) == _norm(truth[i].texts[1])
                                                                   for s, i in zip(said, describe)])
                made = ctx.generate_documents([docs[i][:3] for i in source(swap, 3)], g, max_items=2)
                images = [_item(d, 3, "image") for d in made]
                scores[f"{tag}sentence -> swapped image arrangement"] = self._arrangement(checker, images,
                                                                                          [truth[i].second for i in swap])
            figures, ci = summarize(scores, ctx.seed)
            row.update(figures)
            rows[f"guidance {g:g}"] = row
            intervals[f"guidance {g:g}"] = ci
        rows["ci95"] = intervals
        return rows

    @staticmethod
    def _structure(made: list, truth: list, tag: str) -> dict[str, Any]:
        right, whole = [], []
        for d, s in zip(made, truth):
            got = [i.modality for i in d.items]
            follows = [got[j + 1] if j + 1 < len(got) else ("end" if d.ended else "cut") for j in range(len(got))]
            want = s.follows()
            right += [float(j < len(follows) and follows[j] == w) for j, w in enumerate(want)]
            whole.append(float(got == s.structure and d.ended))
        return {f"{tag}switch accuracy": PerItem(right), f"{tag}whole structure": PerItem(whole)}

    @staticmethod
    def _self_consistent(checker, described: list, swapped_docs: list, names: list, seed: int) -> dict[str, PerItem]:
        """In stories generated from their opening alone: does the generated sentence say what the generated image
        before it shows, and (swap stories) is the second generated image the swap the sentence calls for? Each also
        with the sentence of one story against the image of another (the shuffled-document control)."""
        from latentbridge.evaluator import derangement
        from latentbridge_demo.data.stories import pair_scene, parse_relation, swapped

        def said(d):
            text = _item(d, 2, "text")
            found = parse_relation(text, names) if text is not None else None
            return pair_scene(*found) if found else None

        def score(images, scenes, after=lambda sc: sc):
            ok = [False] * len(images)
            have = [j for j, (im, sc) in enumerate(zip(images, scenes)) if im is not None and sc is not None]
            if have:
                _, whole = checker.check([images[j] for j in have], [after(scenes[j]) for j in have])
                for j, w in zip(have, whole):
                    ok[j] = w
            return PerItem(ok)

        out = {}
        for key, docs, image_at, after in (("story: sentence says what its image shows", described, 1, lambda sc: sc),
                                           ("story: second image is the swap the sentence says", swapped_docs, 3, swapped)):
            scenes, images = [said(d) for d in docs], [_item(d, image_at, "image") for d in docs]
            order = derangement(len(docs), seed + 5)
            out[key] = score(images, scenes, after)
            out[f"shuffled {key}"] = score([images[j] for j in order], scenes, after)
        return out

    @staticmethod
    def _arrangement(checker, images: list, scenes: list) -> PerItem:
        ok = [False] * len(images)
        have = [j for j, im in enumerate(images) if im is not None]
        if have:
            _, whole = checker.check([images[j] for j in have], [scenes[j] for j in have])
            for j, w in zip(have, whole):
                ok[j] = w
        return PerItem(ok)


def _item(document, index: int, modality: str):
    """The value of a generated document's item `index` when it has that modality, else None (it is missing or of
    another kind: scored as wrong)."""
    items = document.items
    return items[index].value if index < len(items) and items[index].modality == modality else None
