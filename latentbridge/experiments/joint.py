"""Evaluate every task of a run and write its report: `latentbridge eval RUN_DIR`.

Each task is scored by what it generates from what (the modalities of its roles):

    text -> image     emoji retrieval top-1/5 (seen and held-out names), digit accuracy, scene arrangement
    image -> text     exact-name accuracy and MiniLM similarity to the true caption (emoji, digits, scenes)
    text -> audio     word error rate of pocketsphinx (closed vocabulary) on the speech, real clips as the ceiling
    audio -> text     word accuracy and word error rate of the transcripts
    (nothing) -> text continuation of held-out prompts: MiniLM similarity to the held-out rest

every conditional score across the guidance scales of `eval.guidance_scales` and again with the condition
shuffled over the examples (the control: scored against the original example's truth). Besides, per task
the prior's held-out flow-matching loss with and without its conditions (prior fit), and per codec its
reconstruction and rate on held-out items. Writes report.json ("tasks", "prior_fit", "codecs"),
report.md (tables, sample grids, audio links, the loss curves) and samples/.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError
from latentbridge.experiments.multimodal import _shuffled, caption_grid, evaluate_caption_to_image, generate
from latentbridge.tasks import Task, TaskMixture, tasks_of


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def kind_of(task: Task, codecs) -> str:
    """caption_to_image | image_to_caption | text_to_speech | speech_to_text | text | other."""
    cond = tuple(codecs[r].modality for r in task.cond)
    target = codecs[task.target].modality
    return {(("text",), "image"): "caption_to_image", (("image",), "text"): "image_to_caption",
            (("text",), "audio"): "text_to_speech", (("audio",), "text"): "speech_to_text", ((), "text"): "text"}.get((cond, target), "other")


def _with_control(n: int, seed: int) -> list[tuple[str, list[int]]]:
    return [("", list(range(n))), ("shuffled ", _shuffled(n, seed))]


# --------------------------------------------------------------------------------------------------
# Per task
# --------------------------------------------------------------------------------------------------


def eval_image_to_caption(cfg, run_dir: Path, codecs, prior, layout, task: Task, mix: TaskMixture, n: int, scales, progress) -> dict:
    from latentbridge.data.emoji import load_emoji
    from latentbridge.data.images import IMAGE_SOURCES, load_images, load_scenes
    from latentbridge.evaluate.text import minilm_similarity

    size = int(getattr(codecs[task.cond[0]].config, "image_size", 32))
    trained_on = set(task.data.sources or IMAGE_SOURCES)  # score the kinds of image the task learned
    sets: dict[str, tuple[list, list[str]]] = {}
    if "emoji" in trained_on:
        images, names = load_emoji(size, "train")
        pick = torch.randperm(len(names), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist()
        held_images, held_names = load_emoji(size, "test")
        sets["emoji (seen)"] = ([images[i] for i in pick], [names[i] for i in pick])
        sets["emoji (held-out)"] = (list(held_images[: n // 4]), held_names[: n // 4])
    if "digits" in trained_on:
        digit_images, digit_captions = load_images(["digits"], "test", size)
        sets["digits (held-out images)"] = (list(digit_images[: n // 2]), digit_captions[: n // 2])
    if "scenes" in trained_on:
        scene_images, scene_captions, _ = load_scenes(size, "test", max(8, n // 2), vocabulary=task.data.scene_objects)
        sets["scenes (held-out)"] = (list(scene_images[: n // 2]), scene_captions[: n // 2])
    grid_set = next(iter(sets), None)
    rows: dict[str, Any] = {"items": {k: len(v[1]) for k, v in sets.items()}}
    for g in scales:
        row: dict[str, float] = {}
        lines = []
        for label, (imgs, truth) in sets.items():
            if not truth:
                continue
            for control, order in _with_control(len(truth), cfg.seed + 5):
                out = generate(cfg, codecs, prior, layout, {task.cond[0]: [imgs[i] for i in order]}, target=task.target,
                               guidance=g, seed=cfg.seed, progress=progress)
                row[f"{control}{label} exact"] = float(np.mean([_norm(o) == _norm(t) for o, t in zip(out, truth)]))
                row[f"{control}{label} minilm"] = float(minilm_similarity(out, truth).mean())
                if not control:
                    lines += [f"[{label}] truth: {t!r} -> generated: {o!r}" for t, o in zip(truth[:16], out[:16])]
                    if label == grid_set:
                        caption_grid(imgs[:24], [f"→ {o}" for o in out[:24]], run_dir / "samples" / f"{task.name}_g{g:g}.png")
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "samples" / f"{task.name}_g{g:g}.txt").write_text("\n".join(lines) + "\n")
        rows[f"guidance {g:g}"] = row
    return rows


def _speech_test(task: Task, mix: TaskMixture, n: int) -> tuple[list[np.ndarray], list[str]]:
    split = mix.source(task).split("test")
    return split["audio"][:n], split["text"][:n]


def eval_text_to_speech(cfg, run_dir: Path, codecs, prior, layout, task: Task, mix: TaskMixture, n: int, scales, progress) -> dict:
    from latentbridge.evaluate.media import save_wav
    from latentbridge.evaluate.speech import WordRecognizer, pronounceable, word_error_rate

    waves, texts = _speech_test(task, mix, 10**9)
    keep = [i for i, ok in enumerate(pronounceable(texts)) if ok][:n]
    waves, texts = [waves[i] for i in keep], [texts[i] for i in keep]
    codec = codecs[task.target]
    sr = int(getattr(codec.config, "sample_rate", 16000))
    asr = WordRecognizer(texts, sr)
    rows: dict[str, Any] = {"items": len(texts), "recognizer_vocabulary": len(asr.vocabulary),
                            "real clips WER": word_error_rate(texts, asr.transcribe(waves))}
    rows["codec reconstructions WER"] = word_error_rate(texts, asr.transcribe(codec.decode(codec.encode_items(waves, sample=False))))
    for g in scales:
        row: dict[str, float] = {}
        for control, order in _with_control(len(texts), cfg.seed + 6):
            out = generate(cfg, codecs, prior, layout, {task.cond[0]: [texts[i] for i in order]}, target=task.target,
                           guidance=g, seed=cfg.seed, progress=progress)
            hyps = asr.transcribe(out)
            row[f"{control}WER"] = word_error_rate(texts, hyps)
            if not control:
                folder = run_dir / "samples" / f"{task.name}_g{g:g}"
                for i in range(min(8, len(out))):
                    save_wav(np.asarray(out[i]), sr, folder / f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', texts[i])}.wav")
                (folder / "transcripts.txt").write_text("".join(f"{t} -> heard: {h}\n" for t, h in zip(texts, hyps)))
        rows[f"guidance {g:g}"] = row
    return rows


def eval_speech_to_text(cfg, run_dir: Path, codecs, prior, layout, task: Task, mix: TaskMixture, n: int, scales, progress) -> dict:
    from latentbridge.evaluate.speech import word_error_rate

    waves, texts = _speech_test(task, mix, n)
    rows: dict[str, Any] = {"items": len(texts)}
    for g in scales:
        row: dict[str, float] = {}
        for control, order in _with_control(len(texts), cfg.seed + 7):
            out = generate(cfg, codecs, prior, layout, {task.cond[0]: [waves[i] for i in order]}, target=task.target,
                           guidance=g, seed=cfg.seed, progress=progress)
            row[f"{control}word accuracy"] = float(np.mean([_norm(o) == _norm(t) for o, t in zip(out, texts)]))
            row[f"{control}WER"] = word_error_rate(texts, out)
            if not control:
                (run_dir / "samples").mkdir(parents=True, exist_ok=True)
                (run_dir / "samples" / f"{task.name}_g{g:g}.txt").write_text("".join(f"{t} -> {o}\n" for t, o in zip(texts, out)))
        rows[f"guidance {g:g}"] = row
    return rows


def eval_text(cfg, run_dir: Path, codecs, prior, layout, task: Task, mix: TaskMixture, n: int, scales, progress) -> dict:
    from latentbridge.evaluate.text import minilm_similarity
    from latentbridge.experiments.text import cut_prompts

    texts = [t for t in mix.source(task).split("test")["text"] if len(t.split()) >= 4][:n]
    prompts, refs = cut_prompts(texts)
    out = generate(cfg, codecs, prior, layout, None, target=task.target, prompts=prompts, seed=cfg.seed, progress=progress)
    whole = [p + o for p, o in zip(prompts, out)]
    sims = minilm_similarity(whole, [p + " " + r for p, r in zip(prompts, refs)])
    order = _shuffled(len(refs), cfg.seed + 8)
    control = minilm_similarity(whole, [prompts[i] + " " + refs[i] for i in order])
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    (run_dir / "samples" / f"{task.name}_continuations.txt").write_text("".join(f"{p} >>> {o}\n" for p, o in zip(prompts, out)))
    return {"items": len(prompts), "continuation": {"minilm to own reference": float(sims.mean()),
                                                    "shuffled minilm to another example's text": float(control.mean())}}


EVALUATORS = {"image_to_caption": eval_image_to_caption, "text_to_speech": eval_text_to_speech,
              "speech_to_text": eval_speech_to_text, "text": eval_text}


# --------------------------------------------------------------------------------------------------
# Prior fit and codecs
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def prior_fit(cfg: ExperimentConfig, codecs, prior, layout, task: Task, mix: TaskMixture, n: int = 64, draws: int = 4) -> dict[str, float]:
    """Held-out flow-matching loss of the task's examples (posterior means, fixed noise), with its conditions
    and with them dropped: the gap is what the prior takes from the condition."""
    from latentbridge.data.sources import field_for
    from latentbridge.flow import make_time_sampler
    from latentbridge.train.objective import draw_noise, prior_loss

    src = mix.source(task)
    raw = src.split("test", n)
    lat = {r: codecs[r].encode_items(raw[field_for(src, r, codecs[r].modality)], sample=False).unbind() for r in task.roles}
    examples = task.examples(lat)
    bare = [[s for s in ex if s.role != "cond"] for ex in examples]
    samplers = {r: make_time_sampler(s.time_sampler.kind, s.time_sampler.loc, s.time_sampler.scale, codecs[r].latent_spec.dim)
                for r, s in cfg.codecs.items()}
    out = {"with condition": 0.0, "without condition": 0.0}
    for d in range(draws):
        noise = draw_noise(examples, layout, samplers, torch.Generator().manual_seed(cfg.seed + d))
        out["with condition"] += float(prior_loss(prior, layout, examples, noise=noise, row_length=None)["loss"]) / draws
        if task.cond:
            out["without condition"] += float(prior_loss(prior, layout, bare, noise=noise, row_length=None)["loss"]) / draws
    if not task.cond:
        del out["without condition"]
    return out


def codec_diagnostics(codecs, task_of_role: dict[str, Task], mix: TaskMixture, n: int = 64) -> dict[str, dict[str, float]]:
    """Per role: reconstruction and rate on held-out items of a task that uses it."""
    from latentbridge.data.sources import field_for
    from latentbridge.experiments.codecs import evaluate_codec

    out = {}
    for role, task in task_of_role.items():
        src = mix.source(task)
        items = src.split("test", n)[field_for(src, role, codecs[role].modality)]
        out[role] = evaluate_codec(codecs[role], {"test": items}, similarity=False)["test"]
    return out


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


def evaluate_run(run_dir: str | Path, *, samples: int | None = None, guidance_scales: Sequence[float] | None = None,
                 progress: bool = True, log=print) -> dict[str, Any]:
    """Score every task of a trained run; write report.json, report.md and samples/. Returns the report."""
    from latentbridge.experiments.common import load_run

    run_dir = Path(run_dir)
    cfg, codecs, prior, layout = load_run(run_dir)
    tasks = tasks_of(cfg)
    mix = TaskMixture(tasks, cfg.seed)
    n = samples or cfg.eval.samples
    scales = list(guidance_scales or cfg.eval.guidance_scales)
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report.update({"tasks": {}, "prior_fit": {}, "guidance_scales": scales, "samples_per_set": n})
    start = time.perf_counter()
    for task in tasks:
        kind = kind_of(task, codecs)
        t0 = time.perf_counter()
        log(f"evaluating {task.name} ({task.direction}) ...")
        if kind == "caption_to_image":
            rows = evaluate_caption_to_image(cfg, run_dir, codecs, prior, layout, samples=n, guidance_scales=scales, progress=progress,
                                             task=task, report_key=None)
        elif kind in EVALUATORS:
            rows = EVALUATORS[kind](cfg, run_dir, codecs, prior, layout, task, mix, n, scales, progress)
        else:
            rows = {"note": f"no evaluator for {task.direction}; prior fit only"}
        rows["kind"], rows["direction"], rows["eval_s"] = kind, task.direction, round(time.perf_counter() - t0, 1)
        report["tasks"][task.name] = rows
        report["prior_fit"][task.name] = prior_fit(cfg, codecs, prior, layout, task, mix)
        report_path.write_text(json.dumps(report, indent=2) + "\n")  # after each task: nothing lost if a later one fails
    report["codecs"] = codec_diagnostics(codecs, {r: next(t for t in tasks if r in t.roles) for r in codecs}, mix)
    report["eval_s"] = round(time.perf_counter() - start, 1)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(run_dir, cfg, report)
    return report


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def score_table(rows: dict[str, Any]) -> list[str]:
    """Markdown table: one line per score, one column per guidance scale (shuffled controls beside)."""
    scales = [k for k in rows if k.startswith("guidance ")]
    if not scales:
        return []
    metrics = [k for k in rows[scales[0]] if not k.startswith("shuffled ")]
    head = "| score | " + " | ".join(f"g = {s.split()[1]}" for s in scales) + " | shuffled (control) |"
    lines = [head, "|---" * (len(scales) + 2) + "|"]
    for m in metrics:
        vals = [_fmt(rows[s].get(m, "")) for s in scales]
        ctrl = " / ".join(_fmt(rows[s][f"shuffled {m}"]) for s in scales if f"shuffled {m}" in rows[s])
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {ctrl} |")
    return lines


def write_markdown(run_dir: Path, cfg: ExperimentConfig, report: dict[str, Any]) -> Path:
    """report.md: per task its scores (guidance scales and shuffled controls), samples, audio links; prior fit;
    codecs; the loss curves."""
    lines = [f"# {cfg.name}: evaluation", "",
             f"{report['samples_per_set']} examples per set; guidance scales {report['guidance_scales']}; every conditional "
             "score also with the condition shuffled over the examples (scored against the original truth).", ""]
    if (run_dir / "loss.png").is_file():
        lines += ["![training loss](loss.png)", ""]
    samples = run_dir / "samples"
    for name, rows in report["tasks"].items():
        lines += [f"## {name}: {rows.get('direction', '')}", ""]
        extras = {k: v for k, v in rows.items() if not k.startswith("guidance ") and k not in ("direction", "kind")}
        if extras:
            lines += [", ".join(f"{k}: {_fmt(v) if not isinstance(v, dict) else json.dumps(v)}" for k, v in extras.items()), ""]
        lines += score_table(rows) + [""]
        for f in sorted(samples.glob(f"{name}_*.png")) if samples.is_dir() else []:
            lines += [f"![{f.stem}](samples/{f.name})", ""]
        for f in sorted(samples.glob(f"{name}_*.txt")) if samples.is_dir() else []:
            lines += [f"- [{f.name}](samples/{f.name})"]
        for folder in sorted(p for p in samples.glob(f"{name}_g*") if p.is_dir()) if samples.is_dir() else []:
            wavs = sorted(folder.glob("*.wav"))
            lines += [f"- {folder.name}: " + ", ".join(f"[{w.stem}](samples/{folder.name}/{w.name})" for w in wavs)
                      + f" ([transcripts](samples/{folder.name}/transcripts.txt))"]
        lines.append("")
    lines += ["## Prior fit (held-out flow-matching loss)", "", "| task | with condition | without condition |", "|---|---|---|"]
    for name, fit in report["prior_fit"].items():
        lines.append(f"| {name} | {fit['with condition']:.4f} | {_fmt(fit.get('without condition', '—'))} |")
    lines += ["", "## Codecs (held-out reconstruction and rate)", ""]
    for role, row in report.get("codecs", {}).items():
        lines.append(f"- **{role}**: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    lines += ["", f"Evaluation took {report.get('eval_s', 0):.0f} s.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def format_report(report: dict[str, Any]) -> str:
    """The task tables as plain text, for the terminal."""
    out = []
    for name, rows in report["tasks"].items():
        out.append(f"{name} ({rows.get('direction', '')}):")
        out += ["  " + line for line in score_table(rows)]
    out.append("prior fit: " + "; ".join(f"{k} {v['with condition']:.3f}" + (f" (no cond {v['without condition']:.3f})" if "without condition" in v else "")
                                         for k, v in report["prior_fit"].items()))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Samples without scores (latentbridge sample)
# --------------------------------------------------------------------------------------------------


def sample_tasks(cfg: ExperimentConfig, run_dir: Path, codecs, prior, layout, *, tasks: Sequence[str] | None = None,
                 prompts: Sequence[str] | None = None, n: int = 16, guidance_scales: Sequence[float] | None = None) -> list[Path]:
    """Generate each task from `prompts` (tasks conditioned on text, and text continuation) or from n held-out
    examples; write samples/sample_<task>_g<scale>.{png,txt} or a folder of WAVs. Returns the paths written."""
    from latentbridge.data.sources import field_for
    from latentbridge.evaluate.media import save_wav

    everything = tasks_of(cfg)
    known = {t.name: t for t in everything}
    unknown = [t for t in tasks or [] if t not in known]
    if unknown:
        raise ConfigError(f"--task {', '.join(unknown)}: this run's tasks are {', '.join(known)}")
    chosen = [known[t] for t in tasks] if tasks else everything
    mix = TaskMixture(chosen, cfg.seed)
    out_dir = run_dir / "samples"
    written: list[Path] = []
    for task in chosen:
        text_cond = [r for r in task.cond if codecs[r].modality == "text"]
        if prompts and not task.cond:
            conditions, given, truth = None, list(prompts), None
        elif prompts and text_cond == list(task.cond):
            conditions, given, truth = {task.cond[0]: list(prompts)}, None, list(prompts)
        elif prompts:
            continue  # this task is not conditioned on text: --prompt does not apply
        else:
            src = mix.source(task)
            raw = src.split("test", n)
            conditions = {r: raw[field_for(src, r, codecs[r].modality)] for r in task.cond} or None
            given = None
            truth_field = field_for(src, task.target, codecs[task.target].modality)
            truth = [str(x) if isinstance(x, str) else f"#{i}" for i, x in enumerate(raw[truth_field])]
            if not task.cond:
                from latentbridge.experiments.text import cut_prompts

                given, _ = cut_prompts(raw[truth_field])
        for g in guidance_scales or cfg.eval.guidance_scales:
            items = generate(cfg, codecs, prior, layout, conditions, target=task.target, prompts=given, guidance=g, seed=cfg.seed)
            stem = f"sample_{task.name}_g{g:g}"
            labels = (list(conditions.values())[0] if conditions else given) or []
            labels = [x if isinstance(x, str) else (truth[i] if truth else f"#{i}") for i, x in enumerate(labels)]
            modality = codecs[task.target].modality
            if modality == "image":
                written.append(caption_grid(items, labels, out_dir / f"{stem}.png"))
            elif modality == "audio":
                sr = int(getattr(codecs[task.target].config, "sample_rate", 16000))
                for i, (wave, label) in enumerate(zip(items, labels)):
                    written.append(save_wav(np.asarray(wave), sr, out_dir / stem / f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', label)[:40]}.wav"))
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                path = out_dir / f"{stem}.txt"
                path.write_text("".join(f"{label} -> {item}\n" for label, item in zip(labels, items)))
                written.append(path)
    return written
