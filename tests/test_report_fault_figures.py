"""The fault figures and tables a reliability engineer reads (issue 21, point 3; issue 20,
point 5): the number of trials in every legend, bands that never leave the metric's range,
random flips and the bit search in one figure, one colour scale per heatmap family with its
range stated, stuck-at rows counted in stuck bits and weights changed, one unit for a metric
(console included), and what a quantised probe measured.

Most rows here are written by hand (a results file needs no sweep to be reported), so every
expected number is computed in the test from the rows themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from paramcorrupt.probe.report import write_report
from paramcorrupt.probe.report.base import ReportBase
from paramcorrupt.probe.report.summary import summary

pytest.importorskip("matplotlib")

HEADER = {
    "sweep_id": "hand",
    "metrics": {
        "accuracy": {
            "higher_is_better": True,
            "display_name": None,
            "scale": 100.0,
            "unit": "%",
            "chance": None,
        }
    },
}


def _row(method, group, trial, after, before=0.99, **setting):
    row = {
        "task": "toy",
        "grouping": "position",
        "group": group,
        "method": method,
        "trial": trial,
        "metric": "accuracy",
        "metric_before": before,
        "metric_after": after,
        "loss_before": 0.1,
        "loss_after": 0.2,
        "loss_change": 0.1,
        "k": 100,
        "p": None,
        "eps": None,
        "n": None,
    }
    row.update(setting)
    return row


def _write(path, rows, header=HEADER):
    path.write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    return path


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, by the name it is saved under."""
    saved: dict[str, object] = {}
    original = ReportBase._save

    def save(self, fig, name, tight=False):
        saved[name] = fig
        return original(self, fig, name, tight)

    monkeypatch.setattr(ReportBase, "_save", save)
    return saved


def _legend_texts(fig):
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _bands(ax):
    """The y values of every filled band (PolyCollection) of ``ax``."""
    from matplotlib.collections import PolyCollection

    return [
        c.get_paths()[0].vertices[:, 1] for c in ax.collections if isinstance(c, PolyCollection)
    ]


# trials near 100 % with one bad trial: mean + std is above 100 % (the band the issue saw)
NEAR_TOP = [1.0, 1.0, 1.0, 1.0, 0.98, 1.0, 0.7]


def _ber_rows():
    rows = []
    for group in ("lower", "upper"):
        for ber in (1e-4, 1e-3, 1e-2):
            for t, value in enumerate(NEAR_TOP if ber == 1e-2 else [0.99] * 7):
                rows.append(
                    _row(
                        "bitflip",
                        group,
                        t,
                        value - (0.3 if group == "upper" and ber == 1e-2 else 0.0),
                        before=1.0,
                        format="int8",
                        bits="any",
                        ber=ber,
                        bit_errors=3 + t,
                        changed=2 + t,
                    )
                )
    return rows


def test_legend_names_the_trials_and_the_band_stays_in_range(tmp_path, figures):
    rows = _ber_rows()
    mean, std = np.mean(NEAR_TOP) * 100, np.std(NEAR_TOP, ddof=1) * 100
    assert mean + std > 100  # a ±1 std band would leave the range here
    text = write_report(_write(tmp_path / "r.jsonl", rows), tmp_path / "report").read_text()
    (fig,) = [f for n, f in figures.items() if n.endswith("_curves")]
    labels = _legend_texts(fig)
    assert "random bit flips: mean of 7 trials per point" in labels, labels
    assert "random bit flips: 10th-90th percentile of trials" in labels
    assert (
        "10th to 90th percentile of the trials" in text and "7 |" in text
    )  # caption and the trials column
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 2
    lower = panels[0]
    (band,) = _bands(lower)
    assert (
        band.max() <= 100.0 and band.min() >= 70.0 - 1e-9
    )  # within the trials, so within [0, 100]
    # the band's ends at ber = 1e-2: numpy's 10th and 90th percentile of the trials, in percent
    expected = np.percentile(np.array(NEAR_TOP) * 100, [10, 90])
    assert band.min() == pytest.approx(min(expected[0], 99.0))
    assert expected[1] == pytest.approx(100.0) and band.max() == pytest.approx(100.0)
    # the line is the mean of the trials at each ber
    (line,) = [ln for ln in lower.lines if ln.get_marker() == "o"]
    assert list(line.get_ydata()) == pytest.approx([99.0, 99.0, mean])


