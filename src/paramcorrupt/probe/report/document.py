"""The report as a whole: :func:`write_report` puts the sections together in ``report.md``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .curves import CurvesSection
from .display import _ordered, _p_label, short_name
from .faults import FaultSection, is_fault_row
from .heatmaps import HeatmapSection
from .methods import method_sort
from .outcomes import outcome_lines
from .rows import PathArg, _as_paths, _normalise, _Notes, load_rows
from .tables import Table1Section
from .theorem1 import Theorem1Section
from .theorem2 import theorem2_lines

__all__ = ["write_report"]


class _Report(Table1Section, HeatmapSection, CurvesSection, Theorem1Section):
    """Every section, over one set of rows."""


def write_report(
    results: PathArg | Sequence[PathArg],
    out_dir: PathArg | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for the rows of one or more results files.

    Args:
        results: a results JSONL file, or several (their rows are pooled; a folder stands for
            its ``results.jsonl``).
        out_dir: where to write; default ``report/`` next to the first results file.
        title: the report's heading.

    Returns:
        The path of the Markdown file.

    Raises:
        FileNotFoundError: a results file does not exist.
        ValueError: a file cannot be read or no file has a usable row.
        ImportError: matplotlib is not installed (``pip install paramcorrupt[report]``).
    """
    paths = _as_paths(results)
    raw = load_rows(paths)
    counts = {str(p): sum(1 for r in raw if r.get("_source") == str(p)) for p in paths}
    notes = _Notes()
    fault_rows = [r for r in raw if is_fault_row(r)]
    lp_rows = [r for r in raw if not is_fault_row(r)]
    rows, loss_source = _normalise(lp_rows, notes) if lp_rows or not fault_rows else ([], "")
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:  # pragma: no cover - matplotlib is in the test environment
        raise ImportError(
            "the report needs matplotlib: pip install 'paramcorrupt[report]'"
        ) from error
    out = Path(out_dir) if out_dir is not None else paths[0].parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    report = _Report(rows, out, notes)
    faults = FaultSection(fault_rows, out, notes, report._figure, report._save, report._link) if fault_rows else None

    sweeps = _ordered(r.get("sweep_id") for r in raw if r.get("sweep_id"))
    fault_body = faults.section() if faults is not None else []  # counts the fault rows it shows
    shown = len(rows) + (faults.shown if faults is not None else 0)
    lines = [f"# {title or 'Parameter corruption report'}", ""]
    lines.append(
        "Results: " + ", ".join(f"`{p}` ({counts[str(p)]} rows)" for p in paths) + f": {len(raw)} rows read, "
        + (f"all {shown} shown." if shown == len(raw) else f"{shown} shown; the Notes say which were left out and why.")
    )
    if sweeps:
        lines.append("Sweeps: " + ", ".join(f"`{s}`" for s in sweeps) + ".")
    for t in _ordered([*(r.get("task") for r in raw if r.get("task")), *report.tasks]):
        if t not in report.tasks or short_name(t) != t:  # the full identity, and the name figures use
            lines.append(f"Task `{t}`" + (f" (`{report.names.get(t, short_name(t))}` in titles and file names)" if short_name(t) != t else "") + ".")
        synthetic = _ordered(r.get("_data") for r in raw if r.get("task") == t and str(r.get("_data") or "").startswith("synthetic"))
        if synthetic:
            lines.append(f"**Synthetic data**: the task `{report.names.get(t, short_name(t))}` was probed on "
                         f"seeded random data ({synthetic[0]}), not on real data.")
        if t not in report.tasks:
            continue
        d = report.displays[t]
        sel = [r for r in rows if r.task == t]
        lines.append(
            (f"Task `{report.names[t]}`: " if t else "")
            + f"metric **{d.name}**{' (shown in percent)' if d.scale == 100.0 else ''}, "
            + ("higher is better" if d.higher_is_better else "lower is better")
            + (f", chance level {d.fmt(d.show(c))}{' %' if d.scale == 100.0 else ''}"
               if (c := report.chance.get(t)) is not None else "")
            + "; methods "
            + ", ".join(sorted({r.method for r in sel}, key=method_sort))
            + "; norms "
            + ", ".join(_p_label(p) for p in sorted({r.p for r in sel}))
            + "; eps "
            + ", ".join(f"{e:g}" for e in sorted({r.eps for r in sel}))
            + "."
        )
    if loss_source:
        lines.append(loss_source)
    lines.append("")
    body: list[str] = []
    if rows:
        body += report.table1()
        body += report.heatmaps()
        body += report.curves()
        body += report.theorem1() + theorem2_lines(lp_rows, report, notes)  # issue 24: probe --second-order's rows
    body += fault_body + outcome_lines(raw)  # outcome_lines: SDC and DUE rates with intervals (rows with counts)
    lines += body
    _delete_stale(out / "figures", report.figures, notes)
    lines.append("## Notes")
    lines.append("")
    if notes.items:
        lines += [f"- {n}" for n in notes.items]
    else:
        lines.append("- Every table and figure could be drawn from these results.")
    lines.append("")
    path = out / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


def _delete_stale(folder: Path, written: Sequence[Path], notes: _Notes) -> None:
    """Delete an earlier report's figures from ``folder``, so it holds this report's alone (noted)."""
    stale = sorted(set(folder.glob("*.png")) - set(written))
    for old in stale:
        old.unlink()
    if stale:
        notes.add(f"{len(stale)} figure(s) of an earlier report in {folder} were deleted.")
