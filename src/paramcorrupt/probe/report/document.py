"""The report as a whole: :func:`write_report` puts the sections together in ``report.md``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .curves import CurvesSection
from .display import _ordered, _p_label
from .faults import FaultSection, is_fault_row
from .heatmaps import HeatmapSection
from .methods import method_sort
from .rows import PathArg, _as_paths, _normalise, _Notes, load_rows
from .tables import Table1Section
from .theorem1 import Theorem1Section

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
    lines = [f"# {title or 'Parameter corruption report'}", ""]
    lines.append("Results: " + ", ".join(f"`{p}`" for p in paths) + f" ({len(rows) + len(fault_rows)} rows).")
    if sweeps:
        lines.append("Sweeps: " + ", ".join(f"`{s}`" for s in sweeps) + ".")
    for t in report.tasks:
        d = report.displays[t]
        sel = [r for r in rows if r.task == t]
        lines.append(
            (f"Task `{t}`: " if t else "")
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
        body += report.theorem1()
    if faults is not None:
        body += faults.section()
    lines += body
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