def test_one_colour_scale_for_every_fault_heatmap_stated_in_the_text(tmp_path, figures):
    rows = _ber_rows()
    for group, drop in (("lower", 0.05), ("upper", 0.6)):
        for flips in (1, 10):
            rows.append(
                _row(
                    "stuck-at",
                    group,
                    0,
                    1.0 - drop * flips / 10,
                    before=1.0,
                    format="float32",
                    bits="sign",
                    value=1,
                    flips=flips,
                    bit_errors=flips,
                    changed=flips // 2,
                )
            )
    text = write_report(_write(tmp_path / "r.jsonl", rows), tmp_path / "report").read_text()
    heatmaps = {n: f for n, f in figures.items() if n.endswith("_heatmap")}
    assert len(heatmaps) == 2
    # the largest mean damage of any cell of either map, in points: the stuck-at upper group at 10
    top = max(abs(1.0 - (1.0 - 0.6)) * 100, (1.0 - np.mean(np.array(NEAR_TOP) - 0.3)) * 100)
    for fig in heatmaps.values():
        (image,) = fig.axes[0].get_images()
        assert image.get_clim() == pytest.approx((-top, top))
    stated = f"colour scale {-top:.3g} to {top:.3g} (accuracy drop (points); the largest mean damage of any cell)"
    assert text.count(stated) == 2
    # with a chance level (10 %), the darkest red is a model reduced to guessing: a 90-point drop
    figures.clear()
    header = dict(HEADER, chance={"accuracy": 0.1})
    text = write_report(
        _write(tmp_path / "c.jsonl", rows, header), tmp_path / "report-c"
    ).read_text()
    heatmaps = [f for n, f in figures.items() if n.endswith("_heatmap")]
    assert len(heatmaps) == 2
    assert all(
        f.axes[0].get_images()[0].get_clim() == pytest.approx((-90.0, 90.0)) for f in heatmaps
    )
    assert (
        text.count(
            "colour scale -90 to 90 (accuracy drop (points); the drop from the original to the chance level)"
        )
        == 2
    )


def test_stuck_at_counts_stuck_bits_and_the_weights_changed(tmp_path, figures):
    rows = [
        _row(
            "stuck-at",
            g,
            t,
            0.9,
            format="float32",
            bits="any",
            value=1,
            flips=10,
            bit_errors=10,
            changed=c,
        )
        for g in ("lower", "upper")
        for t, c in enumerate([4, 6, 5])
    ]
    rows += [
        _row(
            "stuck-at",
            "lower",
            t,
            0.9,
            format="float32",
            bits="any",
            value=1,
            ber=1e-3,
            bit_errors=b,
            changed=1,
        )
        for t, b in enumerate([7, 9])
    ]
    text = write_report(_write(tmp_path / "r.jsonl", rows), tmp_path / "report").read_text()
    assert (
        "| group | stuck bits | accuracy (%) after (mean ± std) | trials | weights changed (mean) | loss Inf/NaN |"
        in text
    )
    assert "| lower | 10 | 90.00 ± 0.00 | 3 | 5 | 0 |" in text  # mean of changed 4, 6, 5
    assert (
        "| group | bit error rate (BER) | accuracy (%) after (mean ± std) | trials | stuck bits (mean) | weights changed (mean) |"
        in text
    )
    assert "| lower | 0.001 | 90.00 ± 0.00 | 2 | 8 | 1 | 0 |" in text
    assert "faulty bits" not in text
    curves = [f for n, f in figures.items() if n.endswith("_curves") and "flips" in n]
    assert [ax.get_xlabel() for ax in curves[0].axes if ax.lines and ax.get_xlabel()] == [
        "stuck bits",
        "stuck bits",
    ]


def test_random_flips_and_the_bit_search_share_one_figure(tmp_path, figures):
    rows = []
    for flips in (1, 2, 5, 10, 100):
        for t in range(4):
            rows.append(
                _row(
                    "bitflip",
                    "all",
                    t,
                    0.99 - 0.001 * flips * (t + 1),
                    format="int8",
                    bits="any",
                    flips=flips,
                    bit_errors=flips,
                    changed=flips,
                )
            )
        rows.append(
            _row(
                "bit-search",
                "all",
                0,
                max(0.1, 0.99 - 0.2 * flips),
                format="int8",
                bits="any",
                flips=flips,
                candidates=1,
                batches=1,
                bit_errors=flips,
                search_loss=1.0,
            )
        )
    text = write_report(_write(tmp_path / "r.jsonl", rows), tmp_path / "report").read_text()
    curves = [n for n in figures if n.endswith("_curves")]
    assert len(curves) == 1, curves
    (ax,) = [ax for ax in figures[curves[0]].axes if ax.lines]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "flipped bits"
    drawn = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert len(drawn) == 2  # random flips and the search on the same axes
    labels = _legend_texts(figures[curves[0]])
    assert "random bit flips: mean of 4 trials per point" in labels
    assert "bit search (candidates=1, batches=1)" in labels
    assert (
        "**task `toy`, bitflip and bit-search by flipped bits (format=int8, bits=any); grouping `position`**"
        in text
    )
    assert "| fault | group | flipped bits |" in text
    assert (
        "| bit search (candidates=1, batches=1) | all | 100 | 10.00 (one run: no std) | 1 |" in text
    )


