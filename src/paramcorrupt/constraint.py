"""The constraint set S (Definition 1) and its closed-form maximiser (Proposition 1).

Pure tensor functions: nothing here knows about models, data or training.

For a group of parameters w in R^k,

    S = { a in R^k : ||a||_p = eps, ||a||_0 <= n }

and for any vector v (a gradient g, or a Gaussian draw r) the maximiser of a.v over S is

    h = top_n(v)
    a = eps * sgn(h) * |h|^(1/(p-1)) / || |h|^(1/(p-1)) ||_p
    a.v = eps * ||h||_q,  q = p / (p - 1)

(the appendix's form; the main text's Eq. 5 and Eq. 10 misprint the denominator).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InputTypeError, ParamCorruptError

__all__ = [
    "Constraint",
    "ZeroVectorWarning",
    "closed_form",
    "dual_norm",
    "global_top_n",
    "lp_norm",
    "parse_p",
    "sparse_closed_form",
]

INF = float("inf")


def parse_p(p: Any) -> Any:
    """p as a float: a number, or a string such as "2", "inf" or "Infinity" (any case, as
    ``float`` reads it); anything else is left for :class:`Constraint` to reject. The one
    parser of p (sweeps, fault models, command lines).

    Raises:
        ValueError: for a string that is no number.

    Example:
        >>> parse_p("inf"), parse_p(" Infinity "), parse_p(2), parse_p("1.5")
        (inf, inf, 2.0, 1.5)
    """
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        return float(p)
    if isinstance(p, str):
        try:
            return float(p)  # float() reads "inf" and "infinity" in any case, with spaces
        except ValueError:
            raise ParamCorruptError(f"p must be a number in [1, inf] or 'inf', got {p!r}") from None
    return p


class ZeroVectorWarning(UserWarning):
    """The vector to maximise against is zero on the whole group (G = 0)."""


@dataclass(frozen=True)
class Constraint:
    """The constraint set S = {a : ||a||_p = eps, ||a||_0 <= n} (Definition 1).

    Args:
        p: the norm, in [1, inf]; ``float("inf")`` for L_inf.
        eps: the radius, > 0.
        n: the largest number of coordinates that may change, >= 1; ``None`` for no limit
            (n = k, the size of whatever group the constraint is applied to).

    Raises:
        ValueError: if p < 1, eps <= 0 or n < 1 (or any of them is not a finite number where
            one is required).

    Example:
        >>> Constraint(p=2, eps=0.1, n=100).q
        2.0
        >>> Constraint(p=float("inf"), eps=1e-3).q
        1.0
    """

    p: float
    eps: float
    n: int | None = None

    def __post_init__(self) -> None:
        p, eps, n = self.p, self.eps, self.n
        if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or p < 1:
            raise ParamCorruptError(f"p must be a number in [1, inf], got p={p!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ParamCorruptError(f"eps must be a finite number > 0, got eps={eps!r}")
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ParamCorruptError(f"n must be an integer >= 1 or None, got n={n!r}")
        object.__setattr__(self, "p", float(p))
        object.__setattr__(self, "eps", float(eps))

    @property
    def q(self) -> float:
        """The dual exponent q = p / (p - 1) (inf for p = 1, 1 for p = inf)."""
        return dual_exponent(self.p)

    def size(self, k: int) -> int:
        """The number of kept coordinates on a group of size ``k``: n, or k when n is None.

        Raises:
            ValueError: if n > k.
        """
        if self.n is None:
            return k
        if self.n > k:
            raise ParamCorruptError(f"n={self.n} exceeds the group's size k={k}")
        return self.n

    def with_eps(self, eps: float) -> Constraint:
        """The same constraint with another radius."""
        return Constraint(self.p, eps, self.n)


def dual_exponent(p: float) -> float:
    """q = p / (p - 1), with q = inf for p = 1 and q = 1 for p = inf."""
    if p == 1:
        return INF
    if p == INF:
        return 1.0
    return p / (p - 1.0)


def _as_list(v: Tensor | Mapping[str, Tensor]) -> tuple[list[str] | None, list[Tensor]]:
    if isinstance(v, Tensor):
        return None, [v]
    if isinstance(v, Mapping):
        if not v:
            raise ParamCorruptError("the group is empty: got an empty mapping of tensors")
        names = list(v.keys())
        tensors = list(v.values())
        for name, t in zip(names, tensors):
            if not isinstance(t, Tensor):
                raise InputTypeError(f"{name!r} maps to {type(t).__name__}, expected a Tensor")
        return names, tensors
    raise InputTypeError(f"expected a Tensor or a mapping name -> Tensor, got {type(v).__name__}")


def all_finite(t: Tensor) -> bool:
    """No NaN or Inf in ``t``, checked chunk by chunk so the temporaries stay small."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(piece).all()) for piece in flat.split(TOP_N_CHUNK))


