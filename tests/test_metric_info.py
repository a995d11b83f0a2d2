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
    assert metric_info(accuracy) == MetricInfo(True, "Accuracy", 100.0) and metric_info(accuracy).percent
    assert metric_info(Perplexity()).higher_is_better is False
    assert metric_info(Perplexity()).display_name == "Perplexity"
    assert metric_info(LogPerplexity()).display_name == "Log-perplexity"
    assert metric_info(BLEU()) == MetricInfo(True, "BLEU", 1.0)


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
