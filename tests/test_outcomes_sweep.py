"""Outcome classes in a sweep's rows (issue 21, point 1): the counts equal a literal loop over
trials and examples; rates and intervals come from the rows (resume-safe) and equal scipy's;
the report and the console show them; bad input is one line before anything runs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from paramcorrupt import accuracy, classification_loss, corrupted, select
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.faults import FaultContext
from paramcorrupt.faults.activations import ActivationFaults
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep
from paramcorrupt.probe.outcome_rows import outcome_table
from paramcorrupt.probe.plan import row_seed
from paramcorrupt.probe.report import write_report
from paramcorrupt.probe.report.outcomes import outcome_summary

pytestmark = pytest.mark.usefixtures("one_thread")


def digits_sized():
    """A digits-sized classifier (8x8 inputs, 10 classes) and its data: 3 eval batches of 40,
    2 gradient batches of 30 (so the gradient's pass is told apart from the evaluation's)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    g = torch.Generator().manual_seed(6)
    evals = [
        (torch.randn(40, 64, generator=g), torch.randint(0, 10, (40,), generator=g))
        for _ in range(3)
    ]
    grads = [
        (torch.randn(30, 64, generator=g), torch.randint(0, 10, (30,), generator=g))
        for _ in range(2)
    ]
    return model, grads, evals


def state_bits(model):
    return {k: v.detach().numpy().tobytes() for k, v in model.state_dict().items()}


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def literal_counts(outputs, golden):
    """A literal loop over the examples of every batch: (masked, sdc, due)."""
    masked = sdc = due = 0
    for out, ref in zip(outputs, golden):
        for i in range(out.shape[0]):
            if not all(torch.isfinite(v) for v in out[i]):
                due += 1
            elif int(out[i].argmax()) != int(ref[i].argmax()):
                sdc += 1
            else:
                masked += 1
    return masked, sdc, due


def run(model, config, grads, evals, groups, **kw):
    return sweep(
        model,
        config,
        grads,
        evals,
        classification_loss,
        {"accuracy": accuracy},
        groups=groups,
        progress=False,
        **kw,
    )


def test_weight_fault_counts_equal_a_literal_loop_over_trials_and_examples(tmp_path):
    model, grads, evals = digits_sized()
    before = state_bits(model)
    config = SweepConfig(
        methods=["bitflip"],
        trials=4,
        outcomes=True,
        settings={"bitflip": {"bits": ["exponent"], "flips": [1, 4]}},
    )
    groups = {"all": select(model)}
    rows = run(model, config, grads, evals, groups)
    assert state_bits(model) == before and no_hooks(model)
    with torch.no_grad():
        golden = [model(x) for x, _ in evals]
    faults = {f"all|bitflip|{f.key()}": f for f in config.faults("bitflip")}
    seen = set()
    for row in rows:
        fault = faults[row["key"].rpartition("|")[0]]
        generator = torch.Generator().manual_seed(row_seed(config.seed, row["key"]))
        ctx = FaultContext(
            model,
            groups["all"],
            row["k"],
            None,
            generator,
            grads,
            classification_loss,
            {},
            row["trial"],
        )
        corruption = fault.corrupt(ctx)
        with corrupted(model, corruption), torch.no_grad():
            outputs = [model(x) for x, _ in evals]
        assert (row["masked"], row["sdc"], row["due"]) == literal_counts(outputs, golden)
        assert row["examples"] == 120 and row["tolerance"] is None
        seen.add((row["sdc"] > 0, row["due"] > 0))
    assert (True, False) in seen or (
        True,
        True,
    ) in seen  # some trial corrupted silently: the test can fail


def test_activation_fault_counts_equal_a_literal_loop_and_count_the_evaluation_data_once():
    model, grads, evals = digits_sized()
    config = SweepConfig(
        methods=["activation-bitflip"],
        trials=3,
        outcomes=True,
        settings={"activation-bitflip": {"bits": ["exponent"], "flips": [1], "modules": ["relu"]}},
    )
    rows = run(model, config, grads, evals, {"all": select(model)})
    assert no_hooks(model)
    with torch.no_grad():
        golden = [model(x) for x, _ in evals]
        clean_act = [model[1](model[0](x)) for x, _ in evals]
    for row in rows:
        assert row["modules"] == "relu"
        # the bug of issue 21: the faults also hit the gradient's pass (60 examples), counted once per eval example
        assert row["bit_errors"] == row["changed"] == 120 == row["examples"]
        # the same draws, in the same order (the evaluation pass comes first in a row)
        generator = torch.Generator().manual_seed(row_seed(config.seed, row["key"]))
        faulty_act = []
        with ActivationFaults(
            model, "1", bits="exponent", flips=1, per_example=True, rearm=True, generator=generator
        ) as faults:
            handle = model[1].register_forward_hook(
                lambda m, a, out, kept=faulty_act: kept.append(out.detach().clone())
            )
            try:
                with torch.no_grad():
                    for x, _ in evals:
                        model(x)
            finally:
                handle.remove()
        assert faults.bit_errors == 120
        outputs = []
        for act, clean in zip(faulty_act, clean_act):
            # exactly one element per example changed, and the literal downstream pass, example by example
            assert ((act != clean) & ~(act.isnan() & clean.isnan())).sum(1).tolist() == [
                1
            ] * act.shape[0]
            with torch.no_grad():
                outputs.append(torch.stack([model[2](act[i]) for i in range(act.shape[0])]))
        assert (row["masked"], row["sdc"], row["due"]) == literal_counts(outputs, golden)
    assert sum(r["sdc"] for r in rows) > 0


