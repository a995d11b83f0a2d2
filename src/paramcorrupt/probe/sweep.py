"""Sweeps: every group x method x p x n x eps x trial, as one tidy table.

A sweep answers "where is my model weakest, and how much worse is the worst case than
random faults?" in one call. For each parameter group it measures the gradient-based
corruption (Definition 4), R random corruptions (Definition 3) and, optionally, the
multi-step one, under every constraint S(p, eps, n) asked for, and returns one row per
measurement.

The data set gradient (Algorithm 2, step 1) is computed once per sweep, for the union of
all groups, and sliced per group: never again per eps, n or p. The clean loss and metrics
are measured once per sweep. Each random row draws from its own generator, seeded from the
sweep's seed and the row's key by a stable hash, so a row computed after a resume equals the
one an uninterrupted run computes. The model is left bit-identical, also when the sweep is
interrupted. What a sweep runs (its configuration, its rows' keys and seeds, its sweep_id) is
planned in :mod:`paramcorrupt.probe.plan`; this module runs it.

Row schema (one dict per row, the same in the results file; see :data:`ROW_FIELDS`):

- ``sweep_id``: a stable hash of the configuration, the groups and the task's identity.
- ``key``: ``group|method|p=..|n=..|eps=..|trial=..``, unique within the sweep.
- ``task``, ``grouping``, ``group``, ``method`` ("random", "gradient", "iterative").
- ``p`` (a float; ``inf`` is written ``"inf"`` in JSON), ``eps``, ``n`` (the effective n:
  k when none was asked for or the one asked for exceeds k), ``n_requested`` (the n asked
  for, ``None`` for all), ``k`` (the group's size), ``trial`` (0 for deterministic methods).
- ``loss_before``, ``loss_after``, ``loss_change``, ``metric`` (its name),
  ``metric_before``, ``metric_after``: on the evaluation data.
- ``grad_loss_before``, ``grad_loss_after``: the loss on the gradient's data (None when
  ``measure_gradient_data`` is off), where Theorem 2's ratio compares like with like.
- ``first_order``: eps * ||top_n(g)||_q on the group — the first-order estimate of the
  gradient-based loss change; written on random rows too, as the scale they compare with.
- ``G``: ||g||_2 on the group.
- ``ratio``: (grad_loss_after - grad_loss_before) / first_order; None when first_order is 0
  (G = 0, where Theorem 2's ratio is undefined) or the gradient data was not measured.
- ``seconds``: the row's wall time (building the corruption and evaluating it).

Fault models outside the L_p family leave ``p``, ``eps``, ``n``, ``n_requested``,
``first_order`` and ``ratio`` as None and append their own setting (and what they drew:
``bit_errors``, ``changed``) after these fields. A row whose corrupted loss is Inf or NaN
is kept, with ``loss_nonfinite: true``.

A sweep on a quantised model (``config.quantize``: int8, int4, nf4, fp8-e4m3, mxfp4, ...)
measures the float model's clean loss and metric first, then quantises the model as a whole
(:func:`paramcorrupt.quantize`: every weight its decoded code), so its ``loss_before`` and
``metric_before`` are the deployed model's; the bit faults hit the stored codes, scales and
zero points (:mod:`paramcorrupt.faults.stored`). Its rows add ``quantized`` (the format),
``loss_float`` and ``metric_float`` (the float model's clean values: the quantisation cost is
``metric_float - metric_before``) and the bit faults' ``code_faults``, ``scale_faults``,
``zero_point_faults``; its header holds ``quantized`` (format, options, stored weights and
bits, the float model's clean values). The float weights come back bit for bit afterwards,
also on error or KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .. import parallel as D
from ..constraint import lp_norm
from ..corruption.apply import corrupted
from ..errors import ParamCorruptError
from ..evaluate import check_clean_loss, evaluate
from ..faults import FaultContext, FaultModel, check_methods, get_fault
from ..formats import check_quantize
from ..formats.model import Quantized, default_weights, quantize
from ..gradient import dataset_gradient
from ..groups import ParameterGroup
from ..losses import LossFn, Metric
from .outcome_rows import RowEvaluator, check_sweep, evaluate_row, outcome_fields
from .plan import SweepConfig, probed_groups, row_seed, row_settings, sweep_id
from .schema import check_resumed
from .second_order import for_sweep
from .store import ResultsStore

__all__ = [
    "ROW_FIELDS",
    "Evaluator",
    "FullEvaluator",
    "SweepConfig",
    "check_quantization",
    "probed_groups",
    "row_seed",
    "row_settings",
    "sweep",
    "sweep_id",
]

logger = logging.getLogger(__name__)

#: the fields of every row, in order
ROW_FIELDS = (
    "sweep_id",
    "key",
    "task",
    "grouping",
    "group",
    "method",
    "p",
    "eps",
    "n",
    "n_requested",
    "k",
    "trial",
    "loss_before",
    "loss_after",
    "loss_change",
    "metric",
    "metric_before",
    "metric_after",
    "grad_loss_before",
    "grad_loss_after",
    "first_order",
    "G",
    "ratio",
    "seconds",
)


@runtime_checkable
class Evaluator(Protocol):
    """How a sweep measures a corrupted model (the hook activation reuse plugs into).

    ``evaluate(group)`` is called while a corruption of ``group``'s parameters (and of
    nothing else) is applied to the model. It returns
    ``{"eval": {"loss": ..., <metric>: ...}, "gradient": {"loss": ...}}``: what
    :func:`~paramcorrupt.evaluate` gives on the evaluation data, and on the gradient's data
    when the sweep measures it (``measure_gradient_data``). The sweep runs all rows of one
    group before the next, so an evaluator may keep one group's cache at a time.
    :class:`FullEvaluator` is the default; ``paramcorrupt.probe.reuse.ReusingEvaluator``
    computes only the part of the network downstream of the group.
    """

    def evaluate(self, group: ParameterGroup) -> dict[str, dict[str, float]]: ...


class FullEvaluator:
    """The default evaluator: full passes with the core :func:`~paramcorrupt.evaluate`.

    Args:
        model: the network.
        eval_loader: the evaluation data (loss and metrics).
        gradient_loader: the gradient's data (its loss), or ``None`` to skip it.
        loss_fn: the batch loss.
        metrics: name -> metric, on the evaluation data.
    """

    def __init__(
        self,
        model: nn.Module,
        eval_loader: Iterable[Any],
        gradient_loader: Iterable[Any] | None,
        loss_fn: LossFn,
        metrics: Mapping[str, Metric] | None = None,
    ) -> None:
        self.model, self.eval_loader, self.gradient_loader = model, eval_loader, gradient_loader
        self.loss_fn, self.metrics = loss_fn, dict(metrics or {})

    def evaluate(self, group: ParameterGroup | None = None) -> dict[str, dict[str, float]]:
        """``{"eval": {...}, "gradient": {"loss": ...}}`` of the model as it is now."""
        out = {"eval": evaluate(self.model, self.eval_loader, self.loss_fn, self.metrics)}
        if self.gradient_loader is not None:
            out["gradient"] = evaluate(self.model, self.gradient_loader, self.loss_fn)
        return out


@dataclass
class _Plan:
    """One group's part of the sweep: its size, its gradient slice, its rows to run."""

    label: str
    group: ParameterGroup
    k: int
    gradient: dict[str, Tensor] | None
    G: float | None
    settings: list[tuple[FaultModel, int, str]] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict)


