"""Vulnerability probing: where is a model weakest, and how much worse is the worst case
than random faults? (the paper's Table 1, Tables 4-5, Figures 3, 4, 5 and 7).

- the groups to compare come from :mod:`paramcorrupt.groups` (by type, position, module,
  component, layer, or the user's patterns);
- :func:`sweep` with :class:`SweepConfig`: every group x method x p x n x eps (x trial) as
  tidy rows, written to a resumable :class:`ResultsStore`;
- :class:`ReusingEvaluator`: an evaluator for :func:`sweep` that reuses the activations
  upstream of each group;
- :func:`write_report`: Markdown and figures from results files (needs matplotlib).

Example:
    >>> from paramcorrupt import classification_loss
    >>> from paramcorrupt.groups import groups_by_type
    >>> model = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> data = [(torch.randn(8, 2), torch.randint(0, 2, (8,)))]
    >>> rows = sweep(model, SweepConfig(methods=["gradient"], eps_values=[1e-2, 1e-1]), data, data,
    ...              classification_loss, groups=groups_by_type(model), progress=False)
    >>> [(r["group"], r["eps"]) for r in rows]
    [('linear', 0.01), ('linear', 0.1), ('norm', 0.01), ('norm', 0.1)]
"""

from .report import write_report
from .reuse import ReusingEvaluator
from .store import ResultsStore, read_results
from .sweep import ROW_FIELDS, Evaluator, FullEvaluator, SweepConfig, sweep, sweep_id

__all__ = [
    "ROW_FIELDS",
    "Evaluator",
    "FullEvaluator",
    "ResultsStore",
    "ReusingEvaluator",
    "SweepConfig",
    "read_results",
    "sweep",
    "sweep_id",
    "write_report",
]
