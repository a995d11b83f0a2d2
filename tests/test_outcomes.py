"""Outcome classes (masked / SDC / DUE) of fault-injection trials (paramcorrupt.probe.outcomes),
against a literal loop over trials and examples kept in this file."""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from paramcorrupt import Corruption
from paramcorrupt.errors import InputTypeError, ParamCorruptError
from paramcorrupt.probe.outcomes import (
    DUE,
    MASKED,
    SDC,
    golden_run,
    outcome_classes,
    outcome_rates,
)
from paramcorrupt.reliability import binomial_interval

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():  # running statistics that are not the defaults
        model(torch.randn(64, 4) * 2 + 1)
    return model.eval()


def small_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    sizes = (4, 4, 2)
    return [(torch.randn(size, 4, generator=generator), torch.zeros(size, dtype=torch.long)) for size in sizes]


def random_faults(model: nn.Module, trials: int, seed: int = 2) -> list[Corruption]:
    """Sparse value faults: NaN, Inf, large and tiny changes at random weights."""
    generator = torch.Generator().manual_seed(seed)
    names = [name for name, _ in model.named_parameters()]
    faults = []
    for trial in range(trials):
        name = names[int(torch.randint(len(names), (1,), generator=generator))]
        param = dict(model.named_parameters())[name]
        count = 1 + trial % 3
        index = torch.randperm(param.numel(), generator=generator)[:count]
        kind = trial % 5
        old = param.detach().reshape(-1)[index]
        if kind == 0:
            value = torch.full((count,), float("nan"))
        elif kind == 1:
            value = torch.full((count,), float("inf")) * (1 - 2 * (trial % 2))
        elif kind == 2:
            value = old + 1e-7
        else:
            value = old + 3 * torch.randn(count, generator=generator)
        faults.append(Corruption.from_values({name: value}, {name: index}))
    return faults


def literal_classes(model, loader, faults, tolerance=None):
    """The reference: for each trial a copy of the model with the faults written element by
    element, run batch by batch; each example classed by a loop over its numbers."""
    def outputs(net):
        with torch.no_grad():
            return [net(x) for x, _ in loader]

    golden = outputs(model)
    table = []
    for fault in faults:
        faulty = copy.deepcopy(model)
        for name, value in fault.values.items():
            flat = dict(faulty.named_parameters())[name].data.view(-1)
            for i, v in zip(fault.indices[name].tolist(), value.tolist()):
                flat[i] = v
        row = []
        for gold, out in zip(golden, outputs(faulty)):
            for g, o in zip(gold.tolist(), out.tolist()):
                if not all(math.isfinite(x) for x in o):
                    row.append(DUE)
                elif tolerance is None:
                    row.append(SDC if max(range(len(o)), key=o.__getitem__) != max(range(len(g)), key=g.__getitem__) else MASKED)
                else:
                    row.append(SDC if any(abs(a - b) > tolerance for a, b in zip(o, g)) else MASKED)
        table.append(row)
    return table


def snapshot(model):
    return {name: t.clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def assert_bit_identical(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name].view(torch.uint8) if after[name].is_floating_point() else after[name],
                           tensor.view(torch.uint8) if tensor.is_floating_point() else tensor), name


def test_classes_equal_a_literal_loop_over_trials_and_examples_top1():
    model, loader = small_model(), small_loader()
    faults = random_faults(model, 30)
    before = snapshot(model)
    result = outcome_classes(model, loader, faults)
    expected = literal_classes(model, loader, faults)
    assert result.classes.dtype == torch.int8 and result.classes.shape == (30, 10)
    assert result.classes.tolist() == expected
    counts = torch.bincount(result.classes.reshape(-1).long(), minlength=3).tolist()
    assert all(c > 0 for c in counts), counts  # the test sees every class
    assert_bit_identical(model, before)
    assert not model.training and not any(m.training for m in model.modules())


@pytest.mark.parametrize("tolerance", [0.0, 1e-3, 0.5])
def test_classes_equal_a_literal_loop_with_a_tolerance_on_the_output(tolerance):
    model, loader = small_model(), small_loader()
    faults = random_faults(model, 20, seed=5)
    result = outcome_classes(model, loader, faults, tolerance=tolerance)
    assert result.classes.tolist() == literal_classes(model, loader, faults, tolerance)
    counts = torch.bincount(result.classes.reshape(-1).long(), minlength=3).tolist()
    assert all(c > 0 for c in counts), counts


def test_golden_memory_is_stated():
    model, loader = small_model(), small_loader()
    top1 = golden_run(model, loader)
    assert top1.examples == 10 and top1.batch_sizes == (4, 4, 2)
    assert top1.nbytes == 10 * 8  # one int64 argmax per example
    full = golden_run(model, loader, tolerance=0.1)
    assert full.nbytes == 10 * 3 * 4  # outputs x examples x float32


def test_an_exception_in_the_forward_pass_is_a_due_of_its_batch_only():
    model, loader = small_model(), small_loader()
    before = snapshot(model)
    calls = []

    @contextmanager
    def crash_on_second_batch(net):
        def hook(module, inputs, output):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated crash")
        handle = net[0].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    result = outcome_classes(model, loader, [crash_on_second_batch, lambda net: crash_on_second_batch(net)])
    # trial 0: batch 1 crashes; trial 1: its own hook's count starts at 3 calls, no crash
    assert result.classes.tolist() == [[0] * 4 + [DUE] * 4 + [0] * 2, [0] * 10]
    assert result.errors == [(0, 1, "RuntimeError: simulated crash")]
    assert not model[0]._forward_hooks
    assert_bit_identical(model, before)


