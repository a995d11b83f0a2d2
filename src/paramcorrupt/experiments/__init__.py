"""Experiments: the layer between the tasks and training below, and the command line and the
reproduction scripts above.

- :mod:`~paramcorrupt.experiments.training`: train a task from its recipe with one method
  (:class:`MethodConfig`: plain, corruption-resistant L*, the gradient regulariser;
  :func:`train_model`, through :func:`paramcorrupt.train.recipe.fit_recipe`: the tasks declare
  recipes and never own a training loop);
- :mod:`~paramcorrupt.experiments.runs`: finished runs: :func:`run_one` (train, evaluate,
  write ``model.pt`` / ``results.json``, or read a finished run back), :func:`digest` (a
  model's identity), :func:`load_saved` / :func:`save_model`;
- :mod:`~paramcorrupt.experiments.table2`: :func:`table2_metrics`, the paper's Table 2
  evaluation of one model;
- :mod:`~paramcorrupt.experiments.markdown`: Table 2 as Markdown (:func:`table2_markdown`,
  :func:`goal_check`) and the reproduction scripts' table helpers.

``paramcorrupt train`` / ``compare`` (:mod:`paramcorrupt.cli.train`) and
``benchmarks/repro_common.py`` call these; nothing here parses a command line.
"""

from .markdown import damage, display, fmt, goal_check, mean, paper_cell, table, table2_markdown
from .runs import digest, load_saved, run_one, save_model
from .table2 import DEFAULT_EVAL_EPS, table2_metrics
from .training import (
    DEFAULT_EPOCHS,
    METHODS,
    MethodConfig,
    TaskSetup,
    build_task,
    method_settings,
    task_setup,
    train_model,
    validate,
)

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_EVAL_EPS",
    "METHODS",
    "MethodConfig",
    "TaskSetup",
    "build_task",
    "damage",
    "digest",
    "display",
    "fmt",
    "goal_check",
    "load_saved",
    "mean",
    "method_settings",
    "paper_cell",
    "run_one",
    "save_model",
    "table",
    "table2_markdown",
    "table2_metrics",
    "task_setup",
    "train_model",
    "validate",
]
