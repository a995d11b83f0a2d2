"""torchao models probed as they are (issue 20, part 3): bit faults written into the stored
fields of torchao's quantised tensors (``qdata``, ``scale``, ``zero_point``) and restored bit
for bit, without a float copy of the weights.

The references are independent of the code under test: the bits are read on numpy views
of torchao's own storage, the weights dequantised by hand from torchao's fields (scales
expanded over torchao's ``block_size``), and the model evaluated by torchao itself.

torchao is optional: the tests that need it are marked slow (importing torchao takes several
seconds) and skipped with a reason when it is not installed (CI installs it through the
``test`` extra); the tests above the marker need no torchao.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from paramcorrupt import (
    ParamCorruptError,
    accuracy,
    classification_loss,
    corrupted,
    evaluate,
    select,
)
from paramcorrupt.corruption import apply as apply_module
from paramcorrupt.faults import random_bit_faults
from paramcorrupt.faults.torchao import stored_bit_faults
from paramcorrupt.formats.torchao import SUPPORTED, is_torchao_tensor, stored_fields

# -- without torchao ------------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter imports the package: ~8 s here
def test_import_paramcorrupt_does_not_import_torchao_and_works_without_it():
    code = (
        "import sys; sys.modules['torchao'] = None\n"  # an import of torchao would fail
        "import torch, paramcorrupt, paramcorrupt.faults, paramcorrupt.probe\n"
        "from paramcorrupt.faults import random_bit_faults\n"
        "m = torch.nn.Linear(4, 2)\n"
        "f = random_bit_faults(m, flips=3, generator=torch.Generator().manual_seed(0))\n"
        "with paramcorrupt.corrupted(m, f): pass\n"
        "assert 'scale_faults' not in f.info\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


class _FakeTorchaoTensor(torch.Tensor):
    """Stands for a torchao tensor type paramcorrupt does not support."""


_FakeTorchaoTensor.__module__ = "torchao.fake"


def test_an_unsupported_torchao_type_is_one_clear_error_before_anything_changes():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[1].weight = nn.Parameter(model[1].weight.detach().as_subclass(_FakeTorchaoTensor), requires_grad=False)
    assert is_torchao_tensor(model[1].weight) and not is_torchao_tensor(model[0].weight)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ParamCorruptError, match=r"^parameter '1.weight' is a torchao _FakeTorchaoTensor, which cannot be "
                       r"corrupted; supported torchao tensor types: Int8Tensor, Float8Tensor, IntxUnpackedToInt8Tensor$"):
        random_bit_faults(model, ["0.weight", "1.weight"], flips=2, generator=torch.Generator().manual_seed(0))
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)


# -- with torchao ---------------------------------------------------------------------------

SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def ao():
    return pytest.importorskip(
        "torchao.quantization", reason="torchao is not installed (pip install 'paramcorrupt[torchao]')"
    )


#: config name -> how to build it from torchao.quantization (each runs on this CPU)
CONFIGS = {
    "int8-weight-only": lambda q: q.Int8WeightOnlyConfig(),
    "int8-weight-only-per-group": lambda q: q.Int8WeightOnlyConfig(granularity=q.PerGroup(8)),
    "int8-dynamic-activation": lambda q: q.Int8DynamicActivationInt8WeightConfig(),
    "float8-weight-only": lambda q: q.Float8WeightOnlyConfig(),
    "float8-e5m2-weight-only": lambda q: q.Float8WeightOnlyConfig(weight_dtype=torch.float8_e5m2),
    "intx-int4-weight-only": lambda q: q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(8)),
    "intx-int8-weight-only": lambda q: q.IntxWeightOnlyConfig(),
}
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def quantised_model(ao, config: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    ao.quantize_(model, CONFIGS[config](ao))
    return model


def bits_of(t: torch.Tensor) -> np.ndarray:
    """The stored bits of a plain tensor as unsigned integers, read by numpy."""
    return t.detach().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()]).numpy().view(
        _UNSIGNED[t.element_size()]).reshape(-1).copy()


def stored_snapshot(model: nn.Module, skip: str = "") -> dict[str, np.ndarray]:
    """Every tensor the model holds (plain parameters and every field of each torchao weight:
    the names of torchao's own flatten), as numpy bits."""
    out = {}
    for name, param in model.named_parameters():
        if name == skip:
            continue
        if is_torchao_tensor(param):
            for field in param.__tensor_flatten__()[0]:
                out[f"{name}.{field}"] = bits_of(getattr(param, field))
        else:
            out[name] = bits_of(param)
    return out


def dequantised(weight) -> torch.Tensor:
    """The weight dequantised by hand from torchao's fields: (q - zp) * s, s and zp expanded
    over torchao's block_size."""
    q = weight.qdata.float()
    block = list(weight.block_size)

    def expand(t):
        for dim, size in enumerate(block):
            t = t.repeat_interleave(size, dim=dim)
        return t

    zp = getattr(weight, "zero_point", None)
    if zp is not None:
        q = q - expand(zp.float())
    return q * expand(weight.scale.float())


def reference_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output computed from its weights dequantised by hand (activations, where
    torchao quantises them, quantised by torchao's own activation quantiser)."""
    h = x
    for layer in model:
        if isinstance(layer, nn.Linear):
            act = getattr(layer.weight, "act_quant_kwargs", None)
            if act is not None:
                from torchao.quantization.quantize_.common.quantize_tensor_kwargs import (
                    _choose_quant_func_and_quantize_tensor,
                )

                h = _choose_quant_func_and_quantize_tensor(h, act).dequantize()
            h = h @ dequantised(layer.weight).t() + layer.bias
        else:
            h = layer(h)
    return h


@SLOW
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_supported_config_gives_a_supported_type_with_its_fields(ao, config):
    model = quantised_model(ao, config)
    weight = model[0].weight
    assert type(weight).__name__ in SUPPORTED
    fields = stored_fields(weight, "0.weight")
    assert [f.name for f in fields][:2] == ["qdata", "scale"]
    # every tensor torchao flattens the weight into is a stored field of ours
    assert {f.name for f in fields} == {n for n in weight.__tensor_flatten__()[0] if getattr(weight, n) is not None}


@SLOW
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("field,element,bit", [
    ("qdata", 0, 0), ("qdata", 37, 3), ("qdata", 100, 6), ("qdata", 191, 7),
    ("scale", 0, 0), ("scale", 5, 22), ("scale", 3, 24), ("scale", 7, 31),
])
def test_one_flip_changes_exactly_that_bit_and_the_output_as_dequantised_by_hand(ao, config, field, element, bit):
    model = quantised_model(ao, config)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    before = stored_snapshot(model)
    clean = model(x).detach()
    clean_reference = reference_output(model, x).detach()
    name = "0.weight"
    element = element % getattr(model[0].weight, field).numel()
    with corrupted(model, stored_bit_faults(model, [(name, field, element, bit)])):
        inside = stored_snapshot(model)
        got = model(x).detach()
        expected = reference_output(model, x).detach()  # from the flipped fields, by hand
    for key, bits in before.items():
        diff = bits ^ inside[key]
        if key == f"{name}.{field}":
            want = np.zeros_like(diff)
            want[element] = 1 << bit
            assert np.array_equal(diff, want), key
        else:
            assert not diff.any(), key
    # torchao's own kernel computes what the flipped fields, dequantised by hand, give
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(got))
    tol = 1e-4 * float(expected[finite].abs().max()) if finite.any() else 0.0
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-4, atol=tol)
    if not torch.allclose(expected, clean_reference, rtol=1e-3, atol=1e-3 * float(clean_reference.abs().max()), equal_nan=True):
        assert not torch.equal(got, clean)  # a change the reference sees, torchao's kernel sees
    after = stored_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), clean)


