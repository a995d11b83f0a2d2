"""Evaluate only what a corruption changes: reuse the activations upstream of a group.

A corruption of a group of parameters changes only the part of the network that depends on
them. When the group sits late in the network, every configuration of a sweep (each eps, n,
p, trial) recomputes the same early activations. :class:`ReusingEvaluator` computes them once
per evaluation batch and, per configuration, runs only the rest:

1. the model is traced once with :func:`torch.fx.symbolic_trace` (in evaluation mode);
2. for a group, the *dependent* nodes are those that read one of its parameters (a
   ``get_attr`` node, or a ``call_module`` node whose module owns one) and everything
   downstream of them; the *boundary* is every other value a dependent node (or the output)
   reads: the activation entering the group *and* every live value crossing the cut, such as
   the identity branch of a residual block, or a shortcut computed beside the group;
3. the graph is split into a prefix (input -> boundary) and a suffix (boundary -> output);
   the prefix runs once per batch and its boundary values are cached within a memory budget;
   each later evaluation runs only the suffix on them.

The split (:func:`split_at`) and the cache of one cut live in :mod:`paramcorrupt.probe.cut`;
this module holds the evaluator that uses them.

The loss and metrics are computed by :func:`paramcorrupt.evaluate` itself: for the length of
an evaluation the model's ``forward`` is replaced (an instance attribute, removed afterwards)
by a dispatcher that, given the batch's inputs, returns the suffix's output on the cached
boundary. Whatever ``loss_fn`` does around ``model(...)`` — the built-in
:func:`~paramcorrupt.classification_loss` and :func:`~paramcorrupt.sequence_loss`, keyword
inputs, tuple or dict outputs — is unchanged.

Exactness. The dispatcher serves a cached batch only if the inputs ``loss_fn`` passes to the
model equal (``torch.equal``) those the cache was built from, so a shuffled or augmenting
loader costs speed, never correctness. The cache of a cut is dropped when a parameter
upstream of it changed in place (tracked by tensor version counters) or a buffer upstream of
it changed value. The first batch of every cut is checked once against the model's own
``forward``. Anything that cannot be served is evaluated with full passes, with identical
results, and the reason is logged: a model that cannot be traced, a group whose parameters
the traced graph does not read, a cut with nothing upstream to reuse (the group is first in
the network), a ``loss_fn`` that never calls the model, a failed check.

Limits.

- Evaluation mode only (that is how :func:`~paramcorrupt.evaluate` runs): batch norm uses its
  running statistics, dropout is off. The graph is traced in evaluation mode.
- The applied corruption must touch only the group's parameters; other parameters may change
  between evaluations (the cache is then rebuilt), but not during one.
- The network upstream of the cut must be deterministic: random operations in the prefix
  would be frozen by the cache.
- A ``forward`` that reads a parameter's *value* where fx does not record it (through
  ``self._parameters`` or ``self.parameters()``, then ``.item()`` or Python control flow)
  bakes that value into the graph. A group holding such a parameter gets full passes when the
  graph reads the parameter nowhere else (detected); when it also reads it elsewhere, the
  baked value would go stale (not detected). Attribute access (``self.w``) is recorded.
- Only calls to the top-level model are served; a ``loss_fn`` that calls submodules directly
  (``model.encoder(...)``) is evaluated with full passes.
- Forward hooks of modules upstream of the cut run when a batch's cache is built, not when it
  is reused.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn

from .._state import mode
from ..errors import InputTypeError, ParamCorruptError
from ..evaluate import evaluate as full_evaluate
from ..groups import ParameterGroup
from ..losses import LossFn, Metric
from .cut import (
    CannotSplit,
    Cut,
    CutCache,
    Entry,
    TrackedLoader,
    clone_nested,
    close_outputs,
    same_inputs,
    split_at,
    storage_bytes,
    tensor_versions,
)

__all__ = ["CannotSplit", "Cut", "ReusingEvaluator", "split_at"]

logger = logging.getLogger(__name__)

#: The default memory budget for cached activations: 1 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30


class ReusingEvaluator:
    """A sweep's evaluator that reuses the activations upstream of the corrupted group.

    ``evaluate(group)`` returns what :class:`~paramcorrupt.probe.sweep.FullEvaluator` returns
    (loss and metrics on the evaluation data, loss on the gradient data, each as
    :func:`paramcorrupt.evaluate` computes it) for the model as it is (a corruption of ``group``
    applied),
    computing only the part of the network that depends on ``group``: the activations upstream
    of the group are computed on the first call for that group, cached within
    ``memory_budget`` bytes, and kept for later calls (a sweep's other configurations). Batches
    beyond the budget are evaluated with full passes; when a new group needs room, the caches of
    the groups used least recently are dropped first.

    See the module documentation for how the graph is split, how exactness is guarded and the
    limits; anything that cannot be served is evaluated with full passes, with identical
    results, and the reason is logged.

    Args:
        model: the network (traced lazily, in evaluation mode, on the first call).
        eval_loader: the evaluation data (re-iterable, in the same order every time).
        gradient_loader: the gradient data, or ``None`` to evaluate on ``eval_loader`` only.
        loss_fn: ``loss_fn(model, batch)`` -> :class:`~paramcorrupt.BatchLoss`.
        metrics: name -> ``metric(output, batch)`` -> ``(total, count)``, on the evaluation data.
        memory_budget: bytes of cached activations (and the inputs they were computed from)
            kept at most, over all groups; 0 evaluates everything with full passes.

    Example:
        >>> from paramcorrupt import classification_loss, corrupted, evaluate, select
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        >>> evaluator = ReusingEvaluator(model, data, None, classification_loss)
        >>> group = select(model, "2")  # the last layer: the first two run once per batch
        >>> evaluator.cut(group).boundary
        ('_1',)
        >>> with corrupted(model, {"2.weight": torch.full((3, 8), 0.1)}):
        ...     reused = evaluator.evaluate(group)["eval"]["loss"]
        ...     reused == evaluate(model, data, classification_loss)["loss"]
        True
    """

    def __init__(
        self,
        model: nn.Module,
        eval_loader: Iterable[Any],
        gradient_loader: Iterable[Any] | None,
        loss_fn: LossFn,
        metrics: Mapping[str, Metric] | None = None,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0:
            raise ParamCorruptError(f"memory_budget must be a number of bytes >= 0, got {memory_budget!r}")
        self.model = model
        self.loaders: dict[str, Iterable[Any]] = {"eval": eval_loader}
        if gradient_loader is not None:
            self.loaders["gradient"] = gradient_loader
        self.loss_fn = loss_fn
        self.metrics = dict(metrics or {})
        self.memory_budget = memory_budget
        self._traced: fx.GraphModule | None = None
        self._trace_failure: str | None = None
        self._cuts: dict[frozenset[str], CutCache | str] = {}  # group names -> cache, or why not
        self._caches: OrderedDict[frozenset[str], CutCache] = OrderedDict()  # by dependent nodes, LRU first
        self._model_storages: set[int] | None = None
        #: counters: batches served from the cache, batches whose cache was built, batches
        #: evaluated with full passes, evaluations done entirely with full passes
        self.stats = {"reused": 0, "built": 0, "full_batches": 0, "full_evaluations": 0}

    # -- public ---------------------------------------------------------------------------------

    def evaluate(self, group: ParameterGroup) -> dict[str, dict[str, float]]:
        """Loss and metrics on every loader, as :func:`paramcorrupt.evaluate` computes them.

        Call it with a corruption of ``group`` (and of nothing else) applied.

        Returns:
            ``{"eval": {"loss": ..., <metric>: ...}, "gradient": {"loss": ...}}``, as
            :class:`~paramcorrupt.probe.sweep.FullEvaluator` returns it (``"gradient"`` only
            when a gradient loader was given): the :class:`~paramcorrupt.probe.sweep.Evaluator`
            protocol.
        """
        cache = self._cache_for(group)
        return {
            key: self._evaluate_loader(cache, key, loader, self.metrics if key == "eval" else {})
            for key, loader in self.loaders.items()
        }

    def why_not(self, group: ParameterGroup) -> str | None:
        """Why ``group`` is evaluated with full passes, or ``None`` when activations are reused."""
        cache = self._cache_for(group)
        if isinstance(cache, str):
            return cache
        return cache.broken

    def cut(self, group: ParameterGroup) -> Cut | None:
        """The split used for ``group``, or ``None`` when it is evaluated with full passes."""
        cache = self._cache_for(group)
        return None if isinstance(cache, str) else cache.cut

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the caches now."""
        return sum(c.nbytes for c in self._caches.values())

    def clear(self) -> None:
        """Drop every cached activation (the splits are kept)."""
        for cache in self._caches.values():
            cache.clear()

    # -- splitting ------------------------------------------------------------------------------

    def _trace(self) -> fx.GraphModule | None:
        if self._traced is None and self._trace_failure is None:
            try:
                with mode(self.model, False):
                    self._traced = fx.symbolic_trace(self.model)
            except Exception as error:  # noqa: BLE001 - any tracing failure means full passes
                self._trace_failure = f"the model cannot be traced by torch.fx ({type(error).__name__}: {error})"
                logger.info("activation reuse off, full passes: %s", self._trace_failure)
        return self._traced

    def _cache_for(self, group: ParameterGroup) -> CutCache | str:
        if not isinstance(group, ParameterGroup):
            raise InputTypeError(f"group must be a ParameterGroup, got {type(group).__name__}")
        key = frozenset(group.names)
        found = self._cuts.get(key)
        if found is not None:
            return found
        params = list(group.tensors(self.model).values())
        traced = self._trace()
        result: CutCache | str
        if traced is None:
            result = self._trace_failure or "the model cannot be traced"
        elif self.memory_budget == 0:
            result = "the memory budget is 0"
        else:
            try:
                cut = split_at(traced, params)
            except CannotSplit as error:
                result = str(error)
            else:
                if cut.reuses_nothing:
                    result = "nothing upstream of the group to reuse (its parameters are read first)"
                else:
                    result = self._caches.get(cut.dependent) or self._new_cache(cut)
        if isinstance(result, str):
            logger.info("group %r: activation reuse off, full passes: %s", group.name, result)
        self._cuts[key] = result
        return result

    def _new_cache(self, cut: Cut) -> CutCache:
        params = list(cut.prefix.parameters())
        buffers = [(b, b.detach().clone()) for b in cut.prefix.buffers()]
        cache = CutCache(cut, params, buffers, tensor_versions(params))
        self._caches[cut.dependent] = cache
        return cache

    # -- evaluating -----------------------------------------------------------------------------

    def _evaluate_loader(
        self, cache: CutCache | str, key: str, loader: Iterable[Any], metrics: Mapping[str, Metric]
    ) -> dict[str, float]:
        if isinstance(cache, str) or cache.broken is not None:
            self.stats["full_evaluations"] += 1
            return full_evaluate(self.model, loader, self.loss_fn, metrics)
        self._revalidate(cache)
        self._caches.move_to_end(cache.cut.dependent)
        tracked = TrackedLoader(loader)
        original = self.model.forward
        had_own = "forward" in self.model.__dict__
        calls = 0

        def forward(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return self._dispatch(cache, (key, tracked.index), original, args, kwargs)

        self.model.forward = forward  # an instance attribute: nn.Module.__call__ runs it
        try:
            result = full_evaluate(self.model, tracked, self.loss_fn, metrics)
        finally:
            if had_own:
                self.model.forward = original
            else:
                del self.model.forward
        if calls == 0 and cache.broken is None:
            cache.broken = "loss_fn never calls model(...): its forward passes cannot be served from the cache"
            cache.clear()
            logger.info("activation reuse off, full passes: %s", cache.broken)
        return result

    def _revalidate(self, cache: CutCache) -> None:
        """Drop the cache when anything upstream of the cut changed since it was built."""
        changed = tensor_versions(cache.upstream_params) != cache.versions
        if not changed:
            changed = any(not torch.equal(b, saved) for b, saved in cache.upstream_buffers)
        if changed:
            if cache.entries:
                logger.debug("parameters or buffers upstream of a cut changed: rebuilding its cache")
            cache.clear()
            cache.versions = tensor_versions(cache.upstream_params)
            cache.upstream_buffers = [(b, b.detach().clone()) for b, _ in cache.upstream_buffers]

    def _dispatch(
        self,
        cache: CutCache,
        where: tuple[str, int],
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        cut = cache.cut
        entry = cache.entries.get(where)
        if entry is not None:
            if same_inputs(entry.inputs, (args, kwargs)):
                self.stats["reused"] += 1
                return cut.suffix(*entry.boundary)
            if not cache.warned_mismatch:
                cache.warned_mismatch = True
                logger.warning(
                    "the inputs of batch %d of the %s data differ from those its activations were cached for "
                    "(a shuffled or augmenting loader, or a loss_fn calling the model on other inputs): "
                    "such calls get full passes",
                    where[1],
                    where[0],
                )
            self.stats["full_batches"] += 1
            return original(*args, **kwargs)
        if cache.broken is not None or not self._room_for(cache, cache.next_entry_bytes()):
            self.stats["full_batches"] += 1
            return original(*args, **kwargs)
        inputs = (clone_nested(args), clone_nested(kwargs))
        try:
            boundary = cut.prefix(*inputs[0], **inputs[1])
            output = cut.suffix(*boundary)
        except Exception as error:  # noqa: BLE001 - a split that fails to run means full passes
            cache.broken = f"the split graph failed to run ({type(error).__name__}: {error})"
            cache.clear()
            logger.info("activation reuse off, full passes: %s", cache.broken)
            self.stats["full_batches"] += 1
            return original(*args, **kwargs)
        if not cache.checked:
            # once per cut: the split graph must compute what the model computes
            cache.checked = True
            reference = original(*args, **kwargs)
            if not close_outputs(output, reference):
                cache.broken = "the split graph's output differs from the model's own forward"
                cache.clear()
                logger.warning("activation reuse off, full passes: %s", cache.broken)
                self.stats["full_batches"] += 1
                return reference
        nbytes = storage_bytes((inputs, boundary), set(self._storages_of_model()))
        if self._room_for(cache, nbytes):
            cache.entries[where] = Entry(inputs, boundary, nbytes)
            cache.nbytes += nbytes
            self.stats["built"] += 1
        else:
            self.stats["full_batches"] += 1
        return output

    def _storages_of_model(self) -> set[int]:
        if self._model_storages is None:
            self._model_storages = {t.untyped_storage().data_ptr() for t in (*self.model.parameters(), *self.model.buffers())}
        return self._model_storages

    def _room_for(self, cache: CutCache, nbytes: int) -> bool:
        """Make room for ``nbytes`` more in ``cache``, dropping other cuts' caches, oldest first."""
        total = self.cached_bytes
        for other in list(self._caches.values()):
            if total + nbytes <= self.memory_budget:
                break
            if other is not cache and other.nbytes:
                total -= other.clear()
        return total + nbytes <= self.memory_budget
