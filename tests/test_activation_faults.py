"""Activation faults (issue 21, point 1): faults in module outputs, checked with the test's
own forward hooks on the integer view, against literal numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.faults.activations import activation_faults, select_modules
from paramcorrupt.groups import groups_by_type


def bits_of(t: torch.Tensor) -> np.ndarray:
    """The float32 bit patterns, as numpy uint32 (independent of the code under test)."""
    return t.detach().cpu().contiguous().numpy().astype(np.float32).view(np.uint32)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh())
    with torch.no_grad():  # batch-norm buffers that are not the defaults
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def capture(model: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """The test's own hooks: every submodule's output, copied."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.detach().clone())))
    return seen, handles


def run_captured(model, x):
    seen, handles = capture(model)
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def state_bits(model: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("target", ["0", "1", "3"])
@pytest.mark.parametrize("bit", [0, 13, 23, 30, 31])
def test_an_element_fault_flips_exactly_that_bit_and_nothing_before(target, bit):
    model, x = net(), torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    _, clean = run_captured(model, x)
    names = [n for n, _ in model.named_modules() if n]
    with activation_faults(model, target, index=(2, 3), bits=bit) as faults:
        _, seen = run_captured(model, x)  # registered after the fault's hook: sees the faulted output
    assert faults.bit_errors == 1 and faults.changed == 1 and no_hooks(model)
    for name in names[: names.index(target)]:
        assert np.array_equal(bits_of(seen[name]), bits_of(clean[name])), name
    diff = bits_of(seen[target]) ^ bits_of(clean[target])
    expected = np.zeros_like(diff)
    expected[2, 3] = np.uint32(1 << bit)
    assert np.array_equal(diff, expected)


def test_float16_and_int8_faults_equal_the_literal_codes():
    model, x = net(), torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    _, clean = run_captured(model, x)
    ref = clean["3"].numpy().astype(np.float32)
    # float16: the element becomes its float16 value with bit 14 flipped; the others keep their float32 values
    with activation_faults(model, "3", format="float16", index=7, bits=14):
        _, seen = run_captured(model, x)
    want = ref.copy().reshape(-1)
    want[7] = (np.float16(want[7]).reshape(1).view(np.uint16) ^ np.uint16(1 << 14)).view(np.float16)[0]
    assert np.array_equal(bits_of(seen["3"]).reshape(-1), want.view(np.uint32))
    # int8 per tensor: code = clamp(round(v / s)), s = max|out| / 127; the sign bit (weight -128) flipped
    with activation_faults(model, "3", format="int8", index=5, bits="sign"):
        _, seen = run_captured(model, x)
    s = np.abs(ref.astype(np.float64)).max() / 127.0
    code = int(np.clip(np.round(ref.reshape(-1)[5] / s), -127, 127)) & 0xFF
    code ^= 0x80
    want = ref.copy().reshape(-1)
    want[5] = np.float32((code - 256 if code >= 128 else code) * s)
    assert np.array_equal(bits_of(seen["3"]).reshape(-1), want.view(np.uint32))


def test_a_transient_fault_does_not_persist_into_the_next_batch():
    model, x = net(), torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    clean = bits_of(model(x))
    with activation_faults(model, "3", index=(0, 0), bits=30) as faults:
        first = bits_of(model(x))
        second = bits_of(model(x))
        assert not np.array_equal(first, clean)
        assert np.array_equal(second, clean)
        faults.arm()  # the next inference is hit again
        assert np.array_equal(bits_of(model(x)), first)
    assert np.array_equal(bits_of(model(x)), clean) and no_hooks(model)


def test_per_example_faults_are_independent_trials_in_one_batch():
    model, x = net(), torch.randn(64, 6, generator=torch.Generator().manual_seed(4))
    _, clean = run_captured(model, x)
    with activation_faults(model, "0", flips=1, per_example=True, generator=torch.Generator().manual_seed(0)) as faults:
        _, seen = run_captured(model, x)
    diff = bits_of(seen["0"]) ^ bits_of(clean["0"])
    per_example = np.array([sum(bin(int(v)).count("1") for v in row) for row in diff])
    assert (per_example == 1).all()  # exactly one faulty bit in every example
    where = [tuple(np.argwhere(row).reshape(-1)) + (int(row[row != 0][0]),) for row in diff]
    assert len(set(where)) > 32  # each example its own draw
    assert faults.records[0]["per_example"].tolist() == [1] * 64


def test_ber_counts_match_a_literal_popcount_and_the_binomial():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Identity(), nn.Linear(1000, 1000)).eval()  # module 0 returns its input itself
    x = torch.randn(16, 1000)
    x_bits = bits_of(x).copy()
    clean = bits_of(layer(x))
    ber = 1e-3
    with activation_faults(layer, "1", ber=ber, per_example=True, generator=torch.Generator().manual_seed(5)) as faults:
        out = layer(x)
    diff = bits_of(out) ^ clean
    popcount = np.unpackbits(diff.view(np.uint8), axis=1).sum(axis=1)
    assert popcount.tolist() == faults.records[0]["per_example"].tolist()
    n = 1000 * 32
    assert abs(popcount.sum() - 16 * n * ber) < 5 * np.sqrt(16 * n * ber)
    with activation_faults(layer, "0", ber=ber, generator=torch.Generator().manual_seed(6)) as faults:
        layer(x)
    assert faults.changed > 0 and np.array_equal(bits_of(x), x_bits)  # module 0's output is x itself: x untouched