def sweep(
    model: nn.Module,
    config: SweepConfig,
    gradient_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    loss_fn: LossFn,
    metrics: Mapping[str, Metric] | None = None,
    *,
    groups: Mapping[str, ParameterGroup],
    store: ResultsStore | None = None,
    progress: bool = True,
    evaluator: Evaluator | None = None,
    distributed: bool | None = None,
    allow_nonfinite: bool = False,
) -> list[dict[str, Any]]:
    """Run every group x method x p x n x eps (x trial) of ``config``; return the rows.

    Rows come in order group, p, n, eps, method, trial. With a ``store`` every row is
    appended to its file as it finishes; rows the file already holds (a resumed sweep) are
    not recomputed but returned in their place.

    Args:
        model: the network; left bit-identical (parameters and buffers), also on error or
            KeyboardInterrupt.
        config: the settings (:class:`SweepConfig`).
        gradient_loader: the data of the data set gradient (the paper: the training set).
        eval_loader: the data the loss and metrics are reported on (a test set).
        loss_fn: ``loss_fn(model, batch)`` -> :class:`~paramcorrupt.BatchLoss`.
        metrics: name -> metric on the evaluation data.
        groups: label -> :class:`~paramcorrupt.ParameterGroup` (see
            :mod:`paramcorrupt.groups`).
        store: a :class:`~paramcorrupt.probe.ResultsStore` to write rows to (and resume from).
        progress: show progress bars.
        evaluator: measures the corrupted model (default: :class:`FullEvaluator`); see
            :class:`Evaluator`.
        distributed: split the work over the processes of ``torch.distributed`` (default
            ``None``: when a process group is initialised). Every rank calls ``sweep`` with
            the same model and arguments; the gradient is taken on sharded data and
            all-reduced, the rows are split round-robin across ranks (each evaluated by one
            rank on the full evaluation data), gathered, and written by rank 0 alone. Every
            rank returns all rows. See :func:`paramcorrupt.parallel.map_ordered`.
        allow_nonfinite: probe a model whose clean loss is NaN or Inf (refused by default,
            naming the tensors holding NaN/Inf: :func:`paramcorrupt.evaluate.check_clean_loss`).

    Returns:
        The rows (dicts with the fields of :data:`ROW_FIELDS`).

    Raises:
        ValueError: for an unknown group label or metric, an n or group
            the core rejects, a results file of another sweep, or a model whose clean loss
            differs from the one recorded in the file being resumed.

    Example:
        >>> from paramcorrupt import classification_loss, select
        >>> model = nn.Linear(2, 2)
        >>> data = [(torch.randn(8, 2), torch.randint(0, 2, (8,)))]
        >>> rows = sweep(model, SweepConfig(methods=["gradient"], eps_values=[1e-3]), data, data,
        ...              classification_loss, groups={"all": select(model)}, progress=False)
        >>> [(r["group"], r["method"], r["n"]) for r in rows]
        [('all', 'gradient', 6)]
    """
    metrics = dict(metrics or {})
    if "loss" in metrics:
        raise ParamCorruptError("'loss' is always measured; give the metric another name")
    metric = config.metric or next(iter(metrics), "loss")
    if metric != "loss" and metric not in metrics:
        raise ParamCorruptError(f"unknown metric {metric!r}; available: loss, {', '.join(metrics)}")
    probed = probed_groups(config, groups)
    for group in probed.values():
        check_methods(group.tensors(model), config.methods)  # every name exists; torchao weights: bit faults only
    check_sweep(model, config, probed, evaluator, eval_loader, loss_fn)  # outcomes, activation faults' modules
    sid = sweep_id(config, groups)

    distributed = D.use_distributed(distributed)
    progress = progress and D.is_main_process()
    # a quantised sweep: the float model measured, then quantised (restored in the finally)
    stored = _quantize(model, config, eval_loader, loss_fn, metrics)
    try:
        finished: dict[str, dict[str, Any]] = {}
        if store is not None:  # opened by rank 0 alone; what it holds goes to every rank
            extra = {} if stored is None else {"quantized": _quantized_header(stored)}
            existing = D.on_main(
                lambda: store.open(sid, config.as_dict(), groups={label: list(g.names) for label, g in probed.items()}, **extra),
                distributed=distributed,
            )
            finished = {row["key"]: row for row in existing}
        try:
            return _run(
                model, config, gradient_loader, eval_loader, loss_fn, metrics, metric, probed, sid,
                finished, store, progress, evaluator, distributed, stored, allow_nonfinite=allow_nonfinite,
            )
        finally:
            if store is not None:
                store.close()
    finally:
        if stored is not None:
            stored[0].restore(model)


