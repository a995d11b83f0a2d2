"""Vulnerability probing: where is a model weakest, and how much worse is the worst case
than random faults? (the paper's Table 1, Tables 4-5, Figures 3, 4, 5 and 7)."""

from .grouping import (
    GROUPINGS,
    groups_by_module,
    groups_by_position,
    groups_by_type,
    groups_from_mapping,
    make_groups,
)
from .store import ResultsStore, read_results
from .sweep import METHODS, ROW_FIELDS, Evaluator, FullEvaluator, SweepConfig, sweep, sweep_id

__all__ = [
    "GROUPINGS",
    "METHODS",
    "ROW_FIELDS",
    "Evaluator",
    "FullEvaluator",
    "ResultsStore",
    "SweepConfig",
    "groups_by_module",
    "groups_by_position",
    "groups_by_type",
    "groups_from_mapping",
    "make_groups",
    "read_results",
    "sweep",
    "sweep_id",
]