def test_permanent_stuck_at_hits_the_same_cells_in_every_example_and_inference():
    model = net()
    g = torch.Generator().manual_seed(6)
    x1, x2 = torch.randn(5, 6, generator=g) * 0.1, torch.randn(7, 6, generator=g) * 0.1
    clean1, clean2 = bits_of(model[0](x1)), bits_of(model[0](x2))
    with activation_faults(model, "0", mode="permanent", op="stuck-1", bits="msb", flips=3, generator=torch.Generator().manual_seed(0)) as faults:
        _, s1 = run_captured(model, x1)
        _, s2 = run_captured(model, x2)
    cells = {tuple(np.flatnonzero(row)) for d in (bits_of(s1["0"]) ^ clean1, bits_of(s2["0"]) ^ clean2) for row in d}
    assert len(cells) == 1 and len(next(iter(cells))) == 3  # |values| < 2: the top exponent bit is 0, stuck at 1
    assert ((bits_of(s2["0"]) ^ clean2)[np.nonzero(bits_of(s2["0"]) ^ clean2)] == np.uint32(1 << 30)).all()
    assert faults.changed == 3 * (5 + 7)  # the counters of the inferences since the last arm: 3 cells x (5 + 7) examples
    assert no_hooks(model)


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_parameters_and_buffers_are_bit_identical_after_a_probe_that_raised(interrupt):
    model, x = net(), torch.randn(4, 6)
    before = state_bits(model)

    def boom(module, args, out):
        raise interrupt("mid-forward")

    with pytest.raises(interrupt):
        with activation_faults(model, ["0", "1", "3"], ber=0.01, generator=torch.Generator().manual_seed(0)):
            model(x)
            model[3].register_forward_hook(boom)
            model(x)
    model[3]._forward_hooks.clear()  # the test's own hook
    assert state_bits(model) == before and no_hooks(model)


def test_modules_chosen_by_a_weight_grouping():
    model = net()
    assert list(select_modules(model, groups_by_type(model)["linear"])) == ["0", "3"]
    assert list(select_modules(model, groups_by_type(model)["norm"])) == ["1"]
    assert list(select_modules(model, ["re:[03]", "4"])) == ["0", "3", "4"]


