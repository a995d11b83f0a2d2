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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from .._state import mode
from ..errors import InputTypeError, ParamCorruptError
from ..evaluate import evaluate as full_evaluate
from ..groups import ParameterGroup
from ..losses import LossFn, Metric

__all__ = ["CannotSplit", "Cut", "ReusingEvaluator", "split_at"]

logger = logging.getLogger(__name__)

#: The default memory budget for cached activations: 1 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30


class CannotSplit(Exception):
    """The graph cannot be split for a group; the message says why."""


@dataclass
class Cut:
    """A traced model split at the first nodes that depend on a set of parameters.

    Attributes:
        prefix: runs like the model's ``forward`` and returns the boundary values (a tuple).
        suffix: takes the boundary values, positionally, and returns the model's output.
        boundary: the names of the traced nodes whose values cross the cut.
        dependent: the names of the traced nodes that depend on the parameters.
        nodes: the number of computing nodes (neither inputs, attributes nor output) in the
            whole graph and in the suffix.
        reuses_nothing: the boundary is only the model's inputs: the suffix is the whole
            network.
    """

    prefix: fx.GraphModule
    suffix: fx.GraphModule
    boundary: tuple[str, ...]
    dependent: frozenset[str]
    nodes: tuple[int, int]
    reuses_nothing: bool


