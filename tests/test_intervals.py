"""95% intervals beside every per-item score: Wilson for rates, a bootstrap otherwise, in report.json and report.md."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from latentbridge.evaluate import EvalSet, Evaluator, PerItem, wilson_interval
from latentbridge.evaluate.report import score_table, write_markdown
from latentbridge.evaluator import EvalContext, summarize


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), table I: 0/10 -> [0, 0.2775]; 1/29 -> [0.0061, 0.1718]; 81/263 -> [0.2553, 0.3662]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)


def test_rates_get_wilson_and_other_scores_a_seeded_bootstrap():
    rate = PerItem([True] * 3 + [False] * 7)
    assert rate.mean == pytest.approx(0.3) and rate.interval() == wilson_interval(3, 10)
    values = [0.1 * i for i in range(40)]
    lo, hi = PerItem(values).interval(seed=1)
    assert lo < sum(values) / 40 < hi and 0.5 < hi - lo < 1.5  # about 2 x 1.96 x sd / sqrt(n) = 0.71
    assert PerItem(values).interval(seed=1) == (lo, hi)  # deterministic
    assert PerItem([5.0] * 20).interval() == (5.0, 5.0)


def test_a_weighted_score_is_a_ratio_and_its_interval_resamples_items():
    wer = PerItem([0.0, 1.0, 0.5], weights=[1, 1, 4])  # edits / words per item, weighted by words: (0 + 1 + 2) / 6
    assert wer.mean == pytest.approx(0.5)
    lo, hi = wer.interval()
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    with pytest.raises(ValueError, match="2 weights for 3 values"):
        PerItem([1, 2, 3], weights=[1, 1])


def test_summarize_keeps_floats_and_gives_lists_an_interval():
    figures, intervals = summarize({"plain": 0.25, "listed": [1, 0, 1, 1], "item": PerItem([0, 0])})
    assert figures == {"plain": 0.25, "listed": 0.75, "item": 0.0}
    assert set(intervals) == {"listed", "item"} and intervals["listed"] == pytest.approx(wilson_interval(3, 4), abs=1e-6)


class _Context(EvalContext):
    """The sweep's bookkeeping only: 'generation' returns each example's condition (so the score is exact match)."""

    def generate(self, conditions, prompts=None, guidance: float = 1.0):
        return list(conditions["x"])


@dataclasses.dataclass
class _Task:
    cond: tuple = ("x",)
    target: str = "y"
    name: str = "t"


class _Match(Evaluator):
    name = "match"

    def sets(self):
        return [EvalSet("s", {"x": list(range(20))}, list(range(20)))]

    def score(self, eval_set, generated, references):
        hits = [g == r for g, r in zip(generated, references)]
        return {"exact": PerItem(hits), "count": float(sum(hits))}


def test_the_sweep_reports_each_per_item_score_with_its_interval_and_the_controls(tmp_path):
    ctx = _Context(pipeline=None, task=_Task(), dataset=None, run_dir=tmp_path, samples=20, guidance_scales=[1.0, 3.0], seed=0)
    rows = _Match(ctx).evaluate()
    for g in ("guidance 1", "guidance 3"):
        assert rows[g] == {"exact": 1.0, "count": 20.0, "shuffled exact": 0.0, "shuffled count": 0.0}
        assert rows["ci95"][g] == {"exact": pytest.approx(list(wilson_interval(20, 20)), abs=1e-6),
                                   "shuffled exact": pytest.approx(list(wilson_interval(0, 20)), abs=1e-6)}
    table = "\n".join(score_table(rows))
    assert "| exact | 1.000 [0.84, 1.00] | 1.000 [0.84, 1.00] | 0.000 [0.00, 0.16] / 0.000 [0.00, 0.16] |" in table
    assert "| count | 20.000 | 20.000 | 0.000 / 0.000 |" in table  # a plain float: no interval
    report = {"samples_per_set": 20, "guidance_scales": [1.0, 3.0], "tasks": {"t": {"direction": "x -> y", "match": rows}}}
    text = write_markdown(Path(tmp_path), "r", json.loads(json.dumps(report))).read_text()
    assert "0.000 [0.00, 0.16]" in text and "ci95" not in text  # intervals in the table, not as a figure line
