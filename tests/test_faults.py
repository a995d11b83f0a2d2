"""The fault-model interface: a new fault model is one class, and the sweep, the results
store and its resume take it with no other change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramcorrupt import Corruption, classification_loss, evaluate, select
from paramcorrupt.faults import (
    FAULTS,
    FaultContext,
    FaultModel,
    RandomLp,
    RandomValues,
    get_fault,
    register_fault,
)
from paramcorrupt.probe import ROW_FIELDS, ResultsStore, SweepConfig, read_results, sweep


@register_fault
class ScaleFirst(FaultModel):
    """A toy: set the first ``count`` coordinates of the group to ``factor`` times their value."""

    name = "toy-scale-first"
    parameters = ("count", "factor")
    defaults = {"factor": 2.0}
    axes = ("count",)

    def check(self, setting):
        if not isinstance(setting["count"], int) or setting["count"] < 1:
            raise ValueError(f"count must be an integer >= 1, got count={setting['count']!r}")
        return {"count": setting["count"], "factor": float(setting["factor"])}

    def corrupt(self, ctx: FaultContext) -> Corruption:
        name = ctx.group.names[0]
        flat = ctx.group.tensors(ctx.model)[name].detach().reshape(-1)
        idx = torch.arange(min(self.setting["count"], flat.numel()))
        return Corruption.from_values({name: flat[idx] * self.setting["factor"]}, {name: idx}, method=self.name)


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    return model, data


def test_a_registered_toy_fault_model_is_swept_stored_and_resumed(tmp_path):
    model, data = model_and_data()
    before = [p.detach().clone() for p in model.parameters()]
    config = SweepConfig(
        methods=["toy-scale-first", "random-values"],
        settings={"toy-scale-first": {"count": [1, 3], "factor": [0.0, 10.0]}, "random-values": {"count": [2]}},
        trials=2,
    )
    groups = {"first": select(model, "0.*", name="first"), "last": select(model, "2.*", name="last")}
    path = tmp_path / "rows.jsonl"
    rows = sweep(model, config, data, data, classification_loss, groups=groups, store=ResultsStore(path), progress=False)
    assert [r["key"] for r in rows[:5]] == [
        "first|toy-scale-first|count=1|factor=0.0|trial=0",
        "first|toy-scale-first|count=1|factor=10.0|trial=0",
        "first|toy-scale-first|count=3|factor=0.0|trial=0",
        "first|toy-scale-first|count=3|factor=10.0|trial=0",
        "first|random-values|count=2|low=-1.0|high=1.0|trial=0",
    ]
    assert len(rows) == 2 * (4 + 2)
    row = rows[1]
    assert list(row)[: len(ROW_FIELDS)] == list(ROW_FIELDS) and row["count"] == 1 and row["factor"] == 10.0
    assert row["p"] is None and row["eps"] is None and row["first_order"] is None and row["G"] is None
    # the toy row equals the same corruption measured by hand
    w = model[0].weight.detach().reshape(-1)
    manual = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    manual.load_state_dict(model.state_dict())
    with torch.no_grad():
        manual[0].weight.view(-1)[0] = w[0] * 10.0

    assert row["loss_after"] == evaluate(manual, data, classification_loss)["loss"]
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)
    # the file holds every row; a rerun computes nothing and returns the same rows
    assert [r["key"] for r in read_results(path)[1]] == [r["key"] for r in rows]
    calls = []
    original = ScaleFirst.corrupt
    ScaleFirst.corrupt = lambda self, ctx: calls.append(1) or original(self, ctx)
    try:
        again = sweep(model, config, data, data, classification_loss, groups=groups, store=ResultsStore(path), progress=False)
    finally:
        ScaleFirst.corrupt = original
    assert calls == [] and [r["loss_after"] for r in again] == [r["loss_after"] for r in rows]


def test_settings_are_validated_when_the_config_is_made():
    with pytest.raises(ValueError, match="count must be an integer >= 1, got count=0"):
        SweepConfig(methods=["toy-scale-first"], settings={"toy-scale-first": {"count": [0]}})
    with pytest.raises(ValueError, match="has no setting 'size'; its settings: count, factor"):
        SweepConfig(methods=["toy-scale-first"], settings={"toy-scale-first": {"size": [1]}})
    with pytest.raises(ValueError, match="needs values for its setting 'count'"):
        SweepConfig(methods=["toy-scale-first"])
    with pytest.raises(ValueError, match="settings are given for 'random-values', which is not among the methods"):
        SweepConfig(methods=["gradient"], settings={"random-values": {"count": [1]}})
    with pytest.raises(ValueError, match="unknown method 'bogus'; expected some of random, gradient, iterative"):
        SweepConfig(methods=["bogus"])


def test_registry_refuses_bad_classes():
    with pytest.raises(ValueError, match="taken by"):

        @register_fault
        class Clash(FaultModel):
            name = "gradient"

            def corrupt(self, ctx):
                raise AssertionError

    with pytest.raises(ValueError, match="non-empty name"):

        @register_fault
        class Nameless(FaultModel):
            def corrupt(self, ctx):
                raise AssertionError

    with pytest.raises(TypeError, match="FaultModel subclass"):
        register_fault(int)
    with pytest.raises(ValueError, match="unknown fault model 'nope'; available: random, gradient"):
        get_fault("nope")
    assert FAULTS["gradient"].uses_gradient and FAULTS["random"].stochastic


def test_lp_fault_keys_match_the_row_keys_of_the_paper_methods():
    fault = RandomLp(p="inf", n="all", eps=1e-3)
    assert fault.setting == {"p": float("inf"), "n": None, "eps": 1e-3}
    assert fault.key() == "p=inf|n=all|eps=0.001"
    assert RandomLp(p=2, n=10, eps=1).key() == "p=2.0|n=10|eps=1.0"
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        RandomLp(p=2, n=None, eps=0)
    with pytest.raises(ValueError, match="low must be below high"):
        RandomValues(count=1, low=1.0, high=0.0)


def test_every_lp_method_gets_the_gradient_alone_in_a_sweep():
    """A sweep of random rows alone still records the first-order scale and G (as sweeps
    always did), and a relative-gradient sweep alone has its gradient."""
    model, data = model_and_data()
    groups = {"all": select(model)}
    random_only = sweep(model, SweepConfig(methods=["random"], trials=1), data, data, classification_loss,
                        groups=groups, progress=False)
    both = sweep(model, SweepConfig(methods=["random", "gradient"], trials=1), data, data, classification_loss,
                 groups=groups, progress=False)
    assert random_only[0]["first_order"] == both[0]["first_order"] > 0 and random_only[0]["G"] == both[0]["G"]
    relative = sweep(model, SweepConfig(methods=["relative-gradient"], p_values=[2]), data, data, classification_loss,
                     groups=groups, progress=False)
    assert relative[0]["first_order"] > 0 and relative[0]["loss_change"] > 0


def test_the_iterative_steps_are_its_own_fixed_setting_and_sweep_ids_keep():
    """``steps`` belongs to the iterative fault model (one value per sweep, no part of the row
    key); a sweep records it where results files always had it, so their sweep_ids hold
    (the values below were computed before the setting moved)."""
    from paramcorrupt.probe.plan import SweepConfig as PlanConfig
    from paramcorrupt.probe.plan import grid_settings, row_settings, sweep_id

    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    groups = {"a": select(model, "0.*", name="a"), "b": select(model, "1.*", name="b")}
    three = ["random", "gradient", "iterative"]
    config = PlanConfig(methods=three, settings={"iterative": {"steps": 2}})
    assert config.faults("iterative")[0].setting["steps"] == 2
    assert [key for *_, key in row_settings(config, "a")][-1] == "a|iterative|p=inf|n=all|eps=0.001|trial=0"
    assert sweep_id(config, groups) == "05c9511e087bc2ad"
    assert sweep_id(PlanConfig(), groups) == "77aaac223edbd097"
    assert config.as_dict()["iterative_steps"] == 2 and "settings" not in config.as_dict()
    assert PlanConfig.from_dict(config.as_dict()) == config
    # the default given is the sweep not given; two values of a fixed setting are refused
    assert PlanConfig(methods=three, settings={"iterative": {"steps": 5}}) == PlanConfig(methods=three)
    with pytest.raises(ValueError, match="'steps' takes one value per sweep"):
        PlanConfig(methods=["iterative"], settings={"iterative": {"steps": [1, 2]}})
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        PlanConfig(methods=["iterative"], settings={"iterative": {"steps": -1}})
    assert grid_settings(get_fault("iterative")) == ("p", "n", "eps") and grid_settings(ScaleFirst) == ()


def test_the_report_asks_the_fault_model_how_to_show_a_method():
    from paramcorrupt.probe.report.methods import method_display, method_sort

    assert method_display("gradient").label == "gradient-based" and method_display("gradient").worst_case
    assert method_display("random").theorem1_trials and method_display("random").stochastic
    assert not method_display("relative-random").theorem1_trials
    # a registered toy: its name, the colour cycle, after the paper's methods
    toy = method_display("toy-scale-first")
    assert (toy.label, toy.colour, toy.stochastic, toy.theorem1_trials, toy.worst_case) == (
        "toy-scale-first", None, False, False, False
    )
    # a method no fault model of this process declares: the same defaults
    assert method_display("a-users-fault") == method_display("a-users-fault").__class__(label="a-users-fault")
    assert sorted(["toy-scale-first", "iterative", "a-users-fault", "gradient", "random"], key=method_sort) == [
        "random", "gradient", "iterative", "a-users-fault", "toy-scale-first"
    ]
