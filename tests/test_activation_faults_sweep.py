"""Activation faults as registered fault models (issue 21, point 1): a sweep runs them,
stores and resumes their rows; checked against literal references on a tiny classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paramcorrupt import accuracy, classification_loss, evaluate, select
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.faults.activations import ActivationFaults
from paramcorrupt.groups import GROUPINGS
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep
from paramcorrupt.probe.plan import row_seed


def tiny_classifier():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    g = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(3):
        x = torch.randn(16, 3, generator=g)
        batches.append((x, (x[:, 0] > 0).long()))
    return model, batches


def state_bits(model):
    return {k: v.detach().numpy().tobytes() for k, v in model.state_dict().items()}


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_activation_faults_in_a_sweep_equal_literal_references_and_resume(tmp_path):
    model, data = tiny_classifier()
    before = state_bits(model)
    config = SweepConfig(
        methods=["activation-bitflip", "activation-stuck-at"],
        trials=2,
        settings={
            "activation-bitflip": {"bits": ["exponent"], "flips": [0, 1]},
            "activation-stuck-at": {"bits": ["sign"], "value": [1], "flips": [2]},
        },
    )
    groups = {"last": select(model, include=["2.*"]), "first": select(model, include=["0.*"])}
    path = tmp_path / "act.jsonl"
    rows = sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        store=ResultsStore(path),
        progress=False,
    )
    assert state_bits(model) == before and no_hooks(model)
    by = {r["key"]: r for r in rows}
    assert len(rows) == 2 * (2 * 2 + 2)
    clean = evaluate(model, data, classification_loss, {"accuracy": accuracy})["accuracy"]
    for group in ("last", "first"):
        # no faulty bit: the clean model's numbers exactly
        zero = by[f"{group}|activation-bitflip|format=float32|bits=exponent|flips=0|trial=0"]
        assert zero["metric_after"] == clean and zero["bit_errors"] == 0
        # one faulty bit per example (48) of the one hooked output, a flip always changes it; counted on
        # the evaluation data alone, although the faults also hit the gradient's pass (measure_gradient_data)
        one = by[f"{group}|activation-bitflip|format=float32|bits=exponent|flips=1|trial=1"]
        assert one["bit_errors"] == one["changed"] == 48
    # both logits' sign bits stuck at 1 in every example: the logits are -|z|, the prediction argmin |z|
    logits = [model(x).detach().numpy() for x, _ in data]
    literal = np.mean(
        np.concatenate([np.abs(z).argmin(1) == y.numpy() for z, (_, y) in zip(logits, data)])
    )
    stuck = by["last|activation-stuck-at|format=float32|bits=sign|value=1|flips=2|trial=0"]
    assert (
        stuck["metric_after"] == pytest.approx(literal, abs=1e-12) and stuck["bit_errors"] == 2 * 48
    )
    assert stuck["changed"] == sum(
        int((z > 0).sum()) for z in logits
    )  # a stuck bit already 1 changes nothing
    again = sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        store=ResultsStore(path),
        progress=False,
    )
    assert [r["metric_after"] for r in again] == [r["metric_after"] for r in rows]


def test_a_group_module_that_never_runs_is_one_line_and_unhooked(tmp_path):
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    model = Skips().eval()
    x = torch.randn(8, 3)
    data = [(x, (x[:, 0] > 0).long())]
    config = SweepConfig(
        methods=["activation-bitflip"], settings={"activation-bitflip": {"ber": [0.01]}}
    )
    # found by the check pass before the first row (the store never opened)
    with pytest.raises(
        ParamCorruptError,
        match=r"^module 'unused' \(Linear\) never runs in the model's forward pass",
    ):
        sweep(
            model,
            config,
            data,
            data,
            classification_loss,
            {"accuracy": accuracy},
            groups={"all": select(model)},
            store=ResultsStore(tmp_path / "x.jsonl"),
            progress=False,
        )
    assert no_hooks(model) and not (tmp_path / "x.jsonl").exists()


def test_attention_outputs_without_weights_are_faulted_and_its_unrun_out_proj_refused():
    """nn.MultiheadAttention returns (output, None) without weights: faulted at item 0. Its
    out_proj owns parameters but never runs (the attention reads them): 'owners' is refused."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = (
                nn.Linear(4, 16),
                nn.MultiheadAttention(16, 2, batch_first=True),
                nn.Linear(16, 3),
            )

        def forward(self, x):
            h = self.embed(x)
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.head((h + a).mean(1))

    torch.manual_seed(0)
    model = Net().eval()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(20, 5, 4, generator=g), torch.randint(0, 3, (20,), generator=g))]
    groups = GROUPINGS["type"](model)
    clean = [model(x).detach() for x, _ in data]
    setting = {"flips": [1], "bits": ["sign"], "modules": ["multiheadattention"]}
    config = SweepConfig(
        groups=["attention"],
        methods=["activation-bitflip"],
        trials=2,
        outcomes=True,
        settings={"activation-bitflip": setting},
    )
    rows = sweep(
        model,
        config,
        data,
        data,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        progress=False,
    )
    for row in rows:
        assert (
            row["bit_errors"] == row["changed"] == row["examples"] == 20
        )  # one sign flip per example's attention output
    # the same draws by hand at item 0 of the attention's output give the row's accuracy
    generator = torch.Generator().manual_seed(row_seed(0, rows[1]["key"]))
    with ActivationFaults(
        model, "attn", bits="sign", flips=1, per_example=True, rearm=True, generator=generator
    ):
        faulty = [model(x).detach() for x, _ in data]
    literal = sum(int((f.argmax(1) == y).sum()) for f, (_, y) in zip(faulty, data)) / 20
    assert rows[1]["metric_after"] == pytest.approx(literal, abs=1e-12)
    assert rows[1]["sdc"] == sum(
        int((f.argmax(1) != c.argmax(1)).sum()) for f, c in zip(faulty, clean)
    )
    owners = SweepConfig(
        groups=["attention"],
        methods=["activation-bitflip"],
        settings={"activation-bitflip": {"flips": [1]}},
    )
    with pytest.raises(
        ParamCorruptError,
        match=r"^module 'attn.out_proj' \(NonDynamicallyQuantizableLinear\) never runs",
    ):
        sweep(
            model,
            owners,
            data,
            data,
            classification_loss,
            {"accuracy": accuracy},
            groups=groups,
            progress=False,
        )
    assert no_hooks(model)
