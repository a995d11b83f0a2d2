"""closed_form (Proposition 1) against independent references.

The references here are written from the formulas in ../shared/paper/NOTES.md, in numpy and
float64, without calling the package: a slow literal implementation, brute force over random
feasible points, brute force over supports (Hoelder duality), and analytic cases.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramcorrupt import Constraint, ZeroVectorWarning, closed_form, dual_norm, lp_norm

INF = math.inf
PS = [1.0, 1.5, 2.0, 3.0, INF]
SHAPES = [(), (1,), (3,), (7,), (2, 3), (4, 1, 2), (2, 2, 2), (5, 3)]


# --------------------------------------------------------------------------------------
# independent references (numpy, float64)
# --------------------------------------------------------------------------------------


def np_norm(x: np.ndarray, p: float) -> float:
    x = np.abs(np.asarray(x, dtype=np.float64).ravel())
    if p == INF:
        return float(x.max()) if x.size else 0.0
    return float(np.sum(x**p) ** (1.0 / p))


def dual(p: float) -> float:
    if p == 1:
        return INF
    if p == INF:
        return 1.0
    return p / (p - 1)


def ref_top_n(flat: np.ndarray, n: int) -> np.ndarray:
    """h = top_n(v): keep the n largest |v_i| of the concatenated group, zero the rest."""
    order = np.argsort(-np.abs(flat), kind="stable")
    h = np.zeros_like(flat)
    h[order[:n]] = flat[order[:n]]
    return h


def ref_closed_form(vs: list[np.ndarray], p: float, eps: float, n: int) -> list[np.ndarray]:
    """The literal formula a = eps sgn(h) |h|^(1/(p-1)) / || |h|^(1/(p-1)) ||_p."""
    flat = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in vs])
    h = ref_top_n(flat, n)
    if p == INF:
        a = eps * np.sign(h)
    elif p == 1:
        i = int(np.argmax(np.abs(h)))
        a = np.zeros_like(h)
        a[i] = eps * np.sign(h[i])
    else:
        w = np.abs(h) ** (1.0 / (p - 1.0))
        a = eps * np.sign(h) * w / np_norm(w, p)
    out, start = [], 0
    for v in vs:
        size = int(np.prod(np.shape(v), dtype=np.int64))
        out.append(a[start : start + size].reshape(np.shape(v)))
        start += size
    return out


def random_feasible(k: int, n: int, p: float, eps: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random points of S: random support of size <= n, random values, ||a||_p = eps."""
    points = np.zeros((count, k))
    for row in points:
        s = int(rng.integers(1, n + 1))
        support = rng.choice(k, size=s, replace=False)
        row[support] = rng.standard_normal(s) * rng.choice([1e-3, 1.0, 1e3])
        if rng.random() < 0.3:  # also try sign patterns / equal magnitudes (L_inf vertices)
            row[support] = np.sign(row[support])
        row *= eps / np_norm(row, p)
    return points


def as_numpy(result, keys=None) -> list[np.ndarray]:
    if isinstance(result, dict):
        return [result[key].to_dense().double().numpy() if result[key].is_sparse else result[key].double().numpy() for key in keys]
    return [result.to_dense().double().numpy() if result.is_sparse else result.double().numpy()]


