"""Outcome classes of fault-injection trials, as reliability engineers count them.

Each trial (one fault, or one set of faults, injected while the whole loader is evaluated)
and each example is classed against the fault-free ("golden") run:

- **masked** (0): the output is as the golden run's, by the SDC criterion below;
- **SDC** (1), silent data corruption: the output changed and nothing noticed. By default
  (``tolerance=None``) the *top-1* criterion: the argmax over the last dimension changed at
  some position — a classifier's predicted class, or a language model's predicted next
  token at any position of the example's sequence (teacher-forced logits; tokens generated
  one by one are not compared here; an example is a sequence, see :func:`output_tensor`). With ``tolerance=t >= 0`` the output itself: some element differs from
  the golden output by more than t in absolute value;
- **DUE** (2), detected unrecoverable error: an Inf or NaN anywhere in the example's output,
  or an exception raised by the forward pass of its batch (every example of that batch is
  DUE; the trial goes on with the next batch).

The golden run is computed once (:func:`golden_run`) and kept: for the top-1 criterion only
the argmax indices (8 bytes x positions per example: 8 bytes per example for a classifier),
for a tolerance the whole outputs (outputs x examples x the output's element size), on the
device the outputs came from. :attr:`GoldenRun.nbytes` says how much. The loader must give
the same examples in the same order on every pass (no shuffling); a batch of another size
than the golden run's is refused.

The rates (:func:`outcome_rates`) count each (trial, example) pair as one observation
(``per="example"``), or each trial once, classed by its worst example (DUE over SDC over
masked; ``per="trial"``), with binomial intervals of :mod:`paramcorrupt.reliability`
(Wilson by default, or Clopper–Pearson). The examples of one trial share its fault, so
the per-example observations are not independent: the per-trial rate is the one whose
interval holds at its nominal confidence.

Example:
    >>> from paramcorrupt import Corruption
    >>> model = nn.Sequential(nn.Linear(3, 4))
    >>> data = [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))]
    >>> nan = Corruption.from_values({"0.bias": torch.full((4,), float("nan"))})
    >>> zero = {"0.bias": torch.zeros(4)}  # a fault that changes nothing
    >>> result = outcome_classes(model, data, [nan, zero])
    >>> result.classes.tolist()
    [[2, 2, 2, 2, 2], [0, 0, 0, 0, 0]]
    >>> result.rates()["due"]["count"]
    5
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from .._state import mode
from ..corruption.apply import corrupted, frozen_norm_stats
from ..corruption.base import Corruption
from ..errors import InputTypeError, ParamCorruptError
from ..losses import BatchLoss
from ..reliability import INTERVAL_METHODS, binomial_interval

__all__ = [
    "DUE",
    "MASKED",
    "OUTCOMES",
    "SDC",
    "GoldenRun",
    "check_tolerance",
    "criterion_view",
    "OutcomeClasses",
    "classify_output",
    "golden_run",
    "outcome_classes",
    "outcome_rates",
    "output_tensor",
]

MASKED, SDC, DUE = 0, 1, 2
#: the class names, indexed by their code
OUTCOMES = ("masked", "sdc", "due")

#: a fault as :func:`outcome_classes` takes it: a corruption of the weights, a context
#: manager that injects faults (e.g. hooks on activations), or ``model -> context manager``
Fault = (
    Corruption
    | Mapping[str, Tensor]
    | AbstractContextManager
    | Callable[[nn.Module], AbstractContextManager]
)


def check_tolerance(tolerance: object) -> float | None:
    """``tolerance`` as a float (``None``: the top-1 criterion); a negative, NaN or infinite
    one is one line (``ParamCorruptError``), a value that is no number ``InputTypeError``."""
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real):
        raise InputTypeError(f"tolerance must be a number >= 0 or None (top-1), got {tolerance!r}")
    value = float(tolerance)
    if not value >= 0 or value == float("inf"):  # NaN and negatives fail
        raise ParamCorruptError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    return value


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return model(batch[0])
    raise InputTypeError(
        f"cannot run the model on a batch of type {type(batch).__name__}: give forward(model, batch) -> output"
    )


def output_tensor(result: Any) -> Tensor:
    """The output tensor of what ``forward`` returned: a tensor, a BatchLoss carrying the
    output, an object or mapping with ``logits`` (a Hugging Face output), or a tuple whose
    first item is the logits (an LSTM's ``(logits, hidden)``, the tasks' named outputs),
    examples first: an output object with an ``examples_dim`` attribute (a time-major
    language model's :class:`~paramcorrupt.tasks.lm.LMOutput`: 1) has that dimension moved
    to the front, so that an example is one sequence, not one position."""
    if isinstance(result, BatchLoss):
        result = result.output
    examples_dim = getattr(result, "examples_dim", 0)
    if not isinstance(result, Tensor):
        if isinstance(getattr(result, "logits", None), Tensor):
            result = result.logits  # a Hugging Face model output, the tasks' named tuples
        elif isinstance(result, Mapping) and isinstance(result.get("logits"), Tensor):
            result = result["logits"]
        elif isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
            result = result[0]
    if not isinstance(result, Tensor):
        raise InputTypeError(
            f"forward returned a {type(result).__name__}; outcome classes need the model output as a tensor "
            "(or a BatchLoss carrying it)"
        )
    if result.dim() == 0:
        raise ParamCorruptError(
            "forward returned a scalar; outcome classes need one output per example (examples first)"
        )
    if examples_dim:
        result = result.movedim(examples_dim, 0)
    return result.detach()


def criterion_view(output: Tensor, tolerance: float | None) -> Tensor:
    """What the golden run keeps of a batch's output: the argmax (top-1) or the output."""
    if tolerance is not None:
        return output
    if output.dim() < 2:
        raise ParamCorruptError(
            f"the top-1 criterion needs scores per example (an output of at least 2 dimensions), got shape "
            f"{tuple(output.shape)}; give a tolerance to compare the output itself"
        )
    return output.argmax(-1)


def classify_output(kept: Tensor, output: Tensor, tolerance: float | None = None) -> Tensor:
    """The class of each example of one batch: int8 codes MASKED, SDC or DUE.

    Args:
        kept: what :func:`golden_run` kept of this batch: the golden argmax indices
            (``tolerance=None``) or the golden output.
        output: the faulty run's output of the same batch (examples first).
        tolerance: ``None`` for top-1, else the largest absolute difference still masked.
    """
    tolerance = check_tolerance(tolerance)
    size = output.shape[0]
    due = ~torch.isfinite(output).reshape(size, -1).all(1)
    if tolerance is None:
        changed = (criterion_view(output, None) != kept).reshape(size, -1).any(1)
    else:
        if output.shape != kept.shape:
            raise ParamCorruptError(
                f"the output has shape {tuple(output.shape)}, the golden one {tuple(kept.shape)}"
            )
        changed = ((output - kept).abs() > tolerance).reshape(size, -1).any(1)
    codes = torch.where(changed, SDC, MASKED)
    return torch.where(due, DUE, codes).to(torch.int8).cpu()


@dataclass(frozen=True)
class GoldenRun:
    """The fault-free run, kept once: per batch, the argmax (top-1) or the whole output."""

    kept: tuple[Tensor, ...]
    tolerance: float | None

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(int(k.shape[0]) for k in self.kept)

    @property
    def examples(self) -> int:
        return sum(self.batch_sizes)

    @property
    def nbytes(self) -> int:
        """The memory the golden run holds: elements kept x their size, summed over batches."""
        return sum(k.numel() * k.element_size() for k in self.kept)


@contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Evaluation mode, no gradients, batch-norm statistics left as they were."""
    with mode(model, False), frozen_norm_stats(model), torch.no_grad():
        yield


def golden_run(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    tolerance: float | None = None,
) -> GoldenRun:
    """Run ``model`` fault-free over ``loader`` once and keep what the SDC criterion needs.

    Args:
        model: the network (run in evaluation mode without gradients; its modes and
            batch-norm statistics are left as they were).
        loader: batches, the same examples in the same order on every pass.
        forward: ``forward(model, batch)`` -> the output (examples first), or a loss
            function's :class:`~paramcorrupt.BatchLoss` carrying it; by default
            ``model(batch[0])`` (``model(batch)`` for a tensor batch).
        tolerance: ``None`` for the top-1 criterion (only the argmax is kept), else the
            tolerance on the output (the whole output is kept).

    Raises:
        ParamCorruptError: a negative or NaN tolerance, an empty loader, a golden output
            holding Inf or NaN (every trial would be DUE), an output without class scores
            under the top-1 criterion.
    """
    tolerance = check_tolerance(tolerance)
    forward = forward or _default_forward
    kept = []
    with _evaluation(model):
        for index, batch in enumerate(loader):
            output = output_tensor(forward(model, batch))
            if not torch.isfinite(output).all():
                raise ParamCorruptError(
                    f"the fault-free output of batch {index} holds Inf or NaN: outcome classes need a finite golden run"
                )
            kept.append(criterion_view(output, tolerance).clone())
    if not kept:
        raise ParamCorruptError("the loader yielded no batch: nothing to class")
    return GoldenRun(tuple(kept), tolerance)


def _injection(fault: Any, model: nn.Module, trial: int) -> AbstractContextManager:
    if isinstance(fault, (Corruption, Mapping)):
        return corrupted(model, fault)
    if isinstance(fault, AbstractContextManager):
        return fault
    if callable(fault):
        manager = fault(model)
        if isinstance(manager, AbstractContextManager):
            return manager
        raise InputTypeError(
            f"fault {trial} returned a {type(manager).__name__}, not a context manager"
        )
    raise InputTypeError(
        f"fault {trial} is a {type(fault).__name__}; give a Corruption, a mapping name -> delta, "
        "a context manager or model -> context manager"
    )


@dataclass
class OutcomeClasses:
    """The class of every (trial, example): ``classes[trial, example]`` in {0, 1, 2}.

    ``errors`` lists the exceptions caught as DUE: (trial, batch, "Type: message").
    """

    classes: Tensor
    golden: GoldenRun
    errors: list[tuple[int, int, str]] = field(default_factory=list)

    def rates(
        self, *, per: str = "example", confidence: float = 0.95, method: str = "wilson"
    ) -> dict[str, Any]:
        """The masked / SDC / DUE counts, rates and intervals (see :func:`outcome_rates`)."""
        return outcome_rates(self.classes, per=per, confidence=confidence, method=method)


def outcome_classes(
    model: nn.Module,
    loader: Iterable[Any],
    faults: Iterable[Fault],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    tolerance: float | None = None,
    golden: GoldenRun | None = None,
) -> OutcomeClasses:
    """Class every trial and example as masked, SDC or DUE against the golden run.

    Each fault is one trial: it is injected (a :class:`~paramcorrupt.Corruption` or a
    mapping name -> delta through :func:`~paramcorrupt.corrupted`, restored bit for bit on
    exit; a context manager as it is; a callable as ``fault(model)``), the whole loader is
    run, and the injection is left (also on an error or Ctrl-C) before the next trial.
    An exception of the forward pass (other than a :class:`ParamCorruptError`) makes its
    batch DUE and is recorded in ``errors``.

    Args:
        model: the network.
        loader: batches, the same examples in the same order on every pass.
        faults: the trials.
        forward: as in :func:`golden_run`.
        tolerance: ``None`` (top-1) or the tolerance on the output, >= 0.
        golden: a :func:`golden_run` of the same model, loader and criterion, to reuse;
            computed here when ``None``.

    Returns:
        :class:`OutcomeClasses`: an int8 tensor of shape (trials, examples) on the CPU
        (1 byte per trial and example) and the golden run.

    Raises:
        ParamCorruptError: a negative or NaN tolerance, a golden run of another criterion,
            a loader whose batches differ from the golden run's, a fault that is not one
            of the kinds above (``InputTypeError``), a corruption that does not fit the
            model (before it changes anything).
    """
    tolerance = check_tolerance(tolerance)
    forward = forward or _default_forward
    if golden is None:
        golden = golden_run(model, loader, forward=forward, tolerance=tolerance)
    elif not isinstance(golden, GoldenRun):
        raise InputTypeError(
            f"golden must be a GoldenRun from golden_run(), got {type(golden).__name__}"
        )
    elif golden.tolerance != tolerance:
        raise ParamCorruptError(
            f"the golden run was kept for tolerance={golden.tolerance}, not {tolerance}"
        )
    rows: list[Tensor] = []
    errors: list[tuple[int, int, str]] = []
    for trial, fault in enumerate(faults):
        row = []
        with _injection(fault, model, trial), _evaluation(model):
            for index, batch in enumerate(loader):
                if index >= len(golden.kept):
                    raise ParamCorruptError(
                        f"the loader yielded more batches than the golden run's {len(golden.kept)}"
                    )
                row.append(
                    _trial_batch(
                        model, batch, forward, golden.kept[index], tolerance, (trial, index), errors
                    )
                )
        if len(row) != len(golden.kept):
            raise ParamCorruptError(
                f"the loader yielded {len(row)} batches, the golden run {len(golden.kept)}"
            )
        rows.append(torch.cat(row))
    classes = torch.stack(rows) if rows else torch.empty(0, golden.examples, dtype=torch.int8)
    return OutcomeClasses(classes, golden, errors)


def _trial_batch(
    model: nn.Module,
    batch: Any,
    forward: Callable[[nn.Module, Any], Any],
    kept: Tensor,
    tolerance: float | None,
    where: tuple[int, int],
    errors: list[tuple[int, int, str]],
) -> Tensor:
    size = int(kept.shape[0])
    try:
        output = output_tensor(forward(model, batch))
    except ParamCorruptError:
        raise
    except Exception as error:  # a crash of the faulty forward pass: the batch is DUE
        errors.append((*where, f"{type(error).__name__}: {error}"[:300]))
        return torch.full((size,), DUE, dtype=torch.int8)
    if output.shape[0] != size:
        raise ParamCorruptError(
            f"batch {where[1]} has {output.shape[0]} examples, the golden run's {size}: the loader must give the "
            "same examples in the same order on every pass"
        )
    return classify_output(kept, output, tolerance)


def outcome_rates(
    classes: Tensor, *, per: str = "example", confidence: float = 0.95, method: str = "wilson"
) -> dict[str, Any]:
    """Counts, rates and two-sided intervals of masked, SDC and DUE outcomes.

    Args:
        classes: (trials, examples) codes from :func:`outcome_classes`.
        per: ``"example"``: each (trial, example) is one observation; ``"trial"``: each
            trial is one, classed by its worst example (DUE over SDC over masked).
        confidence: in (0, 1).
        method: ``"wilson"`` or ``"clopper-pearson"`` (``"exact"``), see
            :func:`paramcorrupt.reliability.binomial_interval`.

    Returns:
        ``{"masked"|"sdc"|"due": {"count", "rate", "low", "high"}, "n", "per",
        "confidence", "method"}`` (``method`` named in full: "exact" is "clopper-pearson").
    """
    if per not in ("example", "trial"):
        raise ParamCorruptError(f"per must be 'example' or 'trial', got {per!r}")
    if method not in INTERVAL_METHODS:
        raise ParamCorruptError(
            f"unknown interval method {method!r}; choose one of {', '.join(INTERVAL_METHODS)}"
        )
    if not isinstance(classes, Tensor) or classes.dim() != 2:
        raise InputTypeError("classes must be a (trials, examples) tensor from outcome_classes()")
    observed = classes.amax(1) if per == "trial" and classes.shape[1] else classes.reshape(-1)
    n = int(observed.numel())
    if n == 0:
        raise ParamCorruptError(
            "no trial or example to count: the rates need at least one observation"
        )
    counts = torch.bincount(observed.to(torch.int64), minlength=len(OUTCOMES)).tolist()
    out: dict[str, Any] = {}
    for code, name in enumerate(OUTCOMES):
        low, high = binomial_interval(counts[code], n, confidence, method)
        out[name] = {"count": counts[code], "rate": counts[code] / n, "low": low, "high": high}
    full = "clopper-pearson" if method == "exact" else method
    return out | {"n": n, "per": per, "confidence": confidence, "method": full}
