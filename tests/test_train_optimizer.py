"""CorruptionResistant: the optimiser wrapper of Eq. 13, against literal references."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from paramcorrupt.train import CorruptionResistant, split_batch, training_closure
from paramcorrupt.train.optimizer import GROUP_KEYS


def mlp(seed: int = 0, dtype: torch.dtype = torch.float64, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(dtype)


def data(seed: int = 1, size: int = 16, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 5, generator=g, dtype=dtype), torch.randint(0, 3, (size,), generator=g)


def closure_for(model, optimizer, x, y):
    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(a, b):
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# --------------------------------------------------------------------------------------
# alpha = 0 is the base optimiser, bit for bit
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base, kwargs",
    [
        pytest.param(torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True), id="sgd-nesterov"),
        pytest.param(torch.optim.Adam, dict(lr=1e-2), id="adam"),
        pytest.param(torch.optim.RMSprop, dict(lr=1e-2), id="rmsprop"),
    ],
)
def test_alpha_zero_is_the_base_optimizer_bit_for_bit(base, kwargs):
    x, y = data()
    plain, wrapped = mlp(bn=True), mlp(bn=True)
    opt_plain = base(plain.parameters(), **kwargs)
    opt_wrapped = CorruptionResistant(wrapped.parameters(), base, eps=0.5, alpha=0.0, model=wrapped, **kwargs)
    for _ in range(5):
        loss_plain = opt_plain.step(closure_for(plain, opt_plain, x, y))
        loss_wrapped = opt_wrapped.step(closure_for(wrapped, opt_wrapped, x, y))
        assert torch.equal(loss_plain, loss_wrapped)
    assert_bitwise(params_of(plain), params_of(wrapped))
    assert_bitwise(list(plain.buffers()), list(wrapped.buffers()))


def test_base_hyperparameters_do_not_collide_with_eps_and_alpha():
    model = mlp()
    opt = CorruptionResistant(model.parameters(), torch.optim.RMSprop, eps=0.3, alpha=0.7, lr=1e-3)
    group = opt.param_groups[0]
    assert group["eps"] == 1e-8 and group["alpha"] == 0.99  # RMSprop's own
    assert group[GROUP_KEYS["eps"]] == 0.3 and group[GROUP_KEYS["alpha"]] == 0.7
    assert opt.param_groups is opt.base_optimizer.param_groups


# --------------------------------------------------------------------------------------
# alpha = 1, p = 2, n = None is SAM: a slow, literal SAM (davda54/sam's algorithm)
# --------------------------------------------------------------------------------------


class LiteralSAM:
    """SAM as published: e(w) = rho g / ||g||_2, gradient at w + e(w), base step at w."""

    def __init__(self, params, base, rho, **kwargs):
        self.params = list(params)
        self.base = base(self.params, **kwargs)
        self.rho = rho

    def step(self, closure):
        self.base.zero_grad()
        loss = closure()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in self.params))
        moves = []
        with torch.no_grad():
            for p in self.params:
                e = self.rho * p.grad / norm
                p.add_(e)
                moves.append(e)
        self.base.zero_grad()
        closure()
        with torch.no_grad():
            for p, e in zip(self.params, moves):
                p.sub_(e)
        self.base.step()
        return loss


def test_alpha_one_matches_a_literal_sam():
    x, y = data()
    sam_model, ours_model = mlp(), mlp()
    sam = LiteralSAM(sam_model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    ours = CorruptionResistant(ours_model.parameters(), torch.optim.SGD, eps=0.05, p=2, n=None, alpha=1.0, lr=0.1, momentum=0.9)

    def plain_closure(model):
        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    for _ in range(6):
        loss_sam = sam.step(plain_closure(sam_model))
        loss_ours = ours.step(closure_for(ours_model, ours, x, y))
        torch.testing.assert_close(loss_ours, loss_sam, rtol=1e-12, atol=1e-12)
    for a, b in zip(params_of(ours_model), params_of(sam_model)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    # and it moved: SAM is not plain SGD
    plain_model = mlp()
    opt = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(6):
        opt.step(closure_for(plain_model, opt, x, y))
    assert max(float((a - b).abs().max()) for a, b in zip(params_of(ours_model), params_of(plain_model))) > 1e-6


class LiteralMultiGroupSAM:
    """SAM over several optimiser groups, as davda54/sam: one ||g||_2 over every parameter of
    every group (``per_group=False``), or one norm per group (``per_group=True``)."""

    def __init__(self, groups, base, rho, per_group=False, **kwargs):
        self.base = base(groups, **kwargs)
        self.rho, self.per_group = rho, per_group

    def step(self, closure):
        self.base.zero_grad()
        loss = closure()
        groups = [list(g["params"]) for g in self.base.param_groups]
        if self.per_group:
            norms = [torch.sqrt(sum((p.grad**2).sum() for p in ps)) for ps in groups]
        else:
            norms = [torch.sqrt(sum((p.grad**2).sum() for ps in groups for p in ps))] * len(groups)
        moves = []
        with torch.no_grad():
            for ps, norm in zip(groups, norms):
                for p in ps:
                    e = self.rho * p.grad / norm
                    p.add_(e)
                    moves.append((p, e))
        self.base.zero_grad()
        closure()
        with torch.no_grad():
            for p, e in moves:
                p.sub_(e)
        self.base.step()
        return loss


def decay_groups(model):
    """The common recipe: weight decay on the weights, none on the biases."""
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return [{"params": weights, "weight_decay": 5e-3}, {"params": biases, "weight_decay": 0.0}]


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("scope", ["all", "group"])
def test_two_optimizer_groups_match_a_literal_sam(scope, nesterov):
    """scope="all" (the default) is SAM whatever the optimiser groups; scope="group" is SAM
    with one norm per group. Two groups (weight decay on weights only), 10 steps, float64."""
    x, y = data()
    sam_model, ours_model = mlp(), mlp()
    sgd = dict(lr=0.1, momentum=0.9, nesterov=nesterov)
    sam = LiteralMultiGroupSAM(decay_groups(sam_model), torch.optim.SGD, rho=0.05, per_group=scope == "group", **sgd)
    kwargs = {} if scope == "all" else {"scope": "group"}
    ours = CorruptionResistant(decay_groups(ours_model), torch.optim.SGD, eps=0.05, p=2, alpha=1.0, **kwargs, **sgd)

    def plain_closure():
        loss = F.cross_entropy(sam_model(x), y)
        loss.backward()
        return loss

    for _ in range(10):
        loss_sam = sam.step(plain_closure)
        loss_ours = ours.step(closure_for(ours_model, ours, x, y))
        torch.testing.assert_close(loss_ours, loss_sam, rtol=0, atol=1e-10)
    worst = max(float((a - b).abs().max()) for a, b in zip(params_of(ours_model), params_of(sam_model)))
    assert worst <= 1e-10
    # the two scopes are different algorithms: the per-group one is not SAM
    other_model = mlp()
    other_scope = "group" if scope == "all" else "all"
    other = CorruptionResistant(decay_groups(other_model), torch.optim.SGD, eps=0.05, alpha=1.0, scope=other_scope, **sgd)
    for _ in range(10):
        other.step(closure_for(other_model, other, x, y))
    assert max(float((a - b).abs().max()) for a, b in zip(params_of(other_model), params_of(sam_model))) > 1e-4


def test_scope_all_takes_top_n_across_optimizer_groups():
    """n = 3 over two groups: the three largest |g_i| of the whole model move, wherever they are."""
    x, y = data()
    model = mlp()
    opt = CorruptionResistant(decay_groups(model), torch.optim.SGD, eps=0.3, p=float("inf"), n=3, lr=0.1)
    F.cross_entropy(model(x), y).backward()
    grads = torch.cat([p.grad.reshape(-1) for g in opt.param_groups for p in g["params"]])
    before = torch.cat([p.detach().reshape(-1).clone() for g in opt.param_groups for p in g["params"]])
    opt.first_step()
    after = torch.cat([p.detach().reshape(-1).clone() for g in opt.param_groups for p in g["params"]])
    opt.restore()
    moved = (after != before).nonzero().flatten()
    assert set(moved.tolist()) == set(grads.abs().topk(3).indices.tolist())
    torch.testing.assert_close((after - before)[moved], 0.3 * grads[moved].sign(), rtol=0, atol=1e-12)


def test_scope_all_refuses_groups_with_different_settings():
    model = mlp()
    groups = [{"params": model[0].parameters(), "corruption_eps": 0.2}, {"params": model[2].parameters()}]
    with pytest.raises(ValueError, match=r"groups 0 and 1 .*eps=0.2, .*scope=.group."):
        CorruptionResistant(groups, torch.optim.SGD, eps=0.1, lr=0.1)
    # alpha may differ, and a group with alpha = 0 is outside the constraint
    groups = [{"params": model[0].parameters(), "corruption_eps": 0.2, "corruption_alpha": 0.0}, {"params": model[2].parameters()}]
    opt = CorruptionResistant(groups, torch.optim.SGD, eps=0.1, lr=0.1)
    with pytest.raises(ValueError, match="groups 1 and 2"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, dtype=torch.float64))], "corruption_n": 1})
    with pytest.raises(ValueError, match="scope must be one of 'all', 'group', got scope='layer'"):
        CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, scope="layer", lr=0.1)


def test_general_alpha_combines_the_two_gradients():
    """One SGD step (lr = 1, no momentum) moves w by -((1 - alpha) g(w) + alpha g(w + a_hat))."""
    x, y = data()
    model = mlp()
    w0 = params_of(model)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.2, p=3.0, alpha=0.3, lr=1.0)
    opt.step(closure_for(model, opt, x, y))
    # reference by hand
    ref = mlp()
    loss = F.cross_entropy(ref(x), y)
    g_w = torch.autograd.grad(loss, list(ref.parameters()))
    a_hat = closed_form_reference(g_w, p=3.0, eps=0.2)
    with torch.no_grad():
        for p, a in zip(ref.parameters(), a_hat):
            p.add_(a)
    g_a = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    for w, before, gw, ga in zip(model.parameters(), w0, g_w, g_a):
        torch.testing.assert_close(w.detach(), before - (0.7 * gw + 0.3 * ga), rtol=1e-12, atol=1e-12)


def closed_form_reference(grads, p, eps):
    """Proposition 1 with n = k, written out literally (dense, concatenated)."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    u = flat.sign() * flat.abs() ** (1 / (p - 1))
    a = eps * u / u.abs().pow(p).sum() ** (1 / p)
    out, start = [], 0
    for g in grads:
        out.append(a[start : start + g.numel()].view_as(g))
        start += g.numel()
    return out