@SLOW
@pytest.mark.parametrize("config", ["int8-weight-only", "float8-weight-only", "intx-int4-weight-only"])
def test_restored_bit_for_bit_through_inf_nan_scales_and_an_exception(ao, config):
    model = quantised_model(ao, config)
    x = torch.randn(4, 16)
    before = stored_snapshot(model)
    clean = model(x).detach()
    weight = model[0].weight
    # scale 0: mantissa stuck at 0, then every exponent bit stuck at 1 -> Inf; scale 1: its
    # exponent bits stuck at 1 under a non-zero mantissa -> NaN (with that payload)
    mantissa = stored_bit_faults(model, [("0.weight", "scale", 0, b) for b in range(23)], op="stuck-0")
    assert int(bits_of(weight.scale)[1]) & 0x7FFFFF
    with pytest.raises(KeyError):
        with corrupted(model, mantissa):
            # drawn on the model as it is now (a corruption holds the values it writes)
            exponent = [("0.weight", "scale", e, b) for e in (0, 1) for b in range(23, 31)]
            with corrupted(model, stored_bit_faults(model, exponent, op="stuck-1")):
                assert torch.isinf(weight.scale.view(-1)[0]) and torch.isnan(weight.scale.view(-1)[1])
                assert not torch.isfinite(model(x)).all()
                raise KeyError("inside the block")
    after = stored_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), clean)


