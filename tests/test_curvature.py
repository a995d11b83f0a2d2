"""paramcorrupt.curvature against independent references (issue 24, point 1).

The references are built here, never by the code under test: the full Hessian of the data
set's mean loss by ``torch.autograd.functional.hessian`` on the group's flattened parameters
(a literal full-batch loss, through ``torch.func.functional_call``), its eigenvalues by
``torch.linalg.eigvalsh``; the data set HVP as a literal loop of per-batch HVPs
(``torch.autograd.functional.hvp``) weighted by the batch sizes. Everything in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

import paramcorrupt
from paramcorrupt import Corruption, ParamCorruptError, ParameterGroup, gradient_corruption, select
from paramcorrupt.constraint import Constraint
from paramcorrupt.curvature import Curvature, hessian_vector_product, quadratic_form
from paramcorrupt.losses import classification_loss

pytestmark = pytest.mark.usefixtures("one_thread")

N = 11  # batches of 4, 4, 3: the uneven last batch must count by its size


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (N,), generator=g)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = _data()
    return [(x[i : i + 4], y[i : i + 4]) for i in range(0, N, 4)]


def _model() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.randn(32, 3, dtype=torch.float64) + 0.5)
    return model.eval()


def _groups(model: nn.Module) -> list[ParameterGroup]:
    return [select(model, "0", name="first"), select(model, "3", name="last")]


def _flat_loss(model: nn.Module, group: ParameterGroup, x: torch.Tensor, y: torch.Tensor):
    """The mean cross-entropy over (x, y) as a function of the group's flattened parameters."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in group.names]
    sizes = [params[n].numel() for n in group.names]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = dict(zip(group.names, (p.reshape(s) for p, s in zip(flat.split(sizes), shapes))))
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in group.names])
    return loss, flat


def _full_hessian(model: nn.Module, group: ParameterGroup) -> torch.Tensor:
    x, y = _data()
    loss, flat = _flat_loss(model, group, x, y)
    return torch.autograd.functional.hessian(loss, flat)


def _flatten(group: ParameterGroup, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in group.names])


def _snapshot(model: nn.Module) -> tuple[list, list[bool], list]:
    """Every parameter and buffer (a copy), each parameter's requires_grad, the modes, the .grad objects."""
    state = [(n, t.detach().clone(), t.requires_grad) for n, t in model.state_dict(keep_vars=True).items()]
    return state, [m.training for m in model.modules()], [p.grad for p in model.parameters()]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8) if t.is_floating_point() else t.detach()