def _quantize(
    model: nn.Module, config: SweepConfig, eval_loader: Iterable[Any], loss_fn: LossFn, metrics: Mapping[str, Metric]
) -> tuple[Quantized, dict[str, float]] | None:
    """For ``config.quantize``: (what :func:`quantize` stored, the float model's clean loss
    and metrics on the evaluation data), the model left quantised; else None."""
    if config.quantize is None:
        return None
    options = check_quantization(model, config)  # bad options refused before any pass
    with D.local():  # every rank measures the float model itself
        float_clean = FullEvaluator(model, eval_loader, None, loss_fn, metrics).evaluate()["eval"]
    return quantize(model, config.quantize, restorable="file", **options), float_clean  # float weights: a temp file


def check_quantization(model: nn.Module, config: SweepConfig) -> dict[str, Any]:
    """Check ``config.quantize`` and its options against every weight :func:`quantize`
    would store (a group size that does not divide a row, ...); return the options.

    Raises:
        ParamCorruptError: naming the weight and the fix, before anything changes.
    """
    options = dict(config.quantize_options or {})
    if config.quantize is not None:
        for name, param in default_weights(model).tensors(model).items():
            check_quantize(config.quantize, param.shape, dict(options), name)
    return options


def _quantized_header(stored: tuple[Quantized, dict[str, float]]) -> dict[str, Any]:
    """The results header's ``quantized`` entry: what the probed model stores."""
    done, float_clean = stored
    return {
        "format": done.format,
        "options": dict(done.options),
        "scope": "model",  # the model was quantised as a whole (its default weights)
        "weights": len(done),
        "parameters": sum(int(torch.Size(s.shape).numel()) for s in done.values()),
        "stored_bits": done.nbits,
        "float": dict(float_clean),
    }


