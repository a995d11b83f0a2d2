"""The split of a traced model at a group, and the cache of the activations crossing it.

:func:`split_at` cuts a graph traced by :func:`torch.fx.symbolic_trace` at the first nodes
that read a group's parameters: a prefix (input -> boundary) and a suffix (boundary ->
output). :class:`CutCache` holds, for one cut, the boundary values computed per evaluation
batch (:class:`Entry`) and what tells them stale (the version counters of the parameters
upstream of the cut, the values of its buffers). The helpers on nested inputs compare,
copy and size a model's inputs and outputs. :class:`~paramcorrupt.probe.reuse.ReusingEvaluator`
puts them together; see :mod:`paramcorrupt.probe.reuse` for the method and its limits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

__all__ = [
    "CannotSplit",
    "Cut",
    "CutCache",
    "Entry",
    "TrackedLoader",
    "clone_nested",
    "close_outputs",
    "nested_tensors",
    "same_inputs",
    "split_at",
    "storage_bytes",
    "tensor_versions",
]


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


def nested_tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from nested_tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from nested_tensors(item)


def clone_nested(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(clone_nested(item) for item in obj)
    if isinstance(obj, list):
        return [clone_nested(item) for item in obj]
    if isinstance(obj, dict):
        return {key: clone_nested(value) for key, value in obj.items()}
    return obj


def same_inputs(a: Any, b: Any) -> bool:
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
        return type(a) is type(b) and len(a) == len(b) and all(same_inputs(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same_inputs(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object that cannot be compared is not the same input
        return False


def close_outputs(a: Any, b: Any) -> bool:
    """Nested outputs equal up to float rounding (the traced graph runs the same kernels)."""
    if isinstance(a, Tensor):
        if not isinstance(b, Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point() or a.is_complex():
            return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
        return bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(close_outputs(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(close_outputs(a[k], b[k]) for k in a)
    return same_inputs(a, b)


def storage_bytes(obj: Any, seen: set[int]) -> int:
    """Bytes of the storages ``obj``'s tensors hold that are not in ``seen`` (added to it)."""
    total = 0
    for tensor in nested_tensors(obj):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


# ---------------------------------------------------------------------------------------------
# the cache of one cut


@dataclass
class Entry:
    inputs: tuple[tuple[Any, ...], dict[str, Any]]
    boundary: tuple[Any, ...]
    nbytes: int


@dataclass
class CutCache:
    cut: Cut
    upstream_params: list[Tensor]
    upstream_buffers: list[tuple[Tensor, Tensor]]  # (buffer, its value when the cache was built)
    versions: list[tuple[int, int]] = field(default_factory=list)
    entries: dict[tuple[str, int], Entry] = field(default_factory=dict)
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


def tensor_versions(tensors: list[Tensor]) -> list[tuple[int, int]]:
    return [(t.data_ptr(), t._version) for t in tensors]


class TrackedLoader:
    """Iterates a loader and remembers the index of the batch being evaluated."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.index = -1

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.loader):
            self.index = index
            yield batch