def make_group(shapes, seed: int, dtype=torch.float64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # log-uniform magnitudes: continuous, so no ties in |v|
    out = {}
    for i, shape in enumerate(shapes):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x = x * torch.exp(2 * torch.rand(shape, generator=gen, dtype=torch.float64))
        out[f"t{i}"] = x.to(dtype)
    return out


# --------------------------------------------------------------------------------------
# literal reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("n", [1, 2, 5, 17, None])
@pytest.mark.parametrize("sparse", [False, True])
def test_matches_literal_reference_float64(p, n, sparse):
    group = make_group([(3, 4), (5,), (2, 1, 3)], seed=int(10 * p if p != INF else 99) + (n or 0))
    eps = 0.37
    k = sum(t.numel() for t in group.values())
    out = closed_form(group, Constraint(p=p, eps=eps, n=n), sparse=sparse)
    assert list(out) == list(group)
    got = as_numpy(out, list(group))
    ref = ref_closed_form([t.numpy() for t in group.values()], p, eps, n or k)
    for g, r, t in zip(got, ref, group.values()):
        assert g.shape == tuple(t.shape)
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("p", PS)
def test_matches_literal_reference_float32_single_tensor(p):
    v = make_group([(40,)], seed=3, dtype=torch.float32)["t0"]
    out = closed_form(v, Constraint(p=p, eps=2.5, n=9))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == v.shape
    (ref,) = ref_closed_form([v.double().numpy()], p, 2.5, 9)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_docstring_example_values():
    v = torch.tensor([3.0, -4.0, 1.0])
    torch.testing.assert_close(closed_form(v, Constraint(p=2, eps=1.0, n=2)), torch.tensor([0.6, -0.8, 0.0]))
    torch.testing.assert_close(
        closed_form(v, Constraint(p=INF, eps=0.5)), torch.tensor([0.5, -0.5, 0.5])
    )
    torch.testing.assert_close(closed_form(v, Constraint(p=1, eps=0.5)), torch.tensor([0.0, -0.5, 0.0]))
    # p = 3: a_i proportional to sgn(v_i)|v_i|^(1/2) on the top-2 = {3, -4}
    expected = np.array([math.sqrt(3), -2.0, 0.0])
    expected = 0.5 * expected / np_norm(expected, 3)
    np.testing.assert_allclose(closed_form(v.double(), Constraint(p=3, eps=0.5, n=2)).numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------------------------
# brute force
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("n", [1, 3, 12])
def test_no_random_feasible_point_beats_closed_form(p, n):
    group = make_group([(4,), (2, 4)], seed=7 + n)
    flat = np.concatenate([t.numpy().ravel() for t in group.values()])
    eps = 0.8
    out = closed_form(group, Constraint(p=p, eps=eps, n=n))
    a = np.concatenate([x.numpy().ravel() for x in out.values()])
    best = float(a @ flat)
    rng = np.random.default_rng(n)
    points = random_feasible(flat.size, n, p, eps, 4000, rng)
    values = points @ flat
    assert values.max() <= best * (1 + 1e-12)
    # local search around the optimum on its own support (then pulled back onto S) never improves
    support = np.flatnonzero(a)
    for scale in (1e-1, 1e-3, 1e-6):
        noise = np.zeros((500, flat.size))
        noise[:, support] = rng.standard_normal((500, support.size)) * scale * eps
        candidates = a + noise
        norms = np.array([np_norm(c, p) for c in candidates])
        candidates *= (eps / norms)[:, None]
        assert (candidates @ flat).max() <= best * (1 + 1e-12)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_brute_force_over_supports(p, n):
    # For a fixed support T, Hoelder gives max_{||a||_p = eps, supp a in T} a.v = eps ||v_T||_q.
    # The maximum over all supports of size n (enumerated) must be what closed_form attains.
    v = make_group([(6,)], seed=11)["t0"]
    flat = v.numpy()
    eps, q = 0.3, dual(p)
    best = max(eps * np_norm(flat[list(T)], q) for T in itertools.combinations(range(6), n))
    a = closed_form(v, Constraint(p=p, eps=eps, n=n)).numpy()
    assert float(a @ flat) == pytest.approx(best, rel=1e-12)
    assert np.count_nonzero(a) <= n
    assert np_norm(a, p) == pytest.approx(eps, rel=1e-12)


# --------------------------------------------------------------------------------------
# properties (hypothesis)
# --------------------------------------------------------------------------------------


@st.composite
def problems(draw):
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4))
    k = sum(math.prod(s) for s in shapes)
    n = draw(st.integers(1, k))
    p = draw(st.sampled_from(PS))
    eps = draw(st.sampled_from([1e-6, 1e-3, 0.05, 1.0, 30.0]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    sparse = draw(st.booleans())
    return make_group(shapes, seed, dtype), p, eps, n, sparse, seed


@settings(max_examples=60, deadline=None)
@given(problems())
def test_properties_feasible_value_optimal(problem):
    group, p, eps, n, sparse, seed = problem
    keys = list(group)
    out = closed_form(group, Constraint(p=p, eps=eps, n=n), sparse=sparse)
    assert isinstance(out, dict) and list(out) == keys
    for key in keys:
        assert out[key].shape == group[key].shape
        assert out[key].dtype == group[key].dtype
        assert out[key].is_sparse == sparse
    a = np.concatenate([x.ravel() for x in as_numpy(out, keys)])
    v = np.concatenate([group[key].double().numpy().ravel() for key in keys])
    assert np.all(np.isfinite(a))
    # feasibility: ||a||_p = eps and ||a||_0 <= n
    assert np_norm(a, p) == pytest.approx(eps, rel=1e-5)
    assert np.count_nonzero(a) <= n
    # value: a.v = eps ||top_n(v)||_q
    expected = eps * np_norm(ref_top_n(v, n), dual(p))
    assert float(a @ v) == pytest.approx(expected, rel=1e-5)
    # dual_norm reports the same first-order gain over eps
    assert dual_norm(group, Constraint(p=p, eps=eps, n=n)) == pytest.approx(expected / eps, rel=1e-5)
    # optimality against random feasible points
    points = random_feasible(v.size, n, p, eps, 300, np.random.default_rng(seed))
    assert (points @ v).max() <= expected * (1 + 1e-5)
    # and the literal formula (no ties: magnitudes are continuous)
    ref = np.concatenate([r.ravel() for r in ref_closed_form([group[key].double().numpy() for key in keys], p, eps, n)])
    tol = 1e-5 if group[keys[0]].dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(a, ref, rtol=tol, atol=tol * eps)


@settings(max_examples=40, deadline=None)
@given(problems())
def test_sparse_equals_dense(problem):
    group, p, eps, n, _, _ = problem
    c = Constraint(p=p, eps=eps, n=n)
    dense = closed_form(group, c)
    sparse = closed_form(group, c, sparse=True)
    for key in group:
        assert sparse[key].is_sparse and not dense[key].is_sparse
        assert torch.equal(sparse[key].to_dense(), dense[key])
        if n < sum(t.numel() for t in group.values()):
            assert sparse[key]._nnz() <= n


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(PS), st.integers(1, 12), st.integers(0, 10**6))
def test_ties_feasible_and_deterministic(p, n, seed):
    # many equal magnitudes: any consistent choice is optimal, but it must be feasible,
    # attain eps ||top_n||_q and be the same on every call
    gen = torch.Generator().manual_seed(seed)
    group = {
        "a": torch.randint(-2, 3, (3, 2), generator=gen).double(),
        "b": torch.randint(-2, 3, (6,), generator=gen).double(),
    }
    if not any(bool(t.any()) for t in group.values()):
        group["b"][0] = 1.0
    c = Constraint(p=p, eps=0.5, n=n)
    first = closed_form(group, c)
    second = closed_form({key: t.clone() for key, t in group.items()}, c)
    sparse = closed_form(group, c, sparse=True)
    a = np.concatenate([first[key].numpy().ravel() for key in group])
    v = np.concatenate([group[key].numpy().ravel() for key in group])
    assert np_norm(a, p) == pytest.approx(0.5, rel=1e-12)
    assert np.count_nonzero(a) <= n
    assert float(a @ v) == pytest.approx(0.5 * np_norm(ref_top_n(v, n), dual(p)), rel=1e-12)
    for key in group:
        assert torch.equal(first[key], second[key])
        assert torch.equal(first[key], sparse[key].to_dense())


# --------------------------------------------------------------------------------------
# analytic cases
# --------------------------------------------------------------------------------------


def _linear_model_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1, bias=False).double()
    x = torch.randn(8, 5, dtype=torch.float64)

    def loss(weight):
        return (x @ weight.T).mean()  # linear in the weight: L(w + a) - L(w) = a.g exactly

    w = model.weight.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(w), [w])
    return loss, w.detach(), g


