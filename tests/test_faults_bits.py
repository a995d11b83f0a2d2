"""Hardware faults: bit flips and stuck-at bits in float32/float16/bfloat16/int8 storage,
at a bit error rate or a count, and the progressive bit search, against literal references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from paramcorrupt import Corruption, accuracy, classification_loss, corrupted, evaluate, select
from paramcorrupt.faults import BitFlip, bit_search, get_format, random_bit_faults
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep

INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(INT_VIEW[t.dtype]).long() & ((1 << (8 * t.element_size())) - 1)


def linear(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(6, 5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_flip_changes_exactly_the_named_bit_of_a_float(dtype):
    name = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    width = 8 * torch.empty(0, dtype=dtype).element_size()
    model = linear(dtype)
    for bit in range(width):
        before = {n: bits_of(p).reshape(-1).clone() for n, p in model.named_parameters()}
        fault = random_bit_faults(model, format=name, bits=bit, flips=1, generator=torch.Generator().manual_seed(bit))
        with corrupted(model, fault):
            diffs = {n: bits_of(p).reshape(-1) ^ before[n] for n, p in model.named_parameters()}
        changed = torch.cat([d[d != 0] for d in diffs.values()])
        assert changed.tolist() == [1 << bit], (bit, changed)
        for n, p in model.named_parameters():
            assert torch.equal(bits_of(p).reshape(-1), before[n])


@pytest.mark.parametrize("fmt", ["int8", "int8-channel"])
def test_an_int8_flip_changes_exactly_the_named_bit_of_the_code(fmt):
    model = linear()
    spec = get_format(fmt)
    for bit in range(8):
        fault = random_bit_faults(model, format=fmt, bits=bit, flips=1, generator=torch.Generator().manual_seed(bit))
        (name, idx), = [(n, i) for n, i in fault.indices.items()]
        param = dict(model.named_parameters())[name]
        scales = spec.scales(param)
        code = spec.encode(param, idx, scales)
        with corrupted(model, fault):
            flipped = spec.encode(param, idx, scales)
            # the written value is the dequantised flipped code, exactly
            signed = int(flipped) - 256 if int(flipped) >= 128 else int(flipped)
            row = int(idx) // (param.numel() // param.shape[0]) if fmt == "int8-channel" and param.dim() > 1 else 0
            assert float(param.detach().reshape(-1)[idx]) == float(torch.tensor(signed * float(scales[row]), dtype=torch.float64).float())
        assert int(code ^ flipped) == 1 << bit


def test_per_channel_scales_come_from_each_output_row():
    w = torch.tensor([[1.0, -0.5], [0.01, 0.02]])
    per_tensor, per_channel = get_format("int8").scales(w), get_format("int8-channel").scales(w)
    assert per_tensor.tolist() == [1.0 / 127]
    torch.testing.assert_close(per_channel, torch.tensor([1.0 / 127, 0.02 / 127], dtype=torch.float64))


def test_restore_is_bit_exact_where_a_flip_made_inf_or_nan():
    model = linear()
    with torch.no_grad():
        model.weight.fill_(1.0)  # exponent 0111 1111: flipping bit 30 gives Inf
        model.bias.copy_(torch.tensor([float("inf")] * 5))  # all exponent bits set: a mantissa flip gives NaN
    before = {n: bits_of(p).clone() for n, p in model.named_parameters()}
    inf_fault = random_bit_faults(model, "weight", bits=30, flips=3, generator=torch.Generator().manual_seed(0))
    nan_fault = random_bit_faults(model, "bias", bits=0, flips=2, generator=torch.Generator().manual_seed(0))
    with corrupted(model, inf_fault), corrupted(model, nan_fault):
        assert int(torch.isinf(model.weight).sum()) == 3
        assert int(torch.isnan(model.bias).sum()) == 2
        out = model(torch.ones(1, 6))
        assert not torch.isfinite(out).any()
    for n, p in model.named_parameters():
        assert torch.equal(bits_of(p), before[n])


@pytest.mark.slow
def test_ber_counts_follow_the_binomial():
    """Chi-square of the number of faulty bits over 2,000 draws against Binomial(N, ber), and
    of the faulty bit positions against the uniform distribution over the 32 bits."""
    model = nn.Linear(10, 5)  # k = 55, N = 55 * 32 = 1,760 candidate bits
    total, ber, trials = 55 * 32, 2e-3, 2000
    counts, positions = [], np.zeros(32)
    for t in range(trials):
        fault = random_bit_faults(model, ber=ber, generator=torch.Generator().manual_seed(t))
        counts.append(fault.info["bit_errors"])
        for name, idx in fault.indices.items():
            param = dict(model.named_parameters())[name]
            new = fault.values[name].view(torch.int32).long() & 0xFFFFFFFF
            old = bits_of(param).reshape(-1)[idx]
            for x in (new ^ old).tolist():
                positions[[b for b in range(32) if x >> b & 1]] += 1
    counts = np.array(counts)
    top = 9  # pool the tail: expected counts >= 5 per cell
    observed = np.array([(counts == c).sum() for c in range(top)] + [(counts >= top).sum()])
    pmf = stats.binom.pmf(np.arange(top), total, ber)
    expected = trials * np.append(pmf, 1 - pmf.sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert abs(counts.mean() - total * ber) < 4 * math.sqrt(total * ber * (1 - ber) / trials)
    assert stats.chisquare(positions).pvalue > 1e-3


def test_a_fixed_number_of_flips_and_stuck_at():
    model = linear()
    fault = random_bit_faults(model, flips=17, generator=torch.Generator().manual_seed(0))
    assert fault.info["bit_errors"] == 17 and fault.info["changed"] <= 17
    # stuck-at-1 on the sign bit: every weight it hits becomes negative, the others are left alone
    stuck = random_bit_faults(model, bits="sign", flips=20, op="stuck-1", generator=torch.Generator().manual_seed(0))
    with corrupted(model, stuck):
        for name, idx in stuck.indices.items():
            assert (dict(model.named_parameters())[name].reshape(-1)[idx] < 0).all()
    assert stuck.info["changed"] < 20  # about half the hits were already negative
    assert random_bit_faults(model, ber=0.0, generator=torch.Generator()).values == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ber": 1.5}, r"ber must be a number in \[0, 1\], got ber=1.5"),
        ({"ber": -1e-3}, "ber must be a number"),
        ({"flips": 3, "format": "float8"}, "unknown number format 'float8'"),
        ({"flips": 3, "bits": 32}, r"bit index 32 is out of range for float32 \(0 to 31\)"),
        ({"flips": 3, "format": "int8", "bits": 8}, "bit index 8 is out of range for int8"),
        ({"flips": 3, "format": "int8", "bits": "exponent"}, "int8 has no exponent bits"),
        ({"flips": 3, "bits": "low"}, "unknown bit class 'low'"),
        ({"ber": 1e-3, "flips": 3}, "give one of ber and flips"),
        ({"flips": 10**6}, "exceeds the 1,120 candidate bits"),
        ({"flips": 3, "op": "stuck"}, "unknown fault op 'stuck'"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(kwargs, message):
    model = linear()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        random_bit_faults(model, generator=torch.Generator(), **kwargs)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)


def test_sweep_settings_are_checked_when_the_config_is_made():
    with pytest.raises(ValueError, match=r"ber must be a number in \[0, 1\], got ber=2.0"):
        SweepConfig(methods=["bitflip"], settings={"bitflip": {"ber": [1e-6, 2.0]}})
    with pytest.raises(ValueError, match="unknown number format 'int4'"):
        SweepConfig(methods=["bitflip"], settings={"bitflip": {"format": ["int4"], "flips": [1]}})
    with pytest.raises(ValueError, match="a stuck-at value must be 0 or 1"):
        SweepConfig(methods=["stuck-at"], settings={"stuck-at": {"value": [2], "flips": [1]}})
    assert BitFlip(format="int8", ber=1e-6).key() == "format=int8|bits=any|ber=1e-06"


def tiny_classifier():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(32, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return model, [(x, y)]


@pytest.mark.slow
def test_the_bit_searchs_first_flip_equals_brute_force_over_all_single_flips():
    model, data = tiny_classifier()
    fmt = get_format("int8")
    params = dict(model.named_parameters())
    best = None
    for name, param in params.items():  # every weight, every bit: 26 x 8 evaluations
        scales = fmt.scales(param)
        for i in range(param.numel()):
            idx = torch.tensor([i])
            code = fmt.encode(param, idx, scales)
            for bit in range(8):
                value = fmt.decode(param, idx, code ^ (1 << bit), scales)
                with corrupted(model, Corruption.from_values({name: value}, {name: idx})):
                    loss = evaluate(model, data, classification_loss)["loss"]
                if best is None or loss > best[0]:
                    best = (loss, name, i, bit)
    search = bit_search(model, data, classification_loss, flips=3)
    assert search.flips[0] == best[1:]
    assert search.losses[1] == pytest.approx(best[0], rel=1e-12)
    assert search.losses == sorted(search.losses) and len(search.flips) == 3
    # its corruption of m flips writes exactly those codes; the model is left as it was
    before = [p.detach().clone() for p in model.parameters()]
    with corrupted(model, search.corruption(3)):
        assert evaluate(model, data, classification_loss)["loss"] == pytest.approx(search.losses[3], rel=1e-12)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)


def test_bit_faults_in_a_sweep_record_nan_rows_and_resume(tmp_path):
    """Flipping the top exponent bit of every weight makes the output Inf/NaN: the row is
    recorded (metric computed, loss flagged), never a crash."""
    model, data = tiny_classifier()
    config = SweepConfig(
        methods=["bitflip", "bit-search"], trials=2,
        settings={"bitflip": {"bits": ["msb"], "flips": [1, 26]}, "bit-search": {"flips": [1, 2]}},
    )
    groups = {"all": select(model)}
    path = tmp_path / "bits.jsonl"
    rows = sweep(model, config, data, data, classification_loss, {"accuracy": accuracy}, groups=groups,
                 store=ResultsStore(path), progress=False)
    assert [r["key"] for r in rows] == [
        "all|bitflip|format=float32|bits=msb|flips=1|trial=0",
        "all|bitflip|format=float32|bits=msb|flips=1|trial=1",
        "all|bitflip|format=float32|bits=msb|flips=26|trial=0",
        "all|bitflip|format=float32|bits=msb|flips=26|trial=1",
        "all|bit-search|format=int8|bits=any|flips=1|candidates=1|batches=1|trial=0",
        "all|bit-search|format=int8|bits=any|flips=2|candidates=1|batches=1|trial=0",
    ]
    every = rows[2]
    assert every["loss_nonfinite"] is True and not math.isfinite(every["loss_after"])
    assert 0.0 <= every["metric_after"] <= 1.0 and every["bit_errors"] == 26
    assert rows[5]["search_loss"] >= rows[4]["search_loss"] > rows[0]["loss_before"]
    again = sweep(model, config, data, data, classification_loss, {"accuracy": accuracy}, groups=groups,
                  store=ResultsStore(path), progress=False)
    assert [r["metric_after"] for r in again] == [r["metric_after"] for r in rows]