def _run(
    model: nn.Module,
    config: SweepConfig,
    gradient_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    loss_fn: LossFn,
    metrics: dict[str, Metric],
    metric: str,
    probed: dict[str, ParameterGroup],
    sid: str,
    finished: dict[str, dict[str, Any]],
    store: ResultsStore | None,
    progress: bool,
    evaluator: Evaluator | None,
    distributed: bool = False,
    stored: tuple[Quantized, dict[str, float]] | None = None,
    *, allow_nonfinite: bool = False,
) -> list[dict[str, Any]]:
    plans = []
    for label, group in probed.items():
        plans.append(_Plan(label, group, group.numel(model), None, None, row_settings(config, label)))
    total = sum(len(plan.settings) for plan in plans)
    todo = total - sum(1 for plan in plans for s in plan.settings if s[-1] in finished)
    if todo == 0:
        logger.info("all %d rows are already in the results file", total)
        return [finished[s[-1]] for plan in plans for s in plan.settings]

    # the data set gradient, once, on the union of the groups (Algorithm 2, step 1)
    if any(get_fault(m).uses_gradient for m in config.methods):
        union = ParameterGroup("union", tuple(dict.fromkeys(n for g in probed.values() for n in g.names)))
        gradient = dataset_gradient(
            model, D.shard(gradient_loader) if distributed else gradient_loader, loss_fn, union,
            progress=progress, distributed=distributed,
        )
        for plan in plans:
            plan.gradient = {name: gradient[name] for name in plan.group.names}
            plan.G = lp_norm(plan.gradient, 2)

    todo_groups = {p.label: p.group for p in plans if any(s[-1] not in finished for s in p.settings)}
    second = for_sweep(config, model, gradient_loader, loss_fn, todo_groups, distributed)  # issue 24: ½ aᵀHa columns
    # the clean model, once
    # FullEvaluator's passes; with config.outcomes the golden run kept and each row's examples classed (outcome_rows)
    full = RowEvaluator(model, eval_loader, gradient_loader if config.measure_gradient_data else None, loss_fn, metrics, outcomes=config.outcomes, tolerance=config.tolerance)
    with D.local():  # every rank measures the clean model itself: rows bit-identical to one process
        clean = full.evaluate_clean()
    check_clean_loss(clean["eval"], model, allow_nonfinite=allow_nonfinite)  # no row against a NaN loss
    check_resumed(finished, clean)
    evaluator = evaluator or full
    logged: set[str] = set()

    def compute(item: tuple[_Plan, tuple[FaultModel, int, str]]) -> dict[str, Any]:
        plan, (fault, trial, key) = item
        if plan.label not in logged:
            logged.add(plan.label)
            logger.info("group %s: k = %d, G = %s", plan.label, plan.k, "-" if plan.G is None else f"{plan.G:.3g}")
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(row_seed(config.seed, key)) if fault.stochastic else None
        ctx = FaultContext(
            model, plan.group, plan.k, plan.gradient, generator, gradient_loader, loss_fn, plan.cache, trial,
            seed=config.seed, trials=config.trials, stored=None if stored is None else stored[0],
        )
        corruption = fault.corrupt(ctx)
        # info["during"]: what a fault model holds open while the row is evaluated (activation faults' hooks)
        with corrupted(model, corruption), corruption.info.get("during", nullcontext()) as during:
            after = evaluate_row(evaluator, plan.group, during)
        row = _row(config, sid, plan, fault, ctx, corruption, trial, key, clean, after, metric) | outcome_fields(evaluator)
        if second is not None:
            row.update(second.fields(plan.label, fault, ctx, corruption, row["first_order"]))
        if stored is not None:  # the float model's clean values beside the quantised ones
            row.update(quantized=config.quantize, loss_float=stored[1]["loss"], metric_float=stored[1][metric])
        row["seconds"] = time.perf_counter() - start
        return row

    # one process: a plain loop; distributed: rows split round-robin, rank 0 appends them
    todo_items = [(plan, s) for plan in plans for s in plan.settings if s[-1] not in finished]
    bar = _bar(todo, progress)
    try:
        computed = D.map_ordered(
            todo_items,
            compute,
            on_result=None if store is None else (lambda _, row: store.append(row)),
            describe=lambda item: f"row {item[1][-1]!r}",
            progress=None if bar is None else bar.update,
            distributed=distributed,
        )
    finally:
        if bar is not None:
            bar.close()
    by_key = {row["key"]: row for row in computed}
    return [finished[s[-1]] if s[-1] in finished else by_key[s[-1]] for plan in plans for s in plan.settings]


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", leave=False, dynamic_ncols=True)