def test_linear_model_linf_optimum_is_eps_sign_g():
    loss, w, g = _linear_model_gradient()
    eps = 1e-2
    a = closed_form(g, Constraint(p=INF, eps=eps))
    assert torch.equal(a, eps * torch.sign(g))
    change = float(loss(w + a) - loss(w))
    assert change == pytest.approx(eps * float(g.abs().sum()), rel=1e-10)


def test_linear_model_l2_optimum_is_eps_g_over_norm():
    loss, w, g = _linear_model_gradient()
    eps = 1e-2
    a = closed_form(g, Constraint(p=2, eps=eps))
    torch.testing.assert_close(a, eps * g / g.norm(), rtol=1e-12, atol=1e-15)
    change = float(loss(w + a) - loss(w))
    assert change == pytest.approx(eps * float(g.norm()), rel=1e-10)


def test_l1_puts_everything_on_the_largest_coordinate():
    v = {"a": torch.tensor([0.5, -0.2]), "b": torch.tensor([[0.1, -3.0], [2.9, 0.0]])}
    out = closed_form(v, Constraint(p=1, eps=0.25))
    assert torch.equal(out["a"], torch.zeros(2))
    assert torch.equal(out["b"], torch.tensor([[0.0, -0.25], [0.0, 0.0]]))