def test_a_tolerance_classes_the_output_itself():
    model, grads, evals = digits_sized()
    config = SweepConfig(
        methods=["bitflip"],
        trials=2,
        outcomes=True,
        tolerance=1e-3,
        settings={"bitflip": {"bits": ["mantissa"], "flips": [3]}},
    )
    rows = run(model, config, grads, evals, {"all": select(model)})
    with torch.no_grad():
        golden = [model(x) for x, _ in evals]
    for row in rows:
        fault = config.faults("bitflip")[0]
        generator = torch.Generator().manual_seed(row_seed(config.seed, row["key"]))
        ctx = FaultContext(
            model,
            select(model),
            row["k"],
            None,
            generator,
            grads,
            classification_loss,
            {},
            row["trial"],
        )
        with corrupted(model, fault.corrupt(ctx)), torch.no_grad():
            outputs = [model(x) for x, _ in evals]
        sdc = sum(int(((o - g).abs() > 1e-3).any(1).sum()) for o, g in zip(outputs, golden))
        assert row["sdc"] == sdc and row["due"] == 0 and row["tolerance"] == 1e-3


def test_rates_come_from_the_rows_resume_safe_and_equal_scipy(tmp_path):
    stats = pytest.importorskip("scipy.stats")
    model, grads, evals = digits_sized()
    config = SweepConfig(
        methods=["bitflip"],
        trials=3,
        outcomes=True,
        settings={"bitflip": {"bits": ["exponent"], "flips": [2]}},
    )
    groups = {"first": select(model, include=["0.*"]), "last": select(model, include=["2.*"])}
    path = tmp_path / "o.jsonl"
    rows = run(model, config, grads, evals, groups, store=ResultsStore(path))
    table = outcome_table(rows)
    again = run(
        model, config, grads, evals, groups, store=ResultsStore(path)
    )  # resumed: nothing recomputed
    assert outcome_table(again) == table and [c["group"] for c in table] == ["first", "last"]
    for cell in table:
        members = [r for r in rows if r["group"] == cell["group"]]
        n = sum(r["examples"] for r in members)
        assert cell["examples"] == n == 3 * 120 and cell["trials"] == 3
        k = sum(r["sdc"] for r in members)
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (cell["sdc"]["low"], cell["sdc"]["high"]) == pytest.approx(
            (ci.low, ci.high), abs=1e-12
        )
        worst = sum(1 for r in members if r["sdc"] and not r["due"])
        exact = stats.binomtest(worst, 3).proportion_ci(0.95, method="exact")
        cp = outcome_table(members, method="clopper-pearson")[0]["sdc_trials"]
        assert (cp["low"], cp["high"]) == pytest.approx((exact.low, exact.high), abs=1e-12)
    # the report and the console show them
    report = write_report(path, tmp_path / "report").read_text()
    assert "## Outcome classes: SDC and DUE rates" in report and "### Group `first`" in report
    first = table[0]["sdc"]
    text = f"{100 * first['rate']:.3g}% [{100 * first['low']:.3g}, {100 * first['high']:.3g}]"
    assert text in report and text in outcome_summary(rows) and "Wilson score" in report
    # a row whose counts do not add up is refused on resume
    lines = path.read_text().splitlines()
    row = json.loads(lines[-1])
    row["sdc"] += 1
    path.write_text("\n".join([*lines[:-1], json.dumps(row)]) + "\n")
    with pytest.raises(ParamCorruptError, match="outcome counts"):
        run(model, config, grads, evals, groups, store=ResultsStore(path))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"modules": ["conv2d"]}, "modules='conv2d' matches no module inside the model"),
        (
            {"modules": ["re:nothing.*"]},
            "modules='re:nothing.*' matches no module inside the model",
        ),
    ],
)
def test_a_module_selection_that_matches_nothing_is_one_line_before_anything_runs(
    tmp_path, settings, message
):
    model, grads, evals = digits_sized()
    config = SweepConfig(
        methods=["activation-bitflip"],
        trials=1,
        outcomes=True,
        settings={"activation-bitflip": {"flips": [1], **settings}},
    )
    path = tmp_path / "x.jsonl"
    with pytest.raises(
        ParamCorruptError,
        match="^" + message.replace("(", r"\(").replace("*", r"\*").replace(".", r"\."),
    ):
        run(model, config, grads, evals, {"all": select(model)}, store=ResultsStore(path))
    assert not path.exists() and no_hooks(model)


