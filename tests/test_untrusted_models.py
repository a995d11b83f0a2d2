"""Misbehaving models (issue 23, point 7): NaN or Inf in a weight (the tensor named, Inf called
Inf), a clean loss that is not finite (refused unless --allow-nonfinite), a model on the meta
device, an exception raised by the user's own forward or factory ("error in your code", not
"internal error"), a group whose parameters are all frozen. Each case is a user model file
run by ``paramcorrupt probe`` in a fresh process; the library checks beside them run in
process, and leave the model bit-identical."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from paramcorrupt import classification_loss, dataset_gradient, select
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.evaluate import nonfinite_tensors
from paramcorrupt.probe import SweepConfig, sweep
from paramcorrupt.probe.store import read_results

ROOT = Path(__file__).resolve().parents[1]

#: the user's file: a small classifier, its data, and the ways it misbehaves
MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    from paramcorrupt import accuracy, classification_loss


    def _net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


    def make_data():
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
        batches = [(x[:32], y[:32]), (x[32:], y[32:])]
        return batches, batches, classification_loss, {"accuracy": accuracy}


    def good():
        return _net()


    def nan_weight():
        model = _net()
        with torch.no_grad():
            model[2].weight[1, 3] = float("nan")
        return model


    def inf_weight():
        model = _net()
        with torch.no_grad():
            model[0].weight[0, 0] = float("inf")
        return model


    class NanOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x) * float("inf") * 0.0  # finite weights, a NaN loss


    def nan_loss():
        return NanOut()


    def meta():
        with torch.device("meta"):
            return _net()


    class Breaks(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()
            self.initial = [p.detach().clone() for p in self.net.parameters()]

        def forward(self, x):
            if any(not torch.equal(p, q) for p, q in zip(self.net.parameters(), self.initial)):
                raise RuntimeError("my forward broke")  # on a corrupted model: in a row
            return self.net(x)


    def breaks_later():
        return Breaks()


    def factory_fails():
        return {}["missing"]


    def frozen():
        model = _net()
        model[0].requires_grad_(False)
        return model
    """
)

FAST = ["--by", "position", "--trials", "1", "--quiet"]
BITFLIP = ["--fault", "bitflip", "--flips", "1"]


def probe(tmp_path: Path, factory: str, *argv: object, out: str = "r.jsonl") -> subprocess.CompletedProcess:
    """``paramcorrupt probe --model FILE:factory --data FILE:make_data ARGV`` in a fresh process."""
    model_file = tmp_path / "user_net.py"
    model_file.write_text(MODEL_FILE)
    spec = f"{model_file}:"
    command = ["probe", "--model", spec + factory, "--data", spec + "make_data", *FAST, *map(str, argv),
               "--out", str(tmp_path / out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "paramcorrupt", *command], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line of stderr a failed command printed (warnings about untrained weights aside)."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- the command line, one user model file per case -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "factory, named",
    [
        ("nan_weight", "parameter '2.weight' holds 1 NaN (of 24 values)"),
        ("inf_weight", "parameter '0.weight' holds 1 Inf (of 32 values)"),
    ],
)
def test_a_nan_or_inf_weight_is_named_and_nothing_is_written(tmp_path, factory, named):
    for methods in (["--methods", "gradient"], BITFLIP):  # with and without a data set gradient
        result = probe(tmp_path, factory, *methods)
        assert result.returncode == 2, result.stderr
        line = error_line(result)
        assert named in line and "--allow-nonfinite" in line, line
        assert "internal error" not in line
        if factory == "inf_weight":
            assert "nan" not in line.lower(), line  # Inf is called Inf
        assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_allow_nonfinite_probes_the_model_anyway(tmp_path):
    result = probe(tmp_path, "nan_weight", *BITFLIP, "--allow-nonfinite")
    assert result.returncode == 0, result.stderr
    _, rows = read_results(tmp_path / "r.jsonl")
    assert len(rows) == 2 and all(row["loss_before"] != row["loss_before"] for row in rows)  # NaN, as asked
    content = (tmp_path / "r.jsonl").read_bytes()
    again = probe(tmp_path, "nan_weight", *BITFLIP, "--allow-nonfinite")  # resumes: NaN matches NaN
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "r.jsonl").read_bytes() == content


@pytest.mark.slow
def test_a_nan_clean_loss_with_finite_weights_is_refused_before_any_row(tmp_path):
    result = probe(tmp_path, "nan_loss", *BITFLIP)
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "the clean model's loss is NaN" in line and "--allow-nonfinite" in line, line
    path = tmp_path / "r.jsonl"
    assert not path.exists() or read_results(path)[1] == []  # no row against a NaN clean loss


@pytest.mark.slow
def test_a_meta_device_model_is_one_line(tmp_path):
    result = probe(tmp_path, "meta", "--methods", "random", "--eps", "1e-2")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "meta device" in line and "'0.weight'" in line and "to_empty" in line, line
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_an_error_in_the_users_forward_is_named_as_theirs(tmp_path):
    result = probe(tmp_path, "breaks_later", "--methods", "random", "--eps", "1e-2")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert line.startswith("paramcorrupt probe: error in your code (")
    assert f"{tmp_path / 'user_net.py'}:" in line and "in forward): RuntimeError: my forward broke" in line, line
    assert "internal error" not in line and "-v" in line
    verbose = probe(tmp_path, "breaks_later", "--methods", "random", "--eps", "1e-2", "-v", out="v.jsonl")
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr and 'raise RuntimeError("my forward broke")' in verbose.stderr