def _row(
    config: SweepConfig,
    sid: str,
    plan: _Plan,
    fault: FaultModel,
    ctx: FaultContext,
    corruption: Any,
    trial: int,
    key: str,
    clean: Mapping[str, Mapping[str, float]],
    after: Mapping[str, Any],
    metric: str,
) -> dict[str, Any]:
    """One row: :data:`ROW_FIELDS` in order (fields a fault model does not have are None),
    then any fields of the fault model's own setting outside them."""
    evaluated, gradient_data = _unpack(after, metric, config.measure_gradient_data)
    first_order = fault.first_order(ctx)
    grad_before = clean["gradient"]["loss"] if config.measure_gradient_data else None
    grad_after = gradient_data["loss"] if gradient_data is not None else None
    ratio = None
    if grad_before is not None and grad_after is not None and first_order:
        ratio = (grad_after - grad_before) / first_order
    row = dict.fromkeys(ROW_FIELDS)
    row.update(
        sweep_id=sid,
        key=key,
        task=config.task,
        grouping=config.grouping,
        group=plan.label,
        method=fault.name,
        k=plan.k,
        trial=trial,
    )
    row.update(fault.row_fields(ctx, corruption))
    row.update(
        loss_before=clean["eval"]["loss"],
        loss_after=evaluated["loss"],
        loss_change=evaluated["loss"] - clean["eval"]["loss"],
        metric=metric,
        metric_before=clean["eval"][metric],
        metric_after=evaluated[metric],
        grad_loss_before=grad_before,
        grad_loss_after=grad_after,
        first_order=first_order,
        G=plan.G,
        ratio=ratio,
        seconds=None,
    )
    if not math.isfinite(row["loss_after"]):
        # a fault can make the output Inf/NaN (a flipped exponent bit): the row is kept, its
        # metric computed as it came out, and the loss flagged
        row["loss_nonfinite"] = True
    return row


def _unpack(
    result: Mapping[str, Any], metric: str, gradient_data: bool
) -> tuple[dict[str, float], dict[str, float] | None]:
    """Check an evaluator's answer: (evaluation-data values, gradient-data values or None)."""
    if not isinstance(result, Mapping) or not isinstance(result.get("eval"), Mapping):
        raise ParamCorruptError(
            f"an evaluator must return {{'eval': {{...}}, 'gradient': {{...}}}}, got {type(result).__name__} "
            f"with keys {sorted(result) if isinstance(result, Mapping) else None}"
        )
    evaluated = {k: float(v) for k, v in result["eval"].items()}
    for name in ("loss", metric):
        if name not in evaluated:
            raise ParamCorruptError(f"the evaluator returned no {name!r} on the evaluation data (it returned {sorted(evaluated)})")
    if not gradient_data:
        return evaluated, None
    if not isinstance(result.get("gradient"), Mapping) or "loss" not in result["gradient"]:
        raise ParamCorruptError("the evaluator returned no loss on the gradient's data ('gradient': {'loss': ...})")
    return evaluated, {k: float(v) for k, v in result["gradient"].items()}