# --------------------------------------------------------------------------------------
# global top-n
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_top_n_is_global_across_tensors(sparse):
    v = {"small": torch.tensor([1.0, -2.0, 3.0]), "big": torch.tensor([[10.0, -9.0], [8.0, 0.5]])}
    out = closed_form(v, Constraint(p=INF, eps=1.0, n=3), sparse=sparse)
    out = {key: t.to_dense() for key, t in out.items()}
    # per-tensor top-n would touch "small"; the global top-3 lies entirely in "big"
    assert torch.equal(out["small"], torch.zeros(3))
    assert torch.equal(out["big"], torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
    # uneven split: 2 from one tensor, 1 from the other
    v = {"a": torch.tensor([5.0, 0.1]), "b": torch.tensor([4.0, -3.0, 0.2])}
    out = closed_form(v, Constraint(p=2, eps=1.0, n=3), sparse=sparse)
    out = {key: t.to_dense() for key, t in out.items()}
    norm = math.sqrt(25 + 16 + 9)
    torch.testing.assert_close(out["a"], torch.tensor([5.0 / norm, 0.0]))
    torch.testing.assert_close(out["b"], torch.tensor([4.0 / norm, -3.0 / norm, 0.0]))


def test_order_of_tensors_does_not_change_the_answer():
    group = make_group([(3, 3), (10,), (2, 2)], seed=5)
    reordered = dict(reversed(list(group.items())))
    c = Constraint(p=1.5, eps=0.2, n=6)
    a, b = closed_form(group, c), closed_form(reordered, c)
    for key in group:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-15)


def test_non_contiguous_tensor():
    base = make_group([(4, 6)], seed=8)["t0"]
    v = base.T  # non-contiguous view
    assert not v.is_contiguous()
    out = closed_form(v, Constraint(p=2, eps=1.0, n=5))
    (ref,) = ref_closed_form([v.contiguous().numpy()], 2.0, 1.0, 5)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-15)
    sparse = closed_form(v, Constraint(p=2, eps=1.0, n=5), sparse=True)
    assert torch.equal(sparse.to_dense(), out)


def test_lp_norm_matches_numpy():
    group = make_group([(3, 2), (5,)], seed=9)
    flat = np.concatenate([t.numpy().ravel() for t in group.values()])
    for p in PS:
        assert lp_norm(group, p) == pytest.approx(np_norm(flat, p), rel=1e-12)
    # large values must not overflow for large p
    big = {"x": torch.tensor([1e300, -1e300], dtype=torch.float64)}
    assert lp_norm(big, 3) == pytest.approx(1e300 * 2 ** (1 / 3), rel=1e-12)


# --------------------------------------------------------------------------------------
# G = 0
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("n", [1, 3, None])
@pytest.mark.parametrize("sparse", [False, True])
def test_zero_vector_documented_behaviour(p, n, sparse):
    group = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.warns(ZeroVectorWarning):
        out = closed_form(group, Constraint(p=p, eps=0.7, n=n), sparse=sparse)
    a = np.concatenate([x.ravel() for x in as_numpy(out, list(group))])
    assert np.all(np.isfinite(a))
    assert np_norm(a, p) == pytest.approx(0.7, rel=1e-6)
    assert np.count_nonzero(a) <= (n or 10)
    assert np.all(a >= 0)  # documented: sign +
    nonzero = a[a != 0]
    assert np.allclose(nonzero, nonzero[0])  # documented: spread equally


