"""The report's figures for a first-time reader (issue 15, item 8): the task in every curve
title, one legend per figure, no empty grid slots, the metric's chance level as a dotted line
where the results header gives it; and the train CLI's --n errors in the CLI's words (item 10)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from paramcorrupt import accuracy, classification_loss, select
from paramcorrupt.probe import ResultsStore, SweepConfig, read_results, sweep
from paramcorrupt.probe.report import write_report
from paramcorrupt.probe.report.base import ReportBase, grid_shape
from paramcorrupt.probe.store import chance_metadata

pytest.importorskip("matplotlib")

CHANCE = 1 / 3  # three classes


def _probe(path, *, chance=None, groups=None, methods=("random", "gradient"), settings=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    data = [(x, x[:, :3].argmax(1))]
    all_groups = {
        name.replace(".", "-"): select(model, name, name=name)
        for name, _ in model.named_parameters()
    }
    config = SweepConfig(
        groups=groups,
        methods=methods,
        settings=settings,
        trials=2,
        eps_values=[1e-2, 1e-1, 1.0],
        task="toy",
        grouping="tensor",
        metric="accuracy",
    )
    store = ResultsStore(path, metadata=chance_metadata("accuracy", chance))
    return sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        {"accuracy": accuracy},
        groups=all_groups,
        store=store,
        progress=False,
    )


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, with the file name it is saved under."""
    saved: list[tuple[str, object]] = []
    original = ReportBase._save

    def save(self, fig, name, tight=False):
        saved.append((name, fig))
        return original(self, fig, name, tight)

    monkeypatch.setattr(ReportBase, "_save", save)
    return saved


def _chance_lines(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == ":"]


def _legends(fig):
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]


def _slots(fig):
    """The grid cells the figure's axes cover, and the grid's size."""
    spec = fig.axes[0].get_subplotspec().get_gridspec()
    cells = set()
    for ax in fig.axes:
        ss = ax.get_subplotspec()
        cells |= {(r, c) for r in ss.rowspan for c in ss.colspan}
    return cells, spec.nrows * spec.ncols


def test_grid_shape_leaves_no_row_of_holes():
    assert grid_shape(1) == (1, 1) and grid_shape(2) == (1, 2) and grid_shape(3) == (1, 3)
    assert grid_shape(4) == (2, 2)
    assert grid_shape(5) == (2, 3) and grid_shape(12) == (4, 3)
    with pytest.raises(ValueError):
        grid_shape(0)


@pytest.mark.slow
def test_curves_have_the_task_one_legend_no_empty_slot_and_the_chance_line(tmp_path, figures):
    # five groups: a 2 x 3 grid whose sixth slot holds the legend
    path = tmp_path / "results.jsonl"
    _probe(path, chance=CHANCE, groups=["0-weight", "0-bias", "2-weight", "2-bias", "4-weight"])
    header, _ = read_results(path)
    assert header["chance"] == {"accuracy": CHANCE}
    text = write_report(path, tmp_path / "report").read_text()
    assert "chance level 33.33 %" in text
    curves = [(name, fig) for name, fig in figures if name.startswith("curves")]
    assert curves
    for name, fig in curves:
        assert "task toy" in fig._suptitle.get_text(), name
        legends = _legends(fig)
        assert len(legends) == 1, name
        labels = [t.get_text() for t in legends[0].get_texts()]
        # the random trials' count and band in the legend (issue 21): two trials per eps here
        assert {
            "random: mean of 2 trials per point",
            "random: 10th-90th percentile of trials",
            "gradient-based",
            "original",
            "chance",
        } <= set(labels)
        cells, size = _slots(fig)
        assert len(cells) == size, f"{name}: an empty grid slot"
        panels = [ax for ax in fig.axes if ax.axison]
        assert len(panels) == 5
        for ax in panels:
            (line,) = _chance_lines(ax)
            assert line.get_label() == "chance"
            assert list(line.get_ydata()) == pytest.approx([100 * CHANCE] * 2)  # accuracy in %
        width, height = fig.get_size_inches() * fig.dpi
        assert width >= 500 and height >= 400


@pytest.mark.slow
def test_four_panels_are_two_by_two_with_the_legend_below(tmp_path, figures):
    path = tmp_path / "results.jsonl"
    _probe(path, chance=CHANCE, groups=["0-weight", "0-bias", "2-weight", "2-bias"])
    write_report(path, tmp_path / "report")
    ((name, fig),) = [(n, f) for n, f in figures if n.startswith("curves")]
    spec = fig.axes[0].get_subplotspec().get_gridspec()
    assert (spec.nrows, spec.ncols) == (2, 2) and len(fig.axes) == 4
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)