def test_a_module_whose_output_is_not_a_tensor_is_one_line_before_anything_runs(tmp_path):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(64, 10)

        def forward(self, x):
            return {"logits": self.inner(x)}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.head = Pair(), nn.Linear(10, 10)  # the group's scope is the whole model

        def forward(self, x):
            return self.head(self.pair(x)["logits"])

    model = Net().eval()
    _, grads, evals = digits_sized()
    before = state_bits(model)
    config = SweepConfig(
        methods=["activation-bitflip"],
        trials=1,
        settings={"activation-bitflip": {"flips": [1], "modules": ["pair"]}},
    )
    path = tmp_path / "x.jsonl"
    with pytest.raises(
        ParamCorruptError,
        match=r"^module 'pair' \(Pair\) returns a dict; activation faults need a tensor or a tuple of tensors$",
    ):
        run(model, config, grads, evals, {"all": select(model)}, store=ResultsStore(path))
    assert not path.exists() and no_hooks(model) and state_bits(model) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcomes": True, "tolerance": -0.5}, "tolerance must be a finite number >= 0, got -0.5"),
        (
            {"outcomes": True, "tolerance": float("nan")},
            "tolerance must be a finite number >= 0, got nan",
        ),
        ({"tolerance": 0.1}, "tolerance=0.1 is given without outcomes"),
    ],
)
def test_a_bad_tolerance_is_one_line(kwargs, message):
    with pytest.raises(ParamCorruptError, match="^" + message.replace("(", r"\(")):
        SweepConfig(methods=["bitflip"], settings={"bitflip": {"flips": [1]}}, **kwargs)


def test_outcomes_need_the_sweeps_own_evaluator(tmp_path):
    model, grads, evals = digits_sized()

    class Mine:
        def evaluate(self, group):
            raise AssertionError("never called")

    config = SweepConfig(
        methods=["bitflip"], trials=1, outcomes=True, settings={"bitflip": {"flips": [1]}}
    )
    with pytest.raises(
        ParamCorruptError, match="^outcome classes need the sweep's own evaluator, not a Mine"
    ):
        run(
            model,
            config,
            grads,
            evals,
            {"all": select(model)},
            evaluator=Mine(),
            store=ResultsStore(tmp_path / "x.jsonl"),
        )
    assert not (tmp_path / "x.jsonl").exists()


def test_a_sweep_without_outcomes_keeps_its_sweep_id_and_rows():
    config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"flips": [1]}})
    assert "outcomes" not in config.as_dict() and "tolerance" not in config.as_dict()
    model, grads, evals = digits_sized()
    rows = run(
        model,
        SweepConfig(methods=["bitflip"], trials=1, settings={"bitflip": {"flips": [1]}}),
        grads,
        evals,
        {"all": select(model)},
    )
    assert all("sdc" not in r and "examples" not in r for r in rows) and outcome_table(rows) == []


def test_reuse_does_not_count_activation_faults_over_the_gradient_pass():
    from paramcorrupt.probe.reuse import ReusingEvaluator

    model, grads, evals = digits_sized()
    config = SweepConfig(
        methods=["activation-bitflip"],
        trials=3,
        settings={"activation-bitflip": {"bits": ["exponent"], "flips": [1]}},
    )
    groups = {"last": select(model, include=["2.*"])}
    plain = run(model, config, grads, evals, groups)
    evaluator = ReusingEvaluator(model, evals, grads, classification_loss, {"accuracy": accuracy})
    reused = run(model, config, grads, evals, groups, evaluator=evaluator)
    assert evaluator.stats["full_evaluations"] > 0  # the rows went through the reusing evaluator
    # its first row also runs the reuse check (one faulted forward of the first eval batch, 40
    # examples: the split graph then differs from the model's forward, and full passes follow);
    # the 60 examples of the gradient's pass are never counted
    assert reused[0]["bit_errors"] == 120 + 40
    for a, b in zip(plain[1:], reused[1:]):
        assert a["bit_errors"] == b["bit_errors"] == 120
        assert a["metric_after"] == b["metric_after"]
    assert no_hooks(model) and evaluator.loaders["gradient"] is grads


class RangeCheck(nn.Module):
    """A detector as hardware has them: raises when an activation leaves its range."""

    def forward(self, x):
        if x.abs().max() > 1e4:
            raise RuntimeError("activation out of range")
        return x


