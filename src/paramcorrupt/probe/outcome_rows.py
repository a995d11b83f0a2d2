"""Outcome classes in a sweep's rows: masked / SDC / DUE counts per row, rates per group.

With ``SweepConfig(outcomes=True)`` (``probe --outcomes``) the sweep evaluates every row
through :class:`RowEvaluator`:

- the **golden run** is kept during the sweep's clean evaluation (no extra pass): per batch
  of the evaluation data, the argmax over the output's last dimension (the top-1 criterion,
  ``tolerance=None``: 8 bytes per example and position) or the whole output (with a
  ``tolerance``: the output's elements x their size), on the output's device;
- each row's evaluation pass classes every example of every batch against it
  (:func:`paramcorrupt.probe.outcomes.classify_output`: DUE when the example's output holds
  Inf or NaN, else SDC when its top-1 changed at some position — a classifier's class, a
  language model's predicted token at any position, teacher-forced — or, with a tolerance,
  when an element moved by more than it, else masked) and writes the counts ``masked``,
  ``sdc``, ``due``, ``examples`` and the criterion's ``tolerance`` (null: top-1) into the row. An example is one slice along the output's
  examples dimension (the first, or the output's ``examples_dim``: a time-major LM's
  :class:`~paramcorrupt.tasks.lm.LMOutput` says 1, so an example is one stream's window of
  tokens, SDC when any of its predicted tokens changed).

The output is the task's (``BatchLoss.output``, what the metrics see; its ``logits`` or first
item when it is a tuple or a model output). Rates and intervals per group and setting are
computed from the rows alone (:func:`outcome_table`), so a resumed or extended sweep gives
the same table. The classes need the sweep's own evaluator (refused with another, e.g.
``--reuse``'s).

A forward pass that raises (any ``Exception`` but the library's own input errors; Ctrl-C
still stops the sweep) is a crash, the other half of DUE: every example of that batch is
classed DUE, the remaining batches are classed as usual, and the row's loss and metrics are
NaN (a crashed evaluation has none). A crash in the gradient's data pass makes the row's
gradient loss NaN. Without outcomes a forward pass that raises stops the sweep (its rows so
far are kept).

:class:`RowEvaluator` also limits an activation fault's counters (``bit_errors``,
``changed``) to the evaluation data: the faults still hit the gradient's data pass, but are
not counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._state import mode
from ..corruption.apply import frozen_norm_stats
from ..errors import ParamCorruptError
from ..evaluate import evaluate
from ..faults import FAULTS
from ..groups import ParameterGroup
from ..losses import LossFn, Metric, as_batch_loss
from ..reliability import binomial_interval
from .outcomes import (
    DUE,
    OUTCOMES,
    SDC,
    check_tolerance,
    classify_output,
    criterion_view,
    output_tensor,
)

__all__ = [
    "OUTCOME_FIELDS",
    "RowEvaluator",
    "check_selection",
    "check_sweep",
    "evaluate_row",
    "outcome_fields",
    "outcome_table",
    "setting_text",
]

logger = logging.getLogger(__name__)

#: the fields a row of a sweep with outcomes adds: counts of its (trial x example) classes
OUTCOME_FIELDS = ("masked", "sdc", "due", "examples")


class RowEvaluator:
    """The sweep's own evaluator: full passes (as ``FullEvaluator``), the outcome classes of
    the evaluation data when ``outcomes``, and fault counters limited to the evaluation data.

    Args:
        model, eval_loader, gradient_loader, loss_fn, metrics: as ``FullEvaluator``.
        outcomes: class each example of each row against the golden run.
        tolerance: ``None`` (top-1) or the largest absolute change of an output element
            still masked.
    """

    def __init__(
        self,
        model: nn.Module,
        eval_loader: Iterable[Any],
        gradient_loader: Iterable[Any] | None,
        loss_fn: LossFn,
        metrics: Mapping[str, Metric] | None = None,
        *,
        outcomes: bool = False,
        tolerance: float | None = None,
    ) -> None:
        self.model, self.eval_loader, self.gradient_loader = model, eval_loader, gradient_loader
        self.loss_fn, self.metrics = loss_fn, dict(metrics or {})
        self.outcomes, self.tolerance = bool(outcomes), check_tolerance(tolerance)
        self.golden: list[Tensor] | None = None
        self.counts: dict[str, int] | None = None
        self._batch = 0
        self._keeping = False

    @property
    def golden_bytes(self) -> int:
        """The memory the golden run holds (0 before the clean evaluation)."""
        return sum(k.numel() * k.element_size() for k in self.golden or [])

    def evaluate_clean(self) -> dict[str, dict[str, float]]:
        """The clean model's loss and metrics; keeps the golden run when ``outcomes``."""
        self._keeping = self.outcomes
        self.golden = [] if self.outcomes else None
        try:
            out = self.evaluate()
        finally:
            self._keeping = False
        if self.outcomes:
            logger.info(
                "golden run: %d batches, %d bytes kept", len(self.golden or []), self.golden_bytes
            )
        return out

    def evaluate(
        self, group: ParameterGroup | None = None, during: Any = None
    ) -> dict[str, dict[str, float]]:
        """``{"eval": {...}, "gradient": {"loss": ...}}`` of the model as it is now; with a
        ``during`` object that has a ``counting`` attribute (activation faults), it counts
        on the evaluation data only."""
        counting = hasattr(during, "counting")
        classing = self.outcomes and not self._keeping
        if classing and self.golden is None:
            raise ParamCorruptError(
                "outcome classes need the golden run: call evaluate_clean() first"
            )
        self._batch, self.counts = 0, dict.fromkeys(OUTCOME_FIELDS, 0) if classing else None
        loss_fn = self._classing_loss if self.outcomes else self.loss_fn
        try:
            out = {"eval": evaluate(self.model, self.eval_loader, loss_fn, self.metrics)}
        except _Crashed:
            self._class_the_rest()
            out = {"eval": dict.fromkeys(["loss", *self.metrics], float("nan"))}
        if classing and self._batch != len(self.golden or []):
            raise ParamCorruptError(
                f"the evaluation data gave {self._batch} batches, the golden run {len(self.golden or [])}"
            )
        if self.gradient_loader is not None:
            if counting:
                during.counting = False
            try:
                out["gradient"] = evaluate(self.model, self.gradient_loader, self.loss_fn)
            except ParamCorruptError:
                raise
            except Exception as error:
                if not classing:
                    raise
                logger.warning("the gradient's data pass raised (%s): its loss is NaN", _said(error))
                out["gradient"] = {"loss": float("nan")}
            finally:
                if counting:
                    during.counting = True
        return out

    def _class_the_rest(self) -> None:
        """After a crash: class the batches after the crashed one (each crash among them is
        counted too), as ``evaluate`` would have run them."""
        with mode(self.model, False), frozen_norm_stats(self.model), torch.no_grad():
            for index, batch in enumerate(self.eval_loader):
                if index < self._batch:
                    continue
                try:
                    self._classing_loss(self.model, batch)
                except _Crashed:
                    pass

    def _classing_loss(self, model: nn.Module, batch: Any) -> Any:
        try:
            result = as_batch_loss(self.loss_fn(model, batch), batch)
        except ParamCorruptError:
            raise
        except Exception as error:  # a crash: its batch is DUE (the golden run may not crash)
            if self._keeping:
                raise
            self._count_crash(error)
            raise _Crashed from error
        if result.output is None:
            raise ParamCorruptError(
                "outcome classes need the task's output: its loss function returns none (BatchLoss.output)"
            )
        output = output_tensor(result.output)
        index, self._batch = self._batch, self._batch + 1
        if self._keeping:  # the clean pass: the golden run
            if not torch.isfinite(output).all():
                raise ParamCorruptError(
                    f"the fault-free output of batch {index} holds Inf or NaN: outcome classes need a finite golden run"
                )
            self.golden.append(criterion_view(output, self.tolerance).clone())  # type: ignore[union-attr]
            return result
        golden = self.golden or []
        if index >= len(golden) or output.shape[0] != golden[index].shape[0]:
            raise ParamCorruptError(
                f"batch {index} of the evaluation data differs from the golden run's (more batches, or another size): "
                "outcome classes need the same examples in the same order on every pass"
            )
        codes = classify_output(golden[index], output, self.tolerance)
        found = torch.bincount(codes.to(torch.int64), minlength=len(OUTCOMES)).tolist()
        assert self.counts is not None
        for name, count in zip(OUTCOMES, found):
            self.counts[name] += int(count)
        self.counts["examples"] += int(codes.numel())
        return result

    def _count_crash(self, error: Exception) -> None:
        index, self._batch = self._batch, self._batch + 1
        golden = self.golden or []
        if index >= len(golden):
            raise ParamCorruptError(
                f"batch {index} of the evaluation data is not in the golden run ({len(golden)} batches)"
            ) from error
        size = int(golden[index].shape[0])
        assert self.counts is not None
        self.counts["due"] += size
        self.counts["examples"] += size
        logger.warning("the forward pass of batch %d raised (%s): its %d examples are DUE", index, _said(error), size)