@SLOW
def test_a_keyboard_interrupt_inside_the_block_restores(ao):
    model = quantised_model(ao, "int8-weight-only")
    before = stored_snapshot(model)
    fault = random_bit_faults(model, select(model), ber=0.05, generator=torch.Generator().manual_seed(3))
    with pytest.raises(KeyboardInterrupt):
        with corrupted(model, fault):
            raise KeyboardInterrupt
    after = stored_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@SLOW
@pytest.mark.parametrize("config", ["int8-weight-only", "float8-weight-only", "intx-int4-weight-only"])
@pytest.mark.parametrize("op", ["flip", "stuck-0", "stuck-1"])
def test_random_faults_over_every_stored_bit(ao, config, op):
    """flips = every candidate bit: every stored bit of every field (and the biases' float32
    bits) fails; counts, scale_faults and the changed bits checked on numpy's bits."""
    model = quantised_model(ao, config)
    group = select(model)
    assert set(group.names) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # torchao weights are kept
    before = stored_snapshot(model)
    total = sum(bits.size * bits.dtype.itemsize * 8 for bits in before.values())
    scale_bits = sum(b.size * b.dtype.itemsize * 8 for k, b in before.items() if k.endswith(".scale"))
    zero_bits = sum(b.size * b.dtype.itemsize * 8 for k, b in before.items() if k.endswith(".zero_point"))
    with pytest.raises(ParamCorruptError, match=f"exceeds the {total:,} candidate bits"):
        random_bit_faults(model, group, flips=total + 1, op=op, generator=torch.Generator().manual_seed(0))
    stuck = {"flip": None, "stuck-0": 0, "stuck-1": 1}[op]
    fault = random_bit_faults(model, group, flips=total, op=op, generator=torch.Generator().manual_seed(0))
    assert fault.info["bit_errors"] == total
    assert fault.info["scale_faults"] == scale_bits and fault.info["zero_point_faults"] == zero_bits
    with corrupted(model, fault):
        inside = stored_snapshot(model)
    for key, bits in before.items():
        full = np.iinfo(bits.dtype).max
        if stuck is None:
            assert np.array_equal(bits ^ inside[key], np.full_like(bits, full)), key
        else:
            assert np.array_equal(inside[key], np.full_like(bits, full if stuck else 0)), key
    changed = sum(int((before[k] != inside[k]).sum()) for k in before)
    assert fault.info["changed"] == changed
    after = stored_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@SLOW