# --------------------------------------------------------------------------------------
# batch-norm statistics, bit-exact return, sparse storage
# --------------------------------------------------------------------------------------


def test_batch_norm_statistics_after_a_step_are_those_of_one_plain_forward_pass():
    x, y = data()
    model, reference = mlp(bn=True), mlp(bn=True)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.5, alpha=0.5, model=model, lr=0.1)
    model.train(), reference.train()
    opt.step(closure_for(model, opt, x, y))
    with torch.no_grad():
        reference(x)
    assert_bitwise(list(model.buffers()), list(reference.buffers()))


def test_batch_norm_statistics_with_the_two_phase_api():
    x, y = data()
    model, reference = mlp(bn=True), mlp(bn=True)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.5, model=model, lr=0.1)
    F.cross_entropy(model(x), y).backward()
    assert opt.first_step()
    F.cross_entropy(model(x), y).backward()
    opt.second_step()
    with torch.no_grad():
        reference(x)
    assert_bitwise(list(model.buffers()), list(reference.buffers()))


@settings(max_examples=25, deadline=None)
@given(
    p=st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf]),
    n=st.one_of(st.none(), st.integers(1, 80)),
    eps=st.floats(1e-4, 10.0),
    contiguous=st.booleans(),
)
def test_the_return_to_w_is_bit_exact(p, n, eps, contiguous):
    """With lr = 0 the base step leaves w alone: any difference would come from the climb."""
    x, y = data()
    model = mlp(dtype=torch.float32)
    if not contiguous:
        with torch.no_grad():
            model[0].weight = nn.Parameter(model[0].weight.detach().t().contiguous().t())
        assert not model[0].weight.is_contiguous()
    before = params_of(model)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=eps, p=p, n=n, lr=0.0)
    x = x.float()
    opt.step(closure_for(model, opt, x, y))
    assert_bitwise(params_of(model), before)


