"""``probe --second-order [--trace-samples N]``: the second-order columns' options, parsed and
checked (kept here: ``cli/probe.py`` is near the 500-line limit)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ParamCorruptError

__all__ = ["DEFAULT_TRACE_SAMPLES", "add_second_order_arguments", "second_order_option"]

#: Hutchinson probes per group when --trace-samples is not given
DEFAULT_TRACE_SAMPLES = 100


def add_second_order_arguments(group: Any) -> None:
    """``--second-order`` and ``--trace-samples`` on an argparse argument group."""
    group.add_argument(
        "--second-order",
        action="store_true",
        help="add ½ aᵀHa, the predicted ratio and the random mean tr(H)/k·E‖a‖²/2 to each row, and per "
        "group lambda_max and tr(H)/k (docs/curvature.md)",
    )
    group.add_argument(
        "--trace-samples",
        type=int,
        default=None,
        metavar="N",
        help=f"with --second-order: Hutchinson probes per group for tr(H) (default: {DEFAULT_TRACE_SAMPLES})",
    )


def second_order_option(args: argparse.Namespace) -> int | None:
    """:class:`~paramcorrupt.probe.plan.SweepConfig`'s ``second_order`` (the probes, or None);
    --trace-samples without --second-order, or below 2, is one line."""
    on, samples = bool(getattr(args, "second_order", False)), getattr(args, "trace_samples", None)
    if samples is not None and not on:
        raise ParamCorruptError(f"--trace-samples {samples} goes with --second-order")
    if samples is not None and samples < 2:
        raise ParamCorruptError(
            f"--trace-samples must be >= 2 (its standard error needs two probes), got {samples}"
        )
    return (DEFAULT_TRACE_SAMPLES if samples is None else samples) if on else None