class _Crashed(Exception):
    """A forward pass raised during a row's classed evaluation (its batch counted DUE)."""


def _said(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def evaluate_row(
    evaluator: Any, group: ParameterGroup, during: Any = None
) -> dict[str, dict[str, float]]:
    """One row's evaluation: a :class:`RowEvaluator` is told what the row holds open. Another
    evaluator that keeps its data in ``loaders`` (``{"eval": ..., "gradient": ...}``, as
    ``ReusingEvaluator`` does) has its gradient's data wrapped for the row, so that a
    ``during`` object with a ``counting`` attribute counts on the evaluation data only."""
    if isinstance(evaluator, RowEvaluator):
        return evaluator.evaluate(group, during)
    loaders = getattr(evaluator, "loaders", None)
    if (
        not hasattr(during, "counting")
        or not isinstance(loaders, dict)
        or "gradient" not in loaders
    ):
        return evaluator.evaluate(group)
    original = loaders["gradient"]
    loaders["gradient"] = _Uncounted(original, during)
    try:
        return evaluator.evaluate(group)
    finally:
        loaders["gradient"] = original


class _Uncounted:
    """A loader whose batches ``during`` does not count (its ``counting`` off while they are
    drawn and evaluated, on again when the pass ends)."""

    def __init__(self, loader: Iterable[Any], during: Any) -> None:
        self.loader, self.during = loader, during

    def __iter__(self) -> Any:
        self.during.counting = False
        try:
            yield from self.loader
        finally:
            self.during.counting = True

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def outcome_fields(evaluator: Any) -> dict[str, int]:
    """The outcome counts of the row just evaluated and the SDC criterion's ``tolerance``
    (``None``: top-1); empty without outcomes."""
    counts = getattr(evaluator, "counts", None) if isinstance(evaluator, RowEvaluator) else None
    return {**counts, "tolerance": evaluator.tolerance} if counts is not None else {}


def check_sweep(
    model: nn.Module,
    config: Any,
    groups: Mapping[str, ParameterGroup],
    evaluator: Any,
    eval_loader: Iterable[Any],
    loss_fn: LossFn,
) -> None:
    """Before anything runs: outcomes need the sweep's own evaluator; every activation fault's
    module selection must match modules of every probed group, and in one pass of the first
    evaluation batch (no fault written) every chosen module must run and return a tensor or
    a tuple of tensors."""
    if (
        getattr(config, "outcomes", False)
        and evaluator is not None
        and not isinstance(evaluator, RowEvaluator)
    ):
        raise ParamCorruptError(
            f"outcome classes need the sweep's own evaluator, not a {type(evaluator).__name__} (--outcomes does not go with --reuse)"
        )
    from ..faults.activations import ActivationFaults

    chosen = check_selection(model, config, groups)
    if not chosen:
        return
    first = next(iter(eval_loader), None)
    if first is None:
        return  # the clean evaluation refuses an empty loader
    faults = ActivationFaults(
        model, list(chosen), flips=0, per_example=True, generator=torch.Generator()
    )
    ran = faults.check_run(lambda: loss_fn(model, first))
    idle = [name for name in chosen if name not in ran]
    if idle:
        raise ParamCorruptError(
            f"module {idle[0]!r} ({type(chosen[idle[0]]).__name__}) never runs in the model's forward pass (another "
            "module reads its parameters, or a fused path skips it): no fault would reach it; choose the modules "
            "with --fault-setting modules=CLASS|PATTERN"
        )


def check_selection(
    model: nn.Module, config: Any, groups: Mapping[str, ParameterGroup]
) -> dict[str, nn.Module]:
    """Every activation fault's module selection against every group ``config`` probes (a
    selection matching no module is one line); returns the modules chosen, name -> module.
    Needs the architecture alone (``probe`` checks it before training the model)."""
    from .plan import probed_groups

    chosen: dict[str, nn.Module] = {}
    for method in config.methods:
        for fault in config.faults(method):
            select = getattr(fault, "hooked_modules", None)
            if select is not None:
                for group in probed_groups(config, groups).values():
                    chosen.update(select(model, group))
    return chosen


# -- rates from rows ---------------------------------------------------------------------


def setting_text(row: Mapping[str, Any]) -> str:
    """A row's setting as text: its fault model's parameters (``ber=1e-06``), or p, n, eps."""
    method = row.get("method")
    names = FAULTS[method].parameters if method in FAULTS else ("p", "n", "eps")
    return ", ".join(f"{n}={row[n]}" for n in names if row.get(n) is not None)


def _interval(count: int, n: int, confidence: float, method: str) -> dict[str, float]:
    low, high = binomial_interval(count, n, confidence, method)
    return {"count": count, "rate": count / n, "low": low, "high": high}


def outcome_table(
    rows: Iterable[Mapping[str, Any]], *, confidence: float = 0.95, method: str = "wilson"
) -> list[dict[str, Any]]:
    """SDC and DUE rates with intervals per group, fault model and setting, from rows alone.

    Rows without outcome counts are skipped. Per example: every (trial, example) is one
    observation (``n = sum of examples``); per trial: each row is one, classed by its worst
    example (DUE over SDC over masked), the rate whose interval holds when a trial's
    examples share its fault (weight faults); activation bit flips are drawn per example,
    so their per-example observations are independent.

    Returns:
        One dict per (group, method, setting), in the rows' order: ``group``, ``method``,
        ``setting``, ``trials``, ``examples``, ``sdc``/``due`` (per example) and
        ``sdc_trials``/``due_trials`` (per trial), each ``{count, rate, low, high}``;
        ``confidence`` and ``interval`` (the method's full name).
    """
    cells: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if all(isinstance(row.get(f), int) for f in OUTCOME_FIELDS) and row["examples"] > 0:
            cells.setdefault((row["group"], row["method"], setting_text(row)), []).append(row)
    full = "clopper-pearson" if method == "exact" else method
    out = []
    for (group, fault, text), members in cells.items():
        n = sum(r["examples"] for r in members)
        worst = [DUE if r["due"] else (SDC if r["sdc"] else 0) for r in members]
        out.append(
            {
                "group": group,
                "method": fault,
                "setting": text,
                "trials": len(members),
                "examples": n,
                "sdc": _interval(sum(r["sdc"] for r in members), n, confidence, method),
                "due": _interval(sum(r["due"] for r in members), n, confidence, method),
                "sdc_trials": _interval(worst.count(SDC), len(members), confidence, method),
                "due_trials": _interval(worst.count(DUE), len(members), confidence, method),
                "confidence": confidence,
                "interval": full,
            }
        )
    return out