def test_a_file_without_chance_reports_without_the_line(tmp_path, figures):
    path = tmp_path / "results.jsonl"
    _probe(path, groups=["0-weight"])
    assert "chance" not in read_results(path)[0]
    text = write_report(path, tmp_path / "report").read_text()
    assert "chance level" not in text
    ((name, fig),) = [(n, f) for n, f in figures if n.startswith("curves")]
    assert "task toy" in fig._suptitle.get_text()
    assert not any(_chance_lines(ax) for ax in fig.axes)
    labels = [t.get_text() for t in _legends(fig)[0].get_texts()]
    assert "chance" not in labels and "random: mean of 2 trials per point" in labels
    width, _ = fig.get_size_inches() * fig.dpi
    assert width >= 500  # one panel: still wide enough for its two-line title


def test_the_chance_level_changes_neither_rows_nor_sweep_id(tmp_path):
    plain = _probe(tmp_path / "plain.jsonl", groups=["0-weight"])
    marked = _probe(tmp_path / "marked.jsonl", chance=CHANCE, groups=["0-weight"])
    for a, b in zip(plain, marked, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    header_plain, header_marked = (
        read_results(tmp_path / "plain.jsonl")[0],
        read_results(tmp_path / "marked.jsonl")[0],
    )
    assert header_plain["sweep_id"] == header_marked["sweep_id"]
    assert {k: v for k, v in header_marked.items() if k != "chance"} == header_plain
    # a file written without it resumes under a store that has it: nothing recomputed, header kept
    again = _probe(tmp_path / "plain.jsonl", chance=CHANCE, groups=["0-weight"])
    assert again == plain
    assert "chance" not in read_results(tmp_path / "plain.jsonl")[0]


def test_metadata_may_not_overwrite_the_sweeps_header_entries(tmp_path):
    store = ResultsStore(tmp_path / "r.jsonl", metadata={"groups": {}})
    with pytest.raises(ValueError, match="groups"):
        store.open("abc", {})
    assert not (tmp_path / "r.jsonl").exists()  # refused before the file is made
    with pytest.raises(ValueError, match="finite"):
        chance_metadata("accuracy", float("nan"))
    assert chance_metadata(None, 0.1) == {} and chance_metadata("accuracy", None) == {}


def test_fault_curves_draw_the_chance_line(tmp_path, figures):
    path = tmp_path / "faults.jsonl"
    _probe(
        path,
        chance=CHANCE,
        groups=["0-weight", "2-weight"],
        methods=["bitflip"],
        settings={"bitflip": {"format": ["int8"], "ber": [1e-3, 1e-1]}},
    )
    write_report(path, tmp_path / "report")
    ((name, fig),) = [(n, f) for n, f in figures if n.endswith("_curves")]
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 2
    for ax in panels:
        (line,) = _chance_lines(ax)
        assert list(line.get_ydata()) == pytest.approx([100 * CHANCE] * 2)
    # one legend for the figure, naming the line
    (legend,) = fig.legends
    assert "chance" in [t.get_text() for t in legend.get_texts()]


def test_builtin_tasks_declare_their_chance_level():
    from paramcorrupt.tasks import get_task

    assert get_task("digits", epochs=0, train=False).chance == pytest.approx(0.1)


def test_train_cli_n_errors_say_all(capsys):
    from paramcorrupt.cli import main
    from paramcorrupt.cli.values import parse_method
    from paramcorrupt.cli.values import parse_n as parse_top_n
    from paramcorrupt.experiments.training import MethodConfig

    for value in ("0", "-3", "abc"):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--n", value, "--epochs", "1"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "'all'" in err and "None" not in err, err
    with pytest.raises(ValueError, match="'all'") as error:
        parse_method("resistant:n=0", MethodConfig())
    assert "None" not in str(error.value)
    assert parse_top_n("all") is None and parse_top_n("K") is None and parse_top_n("7") == 7


def test_results_header_json_is_plain(tmp_path):
    """The header entry is plain JSON (what the report and other readers parse)."""
    path = tmp_path / "results.jsonl"
    _probe(path, chance=CHANCE, groups=["0-bias"], methods=["gradient"])
    assert json.loads(path.read_text().splitlines()[0])["chance"] == {"accuracy": CHANCE}