def test_a_tuple_output_faults_the_chosen_item():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x + 1

    model, x = nn.Sequential(Pair()), torch.randn(3, 4)
    a, b = model(x)
    with activation_faults(model, "0", index=(1, 2), bits=31, item=1):
        fa, fb = model(x)
    assert np.array_equal(bits_of(fa), bits_of(a))
    diff = bits_of(fb) ^ bits_of(b)
    assert np.flatnonzero(diff).tolist() == [6] and diff.reshape(-1)[6] == np.uint32(1 << 31)


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_bad_input_is_one_line_before_anything_is_hooked():
    model = net()
    with pytest.raises(ParamCorruptError) as error:
        activation_faults(model, "layer9.*", ber=1e-3, generator=torch.Generator())
    assert "'layer9.*' matches no module" in one_line(error) and no_hooks(model)
    for settings, needle in [
        ({"ber": 1e-3, "flips": 1}, "exactly one of ber, flips and index"),
        ({"ber": 2.0}, "ber must be a number in [0, 1]"),
        ({"flips": 1, "format": "int3"}, "unknown number format 'int3'"),
        ({"index": 0, "bits": 40}, "bit index 40 is out of range"),
        ({"index": 0, "mode": "sometimes"}, "unknown activation fault mode 'sometimes'"),
        ({"flips": 1}, "need a generator"),
    ]:
        with pytest.raises(ParamCorruptError) as error:
            activation_faults(model, "0", **settings)
        assert needle in one_line(error) and no_hooks(model)


def test_an_output_that_is_not_a_tensor_is_refused_before_any_fault_and_unhooked():
    class Dict(nn.Module):
        def forward(self, x):
            return {"y": x}

    model = nn.Sequential(nn.Linear(3, 3), Dict())
    before = state_bits(model)
    with pytest.raises(ParamCorruptError) as error:
        with activation_faults(model, ["0", "1"], index=0, bits=3) as faults:
            model(torch.randn(2, 3))
    assert "module '1' (Dict) returns a dict" in one_line(error)
    assert no_hooks(model) and state_bits(model) == before and faults.bit_errors == 1  # only module 0, already run
    with pytest.raises(ParamCorruptError) as error:
        with activation_faults(model, "1", index=0, bits=3) as faults:
            model(torch.randn(2, 3))
    assert faults.bit_errors == 0 and no_hooks(model)


def test_an_example_checks_every_output_before_anything_is_hooked():
    class Dict(nn.Module):
        def forward(self, x):
            return {"y": x}

    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), Dict()).train()
    before = state_bits(model)
    with pytest.raises(ParamCorruptError) as error:
        activation_faults(model, ["0", "2"], index=0, bits=3, example=torch.randn(4, 3))
    assert "module '2' (Dict) returns a dict" in one_line(error)
    assert no_hooks(model) and state_bits(model) == before  # the check pass kept the batch-norm statistics
    with activation_faults(nn.Sequential(nn.Linear(3, 3)), "0", index=0, bits=3, example=torch.randn(4, 3)) as faults:
        assert faults.bit_errors == 0  # the check wrote no fault


def test_bfloat16_faults_equal_the_literal_codes():
    model = nn.Sequential(nn.Identity(), nn.Identity())
    x = torch.tensor([[1.0, -3.0, 0.15625, 2.0**-100]])  # values exact in bfloat16: their float32 bits end in 16 zeros
    for bit in (0, 6, 7, 14, 15):
        with activation_faults(model, "1", format="bfloat16", index=2, bits=bit):
            out = model(x)
        want = bits_of(x).copy()
        want[0, 2] ^= np.uint32(1 << (bit + 16))
        assert np.array_equal(bits_of(out), want)


def test_the_docs_example_runs_as_written():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "faults.md").read_text()
    section = text.split("## Faults in activations", 1)[1].split("\n## ", 1)[0]
    (block,) = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    exec(compile(block, "docs/faults.md", "exec"), {})
