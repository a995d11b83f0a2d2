"""The report: every figure and table from a results file alone (issue 3, item 4)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta

from paramcorrupt.cli import main
from paramcorrupt.probe.report import PROBS, load_rows, star, write_report

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIGINAL = 0.9  # clean accuracy of the synthetic model
GROUPS = {
    "type": {"conv": 1000, "norm": 50, "linear": 200},
    "position": {"block0": 600, "block1": 650},
}
G_OF = {"conv": 2.0, "norm": 5.0, "linear": 0.5, "block0": 3.0, "block1": 1.0}
EPS = (1e-3, 1e-2, 1e-1)
TRIALS = 12


def _row(**kw):
    base = {
        "sweep_id": "synthetic",
        "task": "toy",
        "metric": "accuracy",
        "metric_before": ORIGINAL,
        "loss_before": 0.3,
        "grad_loss_before": 0.25,
        "seconds": 0.01,
    }
    base.update(kw)
    base["key"] = "|".join(
        str(base.get(f)) for f in ("grouping", "group", "method", "p", "n", "eps", "trial")
    )
    # the gradient's data moves twice as much as the evaluation data: the Theorem 1 panel must
    # use the former (first-order theory predicts the loss the gradient was taken on)
    grad_change = base.pop("grad_change")
    base["loss_change"] = 0.5 * grad_change
    base["loss_after"] = base["loss_before"] + base["loss_change"]
    base["grad_loss_after"] = base["grad_loss_before"] + grad_change
    return base


def synthetic_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for grouping, groups in GROUPS.items():
        for group, k in groups.items():
            G = G_OF[group]
            for p in (2, "inf"):
                for n in (k, 10):
                    for eps in EPS:
                        scale = eps * G * (1 if p == 2 else math.sqrt(n))
                        fo = scale
                        drop = min(0.8, 5 * scale)
                        common = dict(grouping=grouping, group=group, p=p, n=n, k=k, eps=eps, G=G)
                        rows.append(
                            _row(
                                **common,
                                method="gradient",
                                trial=0,
                                grad_change=1.2 * fo,
                                metric_after=ORIGINAL - drop,
                                first_order=fo,
                            )
                        )
                        rows.append(
                            _row(
                                **common,
                                method="iterative",
                                trial=0,
                                grad_change=1.5 * fo,
                                metric_after=ORIGINAL - min(0.85, 6 * scale),
                                first_order=fo,
                            )
                        )
                        for t in range(TRIALS):
                            dl = float(scale * rng.normal() / math.sqrt(k))
                            rows.append(
                                _row(
                                    **common,
                                    method="random",
                                    trial=t,
                                    grad_change=dl,
                                    metric_after=ORIGINAL - min(0.8, drop * abs(rng.normal()) / 20),
                                    first_order=None,
                                )
                            )
    # a hand-made Table 1 case for the `*` convention: accuracy in percent, threshold 0.1 point
    hand = dict(grouping="table1", group="hand", p="inf", n=20, k=20, G=1.0)
    for eps, grad_after, rand_after in (
        (1e-4, 0.8995, (0.9, 0.899, 0.899)),  # -0.05 and -0.067 points: both starred
        (1e-3, 0.8985, (0.898, 0.898, 0.898)),  # -0.15 and -0.20 points: neither starred
    ):
        rows.append(
            _row(
                **hand,
                eps=eps,
                method="gradient",
                trial=0,
                grad_change=0.01,
                metric_after=grad_after,
                first_order=0.01,
                ratio=2.5,  # the row's own ratio wins over the recomputed 0.01 / 0.01
            )
        )
        for t, after in enumerate(rand_after):
            rows.append(
                _row(
                    **hand, eps=eps, method="random", trial=t, grad_change=1e-4, metric_after=after
                )
            )
    return rows


def write_results(path: Path, rows: list[dict], torn: bool = True) -> Path:
    with path.open("w") as f:
        f.write(json.dumps({"header": {"sweep_id": "synthetic", "config": {"task": "toy"}}}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
        if torn:
            f.write('{"sweep_id": "synthetic", "method": "rand')  # an interrupted write
    return path


def check_figures(md_path: Path) -> list[Path]:
    """Every PNG under figures/ is linked from the Markdown, every link exists and decodes."""
    from matplotlib.image import imread

    text = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links, "the report links no figure"
    linked = {(md_path.parent / link).resolve() for link in links}
    on_disk = {p.resolve() for p in (md_path.parent / "figures").glob("*")}
    assert linked == on_disk
    for path in linked:
        assert path.suffix == ".png"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    return sorted(linked)


def table_row(text: str, heading: str, eps: str) -> list[str]:
    """The cells of the row ``eps`` of the Table-1 pivot under ``heading``."""
    section = text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == eps:
            return cells
    raise AssertionError(f"no row eps={eps} under {heading}")


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    results = write_results(tmp / "results.jsonl", synthetic_rows())
    assert main(["report", str(results)]) == 0
    md = tmp / "report" / "report.md"  # default: report/ next to the results file
    assert md.is_file()
    return md


@pytest.mark.slow
def test_synthetic_report_figures(synthetic_report):
    figures = check_figures(synthetic_report)
    names = {p.name for p in figures}
    # heatmaps: (grouping, method, p, n) = 3 groupings x 3/2 methods x 2 p x 2 n, minus the
    # hand-made table1 grouping's single (p, n) with two methods: its one group ("hand") has
    # no heatmap, its curves show the same values (issue 22)
    heatmaps = [n for n in names if n.startswith("heatmap")]
    assert len(heatmaps) == 2 * 3 * 2 * 2
    assert not any("table1" in n for n in heatmaps)
    assert (
        "_No heatmap of a single group, its curves (next section) show the same values: hand (k=20) (2 maps: random, gradient; L_inf; n = k)"
        in synthetic_report.read_text()
    )
    curves = [n for n in names if n.startswith("curves")]
    assert len(curves) == 2 * 2 * 2 + 1
    assert "theorem1.png" in names
    assert any(n.startswith("theorem1-eta") for n in names)
    assert "group `norm` (k = 50)" in synthetic_report.read_text()


@pytest.mark.slow
def test_star_convention_hand_made(synthetic_report):
    text = synthetic_report.read_text()
    heading = "### task `toy`, grouping `table1`, group `hand` (k = 20); L_inf, n = k = 20"
    assert heading in text
    assert "Without corruption: accuracy (%) = 90.00 *" in text
    cells = table_row(text, heading, "0.0001")
    # random mean 89.933 (-0.067 points), gradient 89.95 (-0.05): within 0.1 -> starred
    assert cells[1].endswith(" *") and cells[1].startswith("89.93 ± ")
    assert cells[2] == "89.95 *"
    cells = table_row(text, heading, "0.001")
    # random 89.80 (-0.20), gradient 89.85 (-0.15): not starred, difference shown
    assert cells[1] == "89.80 ± 0.00 (-0.20)"
    assert cells[2] == "89.85 (-0.15)"
    assert cells[-1] == "2.500"  # the row's `ratio` field
    assert star(89.95, 90.0) and not star(89.85, 90.0) and not star(90.11, 90.0)


@pytest.mark.slow
def test_pivot_columns_and_sizes(synthetic_report):
    text = synthetic_report.read_text()
    heading = "### task `toy`, grouping `type`, group `conv` (k = 1,000); L_2, n = 10"
    assert heading in text
    section = text.split(heading, 1)[1].split("\n### ", 1)[0]
    assert "random accuracy (%) (mean ± std)" in section
    assert "gradient accuracy (%)" in section and "iterative accuracy (%)" in section
    assert "gradient Δloss" in section and "random Δloss" in section
    cells = table_row(text, heading, "0.01")
    # gradient-based: accuracy 90 - 500 * eps * G = 80 -> -10 points
    assert cells[2] == "80.00 (-10.00)"
    # Δloss on the evaluation data: half the gradient data's 1.2 * first-order
    assert cells[5] == f"{0.6 * 0.01 * 2.0:+.3e}"
    # Theorem 2 ratio, recomputed on the gradient's data (loss change = 1.2 first-order)
    assert cells[-1] == "1.200"


@pytest.mark.slow
def test_theorem1_quantiles_match_beta_form(synthetic_report):
    text = synthetic_report.read_text()
    rows = [r for r in synthetic_rows() if r["method"] == "random"]
    checked = 0
    for grouping, groups in GROUPS.items():
        for group, k in groups.items():
            G = G_OF[group]
            for eps in EPS:
                prefix = f"| task `toy`, grouping `{grouping}`, group `{group}` (k = {k:,}); L_2, n = k, eps = {eps:g} |"
                line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)
                assert line is not None, prefix
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                assert cells[1:4] == ["yes", "gradient", str(TRIALS)]
                dl = np.abs(
                    [
                        r["grad_loss_after"] - r["grad_loss_before"]
                        for r in rows
                        if (r["grouping"], r["group"], r["p"], r["n"], r["eps"])
                        == (grouping, group, 2, k, eps)
                    ]
                )
                for i, prob in enumerate(PROBS):
                    theory = eps * G * math.sqrt(beta.ppf(prob, 0.5, (k - 1) / 2))
                    assert cells[6 + 2 * i] == f"{np.quantile(dl, prob):.3e}"
                    assert cells[7 + 2 * i] == f"{theory:.3e}"
                assert cells[6 + 2 * len(PROBS)] == f"{eps * G:.3e}"
                assert cells[7 + 2 * len(PROBS)] == f"{1.2 * eps * G:+.3e}"
                checked += 1
    assert checked == 5 * len(EPS)
    # the ideal setting (L_2, n = k) exists for every group, so no L_inf row is shown
    assert "; L_inf, n = k, eps" not in text


def test_load_rows_skips_header_and_torn_line(tmp_path):
    rows = synthetic_rows()
    path = write_results(tmp_path / "r.jsonl", rows)
    loaded = load_rows(path)
    assert len(loaded) == len(rows)
    assert all(r["p"] in (2.0, math.inf) for r in loaded)
    # a broken line that is not the last one is an error, not silently dropped
    lines = path.read_text().splitlines()
    lines.insert(3, "{not json")
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="not a JSON line"):
        load_rows(tmp_path / "bad.jsonl")


def test_bad_input(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing.jsonl", tmp_path / "out")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no result rows"):
        write_report(empty, tmp_path / "out")
    header = tmp_path / "header.jsonl"
    header.write_text(json.dumps({"header": {"sweep_id": "x"}}) + "\n")
    with pytest.raises(ValueError, match="no result rows"):
        load_rows([header])
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    for path in (tmp_path / "missing.jsonl", empty, binary):
        assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("paramcorrupt report: error:") and "\n" not in err


def test_sparse_rows_are_tolerated(tmp_path):
    """Rows without metric or loss fields: what cannot be drawn is noted, nothing crashes."""
    rows = [
        {"method": "gradient", "p": "inf", "eps": 0.1, "n": 5, "k": 5},
        {"method": "random", "p": "inf", "eps": 0.1, "n": 5, "k": 5, "trial": 0},
        {"method": "random", "eps": 0.1},  # no p: skipped with a note
    ]
    path = tmp_path / "sparse.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = write_report(path, tmp_path / "out")
    text = md.read_text()
    assert "## Notes" in text and "not drawn" in text and "skipped" in text
    assert not list((tmp_path / "out" / "figures").glob("*"))


@pytest.mark.slow
def test_demo_results_report(tmp_path, capsys):
    """Real rows: the demo's results files (Table 1 and, where the demo writes them, its probes)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--trials", "3", "--epochs", "2"]) == 0
    results = sorted(out.glob("*.jsonl"))
    assert out / "results.jsonl" in results
    capsys.readouterr()
    report_dir = tmp_path / "rep"
    assert main(["report", *map(str, results), "--out", str(report_dir)]) == 0
    md = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert md == report_dir / "report.md" and md.is_file()
    figures = check_figures(md)
    assert any(p.name.startswith("heatmap") for p in figures)
    assert any(p.name.startswith("curves") for p in figures)
    # the demo's fault probe: random int8 flips and the bit search in one figure (issue 21)
    assert out / "probe-faults.jsonl" in results
    assert any(
        p.name.startswith("faults") and "bitflip-bit-search-flips" in p.name for p in figures
    )
    text = md.read_text()
    assert "## Table 1" in text and "Without corruption: accuracy (%) =" in text
    assert "random bit flips | all | 50 |" in text
    assert "L_inf, n = k" in text and "L_inf, n = 100" in text
    if (out / "report" / "report.md").is_file():  # the demo's own report
        check_figures(out / "report" / "report.md")