def test_no_warning_when_vector_is_not_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        closed_form(torch.tensor([0.0, 1.0, 0.0]), Constraint(p=2, eps=1.0, n=3))


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p": 2, "eps": 0.0}, "eps=0.0"),
        ({"p": 2, "eps": -1.5}, "eps=-1.5"),
        ({"p": 2, "eps": float("nan")}, "eps=nan"),
        ({"p": 2, "eps": INF}, "eps=inf"),
        ({"p": 0.5, "eps": 1.0}, "p=0.5"),
        ({"p": float("nan"), "eps": 1.0}, "p=nan"),
        ({"p": -INF, "eps": 1.0}, "p=-inf"),
        ({"p": 2, "eps": 1.0, "n": 0}, "n=0"),
        ({"p": 2, "eps": 1.0, "n": -3}, "n=-3"),
        ({"p": 2, "eps": 1.0, "n": 2.5}, "n=2.5"),
    ],
)
def test_bad_constraint(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("-", r"\-")):
        Constraint(**kwargs)


def test_n_larger_than_k():
    with pytest.raises(ValueError, match=r"n=6.*k=5"):
        closed_form(torch.randn(5), Constraint(p=2, eps=1.0, n=6))
    with pytest.raises(ValueError, match=r"n=8.*k=7"):
        closed_form({"a": torch.randn(3), "b": torch.randn(2, 2)}, Constraint(p=2, eps=1.0, n=8), sparse=True)


def test_empty_mapping():
    with pytest.raises(ValueError, match="empty"):
        closed_form({}, Constraint(p=2, eps=1.0))


def test_empty_tensor():
    with pytest.raises(ValueError, match="'w'.*empty"):
        closed_form({"w": torch.zeros(0, 3)}, Constraint(p=2, eps=1.0))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_tensor(dtype):
    with pytest.raises(TypeError, match=str(dtype)):
        closed_form({"w": torch.ones(3, dtype=dtype)}, Constraint(p=2, eps=1.0))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="'w'.*list"):
        closed_form({"w": [1.0, 2.0]}, Constraint(p=2, eps=1.0))


@pytest.mark.parametrize("bad", [float("nan"), INF, -INF])
@pytest.mark.parametrize("sparse", [False, True])
def test_non_finite_values(bad, sparse):
    v = {"fine": torch.randn(3), "broken": torch.tensor([1.0, bad, 2.0])}
    with pytest.raises(ValueError, match="'broken'.*(NaN|Inf)"):
        closed_form(v, Constraint(p=2, eps=1.0, n=2), sparse=sparse)


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_chunked_top_n_matches_reference(monkeypatch, chunk, n):
    """Chunked reading of each tensor (the memory bound) still gives the global top-n."""
    import paramcorrupt.constraint as constraint_module

    monkeypatch.setattr(constraint_module, "TOP_N_CHUNK", chunk)
    group = make_group([(50,), (3, 9), (), (4, 4, 2)], seed=n + chunk)
    keys = list(group)
    got = as_numpy(closed_form(group, Constraint(p=2, eps=0.5, n=n)), keys)
    want = ref_closed_form([group[k].numpy() for k in keys], 2, 0.5, n)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)


def test_parse_p_is_the_one_parser_of_p():
    import math

    from paramcorrupt.constraint import parse_p
    from paramcorrupt.faults.lp import parse_p as faults_parse_p

    assert faults_parse_p is parse_p
    for text in ("inf", "INF", " Infinity ", "infinity", "+inf"):
        assert parse_p(text) == math.inf
    assert parse_p(2) == 2.0 and isinstance(parse_p(2), float) and parse_p("1.5") == 1.5
    assert parse_p(None) is None and parse_p(True) is True  # left for Constraint to reject
    with pytest.raises(ValueError, match="p must be a number"):
        parse_p("two")
