"""Metrics carry their own direction and display (issue 12, item 3)."""

from __future__ import annotations

import pytest

from paramcorrupt.losses import (
    MetricInfo,
    accuracy,
    describe_metric,
    metric_info,
    metric_info_by_name,
    token_accuracy,
)
from paramcorrupt.tasks.parser import attachment_metric
from paramcorrupt.tasks.ptb_lm import LogPerplexity, Perplexity
from paramcorrupt.tasks.translation import BLEU

#: every built-in metric under the name its task registers it with, and typical values
BUILT_IN = [
    ("accuracy", accuracy, [0.1, 0.99]),
    ("token_accuracy", token_accuracy(), [0.3]),
    ("uas", attachment_metric(False), [0.85]),
    ("las", attachment_metric(True), [0.83]),
    ("log_ppl", LogPerplexity(), [4.8, 9.2]),
    ("perplexity", Perplexity(), [120.0]),
    ("bleu", BLEU(), [35.2, 0.0]),
]


@pytest.mark.parametrize(("name", "metric", "values"), BUILT_IN, ids=[b[0] for b in BUILT_IN])
def test_built_in_metrics_declare_themselves_and_the_name_fallback_agrees(name, metric, values):
    info = metric_info(metric)
    assert isinstance(info.higher_is_better, bool) and info.display_name
    by_name = metric_info_by_name(name, values)
    assert (by_name.higher_is_better, by_name.scale) == (info.higher_is_better, info.scale)


def test_declared_values():
    assert metric_info(accuracy) == MetricInfo(True, "Accuracy", 100.0, "%") and metric_info(accuracy).percent
    assert metric_info(Perplexity()).higher_is_better is False
    assert metric_info(Perplexity()).display_name == "Perplexity"
    assert metric_info(LogPerplexity()).display_name == "Log-perplexity"
    assert metric_info(BLEU()) == MetricInfo(True, "BLEU", 1.0, "BLEU")


def test_a_plain_callable_still_works_with_an_unknown_direction():
    def hits(output, batch):
        return 1, 1

    assert metric_info(hits) == MetricInfo(None, None, 1.0)
    assert metric_info(lambda o, b: (0, 1)).higher_is_better is None
    same = describe_metric(hits, higher_is_better=False, display_name="Misses")
    assert same is hits and metric_info(hits) == MetricInfo(False, "Misses", 1.0)


def test_name_fallback_rules():
    assert metric_info_by_name("accuracy", [0.5]).scale == 100.0
    assert metric_info_by_name("accuracy", [50.0]).scale == 1.0  # already in percent
    assert metric_info_by_name("top5", [0.5]).percent
    assert metric_info_by_name("val-mse", [3.0]).higher_is_better is False
    assert metric_info_by_name(None).higher_is_better is True
    assert metric_info_by_name("loss").higher_is_better is False


def _user_results(path, *, with_infos: bool):
    """A results file of a user's metric ``score`` declared lower-is-better (its name alone
    reads as higher-is-better), its header written by the probe's metadata."""
    import json

    from paramcorrupt.probe.store import ResultsStore, chance_metadata

    def score(output, batch):
        return 0.0, 1

    describe_metric(score, higher_is_better=False, display_name="Score", unit="")
    metadata = chance_metadata("score", 0.5, {"score": score}) if with_infos else chance_metadata("score", 0.5)
    with ResultsStore(path, metadata=metadata) as store:
        store.open("sweep1", {"trials": 1})
        for method, after in (("gradient", 0.9), ("random", 0.6)):
            store.append({"sweep_id": "sweep1", "key": method, "task": "mine", "grouping": "all", "group": "all",
                          "method": method, "p": 2.0, "eps": 0.1, "n": 4, "k": 4, "trial": 0, "metric": "score",
                          "metric_before": 0.5, "metric_after": after, "loss_before": 1.0, "loss_after": 1.5})
    return json.loads(path.read_text().splitlines()[0])


def test_metric_info_round_trips_through_a_results_header(tmp_path):
    from paramcorrupt.probe.report import load_rows

    header = _user_results(tmp_path / "r.jsonl", with_infos=True)
    assert header["chance"] == {"score": 0.5}
    recorded = MetricInfo.from_dict(header["metrics"]["score"])
    assert recorded == MetricInfo(False, "Score", 1.0, "", 0.5)
    assert MetricInfo.from_dict(header["metrics"]["loss"]).higher_is_better is False
    assert "metrics" not in header["config"]  # beside the sweep's configuration, not in it
    rows = load_rows(tmp_path / "r.jsonl")
    assert all(r["_metric_info"] == recorded for r in rows)


def test_a_report_reads_a_user_metrics_direction_from_the_header(tmp_path):
    from paramcorrupt.probe.report import metric_display, write_report

    _user_results(tmp_path / "new.jsonl", with_infos=True)
    text = write_report(tmp_path / "new.jsonl", tmp_path / "new").read_text()
    assert "metric **score**, lower is better" in text
    # the name alone would say higher is better (an old file, without the header's record)
    assert metric_display("score", [0.5]).higher_is_better is True
    _user_results(tmp_path / "old.jsonl", with_infos=False)
    assert "metric **score**, higher is better" in write_report(tmp_path / "old.jsonl", tmp_path / "old").read_text()