def test_a_forward_pass_that_raises_is_due_and_the_sweep_goes_on(tmp_path):
    """A crash is the other half of DUE: every example of the crashed batch is DUE, the other
    batches are classed as usual (a literal loop), the row's metrics are NaN, the model is
    unchanged and unhooked, and the next rows run."""
    model, grads, evals = digits_sized()
    model = nn.Sequential(model[0], RangeCheck(), model[1], model[2]).eval()
    before = state_bits(model)
    config = SweepConfig(
        methods=["bitflip"],
        trials=3,
        outcomes=True,
        settings={"bitflip": {"bits": ["exponent"], "flips": [1, 8]}},
    )
    groups = {"first": select(model, "0.*")}
    path = tmp_path / "crash.jsonl"
    rows = run(model, config, grads, evals, groups, store=ResultsStore(path))
    assert state_bits(model) == before and no_hooks(model)
    # the rows (NaN metrics and all) resume and report
    assert outcome_table(run(model, config, grads, evals, groups, store=ResultsStore(path))) == outcome_table(rows)
    assert "## Outcome classes: SDC and DUE rates" in write_report(path, tmp_path / "report").read_text()
    with torch.no_grad():
        golden = [model(x) for x, _ in evals]
    faults = {f"first|bitflip|{f.key()}": f for f in config.faults("bitflip")}
    crashed = 0
    for row in rows:
        fault = faults[row["key"].rpartition("|")[0]]
        generator = torch.Generator().manual_seed(row_seed(config.seed, row["key"]))
        ctx = FaultContext(
            model, groups["first"], row["k"], None, generator, grads, classification_loss, {}, row["trial"]
        )
        masked = sdc = due = 0
        raised = False
        with corrupted(model, fault.corrupt(ctx)), torch.no_grad():
            for (x, _), ref in zip(evals, golden):
                try:
                    out = model(x)
                except RuntimeError:  # the literal count: the whole batch is DUE
                    due += x.shape[0]
                    raised = True
                    continue
                m, s, d = literal_counts([out], [ref])
                masked, sdc, due = masked + m, sdc + s, due + d
        assert (row["masked"], row["sdc"], row["due"]) == (masked, sdc, due)
        assert row["examples"] == 120
        if raised:
            crashed += 1
            assert row["metric_after"] != row["metric_after"]  # NaN
            assert row["loss_after"] != row["loss_after"]
    assert crashed >= 1 and crashed < len(rows)  # some trial crashed, some did not: the test can fail


def test_an_lm_example_is_one_sequence_sdc_when_any_predicted_token_changed():
    """The time-major PTB LM: an example is one stream's window (a sequence), SDC when any of
    its predicted next tokens changed (a literal loop over windows x streams x positions),
    not one position of the batch."""
    from paramcorrupt.models import LSTMLanguageModel
    from paramcorrupt.tasks.lm import CarriedStateLoss, WindowLoader

    torch.manual_seed(7)
    model = LSTMLanguageModel(20, 8, 8, 1).eval()
    tokens = torch.randint(0, 20, (203,), generator=torch.Generator().manual_seed(8))
    evals = WindowLoader(tokens, batch_size=7, bptt=5)  # 29 tokens per stream: 6 windows
    grads = WindowLoader(tokens[:60], batch_size=2, bptt=5)
    loss = CarriedStateLoss()
    config = SweepConfig(
        methods=["bitflip"],
        trials=8,
        outcomes=True,
        settings={"bitflip": {"bits": ["exponent"], "flips": [1]}},
    )
    groups = {"decoder": select(model, "decoder.*")}
    before = state_bits(model)
    rows = sweep(model, config, grads, evals, loss, {}, groups=groups, progress=False)
    assert state_bits(model) == before

    def predictions():
        state, out = None, []
        with torch.no_grad():
            for window in evals:
                logits, state = model(window.input, state)
                out.append(logits.argmax(-1))  # [t, B]
        return out

    golden = predictions()
    faults = {f"decoder|bitflip|{f.key()}": f for f in config.faults("bitflip")}
    partial = 0
    for row in rows:
        fault = faults[row["key"].rpartition("|")[0]]
        generator = torch.Generator().manual_seed(row_seed(config.seed, row["key"]))
        ctx = FaultContext(model, groups["decoder"], row["k"], None, generator, grads, loss, {}, row["trial"])
        with corrupted(model, fault.corrupt(ctx)):
            faulty = predictions()
        sdc = examples = 0
        for out, ref in zip(faulty, golden):
            for stream in range(out.shape[1]):
                examples += 1
                sdc += any(out[t, stream] != ref[t, stream] for t in range(out.shape[0]))
        assert row["examples"] == examples == 6 * 7
        assert (row["sdc"], row["due"]) == (sdc, 0)
        partial += 0 < sdc < examples
    assert partial  # some trial changed some sequences and not others: the test can fail