def test_bit_classes_select_each_fields_own_bits(ao):
    model = quantised_model(ao, "float8-weight-only")
    before = stored_snapshot(model)
    weights = ["0.weight", "2.weight"]
    # exponent: e4m3fn codes 3..6, float32 scales 23..30
    n = sum(getattr(model.get_submodule(w[0]).weight, f).numel() * k for w in weights for f, k in (("qdata", 4), ("scale", 8)))
    fault = random_bit_faults(model, weights, bits="exponent", flips=n, generator=torch.Generator().manual_seed(0))
    with corrupted(model, fault):
        inside = stored_snapshot(model)
    for w in weights:
        assert (before[f"{w}.qdata"] ^ inside[f"{w}.qdata"] == 0b01111000).all()
        assert (before[f"{w}.scale"] ^ inside[f"{w}.scale"] == 0xFF << 23).all()
    # int8 codes have no exponent: only the scales are candidates; an index past 7, only scales
    model = quantised_model(ao, "int8-weight-only")
    scales = sum(model.get_submodule(w[0]).weight.scale.numel() for w in weights)
    for bits, per in (("exponent", 8), (20, 1)):
        fault = random_bit_faults(model, weights, bits=bits, flips=scales * per, generator=torch.Generator().manual_seed(0))
        assert fault.info["stored_bit_errors"] == {"scale": scales * per}
        with pytest.raises(ParamCorruptError, match="exceeds"):
            random_bit_faults(model, weights, bits=bits, flips=scales * per + 1, generator=torch.Generator().manual_seed(0))


@SLOW
def test_a_ber_draws_each_stored_bit_with_that_probability(ao):
    """Over 200 draws at BER 1e-3, the faults per field follow Binomial(bits of the field, ber)."""
    model = quantised_model(ao, "int8-weight-only")
    weights = ["0.weight", "2.weight"]
    bits = {f: sum(getattr(model.get_submodule(w[0]).weight, f).numel() * (8 if f != "scale" else 32) for w in weights)
            for f in ("qdata", "scale", "zero_point")}
    ber, draws = 1e-3, 200
    counts = {f: 0 for f in bits}
    generator = torch.Generator().manual_seed(0)
    for _ in range(draws):
        fault = random_bit_faults(model, weights, ber=ber, generator=generator)
        for f, c in fault.info["stored_bit_errors"].items():
            counts[f] += c
    for f, n in bits.items():
        mean, sd = n * ber * draws, (n * ber * (1 - ber) * draws) ** 0.5
        assert abs(counts[f] - mean) < 5 * sd, (f, counts[f], mean)