def check_tensors(tensors: Sequence[Tensor], names: Sequence[str] | None) -> None:
    for i, t in enumerate(tensors):
        label = names[i] if names is not None else "v"
        if not t.is_floating_point():
            raise InputTypeError(f"{label!r} has dtype {t.dtype}; a floating-point tensor is required")
        if t.numel() == 0:
            raise ParamCorruptError(f"{label!r} is empty (numel = 0)")
        if not all_finite(t):
            raise ParamCorruptError(f"{label!r} contains NaN or Inf")


def lp_norm(v: Tensor | Mapping[str, Tensor], p: float) -> float:
    """||v||_p over all coordinates of a tensor or a group of tensors (in float64).

    Example:
        >>> lp_norm({"a": torch.tensor([3.0]), "b": torch.tensor([-4.0])}, 2)
        5.0
    """
    return tensors_lp_norm(_as_list(v)[1], p)


def tensors_lp_norm(tensors: Sequence[Tensor], p: float) -> float:
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return 0.0
    if p == INF:
        return max(float(t.detach().abs().max()) for t in tensors)
    if p == 1:
        return float(sum(t.detach().double().abs().sum() for t in tensors))
    scale = max(float(t.detach().abs().max()) for t in tensors)
    if scale == 0:
        return 0.0
    total = sum(float((t.detach().double().abs() / scale).pow(p).sum()) for t in tensors)
    return scale * total ** (1.0 / p)


def dual_norm(v: Tensor | Mapping[str, Tensor], constraint: Constraint) -> float:
    """||top_n(v)||_q: the first-order gain eps * ||top_n(v)||_q of Proposition 1, over eps.

    Example:
        >>> dual_norm(torch.tensor([3.0, -4.0, 1.0]), Constraint(p=2, eps=1.0, n=2))
        5.0
    """
    names, tensors = _as_list(v)
    check_tensors(tensors, names)
    k = sum(t.numel() for t in tensors)
    n = constraint.size(k)
    q = constraint.q
    if n == k:
        return tensors_lp_norm(tensors, q)
    return tensors_lp_norm(global_top_n(tensors, n)[1], q)


#: elements per chunk of a tensor in :func:`global_top_n` (bounds its temporaries)
TOP_N_CHUNK = 1 << 20


