"""``probe --outcomes [--tolerance T]``: the outcome classes' options, parsed and checked
(kept here: ``cli/probe.py`` is near the 500-line limit)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ParamCorruptError

__all__ = ["add_outcome_arguments", "checks_before_training", "outcome_options"]


def add_outcome_arguments(group: Any) -> None:
    """``--outcomes`` and ``--tolerance`` on an argparse argument group."""
    group.add_argument(
        "--outcomes",
        action="store_true",
        help="class every example of every row as masked / SDC / DUE against the fault-free run (its "
        "top-1, or --tolerance on the output); rows get masked, sdc, due, examples, and the report SDC "
        "and DUE rates with 95%% intervals per group (docs/faults.md)",
    )
    group.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="T",
        help="with --outcomes: SDC when an output element moves by more than T >= 0 (default: top-1 changed)",
    )


def outcome_options(args: argparse.Namespace) -> dict[str, Any]:
    """``{"outcomes": ..., "tolerance": ...}`` for :class:`~paramcorrupt.probe.plan.SweepConfig`;
    --tolerance without --outcomes, a negative or NaN tolerance, --outcomes with --reuse
    are one line each."""
    outcomes, tolerance = bool(getattr(args, "outcomes", False)), getattr(args, "tolerance", None)
    if tolerance is not None and not outcomes:
        raise ParamCorruptError(
            f"--tolerance {tolerance:g} goes with --outcomes (it is the SDC criterion of the outcome classes)"
        )
    if tolerance is not None and not 0 <= tolerance < float("inf"):  # NaN fails too
        raise ParamCorruptError(f"--tolerance must be a finite number >= 0, got {tolerance:g}")
    if outcomes and getattr(args, "reuse", False):
        raise ParamCorruptError(
            "--outcomes does not go with --reuse (the outcome classes need the sweep's full passes)"
        )
    return {"outcomes": outcomes, "tolerance": tolerance}


def checks_before_training(model: Any, config: Any, groups: Any) -> None:
    """What needs only the architecture, checked before a task's model is trained: the
    --quantize options against the weights, the activation faults' module selections."""
    from ..probe.outcome_rows import check_selection
    from ..probe.sweep import check_quantization

    check_quantization(model, config)
    check_selection(model, config, groups)