def test_first_step_moves_exactly_n_coordinates_by_eps():
    x, y = data()
    model = mlp()
    before = params_of(model)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, p=2, n=7, lr=0.1)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    delta = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)])
    assert int((delta != 0).sum()) == 7
    assert math.isclose(float(delta.norm()), 0.1, rel_tol=1e-9)
    opt.restore()
    assert_bitwise(params_of(model), before)


def test_sparse_perturbation_memory_grows_with_n_not_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 10))
    x, y = torch.randn(32, 200), torch.randint(0, 10, (32,))
    sizes = {}
    for n in (None, 100):
        opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, n=n, alpha=1.0, lr=0.0)
        F.cross_entropy(model(x), y).backward()
        opt.first_step()
        sizes[n] = opt.perturbation_nbytes()
        F.cross_entropy(model(x), y).backward()
        opt.second_step()
        opt.zero_grad()
    k = sum(p.numel() for p in model.parameters())
    assert sizes[None] == 4 * k  # a copy of w
    assert sizes[100] == 100 * (4 + 8)  # 100 saved float32 values and their int64 indices


# --------------------------------------------------------------------------------------
# state dict, schedulers, per-group settings, interval
# --------------------------------------------------------------------------------------


def test_state_dict_round_trip_resumes_identically():
    x, y = data()

    def build():
        model = mlp(bn=True)
        opt = CorruptionResistant(
            [
                {"params": model[0].parameters(), "corruption_eps": 0.2},
                {"params": list(model[1].parameters()) + list(model[3].parameters())},
            ],
            torch.optim.Adam,
            eps=0.1,
            n=20,
            interval=2,
            scope="group",
            model=model,
            lr=1e-2,
        )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return model, opt, sched

    model, opt, sched = build()
    for _ in range(3):
        opt.step(closure_for(model, opt, x, y))
        sched.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2, opt2, sched2 = build()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.steps == 3 and opt2.param_groups[0]["corruption_eps"] == 0.2
    for _ in range(4):
        for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
            o.step(closure_for(m, o, x, y))
            s.step()
    assert_bitwise(params_of(model), params_of(model2))
    assert_bitwise(list(model.buffers()), list(model2.buffers()))
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"] < 1e-2