def _fetch(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _owned(obj: Any) -> set[int]:
    if isinstance(obj, nn.Module):
        return {id(p) for p in obj.parameters()}
    if isinstance(obj, Tensor):
        return {id(obj)}
    return set()


def _computes(node: fx.Node) -> bool:
    return node.op not in ("placeholder", "get_attr", "output")


def split_at(traced: fx.GraphModule, params: Iterable[Tensor]) -> Cut:
    """Split a traced model at the first nodes that read any of ``params``.

    The suffix holds every node that depends on the parameters (and the ``get_attr`` nodes it
    reads); the prefix holds what the boundary needs. Both share ``traced``'s submodules and
    parameters, so a corruption applied in place is seen by the suffix.

    Args:
        traced: the model traced by :func:`torch.fx.symbolic_trace`.
        params: the parameters (tensors of ``traced``) a corruption may change.

    Raises:
        CannotSplit: when some parameter is read by no node of the graph (it may have been
            read at trace time and baked in as a constant), or none is given.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> cut = split_at(fx.symbolic_trace(model), [model[2].weight])
        >>> cut.boundary, cut.nodes
        (('_1',), (3, 1))
    """
    targets = {id(p) for p in params}
    if not targets:
        raise CannotSplit("the group has no parameter")
    nodes = list(traced.graph.nodes)
    output = next(n for n in nodes if n.op == "output")
    read: set[int] = set()
    seeds = []
    for node in nodes:
        if node.op == "get_attr":
            owned = _owned(_fetch(traced, node.target))
        elif node.op == "call_module":
            owned = _owned(traced.get_submodule(node.target))
        else:
            continue
        if owned & targets:
            seeds.append(node)
            read |= owned & targets
    if read != targets:
        raise CannotSplit(
            f"{len(targets - read)} parameter(s) of the group are read by no node of the traced graph "
            "(used through a path fx does not record, or baked in as constants at trace time)"
        )
    # dependent: every node downstream of a node reading the group
    dependent: set[fx.Node] = set()
    stack = list(seeds)
    while stack:
        node = stack.pop()
        if node in dependent or node.op == "output":
            continue
        dependent.add(node)
        stack.extend(node.users)

    def needed_by_suffix(node: fx.Node) -> bool:
        return any(user in dependent or user is output for user in node.users)

    # attributes are free to read again; every other live value crossing the cut is cached
    boundary = [n for n in nodes if n not in dependent and n.op not in ("get_attr", "output") and needed_by_suffix(n)]

    suffix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(boundary):
        env[node] = suffix_graph.placeholder(f"cut_{i}")
    for node in nodes:
        if node in dependent or (node.op == "get_attr" and needed_by_suffix(node)):
            env[node] = suffix_graph.node_copy(node, env.__getitem__)
    suffix_graph.output(fx.map_arg(output.args[0], env.__getitem__))

    # the prefix: the model's inputs and the ancestors of the boundary
    needed: set[fx.Node] = set()
    stack = list(boundary)
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    prefix_graph = fx.Graph()
    env = {}
    for node in nodes:
        if node.op == "placeholder" or node in needed:
            env[node] = prefix_graph.node_copy(node, env.__getitem__)
    prefix_graph.output(tuple(env[n] for n in boundary))

    return Cut(
        prefix=fx.GraphModule(traced, prefix_graph, class_name="Prefix"),
        suffix=fx.GraphModule(traced, suffix_graph, class_name="Suffix"),
        boundary=tuple(n.name for n in boundary),
        dependent=frozenset(n.name for n in dependent),
        nodes=(sum(map(_computes, nodes)), sum(map(_computes, dependent))),
        reuses_nothing=all(n.op == "placeholder" for n in boundary),
    )


# ---------------------------------------------------------------------------------------------
# small helpers on nested inputs


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _tensors(item)


def _clone(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_clone(item) for item in obj)
    if isinstance(obj, list):
        return [_clone(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _clone(value) for key, value in obj.items()}
    return obj


def _same(a: Any, b: Any) -> bool:
    """Exact equality of two nested inputs: same structure, equal tensors (shape, dtype, values)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.device == b.device
            and bool(torch.equal(a, b))
        )
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object that cannot be compared is not the same input
        return False


def _close(a: Any, b: Any) -> bool:
    """Nested outputs equal up to float rounding (the traced graph runs the same kernels)."""
    if isinstance(a, Tensor):
        if not isinstance(b, Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
        return bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return _same(a, b)


def _storage_bytes(obj: Any, seen: set[int]) -> int:
    """Bytes of the storages ``obj``'s tensors hold that are not in ``seen`` (added to it)."""
    total = 0
    for tensor in _tensors(obj):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


# ---------------------------------------------------------------------------------------------
# the cache of one cut


@dataclass
class _Entry:
    inputs: tuple[tuple[Any, ...], dict[str, Any]]
    boundary: tuple[Any, ...]
    nbytes: int


@dataclass
class _CutCache:
    cut: Cut
    upstream_params: list[Tensor]
    upstream_buffers: list[tuple[Tensor, Tensor]]  # (buffer, its value when the cache was built)
    versions: list[tuple[int, int]] = field(default_factory=list)
    entries: dict[tuple[str, int], _Entry] = field(default_factory=dict)
    nbytes: int = 0
    checked: bool = False
    broken: str | None = None
    warned_mismatch: bool = False

    def next_entry_bytes(self) -> int:
        """The size of the next entry, guessed from the entries so far (0 if none)."""
        return min((entry.nbytes for entry in self.entries.values()), default=0)

    def clear(self) -> int:
        freed = self.nbytes
        self.entries.clear()
        self.nbytes = 0
        return freed


def _versions(tensors: list[Tensor]) -> list[tuple[int, int]]:
    return [(t.data_ptr(), t._version) for t in tensors]


class _TrackedLoader:
    """Iterates a loader and remembers the index of the batch being evaluated."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.index = -1

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.loader):
            self.index = index
            yield batch


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
        self._cuts: dict[frozenset[str], _CutCache | str] = {}  # group names -> cache, or why not
        self._caches: OrderedDict[frozenset[str], _CutCache] = OrderedDict()  # by dependent nodes, LRU first
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

    def _cache_for(self, group: ParameterGroup) -> _CutCache | str:
        if not isinstance(group, ParameterGroup):
            raise InputTypeError(f"group must be a ParameterGroup, got {type(group).__name__}")
        key = frozenset(group.names)
        found = self._cuts.get(key)
        if found is not None:
            return found
        params = list(group.tensors(self.model).values())
        traced = self._trace()
        result: _CutCache | str
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

    def _new_cache(self, cut: Cut) -> _CutCache:
        params = list(cut.prefix.parameters())
        buffers = [(b, b.detach().clone()) for b in cut.prefix.buffers()]
        cache = _CutCache(cut, params, buffers, _versions(params))
        self._caches[cut.dependent] = cache
        return cache

    # -- evaluating -----------------------------------------------------------------------------

    def _evaluate_loader(
        self, cache: _CutCache | str, key: str, loader: Iterable[Any], metrics: Mapping[str, Metric]
    ) -> dict[str, float]:
        if isinstance(cache, str) or cache.broken is not None:
            self.stats["full_evaluations"] += 1
            return full_evaluate(self.model, loader, self.loss_fn, metrics)
        self._revalidate(cache)
        self._caches.move_to_end(cache.cut.dependent)
        tracked = _TrackedLoader(loader)
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

    def _revalidate(self, cache: _CutCache) -> None:
        """Drop the cache when anything upstream of the cut changed since it was built."""
        changed = _versions(cache.upstream_params) != cache.versions
        if not changed:
            changed = any(not torch.equal(b, saved) for b, saved in cache.upstream_buffers)
        if changed:
            if cache.entries:
                logger.debug("parameters or buffers upstream of a cut changed: rebuilding its cache")
            cache.clear()
            cache.versions = _versions(cache.upstream_params)
            cache.upstream_buffers = [(b, b.detach().clone()) for b, _ in cache.upstream_buffers]

    def _dispatch(
        self,
        cache: _CutCache,
        where: tuple[str, int],
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        cut = cache.cut
        entry = cache.entries.get(where)
        if entry is not None:
            if _same(entry.inputs, (args, kwargs)):
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
        inputs = (_clone(args), _clone(kwargs))
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
            if not _close(output, reference):
                cache.broken = "the split graph's output differs from the model's own forward"
                cache.clear()
                logger.warning("activation reuse off, full passes: %s", cache.broken)
                self.stats["full_batches"] += 1
                return reference
        nbytes = _storage_bytes((inputs, boundary), set(self._storages_of_model()))
        if self._room_for(cache, nbytes):
            cache.entries[where] = _Entry(inputs, boundary, nbytes)
            cache.nbytes += nbytes
            self.stats["built"] += 1
        else:
            self.stats["full_batches"] += 1
        return output

    def _storages_of_model(self) -> set[int]:
        if self._model_storages is None:
            self._model_storages = {t.untyped_storage().data_ptr() for t in (*self.model.parameters(), *self.model.buffers())}
        return self._model_storages

    def _room_for(self, cache: _CutCache, nbytes: int) -> bool:
        """Make room for ``nbytes`` more in ``cache``, dropping other cuts' caches, oldest first."""
        total = self.cached_bytes
        for other in list(self._caches.values()):
            if total + nbytes <= self.memory_budget:
                break
            if other is not cache and other.nbytes:
                total -= other.clear()
        return total + nbytes <= self.memory_budget