@pytest.mark.slow
def test_an_error_in_the_users_factory_is_named_as_theirs(tmp_path):
    result = probe(tmp_path, "factory_fails", "--methods", "random", "--eps", "1e-2")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "error in your code (" in line and "in factory_fails): KeyError: 'missing'" in line, line
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.slow
def test_a_first_batch_error_names_the_users_file_and_keeps_the_traceback_under_v(tmp_path):
    model_file = tmp_path / "user_net.py"
    source = MODEL_FILE.replace("return self.net(x) * float(\"inf\") * 0.0", "raise ValueError('wrong input')")
    model_file.write_text(source)
    command = [sys.executable, "-m", "paramcorrupt", "probe", "--model", f"{model_file}:nan_loss", "--data",
               f"{model_file}:make_data", *FAST, "--methods", "random", "--out", str(tmp_path / "f.jsonl"), "-v"]
    verbose = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert verbose.returncode == 2
    last = verbose.stderr.strip().splitlines()[-1]
    assert "fails on the first batch" in last and f"(raised in {model_file}:" in last and "in forward)" in last, last
    assert "Traceback (most recent call last)" in verbose.stderr  # the user's traceback under -v


@pytest.mark.slow
def test_an_all_frozen_group_does_not_suggest_an_option_the_cli_lacks(tmp_path):
    result = probe(tmp_path, "frozen", "--groups", "first=0.*", "--methods", "random", "--eps", "1e-2")
    assert result.returncode == 2, result.stderr
    line = error_line(result)
    assert "group 'first' is empty" in line and "all frozen" in line and "requires_grad_(True)" in line, line
    assert "include_frozen=True keeps them" not in line and "in Python" in line


# -- the library, in process: messages, and the model left bit-identical -------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g))]


def _bits(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def test_nonfinite_tensors_against_a_literal_count():
    model = _net()
    with torch.no_grad():
        model[0].weight[0, :2] = float("inf")
        model[0].weight[1, 0] = -float("inf")
        model[2].bias[0] = float("nan")
    # a literal count, tensor by tensor
    expected = []
    for name, t in model.named_parameters():
        values = t.detach().flatten().tolist()
        nan = sum(1 for v in values if v != v)
        inf = sum(1 for v in values if v in (float("inf"), -float("inf")))
        held = " and ".join(f"{c} {k}" for c, k in ((nan, "NaN"), (inf, "Inf")) if c)
        if held:
            expected.append(f"parameter {name!r} holds {held} (of {len(values)} values)")
    assert nonfinite_tensors(model) == expected == [
        "parameter '0.weight' holds 3 Inf (of 32 values)", "parameter '2.bias' holds 1 NaN (of 3 values)",
    ]
    assert nonfinite_tensors(_net()) == []


def test_the_gradient_error_names_the_tensor_and_leaves_the_model_as_it_was():
    model = _net()
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    before = _bits(model)
    with pytest.raises(ParamCorruptError, match=r"the loss of a batch is nan; .*parameter '2.weight' holds 1 Inf"):
        dataset_gradient(model, _data(), classification_loss)
    assert _bits(model) == before


@pytest.mark.parametrize("allow", [False, True])
def test_a_sweep_refuses_a_nonfinite_clean_loss_unless_allowed(allow):
    model = _net()
    with torch.no_grad():
        model[0].bias[2] = float("nan")
    before = _bits(model)
    config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"flips": [1]}}, trials=1)
    groups = {"all": select(model)}
    if allow:
        rows = sweep(model, config, _data(), _data(), classification_loss, groups=groups, progress=False,
                     allow_nonfinite=True)
        assert len(rows) == 1 and rows[0]["loss_before"] != rows[0]["loss_before"]
    else:
        with pytest.raises(ParamCorruptError, match=r"the clean model's loss is NaN \(parameter '0.bias' holds 1 NaN"):
            sweep(model, config, _data(), _data(), classification_loss, groups=groups, progress=False)
    assert _bits(model) == before  # left bit-identical, NaN included


def test_a_forward_failing_in_a_row_leaves_the_model_bit_identical():
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()
            self.initial = [p.detach().clone() for p in self.net.parameters()]

        def forward(self, x):
            if any(not torch.equal(p, q) for p, q in zip(self.net.parameters(), self.initial)):
                raise RuntimeError("my forward broke")  # the clean model passes, a corrupted one fails
            return self.net(x)

    model = Breaks()
    before = _bits(model)
    config = SweepConfig(methods=["random"], trials=1, eps_values=[0.1])
    with pytest.raises(RuntimeError, match="my forward broke"):
        sweep(model, config, _data(), _data(), classification_loss, groups={"all": select(model)}, progress=False)
    assert _bits(model) == before