def test_a_keyboard_interrupt_leaves_the_model_bit_identical():
    model, loader = small_model(), small_loader()
    nan = random_faults(model, 1)[0]
    before = snapshot(model)

    def forward(net, batch):
        if any(torch.isnan(param).any() for param in net.parameters()):
            raise KeyboardInterrupt
        return net(batch[0])

    with pytest.raises(KeyboardInterrupt):
        outcome_classes(model, loader, [nan], forward=forward)
    assert_bit_identical(model, before)


def test_rates_and_intervals_count_the_classes():
    model, loader = small_model(), small_loader()
    result = outcome_classes(model, loader, random_faults(model, 30))
    table = result.classes.tolist()
    flat = [c for row in table for c in row]
    for method in ("wilson", "exact"):
        rates = result.rates(method=method, confidence=0.9)
        assert rates["n"] == 300 and rates["per"] == "example"
        assert rates["method"] == ("wilson" if method == "wilson" else "clopper-pearson")
        for code, name in enumerate(("masked", "sdc", "due")):
            k = flat.count(code)
            assert rates[name]["count"] == k and rates[name]["rate"] == k / 300
            assert (rates[name]["low"], rates[name]["high"]) == binomial_interval(k, 300, 0.9, method)
    per_trial = outcome_rates(result.classes, per="trial")
    worst = [max(row) for row in table]
    assert per_trial["n"] == 30
    assert [per_trial[name]["count"] for name in ("masked", "sdc", "due")] == [worst.count(c) for c in range(3)]


def test_a_golden_run_is_reused():
    model, loader = small_model(), small_loader()
    faults = random_faults(model, 5)
    golden = golden_run(model, loader)
    assert torch.equal(outcome_classes(model, loader, faults, golden=golden).classes,
                       outcome_classes(model, loader, faults).classes)
    with pytest.raises(ParamCorruptError, match="golden run was kept for tolerance=None, not 0.1"):
        outcome_classes(model, loader, faults, golden=golden, tolerance=0.1)


@pytest.mark.parametrize("bad", [-1e-9, -1, float("nan"), float("inf")])
def test_a_bad_tolerance_is_one_clear_error_before_anything_runs(bad):
    model, loader = small_model(), small_loader()
    calls = []

    def forward(net, batch):
        calls.append(1)
        return net(batch[0])

    with pytest.raises(ParamCorruptError, match=f"tolerance must be a finite number >= 0, got {bad}"):
        outcome_classes(model, loader, random_faults(model, 2), forward=forward, tolerance=bad)
    assert calls == []
    with pytest.raises(InputTypeError, match="tolerance must be a number"):
        golden_run(model, loader, tolerance="0.1")


def test_other_bad_input():
    model, loader = small_model(), small_loader()
    before = snapshot(model)
    with pytest.raises(ParamCorruptError, match="the model has no parameter named 'nope'"):
        outcome_classes(model, loader, [Corruption.from_values({"nope": torch.zeros(1)}, {"nope": torch.tensor([0])})])
    with pytest.raises(InputTypeError, match="fault 0 is a int"):
        outcome_classes(model, loader, [3])
    shorter = [loader[0], loader[1], (loader[2][0][:1], loader[2][1][:1])]
    golden = golden_run(model, loader)
    with pytest.raises(ParamCorruptError, match="batch 2 has 1 examples, the golden run's 2"):
        outcome_classes(model, shorter, random_faults(model, 1), golden=golden)
    with pytest.raises(ParamCorruptError, match="the loader yielded 2 batches, the golden run 3"):
        outcome_classes(model, loader[:2], random_faults(model, 1), golden=golden)
    with pytest.raises(ParamCorruptError, match="fault-free output of batch 0 holds Inf or NaN"):
        golden_run(model, [(torch.full((2, 4), float("nan")), None)])
    with pytest.raises(ParamCorruptError, match="top-1 criterion needs scores per example"):
        golden_run(model, loader, forward=lambda net, batch: net(batch[0])[:, 0])
    with pytest.raises(ParamCorruptError, match="per must be 'example' or 'trial'"):
        outcome_rates(torch.zeros(2, 3, dtype=torch.int8), per="batch")
    with pytest.raises(ParamCorruptError, match="unknown interval method"):
        outcome_rates(torch.zeros(2, 3, dtype=torch.int8), method="normal")
    assert_bit_identical(model, before)


def test_activation_fault_trials_are_classed_as_a_literal_loop_over_their_faulty_activations():
    from paramcorrupt.faults.activations import activation_faults

    model, loader = small_model(), small_loader()
    before = snapshot(model)
    generator = torch.Generator().manual_seed(3)
    seen = []  # the test's own hook: the faulty layer-0 output as layer 1 receives it
    handle = model[1].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    try:
        golden = golden_run(model, loader)
        trials = [lambda net: activation_faults(net, "0", bits="exponent", flips=1, per_example=True, rearm=True,
                                                generator=generator) for _ in range(8)]
        result = outcome_classes(model, loader, trials, golden=golden)
    finally:
        handle.remove()
    assert len(seen) == 3 + 8 * 3
    with torch.no_grad():
        golden_top1 = [model(x).argmax(1).tolist() for x, _ in loader]
        expected = []
        for trial in range(8):
            row = []
            for batch in range(3):
                out = model[1:](seen[3 + 3 * trial + batch]).tolist()
                for g, o in zip(golden_top1[batch], out):
                    if not all(math.isfinite(x) for x in o):
                        row.append(DUE)
                    else:
                        row.append(SDC if max(range(len(o)), key=o.__getitem__) != g else MASKED)
            expected.append(row)
    assert result.classes.tolist() == expected
    assert len(set(result.classes.reshape(-1).tolist())) >= 2  # not all one class
    assert not model[0]._forward_hooks
    assert_bit_identical(model, before)