def test_console_shows_fault_rows_in_the_metric_display(tmp_path):
    rows = [
        _row(
            "bitflip",
            "all",
            t,
            0.9944,
            before=0.9959,
            format="int8",
            bits="any",
            ber=1e-5,
            bit_errors=2,
            changed=2,
        )
        for t in range(2)
    ]
    lp = [
        dict(
            _row("random", "all", 0, 0.9591, before=0.9959),
            p=math.inf,
            eps=1e-3,
            n=100,
            first_order=0.1,
        )
    ]
    text = summary(lp + rows)
    assert "95.91" in text and "99.44" in text and "99.59" in text
    assert "0.9944" not in text and "0.9959" not in text
    assert "accuracy (%) before" in text
    # a lower-is-better metric of another unit keeps its own values
    ppl = [dict(r, metric="log_ppl", metric_before=4.2, metric_after=4.5) for r in rows]
    assert "4.5 " in summary(ppl) or "| 4.5 |" in summary(ppl)


def test_quantised_probe_says_what_was_measured(tmp_path, figures):
    head = {
        "int8": {
            "format": "int8",
            "options": {"granularity": "channel"},
            "scope": "model",
            "weights": 2,
            "parameters": 1040,
            "stored_bits": 8512,
            "float": {"loss": 0.1, "accuracy": 0.97},
        },
        "int4": {
            "format": "int4",
            "options": {"group_size": 16},
            "scope": "model",
            "weights": 2,
            "parameters": 1040,
            "stored_bits": 5200,
            "float": {"loss": 0.1, "accuracy": 0.97},
        },
    }
    paths = []
    for fmt, before in (("int8", 0.96), ("int4", 0.90)):
        rows = [
            _row(
                "bitflip",
                "all",
                t,
                before - 0.01 * t,
                before=before,
                format="float32",
                bits="any",
                ber=ber,
                quantized=fmt,
                metric_float=0.97,
                loss_float=0.1,
                code_faults=3,
                scale_faults=1 + t,
                zero_point_faults=0,
                bit_errors=4 + t,
                changed=5,
            )
            for ber in (1e-4, 1e-3)
            for t in range(3)
        ]
        paths.append(_write(tmp_path / f"{fmt}.jsonl", rows, dict(HEADER, quantized=head[fmt])))
    text = write_report(paths, tmp_path / "report").read_text()
    assert (
        "| int8 | granularity=channel | as a whole (every default weight) | 2 (1,040) | 8,512 | 97.00% | 96.00% | +1 points |"
        in text
    )
    assert (
        "| int4 | group_size=16 | as a whole (every default weight) | 2 (1,040) | 5,200 | 97.00% | 90.00% | +7 points |"
        in text
    )
    assert (
        "| 97.00 | 96.00 | 3 / 2 / 0 |" in text
    )  # float, quantised, faults in codes / scales / zero points
    (fig,) = [f for n, f in figures.items() if n.endswith("_formats")]
    labels = _legend_texts(fig)
    assert "int8 (clean 96.00%): mean of 3 trials per point" in labels
    assert "int4 (clean 90.00%): mean of 3 trials per point" in labels
    assert fig.axes[0].get_xscale() == "log"


def test_lp_heatmaps_share_one_stated_scale_and_lp_bands_stay_in_range(tmp_path, figures):
    rows = []
    for group, k in (("lower", 40), ("upper", 60)):
        for eps in (1e-2, 1e-1):
            for t, value in enumerate(NEAR_TOP):
                rows.append(
                    dict(_row("random", group, t, value, before=1.0, p="inf", eps=eps, n=k), k=k)
                )
            rows.append(
                dict(
                    _row(
                        "gradient",
                        group,
                        0,
                        0.5 if group == "upper" else 0.8,
                        before=1.0,
                        p="inf",
                        eps=eps,
                        n=k,
                        first_order=0.1,
                    ),
                    k=k,
                )
            )
    text = write_report(_write(tmp_path / "r.jsonl", rows), tmp_path / "report").read_text()
    top = 50.0  # the gradient rows of the upper group: 100 % -> 50 %
    assert f"Colour scale {-top:.3g} to {top:.3g} (accuracy drop (points))" in text
    maps = [f for n, f in figures.items() if n.startswith("heatmap")]
    assert len(maps) == 2 and all(f.axes[0].get_images()[0].get_clim() == (-top, top) for f in maps)
    (curves,) = [f for n, f in figures.items() if n.startswith("curves")]
    for ax in (a for a in curves.axes if a.lines):
        (band,) = _bands(ax)
        assert band.max() <= 100.0
    assert "random: mean of 7 trials per point" in _legend_texts(curves)