def test_a_scheduler_on_the_wrapper_sets_the_base_learning_rate():
    model = mlp()
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    x, y = data()
    for _ in range(3):
        opt.step(closure_for(model, opt, x, y))
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.125


def test_a_group_with_alpha_zero_is_not_perturbed():
    x, y = data()
    model = mlp()
    before = params_of(model)
    opt = CorruptionResistant(
        [{"params": model[0].parameters(), "corruption_alpha": 0.0}, {"params": model[2].parameters()}],
        torch.optim.SGD,
        eps=0.5,
        lr=0.1,
    )
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    now = params_of(model)
    assert_bitwise(now[:2], before[:2])
    assert not torch.equal(now[2], before[2])
    opt.restore()


def test_interval_takes_the_two_pass_step_every_interval_steps():
    x, y = data()
    model = mlp()
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, interval=3, lr=0.1)
    calls = []
    inner = closure_for(model, opt, x, y)

    def counting():
        calls.append(1)
        return inner()

    counts = []
    for _ in range(5):
        calls.clear()
        opt.step(counting)
        counts.append(len(calls))
    assert counts == [2, 1, 1, 2, 1]
    assert not opt.two_pass_due
    # a plain step needs no closure when the gradients are there
    inner()
    opt.step()


# --------------------------------------------------------------------------------------
# accumulation, mixed precision, clipping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [None, 5], ids=["dense", "top-5"])
def test_four_micro_batches_equal_one_full_batch(n):
    x, y = data(size=20)
    full, micro = mlp(), mlp()
    opt_full = CorruptionResistant(full.parameters(), torch.optim.SGD, eps=0.3, n=n, lr=0.1, momentum=0.9)
    opt_micro = CorruptionResistant(micro.parameters(), torch.optim.SGD, eps=0.3, n=n, lr=0.1, momentum=0.9)

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    for _ in range(3):
        loss_full = opt_full.step(training_closure(full, loss_fn, [(x, y)]))
        # uneven pieces (5, 5, 5, 5 here; weighted by size in general)
        loss_micro = opt_micro.step(training_closure(micro, loss_fn, split_batch((x, y), 4)))
        torch.testing.assert_close(loss_micro.double(), loss_full.double(), rtol=1e-6, atol=1e-6)
    for a, b in zip(params_of(full), params_of(micro)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_uneven_micro_batches_are_weighted_by_size():
    x, y = data(size=10)
    model = mlp()

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1])

    training_closure(model, loss_fn, split_batch((x, y), 4))()  # sizes 3, 3, 2, 2
    micro = [p.grad.clone() for p in model.parameters()]
    training_closure(model, loss_fn, [(x, y)])()
    for a, p in zip(micro, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def test_bfloat16_autocast_on_cpu():
    x, y = data(dtype=torch.float32)
    model32, model16 = mlp(dtype=torch.float32), mlp(dtype=torch.float32)
    opt32 = CorruptionResistant(model32.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)
    opt16 = CorruptionResistant(model16.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1])

    loss32 = opt32.step(training_closure(model32, loss_fn, [(x, y)]))
    loss16 = opt16.step(training_closure(model16, loss_fn, [(x, y)], autocast_dtype=torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert abs(float(loss16) - float(loss32)) < 0.05
    for a, b in zip(params_of(model16), params_of(model32)):
        torch.testing.assert_close(a, b, rtol=0.05, atol=5e-3)


def test_grad_scaler_unscales_once_and_matches_the_unscaled_step():
    x, y = data(dtype=torch.float32)
    plain, scaled = mlp(dtype=torch.float32), mlp(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt_plain = CorruptionResistant(plain.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)
    opt_scaled = CorruptionResistant(scaled.parameters(), torch.optim.SGD, eps=0.1, lr=0.1, grad_scaler=scaler)

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1])

    for _ in range(3):
        opt_plain.step(training_closure(plain, loss_fn, [(x, y)]))
        opt_scaled.step(training_closure(scaled, loss_fn, [(x, y)], grad_scaler=scaler))
        scaler.update()
        assert not opt_scaled.skipped
    for a, b in zip(params_of(scaled), params_of(plain)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad_pass", [1, 2])
def test_grad_scaler_skips_the_step_on_inf_in_either_pass(bad_pass):
    x, y = data(dtype=torch.float32)
    model = mlp(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=0.1, momentum=0.9, grad_scaler=scaler)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if len(calls) == bad_pass:
            loss = loss * math.inf
        scaler.scale(loss).backward()
        return loss

    before = params_of(model)
    opt.step(closure)
    scaler.update()
    assert opt.skipped
    assert len(calls) == (1 if bad_pass == 1 else 2)  # no pointless second pass
    assert_bitwise(params_of(model), before)
    assert scaler.get_scale() < 2.0**10
    assert not opt.state  # the base optimiser never stepped (no momentum buffer)


def test_gradient_clipping_bounds_the_update():
    x, y = data()
    model = mlp()
    before = params_of(model)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=1.0, max_grad_norm=1e-3)
    opt.step(closure_for(model, opt, x, y))
    moved = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(params_of(model), before)))
    assert math.isclose(moved, 1e-3, rel_tol=1e-4)  # clip_grad_norm_ divides by norm + 1e-6


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(eps=0.0), "eps", id="eps-zero"),
        pytest.param(dict(eps=-1.0), "eps", id="eps-negative"),
        pytest.param(dict(eps=0.1, alpha=1.5), "alpha", id="alpha-above-one"),
        pytest.param(dict(eps=0.1, alpha=-0.1), "alpha", id="alpha-negative"),
        pytest.param(dict(eps=0.1, p=0.5), "p", id="p-below-one"),
        pytest.param(dict(eps=0.1, n=0), "n", id="n-zero"),
        pytest.param(dict(eps=0.1, interval=0), "interval", id="interval-zero"),
        pytest.param(dict(eps=0.1, max_grad_norm=0.0), "max_grad_norm", id="clip-zero"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CorruptionResistant(mlp().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_bad_group_setting_raises():
    model = mlp()
    with pytest.raises(ValueError, match="alpha"):
        CorruptionResistant([{"params": model.parameters(), "corruption_alpha": 2.0}], torch.optim.SGD, eps=0.1, lr=0.1)


def test_base_optimizer_must_be_a_class():
    model = mlp()
    with pytest.raises(TypeError, match="optimiser class"):
        CorruptionResistant(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), eps=0.1)


def test_a_step_without_a_closure_when_one_is_needed():
    model = mlp()
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


def test_a_closure_that_returns_no_loss_leaves_w_unchanged():
    x, y = data()
    model = mlp()
    before = params_of(model)
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        return None if len(calls) == 2 else torch.tensor(1.0)

    with pytest.raises(TypeError, match="must return the loss"):
        opt.step(lambda: None)
    with pytest.raises(TypeError, match="second"):
        opt.step(closure)
    assert_bitwise(params_of(model), before)
    assert opt.perturbation_nbytes() == 0


def test_phase_calls_out_of_order():
    x, y = data()
    model = mlp()
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)
    with pytest.raises(ValueError, match="first_step"):
        opt.second_step()
    with pytest.raises(ValueError, match="no gradient at w"):
        opt.first_step()
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(ValueError, match="twice"):
        opt.first_step()
    with pytest.raises(ValueError, match="w \\+ a_hat"):
        opt.state_dict()
    with pytest.raises(ValueError, match="no gradient was computed"):
        opt.second_step()


def test_nan_gradient_without_a_scaler_is_an_error():
    x, y = data()
    model = mlp()
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) * math.nan
        loss.backward()
        return loss

    before = params_of(model)
    with pytest.raises(ValueError, match="Inf or NaN"):
        opt.step(closure)
    assert_bitwise(params_of(model), before)


def test_from_regularizer_relation_and_bounds():
    model = mlp()
    opt = CorruptionResistant.from_regularizer(model.parameters(), torch.optim.SGD, lam=0.01, h=0.05, lr=0.1)
    group = opt.param_groups[0]
    assert group["corruption_eps"] == 0.05 and math.isclose(group["corruption_alpha"], 0.2)
    with pytest.raises(ValueError, match="alpha"):
        CorruptionResistant.from_regularizer(model.parameters(), torch.optim.SGD, lam=0.1, h=0.01, lr=0.1)