@SLOW
def test_no_float_copy_of_the_weights_saved_bytes_are_o_of_faults(ao, monkeypatch):
    """Every tensor allocated by the draw, the write and the restore is O(faults): none of
    the size of a weight (views of torchao's storage are no allocation); the bytes saved for
    the restore are those of the faulty elements."""
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()
    ao.quantize_(model, ao.Int8WeightOnlyConfig())
    weight_numel = 256 * 256

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                      if isinstance(a, torch.Tensor)}
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    self.sizes.append((str(func), t.dtype, t.numel()))
            return out

    saved_bytes = []
    real = apply_module.write_in_place

    def spy(*args, **kwargs):
        saved = real(*args, **kwargs)
        saved_bytes.extend(original.numel() * original.element_size() for _, _, original in saved)
        return saved

    monkeypatch.setattr(apply_module, "write_in_place", spy)
    before = stored_snapshot(model)
    with Allocations() as mode:
        fault = random_bit_faults(model, select(model), ber=1e-4, generator=torch.Generator().manual_seed(0))
        with corrupted(model, fault):
            pass
    m = fault.info["bit_errors"]
    assert m > 10
    assert max(n for _, _, n in mode.sizes) <= 4 * m + 64, sorted(mode.sizes, key=lambda s: -s[2])[:5]
    assert not [s for s in mode.sizes if s[1].is_floating_point and s[2] >= weight_numel // 16]
    assert 0 < sum(saved_bytes) <= 4 * m  # an int8 code or an int32 scale or a float32 bias per faulty element
    after = stored_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@SLOW
@pytest.mark.parametrize("config", ["int8-weight-only", "float8-weight-only"])
def test_a_sweep_runs_the_torchao_model_its_clean_row_is_torchaos_own_evaluation(ao, config, tmp_path):
    from paramcorrupt.probe import ResultsStore, SweepConfig, sweep

    model = quantised_model(ao, config)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(32, 16, generator=g), torch.randint(0, 5, (32,), generator=g)) for _ in range(3)]
    own = evaluate(model, data, classification_loss, {"accuracy": accuracy})
    before = stored_snapshot(model)
    config_ = SweepConfig(methods=["bitflip", "stuck-at"], trials=2, settings={"bitflip": {"ber": [1e-3, 0.05]},
                                                                              "stuck-at": {"flips": [3]}})
    rows = sweep(model, config_, data, data, classification_loss, {"accuracy": accuracy},
                 groups={"all": select(model)}, store=ResultsStore(tmp_path / "ao.jsonl"), progress=False)
    again = sweep(model, config_, data, data, classification_loss, {"accuracy": accuracy},  # resumed from the file
                  groups={"all": select(model)}, store=ResultsStore(tmp_path / "ao.jsonl"), progress=False)
    assert [r["metric_after"] for r in again] == [r["metric_after"] for r in rows]
    assert len(rows) == 6
    for row in rows:
        assert row["metric_before"] == own["accuracy"] and row["loss_before"] == own["loss"]
        assert isinstance(row["scale_faults"], int) and isinstance(row["zero_point_faults"], int)
        assert row["scale_faults"] <= row["bit_errors"]
    assert any(row["loss_after"] != own["loss"] for row in rows)
    after = stored_snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@SLOW
def test_other_corruptions_and_unsupported_torchao_types_are_refused_before_anything_changes(ao):
    from paramcorrupt import Corruption

    model = quantised_model(ao, "int8-weight-only")
    before = stored_snapshot(model)
    # an L_p delta or float values cannot be written into a torchao weight
    for corruption in (Corruption.from_deltas({"0.bias": torch.ones(16), "0.weight": torch.ones(16, 16)}),
                       Corruption.from_values({"0.bias": torch.zeros(16), "0.weight": torch.zeros(3)},
                                              {"0.weight": torch.tensor([0, 1, 2])})):
        with pytest.raises(ParamCorruptError, match=r"'0.weight' is a torchao Int8Tensor: only faults of its stored bits"):
            with corrupted(model, corruption):
                pass
    with pytest.raises(ParamCorruptError, match=r"'0.weight' has no stored field 'codes'; it holds qdata, scale, zero_point"):
        stored_bit_faults(model, [("0.weight", "codes", 0, 0)])
    with pytest.raises(ParamCorruptError, match="outside the field: 256 elements of 8 bits"):
        stored_bit_faults(model, [("0.weight", "qdata", 0, 8)])
    with pytest.raises(ParamCorruptError, match="given twice"):
        stored_bit_faults(model, [("0.weight", "qdata", 0, 1), ("0.weight", "qdata", 0, 1)])
    # torchao's NF4Tensor is not supported: one line naming it and the supported types
    with torch.no_grad():
        model[2].weight = nn.Parameter(ao.to_nf4(torch.randn(8, 64), block_size=64, scaler_block_size=8), requires_grad=False)
    with pytest.raises(ParamCorruptError, match=r"^parameter '2.weight' is a torchao NF4Tensor, which cannot be "
                       r"corrupted; supported torchao tensor types: Int8Tensor, Float8Tensor, IntxUnpackedToInt8Tensor$"):
        random_bit_faults(model, select(model), flips=3, generator=torch.Generator().manual_seed(0))
    after = stored_snapshot(model, skip="2.weight")
    assert all(np.array_equal(before[k], after[k]) for k in after)