def _assert_unchanged(model: nn.Module, before) -> None:
    """Bit for bit: the values, requires_grad, the modes, and the very .grad tensors."""
    state, modes, grads = before
    now = model.state_dict(keep_vars=True)
    for name, saved, requires_grad in state:
        assert torch.equal(_bits(now[name]), _bits(saved)), name
        assert now[name].requires_grad == requires_grad, name
    assert [m.training for m in model.modules()] == modes
    assert all(a is b for a, b in zip([p.grad for p in model.parameters()], grads, strict=True))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def test_top_eigenvalues_and_exact_trace_equal_eigvalsh_of_the_full_hessian():
    model = _model()
    before = _snapshot(model)
    for group in _groups(model):
        exact = torch.linalg.eigvalsh(_full_hessian(model, group))
        k = exact.numel()
        for which, order in (("largest", exact.flip(0)), ("magnitude", exact[exact.abs().argsort(descending=True)])):
            result = paramcorrupt.curvature(model, _batches(), classification_loss, group, top=3, which=which,
                                            max_iter=k, tol=1e-12, exact_trace=True, vectors_per_pass=5)
            assert isinstance(result, Curvature)
            assert result.k == k and result.group == group.name and result.converged
            assert len(result.eigenvalues) == 3
            for got, want in zip(result.eigenvalues, order[:3].tolist()):
                assert _rel(got, want) <= 1e-6, (group.name, which, result.eigenvalues, order[:3])
            assert _rel(result.trace, float(exact.sum())) <= 1e-6
            assert result.trace_stderr == 0.0 and result.trace_samples == k
            assert result.mean_eigenvalue == pytest.approx(float(exact.sum()) / k, rel=1e-6)
            # Lanczos products, then the k unit vectors in passes of 5
            assert result.hvps >= k + 1 and result.passes == result.hvps - k + -(-k // 5)
    _assert_unchanged(model, before)


def test_lanczos_stops_early_at_tolerance():
    model = _model()
    group = select(model, "0")
    exact = torch.linalg.eigvalsh(_full_hessian(model, group))
    result = paramcorrupt.curvature(model, _batches(), classification_loss, group, top=1, tol=1e-8,
                                    trace_samples=None)
    assert _rel(result.lambda_max, float(exact[-1])) <= 1e-6
    assert result.trace is None and result.trace_samples == 0
    assert result.hvps == result.passes  # one product per Lanczos step


def test_hutchinson_within_three_standard_errors_of_the_exact_trace():
    model = _model()
    for group in _groups(model):
        exact = float(torch.linalg.eigvalsh(_full_hessian(model, group)).sum())
        g = torch.Generator().manual_seed(123)
        result = paramcorrupt.curvature(model, _batches(), classification_loss, group, top=None,
                                        trace_samples=64, generator=g)
        assert result.trace_samples == 64 and result.hvps == 64 and result.passes == 8
        assert result.trace_stderr > 0
        assert abs(result.trace - exact) <= 3 * result.trace_stderr, (result.trace, result.trace_stderr, exact)
        # the probes come from the generator: the same seed, the same estimate
        again = paramcorrupt.curvature(model, _batches(), classification_loss, group, top=None, trace_samples=64,
                                       generator=torch.Generator().manual_seed(123))
        assert again.trace == result.trace


def test_dataset_hvp_is_the_batch_weighted_sum_of_per_batch_hvps():
    model = _model()
    for group in _groups(model):
        v = {n: torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
             for n, p in group.tensors(model).items()}
        got = _flatten(group, hessian_vector_product(model, _batches(), classification_loss, v, group))
        total, weight = 0, 0
        for x, y in _batches():  # literal: sum_b |b| H_b v / sum_b |b|
            loss, flat = _flat_loss(model, group, x, y)
            _, hv = torch.autograd.functional.hvp(loss, flat, _flatten(group, v))
            total = total + len(y) * hv
            weight += len(y)
        want = total / weight
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
        # and the full-batch Hessian times v
        assert torch.allclose(got, _full_hessian(model, group) @ _flatten(group, v), rtol=1e-10, atol=1e-12)


def test_quadratic_form_of_a_corruption():
    model = _model()
    group = select(model, "3")
    grad = paramcorrupt.dataset_gradient(model, _batches(), classification_loss, group)
    a = gradient_corruption(grad, Constraint(p=2, eps=0.1))
    a_flat = _flatten(group, a.dense(model))
    want = float(a_flat @ _full_hessian(model, group) @ a_flat)
    assert _rel(quadratic_form(model, _batches(), classification_loss, a), want) <= 1e-9
    # a mapping name -> tensor over two tensors of both groups
    both = ParameterGroup("both", ("0.weight", "3.bias"))
    deltas = {n: torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
              for n, p in both.tensors(model).items()}
    d = _flatten(both, deltas)
    want = float(d @ _full_hessian(model, both) @ d)
    assert _rel(quadratic_form(model, _batches(), classification_loss, deltas), want) <= 1e-9
    # a fault that sets values has no delta
    fault = Corruption.from_values({"3.bias": torch.zeros(3)})
    with pytest.raises(ParamCorruptError, match="sets values"):
        quadratic_form(model, _batches(), classification_loss, fault)


class _Quadratic(nn.Module):
    """L(w) = ½ Σ d_i w_i²: H = diag(d), with a repeated top eigenvalue."""

    def __init__(self, d: list[float]) -> None:
        super().__init__()
        self.d = torch.tensor(d, dtype=torch.float64)
        self.w = nn.Parameter(torch.linspace(-1, 1, len(d), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.d * self.w**2).sum() * x.mean()


def test_repeated_eigenvalues_are_found_after_an_invariant_subspace():
    d = [3.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.0, 0.0]
    model = _Quadratic(d)
    data = [(torch.ones(2, 1, dtype=torch.float64),)]
    result = paramcorrupt.curvature(model, data, lambda m, b: m(b[0]), top=3, max_iter=8, tol=1e-12,
                                    trace_samples=None)
    assert result.eigenvalues == pytest.approx((3.0, 3.0, 2.0), rel=1e-9)
    exact = paramcorrupt.curvature(model, data, lambda m, b: m(b[0]), top=None, exact_trace=True)
    assert exact.trace == pytest.approx(sum(d), rel=1e-12)


class _OnceSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _OnceModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _OnceSquare.apply(self.lin(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top": 0}, "top must be at least 1, got top=0"),
        ({"top": -2}, "top must be at least 1, got top=-2"),
        ({"max_iter": 0}, "max_iter must be at least 1"),
        ({"max_iter": -5}, "max_iter must be at least 1"),
        ({"trace_samples": 0}, r"trace_samples must be at least 2 \(the standard error needs two probes\), got trace_samples=0"),
        ({"trace_samples": -3}, "trace_samples must be at least 2"),
        ({"trace_samples": 1}, "trace_samples must be at least 2"),
        ({"top": 3, "max_iter": 2}, "max_iter=2 is below top=3"),
        ({"seed": "one"}, "seed must be an integer"),
        ({"vectors_per_pass": 0}, "vectors_per_pass must be at least 1"),
        ({"top": 2.5}, "top must be an integer"),
        ({"top": 99}, r"top=99 exceeds the number of parameters of group 'first' \(k=16\)"),
        ({"which": "smallest"}, "which must be one of"),
        ({"tol": 0.0}, "tol must be a finite number > 0"),
    ],
)
def test_bad_settings_are_one_clear_error_and_the_model_is_unchanged(kwargs, match):
    model = _model()
    before = _snapshot(model)
    with pytest.raises(ParamCorruptError, match=match) as info:
        paramcorrupt.curvature(model, _batches(), classification_loss, select(model, "0", name="first"), **kwargs)
    assert "\n" not in str(info.value)
    _assert_unchanged(model, before)


def test_a_group_without_parameters_and_a_loss_without_double_backward_are_refused():
    model = _model()
    before = _snapshot(model)
    with pytest.raises(ParamCorruptError, match="group 'none' has no parameters"):
        paramcorrupt.curvature(model, _batches(), classification_loss, ParameterGroup("none", ()))
    with pytest.raises(ParamCorruptError, match="group 'nothing' is empty"):
        paramcorrupt.curvature(model, _batches(), classification_loss, select_or_name(model))
    _assert_unchanged(model, before)

    once = _OnceModel()
    data = [(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))]
    before = _snapshot(once)
    with pytest.raises(ParamCorruptError, match="cannot be differentiated twice.*once_differentiable") as info:
        paramcorrupt.curvature(once, data, classification_loss, top=1, trace_samples=None)
    assert "\n" not in str(info.value)
    _assert_unchanged(once, before)


def select_or_name(model: nn.Module) -> str:
    return "nothing"  # a pattern that matches no parameter


def test_frozen_parameters_train_mode_and_norm_statistics_come_back_bit_for_bit():
    model = _model()
    model.train()  # the caller's mode: the Hessian is still the evaluation-mode one
    model[0].weight.requires_grad_(False)
    model[3].weight.grad = torch.ones_like(model[3].weight)
    before = _snapshot(model)
    group = ParameterGroup("frozen", ("0.weight",))
    model.eval()
    exact = torch.linalg.eigvalsh(_full_hessian(model, group))
    model.train()
    result = paramcorrupt.curvature(model, _batches(), classification_loss, group, top=1, max_iter=12,
                                    tol=1e-12, trace_samples=None)
    assert _rel(result.lambda_max, float(exact[-1])) <= 1e-6
    _assert_unchanged(model, before)


def test_quadratic_form_is_the_second_order_term_of_the_measured_loss_change():
    """Eq. 4 measured: (L(w + t a) - L(w) - t aᵀg) / (t²/2) -> aᵀHa as t -> 0, with an O(t) gap."""
    model = _model()
    group = select(model, "0")
    grad = paramcorrupt.dataset_gradient(model, _batches(), classification_loss, group)
    a = gradient_corruption(grad, Constraint(p=2, eps=1.0))
    quad = quadratic_form(model, _batches(), classification_loss, a)
    first = a.dot(grad)
    x, y = _data()
    loss, flat = _flat_loss(model, group, x, y)
    direction = _flatten(group, a.dense(model))
    gaps = []
    for t in (1e-3, 1e-4):
        with torch.no_grad():
            measured = (float(loss(flat + t * direction)) - float(loss(flat)) - t * first) / (t * t / 2)
        gaps.append(abs(measured - quad))
    assert gaps[1] <= 1e-3 * abs(quad)  # second order at t = 1e-4
    assert gaps[1] < gaps[0] / 5  # and shrinking like t


class _Attention(nn.Module):
    """One self-attention through F.scaled_dot_product_attention (fused kernels: no double backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12).double()
        self.out = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, 1, 4)).permute(2, 0, 3, 1, 4)  # [3, B, heads=1, T, 4]
        return self.out(F.scaled_dot_product_attention(q, k, v).squeeze(1).mean(1))


def test_attention_by_scaled_dot_product_attention_is_differentiated_twice():
    torch.manual_seed(4)
    model = _Attention().eval()
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(5, 3, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    group = select(model, "qkv")
    loss, flat = _flat_loss(model, group, x, y)

    def literal(w: torch.Tensor) -> torch.Tensor:  # the same attention written out by hand
        params = dict(zip(group.names, (w[:48].reshape(12, 4), w[48:])))
        q, k, v = (x @ params["qkv.weight"].T + params["qkv.bias"]).unflatten(-1, (3, 4)).unbind(-2)
        att = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
        return F.cross_entropy(model.out(att.mean(1)), y)

    assert torch.allclose(literal(flat), loss(flat))
    exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(literal, flat))
    result = paramcorrupt.curvature(model, [(x, y)], classification_loss, group, top=2, max_iter=60, tol=1e-12,
                                    exact_trace=True)
    assert _rel(result.eigenvalues[0], float(exact[-1])) <= 1e-6
    assert _rel(result.trace, float(exact.sum())) <= 1e-6


@pytest.mark.slow  # ~7 s here: transformers' forward is slow in Python on a shared CPU
def test_a_hugging_face_model_with_sdpa_attention():
    transformers = pytest.importorskip("transformers")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=30, n_positions=16, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(2))
    group = select(model, "transformer.h.0.attn.c_attn")

    def loss_fn(m, batch):
        return m(input_ids=batch, labels=batch).loss

    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in group.names]

    def literal(flat: torch.Tensor) -> torch.Tensor:
        pieces = {n: p.reshape(params[n].shape) for n, p in zip(group.names, flat.split(sizes))}
        return functional_call(model, pieces, (), {"input_ids": ids, "labels": ids}).loss

    flat = torch.cat([params[n].detach().reshape(-1) for n in group.names])
    with sdpa_kernel(SDPBackend.MATH):  # the reference needs a twice-differentiable kernel too
        exact = torch.linalg.eigvalsh(torch.autograd.functional.hessian(literal, flat))
    before = _snapshot(model)
    result = paramcorrupt.curvature(model, [ids], loss_fn, group, top=1, max_iter=60, tol=1e-12, exact_trace=True,
                                    vectors_per_pass=64)
    assert _rel(result.lambda_max, float(exact[-1])) <= 1e-6
    assert _rel(result.trace, float(exact.sum())) <= 1e-6
    _assert_unchanged(model, before)