def global_top_n(tensors: Sequence[Tensor], n: int) -> tuple[list[Tensor], list[Tensor]]:
    """The n coordinates of largest |v| across several tensors, without concatenating them.

    Each tensor is read in chunks of ``max(TOP_N_CHUNK, n)`` elements; every chunk contributes
    its top-min(n, size) candidates, which are merged into a running set of n. The extra
    memory is O(n) plus the temporaries of one chunk — never a copy of the group, nor of its
    largest tensor (CPU ``torch.topk`` alone would take 4x the tensor it reads).
    Ties are broken deterministically: by tensor order, then position, then topk's order.

    Returns:
        ``(indices, values)``: for each tensor, the flat indices it keeps (sorted ascending,
        possibly empty) and v's values there.

    Example:
        >>> global_top_n([torch.tensor([1.0, -5.0]), torch.tensor([[3.0, 0.5]])], 2)
        ([tensor([1]), tensor([0])], [tensor([-5.]), tensor([3.])])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParamCorruptError(f"n must be an integer >= 1, got n={n!r}")
    device = tensors[0].device
    best_abs = torch.empty(0, dtype=torch.float64, device=device)
    best_tensor = torch.empty(0, dtype=torch.long, device=device)
    best_index = torch.empty(0, dtype=torch.long, device=device)
    chunk = max(TOP_N_CHUNK, n)
    for j, t in enumerate(tensors):
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), chunk):
            piece = flat[start : start + chunk]
            m = min(n, piece.numel())
            cand_abs, cand_index = torch.topk(piece.abs(), m, sorted=False)
            merged_abs = torch.cat([best_abs, cand_abs.double()])
            merged_tensor = torch.cat([best_tensor, torch.full((m,), j, dtype=torch.long, device=device)])
            merged_index = torch.cat([best_index, cand_index + start])
            if merged_abs.numel() > n:
                # a stable descending sort keeps earlier candidates first among equal magnitudes
                order = torch.sort(merged_abs, descending=True, stable=True).indices[:n]
                merged_abs, merged_tensor, merged_index = (
                    merged_abs[order],
                    merged_tensor[order],
                    merged_index[order],
                )
            best_abs, best_tensor, best_index = merged_abs, merged_tensor, merged_index
    indices, values = [], []
    for j, t in enumerate(tensors):
        idx = torch.sort(best_index[best_tensor == j]).values
        indices.append(idx)
        values.append(t.detach().reshape(-1)[idx])
    return indices, values


def maximiser_values(h: Sequence[Tensor], constraint: Constraint) -> list[Tensor]:
    """Proposition 1 on the kept coordinates h (a list of 1-D or shaped tensors).

    Returns tensors of the same shapes with ||a||_p = eps over all of them.
    """
    p, eps = constraint.p, constraint.eps
    nonempty = [x for x in h if x.numel()]
    scale = float(torch.stack(torch._foreach_norm(nonempty, math.inf)).max()) if nonempty else 0.0
    if scale == 0.0:
        # G = 0: every feasible a is optimal (a.v = 0). Spread eps equally, with sign +,
        # over the kept coordinates (the first ones, by the tie rule), so a stays in S.
        warnings.warn(
            "the vector is zero on the whole group (G = 0): every point of S is a maximiser; "
            "returning eps spread equally over the kept coordinates",
            ZeroVectorWarning,
            stacklevel=3,
        )
        count = sum(x.numel() for x in h)
        if p == 1:
            out = [torch.zeros_like(x) for x in h]
            for x, o in zip(h, out):
                if x.numel():
                    o.view(-1)[0] = eps
                    break
            return out
        value = eps if p == INF else eps * count ** (-1.0 / p)
        return [torch.full_like(x, value) for x in h]
    if p == INF:
        return [eps * torch.sign(x) for x in h]
    if p == 1:
        # all of eps on the single largest |v_i| (the first one among ties)
        out = [torch.zeros_like(x) for x in h]
        for x, o in zip(h, out):
            if x.numel() and float(x.abs().max()) == scale:
                flat = x.reshape(-1)
                i = int(torch.argmax(flat.abs()))
                o.view(-1)[i] = eps * torch.sign(flat[i])
                break
        return out
    if p == 2 and 1e-30 < scale < 1e30:
        # a = eps h / ||h||_2; at this scale the squares neither overflow nor underflow
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(nonempty)).double()))
        return list(torch._foreach_mul(list(h), eps / norm))
    # |h|^(1/(p-1)) computed on h / max|h| so that nothing overflows; p = 2 needs no power
    expo = 1.0 / (p - 1.0)
    unnormalised = []
    for x in h:
        y = x.double() / scale
        unnormalised.append(y if p == 2 else torch.sign(y) * y.abs().pow(expo))
    norm = tensors_lp_norm(unnormalised, p)
    return [(eps * y / norm).to(x.dtype) for x, y in zip(h, unnormalised)]


def sparse_closed_form(
    tensors: Sequence[Tensor], constraint: Constraint
) -> tuple[list[Tensor | None], list[Tensor]]:
    """Proposition 1 over a group of tensors, in sparse form.

    Returns:
        ``(indices, values)``: per tensor, the flat indices touched and the values of a there;
        ``indices[j] is None`` means tensor j is dense (values has its full shape). Dense
        output is used when the constraint keeps every coordinate (n is None or n = k).
    """
    k = sum(t.numel() for t in tensors)
    n = constraint.size(k)
    if n == k:
        return [None] * len(tensors), maximiser_values([t.detach() for t in tensors], constraint)
    indices, values = global_top_n(tensors, n)
    return list(indices), maximiser_values(values, constraint)


def closed_form(
    v: Tensor | Mapping[str, Tensor], constraint: Constraint, *, sparse: bool = False
) -> Tensor | dict[str, Tensor]:
    """The maximiser of a.v over S (Proposition 1; the appendix form of Eq. 5 / Eq. 10).

    .. math::
        h = \\mathrm{top}_n(v),\\quad
        a = \\epsilon\\,\\mathrm{sgn}(h)\\,|h|^{1/(p-1)} / \\| |h|^{1/(p-1)} \\|_p,\\quad
        a\\cdot v = \\epsilon \\|h\\|_q

    Top-n is global across all tensors of a mapping, computed by merging per-tensor
    candidates (no concatenation of the group). p = 1 puts all of eps on the largest |v_i|,
    p = inf gives eps * sgn(h), p = 2 gives eps * h / ||h||_2.

    When v is zero on the whole group (G = 0) every feasible point is optimal and the
    direction is undefined: the result spreads eps equally, sign +, over the n coordinates
    the tie rule picks (p = 1: all on one of them), so it still lies in S,
    and a :class:`ZeroVectorWarning` is issued. Nothing is ever divided by zero.

    Args:
        v: a tensor, or a mapping name -> tensor (one per parameter of the group).
        constraint: the set S.
        sparse: return sparse COO tensors (memory O(n)) instead of dense ones.

    Returns:
        The same structure as ``v``: a tensor, or a dict name -> tensor.

    Raises:
        TypeError: for a non-floating tensor or a value that is not a tensor.
        ValueError: for an empty group, NaN/Inf in v, or n > k.

    Example:
        >>> closed_form(torch.tensor([3.0, -4.0, 1.0]), Constraint(p=2, eps=1.0, n=2))
        tensor([ 0.6000, -0.8000,  0.0000])
        >>> closed_form(torch.tensor([3.0, -4.0, 1.0]), Constraint(p=float("inf"), eps=0.5))
        tensor([ 0.5000, -0.5000,  0.5000])
    """
    names, tensors = _as_list(v)
    check_tensors(tensors, names)
    indices, values = sparse_closed_form(tensors, constraint)
    out = []
    for t, idx, val in zip(tensors, indices, values):
        if idx is None:
            out.append(val.to_sparse() if sparse else val)
        elif sparse:
            # a 0-dim tensor has no sparse dimension: its indices are (0, nnz)
            coords = torch.stack(torch.unravel_index(idx, t.shape)) if t.dim() else idx.new_empty((0, idx.numel()))
            out.append(torch.sparse_coo_tensor(coords, val, t.shape, check_invariants=False).coalesce())
        else:
            dense = torch.zeros_like(t, memory_format=torch.contiguous_format)
            dense.view(-1)[idx] = val
            out.append(dense)
    if names is None:
        return out[0]
    return dict(zip(names, out))
