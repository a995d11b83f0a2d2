"""Faults in a quantised model's stored image (issue 20, part 2): codes, scales, zero points.

References kept here: literal decoders of the stored bytes (int4 low nibble first, NF4 high
nibble first with bitsandbytes' levels, MX FP4 with its E8M0 scale) read with ``struct`` and
numpy float32 products; the full ``StoredTensor.dequantize()`` of a stored tensor whose bits
were flipped on its integer view (the quantisers' own decoder, not the fault module's); a
model quantised by ``quantize`` and evaluated directly.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import paramcorrupt as pc
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.faults import random_bit_faults, stored_faults
from paramcorrupt.faults.stored import StoredImage, decode_at
from paramcorrupt.formats import NF4_LEVELS
from paramcorrupt.losses import accuracy
from paramcorrupt.probe.store import ResultsStore, read_results
from paramcorrupt.probe.sweep import SweepConfig, sweep

FORMATS = [
    ("int8", {}),
    ("int8-channel", {}),
    ("int8-group", {"group_size": 24}),
    ("int4", {"group_size": 24}),
    ("int4", {"group_size": 8, "asymmetric": True}),
    ("int4", {"group_size": 32, "pad": True}),
    ("nf4", {"block_size": 64}),
    ("nf4", {"block_size": 48}),
    ("fp8-e4m3", {}),
    ("fp8-e5m2", {"per_channel": True}),
    ("mxfp8", {"pad": True}),
    ("mxfp6", {"pad": True}),
    ("mxfp4", {"pad": True}),
    ("float16", {}),
    ("bfloat16", {}),
]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _state_bits(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: _bits(v).clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _model(seed: int = 0, columns: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(columns, 12), nn.ReLU(), nn.Linear(12, 4))


def _flipped(field: pc.formats.Field, faults: list[tuple[int, int]]) -> pc.formats.Field:
    """The field with bit b of entry j flipped on a copy of its integer view (Field.locate);
    a field whose codes are derived from the weights (quantize's) is first held."""
    data = field.held().data.clone()
    copy = type(field)(data, field.format, field.bits, field.count, field.packing)
    view = copy.integer_view().reshape(-1)
    for entry, bit in faults:
        index, shift = copy.locate(torch.tensor([entry]), torch.tensor([bit]))
        width = view.element_size() * 8
        mask = 1 << int(shift)
        if mask >= 1 << (width - 1):  # the sign bit of a signed view
            mask -= 1 << width
        view[int(index)] ^= mask
    return copy


# -- every weight decoded where it sits --------------------------------------------------------


@pytest.mark.parametrize("fmt,options", FORMATS, ids=[f"{f}-{o}" for f, o in FORMATS])
def test_local_decode_equals_full_dequantize(fmt, options):
    torch.manual_seed(1)
    stored = pc.quantize_tensor(torch.randn(12, 72) * 0.3, fmt, **options)
    everything = torch.arange(12 * 72)
    assert torch.equal(_bits(decode_at(stored, everything)), _bits(stored.dequantize().reshape(-1)))


@pytest.mark.parametrize("fmt,options", FORMATS, ids=[f"{f}-{o}" for f, o in FORMATS])
def test_random_faults_equal_dequantize_of_the_flipped_image(fmt, options):
    """Flips drawn anywhere in the image give the weights that dequantize() of the flipped
    stored tensor gives, and change no other weight."""
    model = nn.Linear(72, 12, bias=False)
    stored = pc.quantize(model, fmt, **options)
    st = stored["weight"]
    for seed in range(6):
        fault = random_bit_faults(model, flips=9, generator=torch.Generator().manual_seed(seed), stored=stored)
        image = StoredImage({"weight": model.weight}, stored, "any")
        chosen = torch.randperm(image.total, generator=torch.Generator().manual_seed(seed))[:9]
        # the same faults through the image map and through stored_faults
        by_field = image.faults(chosen.sort().values)
        listed = [("weight", f, int(e), int(b)) for f, (es, bs) in by_field["weight"].items() for e, b in zip(es, bs)]
        explicit = stored_faults(model, stored, listed)
        flipped = st
        for f, (es, bs) in by_field["weight"].items():
            flipped = flipped.with_field(f, _flipped(st.fields[f], list(zip(es.tolist(), bs.tolist()))))
        expected = flipped.dequantize()
        clean = model.weight.detach().clone()
        with pc.corrupted(model, explicit):
            assert torch.equal(_bits(model.weight), _bits(expected))
            changed = int((_bits(model.weight) != _bits(clean)).sum())
        assert explicit.info["changed"] == changed
        assert fault.info["bit_errors"] == 9 == sum(fault.info[k] for k in ("code_faults", "scale_faults", "zero_point_faults"))
        assert torch.equal(_bits(model.weight), _bits(clean))
    stored.restore(model)


# -- a flipped scale changes its block, against literal decoders ------------------------------------


def _f32(bits: int) -> np.float32:
    return np.frombuffer(struct.pack("<I", bits & 0xFFFFFFFF), dtype=np.float32)[0]


def _f32_bits(value: torch.Tensor) -> int:
    return struct.unpack("<I", struct.pack("<f", float(value)))[0]


def _literal_int4(st, scale_bits: list[int], rows: int, columns: int, group: int) -> np.ndarray:
    """int4 symmetric, low nibble first, float32 scale per group of a row: code * scale."""
    raw = st.codes.integer_view().reshape(-1).tolist()
    out = np.zeros((rows, columns), dtype=np.float32)
    for r in range(rows):
        for c in range(columns):
            j = r * columns + c
            nibble = (raw[j // 2] >> (4 * (j % 2))) & 0xF
            code = nibble - 16 if nibble >= 8 else nibble
            out[r, c] = np.float32(code) * _f32(scale_bits[r * (columns // group) + c // group])
    return out


def _literal_nf4(st, absmax_bits: list[int], numel: int, block: int) -> np.ndarray:
    """NF4: high nibble first, level * float32 absmax of the block."""
    raw = st.codes.integer_view().reshape(-1).tolist()
    out = np.zeros(numel, dtype=np.float32)
    for j in range(numel):
        nibble = (raw[j // 2] >> (4 if j % 2 == 0 else 0)) & 0xF
        out[j] = np.float32(NF4_LEVELS[nibble]) * _f32(absmax_bits[j // block])
    return out


def _literal_mxfp4(st, scale_codes: list[int], rows: int, columns: int) -> np.ndarray:
    """MX FP4 (E2M1, one code per byte as stored here) times 2^(e8m0 - 127), NaN at 255."""
    magnitudes = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    raw = st.codes.integer_view().reshape(-1).tolist()
    out = np.zeros((rows, columns), dtype=np.float32)
    for r in range(rows):
        for c in range(columns):
            code = raw[r * columns + c] & 0xF
            value = (-1.0 if code & 8 else 1.0) * magnitudes[code & 7]
            e = scale_codes[r * (columns // 32) + c // 32]
            scale = np.float32(math.nan) if e == 255 else np.float32(2.0 ** (e - 127))
            out[r, c] = np.float32(value) * scale
    return out


def _check_block(model, fault, expected: np.ndarray, block: set[int]) -> None:
    before = model.weight.detach().clone()
    with pc.corrupted(model, fault):
        after = model.weight.detach().reshape(-1)
        now = after.numpy()
        assert np.array_equal(now.view(np.int32), expected.reshape(-1).view(np.int32))
        changed = set(torch.nonzero(_bits(after) != _bits(before.reshape(-1))).reshape(-1).tolist())
    assert changed == block == set(fault.indices["weight"].tolist())
    assert torch.equal(_bits(model.weight), _bits(before))


@pytest.mark.parametrize("scale,bit", [(0, 3), (5, 23), (7, 30), (3, 31)])
def test_int4_scale_flip_changes_exactly_its_group(scale, bit):
    model = nn.Linear(64, 4, bias=False)
    stored = pc.quantize(model, "int4", group_size=16)
    st = stored["weight"]
    scale_bits = [_f32_bits(v) for v in st.scales.values()]
    scale_bits[scale] ^= 1 << bit
    expected = _literal_int4(st, scale_bits, 4, 64, 16)
    row, group = divmod(scale, 4)
    block = {row * 64 + group * 16 + i for i in range(16)}
    block = {i for i in block if expected.reshape(-1)[i].view(np.int32) != model.weight.detach().reshape(-1)[i].view(torch.int32)}
    fault = stored_faults(model, stored, [("weight", "scales", scale, bit)])
    assert fault.info["scale_faults"] == 1 and fault.info["code_faults"] == 0
    assert len(block) >= 14  # zero codes stay zero; every other weight of the group changes
    _check_block(model, fault, expected, block)
    stored.restore(model)


def test_nf4_absmax_flip_changes_exactly_its_block():
    model = nn.Linear(50, 4, bias=False)  # 200 weights, blocks of 64: the last one 8 long
    stored = pc.quantize(model, "nf4", block_size=64)
    st = stored["weight"]
    for block_index in (1, 3):
        absmax = [_f32_bits(v) for v in st.scales.values()]
        absmax[block_index] ^= 1 << 29
        expected = _literal_nf4(st, absmax, 200, 64)
        block = set(range(block_index * 64, min(200, block_index * 64 + 64)))
        block = {i for i in block if expected[i].view(np.int32) != model.weight.detach().reshape(-1)[i].view(torch.int32)}
        assert block and block <= set(range(block_index * 64, block_index * 64 + 64))
        fault = stored_faults(model, stored, [("weight", "scales", block_index, 29)])
        _check_block(model, fault, expected, block)
    stored.restore(model)


def test_mx_scale_flip_and_nan_scale_change_exactly_their_block():
    model = nn.Linear(64, 3, bias=False)
    before = _state_bits(model)
    stored = pc.quantize(model, "mxfp4")
    st = stored["weight"]
    codes = st.scales.codes().tolist()
    # one exponent bit of block 3 (row 1, columns 32..63)
    flipped = list(codes)
    flipped[3] ^= 1 << 2
    expected = _literal_mxfp4(st, flipped, 3, 64)
    block = {i for i in range(96, 128) if expected.reshape(-1)[i].view(np.int32) != model.weight.detach().reshape(-1)[i].view(torch.int32)}
    _check_block(model, stored_faults(model, stored, [("weight", "scales", 3, 2)]), expected, block)
    # every bit of block 0's scale stuck at 1: code 255, the NaN scale: the whole block NaN
    nan = list(codes)
    nan[0] = 255
    expected = _literal_mxfp4(st, nan, 3, 64)
    fault = stored_faults(model, stored, [("weight", "scales", 0, b) for b in range(8)], op="stuck-1")
    _check_block(model, fault, expected, set(range(32)))
    with pc.corrupted(model, fault):
        assert torch.isnan(model.weight[0, :32]).all() and not torch.isnan(model.weight[0, 32:]).any()
    stored.restore(model)
    assert all(torch.equal(before[k], v) for k, v in _state_bits(model).items())


def test_zero_point_flip_changes_its_group():
    model = nn.Linear(32, 2, bias=False)
    stored = pc.quantize(model, "int4", group_size=16, asymmetric=True)
    st = stored["weight"]
    fault = stored_faults(model, stored, [("weight", "zero_points", 2, 3)])
    z, s = st.zero_points.codes().tolist(), [_f32(_f32_bits(v)) for v in st.scales.values()]
    z[2] ^= 8
    codes = st.codes.codes().tolist()
    expected = np.array([np.float32(codes[j] - z[j // 16]) * s[j // 16] for j in range(64)], dtype=np.float32)
    block = {j for j in range(32, 48) if expected[j].view(np.int32) != model.weight.detach().reshape(-1)[j].view(torch.int32)}
    assert len(block) == 16 and fault.info["zero_point_faults"] == 1
    _check_block(model, fault, expected, block)
    stored.restore(model)


# -- every stored bit is a candidate, with its share of the faults --------------------------------


@pytest.mark.parametrize("fmt,options", FORMATS, ids=[f"{f}-{o}" for f, o in FORMATS])
def test_every_stored_bit_is_one_candidate(fmt, options):
    model = nn.Linear(72, 6, bias=False)
    stored = pc.quantize(model, fmt, **options)
    st = stored["weight"]
    image = StoredImage({"weight": model.weight}, stored, "any")
    by_field = image.faults(torch.arange(image.total))["weight"]
    for name, field in st.fields.items():
        entries, bits = by_field[name]
        per_entry = field.data.numel() * (2 if field.packing else 1)
        pairs = set(zip(entries.tolist(), bits.tolist()))
        assert pairs == {(e, b) for e in range(per_entry) for b in range(field.bits)}, name
    # the stored bits: every field's entries times its element's width (a 4- or 6-bit entry
    # kept one per byte, MX FP4/FP6 codes and uint4 zero points, counts its own bits alone)
    widths = {name: f.data.numel() * (2 if f.packing else 1) * f.bits for name, f in st.fields.items()}
    assert image.total == sum(widths.values())
    assert all(widths[name] == f.nbits for name, f in st.fields.items()) == (image.total == stored.nbits)


@pytest.mark.parametrize("fmt,options", [("int8-group", {"group_size": 16}), ("int4", {"group_size": 16, "asymmetric": True}), ("nf4", {"block_size": 32})])
def test_fault_shares_follow_the_stored_bits(fmt, options):
    """Over many draws the share of faults in scales (and zero points) is within 3 standard
    errors of their bits over all stored bits."""
    model = nn.Linear(64, 8, bias=False)
    stored = pc.quantize(model, fmt, **options)
    st = stored["weight"]
    # each field's stored bits: entries x element width (uint4 zero points, one per byte,
    # count their 4 bits: the image as packed storage holds it)
    widths = {name: f.data.numel() * (2 if f.packing else 1) * f.bits for name, f in st.fields.items()}
    total = sum(widths.values())
    draws, flips = 100, 80
    counts = {"scale_faults": 0, "zero_point_faults": 0, "code_faults": 0}
    for seed in range(draws):
        info = random_bit_faults(model, flips=flips, generator=torch.Generator().manual_seed(seed), stored=stored).info
        for key in counts:
            counts[key] += info[key]
    n = draws * flips
    assert sum(counts.values()) == n
    for key, name in (("scale_faults", "scales"), ("zero_point_faults", "zero_points")):
        if st.fields.get(name) is None:
            assert counts[key] == 0
            continue
        share = widths[name] / total
        se = math.sqrt(share * (1 - share) / n)
        assert abs(counts[key] / n - share) < 3 * se, (key, counts[key] / n, share)


def test_ber_count_is_binomial_over_all_stored_bits():
    model = nn.Linear(64, 8, bias=False)
    stored = pc.quantize(model, "int8-group", group_size=16)
    total, ber = stored.nbits, 0.01
    m = [random_bit_faults(model, ber=ber, generator=torch.Generator().manual_seed(s), stored=stored).info["bit_errors"] for s in range(300)]
    mean, sd = total * ber, math.sqrt(total * ber * (1 - ber))
    assert abs(np.mean(m) - mean) < 3 * sd / math.sqrt(300)
    assert abs(np.std(m) - sd) < 0.2 * sd


def test_bit_class_selects_in_each_field_its_own_bits():
    model = nn.Linear(32, 4, bias=False)
    stored = pc.quantize(model, "int8-channel")
    exponent = StoredImage({"weight": model.weight}, stored, "exponent")
    assert exponent.total == 4 * 8  # int8 codes have none; each float32 scale its 8
    sign = StoredImage({"weight": model.weight}, stored, "sign")
    assert sign.total == 128 + 4
    assert StoredImage({"weight": model.weight}, stored, 7).total == 128 + 4


# -- the sweep on the stored model ------------------------------------------------------------------


def _task(seed: int = 0):
    torch.manual_seed(seed)
    model = _model(seed)
    x = torch.randn(192, 64)
    y = (x[:, :4] * torch.tensor([1.0, -1.0, 0.5, 2.0])).argmax(1)
    data = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 192, 64)]
    return model, data


@pytest.mark.parametrize("fmt,options", [("int8", {}), ("int4", {"group_size": 4}), ("mxfp4", {"pad": True}), ("nf4", {})])
def test_quantised_sweep_clean_rows(tmp_path, fmt, options):
    model, data = _task()
    float_clean = pc.evaluate(model, data, pc.classification_loss, {"accuracy": accuracy})
    reference = _model(0)
    reference.load_state_dict(model.state_dict())
    pc.quantize(reference, fmt, restorable=False, **options)
    quantised_clean = pc.evaluate(reference, data, pc.classification_loss, {"accuracy": accuracy})
    before = _state_bits(model)
    config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"ber": [1e-3]}}, trials=2, quantize=fmt, quantize_options=options)
    with ResultsStore(tmp_path / "r.jsonl") as store:
        rows = sweep(model, config, data, data, pc.classification_loss, {"accuracy": accuracy},
                     groups={"all": pc.select(model)}, store=store, progress=False)
    assert all(torch.equal(before[k], v) for k, v in _state_bits(model).items())
    for row in rows:
        assert row["metric_before"] == quantised_clean["accuracy"] and row["loss_before"] == quantised_clean["loss"]
        assert row["metric_float"] == float_clean["accuracy"] and row["loss_float"] == float_clean["loss"]
        assert row["quantized"] == fmt
        assert row["code_faults"] + row["scale_faults"] + row["zero_point_faults"] <= row["bit_errors"]
    header, stored_rows = read_results(tmp_path / "r.jsonl")
    assert header["quantized"]["format"] == fmt and header["quantized"]["float"]["accuracy"] == float_clean["accuracy"]
    assert header["config"]["quantize"] == fmt
    assert [r["key"] for r in stored_rows] == [r["key"] for r in rows]
    # resuming the file gives the same rows, without recomputing
    with ResultsStore(tmp_path / "r.jsonl") as store:
        again = sweep(model, config, data, data, pc.classification_loss, {"accuracy": accuracy},
                      groups={"all": pc.select(model)}, store=store, progress=False)
    assert again == rows


def test_float_sweep_config_unchanged():
    """A sweep without quantize has the configuration (and sweep_id) it had before."""
    config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"ber": [1e-3]}})
    assert "quantize" not in config.as_dict() and "quantize_options" not in config.as_dict()
    quantised = SweepConfig(methods=["bitflip"], settings={"bitflip": {"ber": [1e-3]}}, quantize="int8")
    assert SweepConfig.from_dict(quantised.as_dict()) == quantised


def test_sweep_restores_after_interrupt_and_nan():
    model, data = _task()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # a NaN weight: quantised to a NaN block and back
    before = _state_bits(model)
    calls = []

    class Interrupting:
        def evaluate(self, group):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return {"eval": pc.evaluate(model, data, pc.classification_loss, {"accuracy": accuracy}), "gradient": {"loss": 0.0}}

    config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"flips": [50]}}, trials=3, quantize="mxfp8", quantize_options={"pad": True})
    with pytest.raises(KeyboardInterrupt):
        sweep(model, config, data, data, pc.classification_loss, {"accuracy": accuracy},
              groups={"all": pc.select(model)}, progress=False, evaluator=Interrupting(),
              allow_nonfinite=True)  # the NaN weight is the point: probe it anyway
    assert all(torch.equal(before[k], v) for k, v in _state_bits(model).items())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"quantize": "int5"}, "unknown quantisation format 'int5'"),
        ({"quantize": "int4", "quantize_options": {"group_size": 7}}, "group size 7 of int4 does not divide the 64 columns of 0.weight"),
        ({"quantize": "int4", "quantize_options": {"groupsize": 7}}, "unknown option groupsize"),
        ({"quantize_options": {"group_size": 7}}, "without a quantize format"),
    ],
)
def test_bad_quantisation_is_one_line_before_anything_changes(tmp_path, kwargs, message):
    model, data = _task()
    before = _state_bits(model)
    path = tmp_path / "r.jsonl"
    with pytest.raises(ParamCorruptError, match=message) as error:
        config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"ber": [1e-3]}}, **kwargs)
        with ResultsStore(path) as store:
            sweep(model, config, data, data, pc.classification_loss, {"accuracy": accuracy},
                  groups={"all": pc.select(model)}, store=store, progress=False)
    assert "\n" not in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in _state_bits(model).items())
    assert not path.exists() or path.stat().st_size == 0


