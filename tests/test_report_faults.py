"""The report's hardware-fault section: curves against the fault model's own axis and
heatmaps by group, from rows of the fault models (and beside L_p rows)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramcorrupt import accuracy, classification_loss, select
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep
from paramcorrupt.probe.report import write_report

pytest.importorskip("matplotlib")


def probe(tmp_path, methods, settings, name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    data = [(x, x[:, :3].argmax(1))]
    groups = {
        "lower": select(model, "0.*", name="lower"),
        "upper": select(model, "2.*", name="upper"),
    }
    config = SweepConfig(
        methods=methods,
        settings=settings,
        trials=3,
        eps_values=[1e-2, 1e-1],
        task="toy",
        grouping="position",
    )
    path = tmp_path / f"{name}.jsonl"
    sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        store=ResultsStore(path),
        progress=False,
    )
    return path


@pytest.mark.slow
def test_fault_rows_get_curves_heatmaps_and_a_table(tmp_path):
    path = probe(
        tmp_path,
        ["bitflip", "bit-search"],
        {
            "bitflip": {"format": ["int8"], "ber": [1e-3, 1e-2, 1e-1], "flips": [1, 4]},
            "bit-search": {"flips": [1, 2, 4]},
        },
        "faults",
    )
    report = write_report(path, tmp_path / "report")
    text = report.read_text()
    assert "## Hardware faults: the metric against the fault rate" in text
    assert (
        "**task `toy`, bitflip by bit error rate (BER) (format=int8, bits=any); grouping `position`**" in text
    )  # its axis (issue 22)
    assert (
        "| group | bit error rate (BER) | accuracy (%) after (mean ± std) | trials | flipped bits (mean) "
        "| weights changed (mean) | loss Inf/NaN |"
    ) in text
    assert "| lower | 0.001 |" in text and "| upper | 0.1 |" in text
    # random flips counted in flips and the bit search: one figure, one table (issue 21)
    assert (
        "**task `toy`, bitflip and bit-search by flipped bits (format=int8, bits=any); grouping `position`**"
        in text
    )
    assert "| fault | group | flipped bits |" in text
    assert (
        "| random bit flips | lower | 4 |" in text
        and "| bit search (candidates=1, batches=1) | upper | 2 |" in text
    )
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert sum(f.endswith("_curves.png") for f in figures) == 2, (
        figures
    )  # by ber; by flips (both methods)
    assert any("bitflip" in f and f.endswith("_curves.png") for f in figures)
    assert any("bit-search" in f and f.endswith("_heatmap.png") for f in figures)
    assert "## Table 1" not in text  # no L_p rows, no L_p sections


@pytest.mark.slow
def test_fault_rows_beside_lp_rows(tmp_path):
    path = probe(
        tmp_path,
        ["random", "gradient", "stuck-at"],
        {"stuck-at": {"value": [1], "bits": ["sign"], "flips": [1, 5]}},
        "mixed",
    )
    text = write_report(path, tmp_path / "report").read_text()
    assert (
        "## Hardware faults" in text
        and "stuck-at by stuck bits (format=float32, bits=sign, value=1)" in text
    )
    assert "| group | stuck bits |" in text
    assert "Heatmaps: damage by group and eps" in text


def test_rows_with_an_inf_or_nan_loss_are_reported_and_counted(tmp_path):
    """The top exponent bit stuck at 1 in 20 weights: outputs overflow to Inf/NaN; the rows
    are kept, and the table counts them per setting."""
    from paramcorrupt.probe import read_results

    path = probe(
        tmp_path,
        ["stuck-at"],
        {"stuck-at": {"value": [1], "bits": ["msb"], "flips": [1, 20]}},
        "nan",
    )
    _, rows = read_results(path)
    flagged = {}
    for r in rows:
        flagged[(r["group"], r["flips"])] = flagged.get((r["group"], r["flips"]), 0) + bool(
            r.get("loss_nonfinite")
        )
    assert flagged[("upper", 20)] > 0
    text = write_report(path, tmp_path / "report").read_text()
    for (group, flips), count in flagged.items():
        line = next(x for x in text.splitlines() if x.startswith(f"| {group} | {flips} |"))
        assert line.endswith(f"| {count} |")