def test_stored_faults_bad_input():
    model = nn.Linear(32, 2)
    stored = pc.quantize(model, "int4", group_size=16)
    for faults, message in [
        ([("bias", "codes", 0, 0)], "not a stored weight"),
        ([("weight", "absmax", 0, 0)], "no stored field 'absmax'"),
        ([("weight", "codes", 64, 0)], "outside the field"),
        ([("weight", "codes", 0, 4)], "outside the field"),
        ([("weight", "codes", 0, 1), ("weight", "codes", 0, 1)], "given twice"),
    ]:
        with pytest.raises(ParamCorruptError, match=message):
            stored_faults(model, stored, faults)
    with pytest.raises(ParamCorruptError, match="unknown fault op"):
        stored_faults(model, stored, [("weight", "codes", 0, 0)], op="stuck")
    other = pc.quantize(nn.Linear(16, 2), "int8")
    with pytest.raises(ParamCorruptError, match="quantised from another model"):
        random_bit_faults(model, flips=1, generator=torch.Generator(), stored=other)
    stored.restore(model)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "paramcorrupt", "probe", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_bad_quantisation_is_one_line_before_training(tmp_path):
    out = tmp_path / "r.jsonl"
    for extra, message in [
        (["--quantize", "int5"], "unknown quantisation format 'int5'"),
        (["--quantize", "int4", "--quantize-option", "group_size=7"], "group size 7 of int4 does not divide the 9 columns of conv1.weight"),
        (["--quantize", "int4", "--quantize-option", "pad=maybe"], "pad must be true or false"),
        (["--quantize-option", "pad=true"], "--quantize-option goes with --quantize"),
    ]:
        done = _cli("--fault", "bitflip", "--ber", "1e-3", "--out", str(out), "--quiet", *extra, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr
        assert "training" not in done.stdout
        assert not out.exists() or out.stat().st_size == 0
