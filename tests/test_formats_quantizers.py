"""Quantisers (issue 20): what is stored equals literal references kept here (slow, obvious
loops over groups and elements; ml_dtypes for the float casts), bit flips on the integer view
change exactly that bit, and bad input is one clear line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paramcorrupt.errors import InputTypeError, ParamCorruptError
from paramcorrupt.formats import NF4_LEVELS, QUANTIZERS, get_element, quantize_tensor

ml_dtypes = pytest.importorskip("ml_dtypes")

F32 = np.float32


def weights(rows: int = 6, columns: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, columns, generator=g) * torch.logspace(-3, 1, rows).unsqueeze(1)
    w[0, :32] = 0.0  # a group of zeros
    w[1, 3] = 40.0  # an outlier
    return w


def literal_int_groups(w: np.ndarray, group: int, bits: int, asymmetric: bool = False):
    """Codes (two's complement or unsigned), scales and zero points, group by group."""
    qmax = (1 << (bits - 1)) - 1
    codes, scales, zeros = [], [], []
    for row in w:
        for start in range(0, len(row), group):
            part = [F32(v) for v in row[start : start + group]]
            if asymmetric:
                low, high = min(min(part), F32(0)), max(max(part), F32(0))
                scale = F32(F32(high - low) / F32(2 * qmax + 1))
                scale = scale if scale > 0 else F32(1)
                zero = min(max(round(float(F32(-low / scale))), 0), 2 * qmax + 1)
                codes += [min(max(round(float(F32(v / scale))) + zero, 0), 2 * qmax + 1) for v in part]
                zeros.append(zero)
            else:
                amax = max(abs(v) for v in part)
                scale = F32(amax / F32(qmax))
                scale = scale if scale > 0 else F32(1)
                codes += [min(max(round(float(F32(v / scale))), -qmax - (bits == 4)), qmax) % (1 << bits) for v in part]
            scales.append(scale)
    return codes, np.array(scales, dtype=F32), zeros


def literal_pack(codes: list[int], low_first: bool) -> list[int]:
    if len(codes) % 2:
        codes = codes + [0]
    out = []
    for i in range(0, len(codes), 2):
        a, b = codes[i], codes[i + 1]
        out.append(a | (b << 4) if low_first else (a << 4) | b)
    return out


def stored_bytes(field) -> list[int]:
    return field.integer_view().reshape(-1).tolist()


@pytest.mark.parametrize("group", [32, 64])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_int4_equals_a_literal_packer(group, asymmetric):
    w = weights()
    stored = quantize_tensor(w, "int4", group_size=group, asymmetric=asymmetric)
    codes, scales, zeros = literal_int_groups(w.numpy(), group, 4, asymmetric)
    assert stored_bytes(stored.codes) == literal_pack(codes, low_first=True)
    assert stored.codes.data.dtype == torch.uint8 and stored.codes.data.numel() == w.numel() // 2
    assert np.array_equal(stored.scales.data.numpy().view(np.uint32), scales.view(np.uint32))
    if asymmetric:
        assert stored.zero_points.codes().tolist() == zeros and stored.zero_points.format == "uint4"
        signed = [c for c in codes]
        zero_of = np.repeat(zeros, group)
    else:
        assert stored.zero_points is None
        signed = [c - 16 if c >= 8 else c for c in codes]
        zero_of = np.zeros(len(codes), dtype=int)
    expected = np.array([F32(F32(c - z) * s) for c, z, s in zip(signed, zero_of, np.repeat(scales, group))], dtype=F32)
    assert np.array_equal(stored.dequantize().numpy().reshape(-1), expected)


@pytest.mark.parametrize("format,group", [("int8", None), ("int8-channel", None), ("int8-group", 32)])
def test_int8_equals_a_literal_quantiser(format, group):
    w = weights()
    options = {"group_size": group} if group else {}
    stored = quantize_tensor(w, format, **options)
    columns = {"int8": w.numel(), "int8-channel": w.shape[1], "int8-group": group}[format]
    codes, scales, _ = literal_int_groups(w.numpy().reshape(-1, columns), columns, 8)
    assert stored_bytes(stored.codes) == codes and stored.codes.data.dtype == torch.int8
    assert np.array_equal(stored.scales.data.numpy(), scales)
    signed = [c - 256 if c >= 128 else c for c in codes]
    expected = np.array([F32(F32(c) * s) for c, s in zip(signed, np.repeat(scales, columns))], dtype=F32)
    assert np.array_equal(stored.dequantize().numpy().reshape(-1), expected)


def literal_nf4(flat: np.ndarray, block: int):
    """bitsandbytes' blockwise NF4: absmax per block, x * (1 / absmax) in float32, the level
    reached by walking up while above each float32 midpoint; high nibble first."""
    codes, absmaxes = [], []
    for start in range(0, len(flat), block):
        part = [F32(v) for v in flat[start : start + block]]
        absmax = max(abs(v) for v in part)
        absmaxes.append(absmax)
        inverse = F32(F32(1.0) / (absmax if absmax > 0 else F32(1)))
        for v in part:
            x, code = F32(v * inverse), 0
            for i in range(15):
                if x > F32((NF4_LEVELS[i] + NF4_LEVELS[i + 1]) / 2):
                    code = i + 1
            codes.append(code)
    return codes, np.array(absmaxes, dtype=F32)


@pytest.mark.parametrize("shape,block", [((6, 64), 64), ((5, 27), 64), ((7, 9), 32)])
def test_nf4_equals_a_literal_bitsandbytes_packer(shape, block):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=g)
    w.view(-1)[:block] = 0.0
    stored = quantize_tensor(w, "nf4", block_size=block)
    codes, absmax = literal_nf4(w.numpy().reshape(-1), block)
    assert stored_bytes(stored.codes) == literal_pack(codes, low_first=False)
    assert np.array_equal(stored.scales.data.numpy(), absmax)
    levels = [F32(v) for v in NF4_LEVELS]
    expected = np.array([F32(levels[c] * a) for c, a in zip(codes, np.repeat(absmax, block))], dtype=F32)
    assert np.array_equal(stored.dequantize().numpy().reshape(-1), expected)


MX = {"mxfp8": ("fp8-e4m3", ml_dtypes.float8_e4m3fn, 8), "mxfp6": ("fp6-e2m3", ml_dtypes.float6_e2m3fn, 2), "mxfp4": ("fp4-e2m1", ml_dtypes.float4_e2m1fn, 2)}


def literal_mx(w: np.ndarray, reference, emax: int):
    """OCP MX v1.0, section 6.3, block by block of 32: X = 2^(floor(log2(amax)) - emax), the
    elements V / X cast by ml_dtypes after clamping to +-max normal; zero blocks X = 2^-127,
    a NaN/Inf block X = NaN (its elements those of X = 1)."""
    top = float(ml_dtypes.finfo(reference).max)
    scale_codes, element_codes = [], []
    for row in w:
        for start in range(0, len(row), 32):
            block = [float(v) for v in row[start : start + 32]]
            amax = max(abs(v) for v in block)
            if any(math.isnan(v) or math.isinf(v) for v in block):  # (max() skips a NaN)
                e, code = 0, 255
            elif amax == 0:
                e = code = -127
            else:
                mantissa, exponent = math.frexp(amax)  # amax = mantissa 2^exponent, mantissa in [0.5, 1)
                e = min(max(exponent - 1 - emax, -127), 127)
                code = e
            scale_codes.append(code + 127 if code != 255 else 255)
            for v in block:
                x = v / 2.0**e
                x = x if math.isnan(x) else min(max(x, -top), top)
                element_codes.append(int(np.array([x], dtype=np.float64).astype(reference).view(np.uint8)[0]))
    return element_codes, scale_codes


@pytest.mark.parametrize("format", list(MX))
def test_mx_blocks_equal_a_literal_per_block_implementation(format):
    element, reference, emax = MX[format]
    w = weights(rows=8, columns=64, seed=2)
    w[2, 32:] = torch.logspace(-45, -38, 32)  # float32 subnormals: the scale at its floor
    w[3, :32] = 1e30  # a scale near the top
    w[4, 5] = math.inf
    w[5, 40] = math.nan
    w[6, :32] = torch.tensor([447.0, 464.0, 500.0, -511.0] * 8)  # amax above max normal: saturates
    stored = quantize_tensor(w, format)
    codes, scales = literal_mx(w.numpy(), reference, emax)
    assert stored.codes.codes().tolist() == codes and stored.codes.format == element
    assert stored.scales.codes().tolist() == scales and stored.scales.format == "e8m0"
    # the scale codes are ml_dtypes' E8M0 of 2^e
    finite = [s for s in scales if s != 255]
    assert finite == [int(np.array([2.0 ** (s - 127)], dtype=np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)[0]) for s in finite]
    elements = np.array(codes, dtype=np.uint8).view(reference).astype(np.float32)
    scale_values = np.array(scales, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    expected = (elements.reshape(-1, 32) * scale_values.reshape(-1, 1)).reshape(-1)
    ours = stored.dequantize().numpy().reshape(-1)
    assert np.array_equal(np.isnan(ours), np.isnan(expected)) and np.array_equal(ours[~np.isnan(ours)], expected[~np.isnan(expected)])
    assert np.isnan(ours.reshape(8, 2, 32)[4, 0]).all() and np.isnan(ours.reshape(8, 2, 32)[5, 1]).all()


@pytest.mark.parametrize("format,reference", [("fp8-e4m3", ml_dtypes.float8_e4m3fn), ("fp8-e5m2", ml_dtypes.float8_e5m2)])
def test_fp8_with_and_without_a_channel_scale(format, reference):
    w = weights()
    plain = quantize_tensor(w, format)
    assert plain.codes.data.dtype == get_element(format).dtype and plain.scales is None
    assert plain.codes.codes().tolist() == w.numpy().reshape(-1).astype(reference).view(np.uint8).tolist()
    assert np.array_equal(plain.dequantize().numpy(), w.numpy().astype(reference).astype(F32))
    scaled = quantize_tensor(w, format, per_channel=True)
    top = F32(ml_dtypes.finfo(reference).max)
    codes, scales = [], []
    for row in w.numpy():
        amax = max(abs(F32(v)) for v in row)
        scale = F32(amax / top) if amax > 0 else F32(1)
        scales.append(scale)
        codes += [int(np.array([min(max(F32(v / scale), -top), top)], dtype=F32).astype(reference).view(np.uint8)[0]) for v in row]
    assert scaled.codes.codes().tolist() == codes
    assert np.array_equal(scaled.scales.data.numpy(), np.array(scales, dtype=F32))
    values = np.array(codes, dtype=np.uint8).view(reference).astype(F32).reshape(w.shape)
    assert np.array_equal(scaled.dequantize().numpy(), values * np.array(scales, dtype=F32)[:, None])


@pytest.mark.parametrize("format", ["float16", "bfloat16", "float32"])
def test_casts(format):
    w = weights()
    dtype = getattr(torch, format)
    stored = quantize_tensor(w, format)
    assert torch.equal(stored.codes.data, w.to(dtype).reshape(-1)) and torch.equal(stored.dequantize(), w.to(dtype).float())


def bit_mask(position: int, dtype: torch.dtype) -> torch.Tensor:
    """1 << position as an integer of ``dtype`` (the top bit of a signed type: its minimum)."""
    width = torch.iinfo(dtype).bits
    value = 1 << position
    if dtype != torch.uint8 and value >= 1 << (width - 1):
        value -= 1 << width
    return torch.tensor(value, dtype=dtype)


CASES = [
    ("float16", {}), ("bfloat16", {}), ("int8", {}), ("int8-channel", {}), ("int8-group", {"group_size": 32}),
    ("int4", {"group_size": 32}), ("int4", {"group_size": 64, "asymmetric": True}), ("nf4", {}),
    ("fp8-e4m3", {}), ("fp8-e5m2", {"per_channel": True}), ("mxfp8", {}), ("mxfp6", {}), ("mxfp4", {}),
]  # fmt: skip


def test_the_cases_cover_every_quantiser():
    assert {f for f, _ in CASES} | {"float32"} == set(QUANTIZERS)


@pytest.mark.parametrize("format,options", CASES)
def test_every_bit_of_every_field_flipped_on_the_integer_view_changes_exactly_that_bit(format, options):
    w = weights(rows=4, columns=64)
    stored = quantize_tensor(w, format, **options)
    for name, field in stored.fields.items():
        before_codes = field.codes()
        entries = sorted({0, 1, field.count // 2, field.count - 1} & set(range(field.count)))
        for entry in entries:
            for bit in range(field.bits):
                flipped = field.with_codes(before_codes)  # a copy of the stored tensor
                view = flipped.integer_view().reshape(-1)
                index, position = flipped.locate(torch.tensor([entry]), torch.tensor([bit]))
                view[index] ^= bit_mask(int(position), view.dtype)
                raw_before = field.data.reshape(-1).view(torch.uint8).numpy()
                raw_after = flipped.data.reshape(-1).view(torch.uint8).numpy()
                assert np.unpackbits(raw_before ^ raw_after).sum() == 1, (format, name, entry, bit)
                after_codes = flipped.codes()
                diff = (after_codes ^ before_codes).nonzero().reshape(-1).tolist()
                assert diff == [entry] and int(after_codes[entry] ^ before_codes[entry]) == 1 << bit, (format, name, entry, bit)
                # and the stored tensor decodes the new code
                changed = stored.with_field(name, flipped).dequantize()
                if name == "codes" and stored.scales is None:
                    value = get_element(field.format).decode(after_codes[entry : entry + 1]).to(torch.float32)
                    got = changed.reshape(-1)[entry : entry + 1]
                    assert torch.equal(got.isnan(), value.isnan()) and (value.isnan().all() or torch.equal(got, value))


def test_padding_is_stored_and_dropped():
    w = torch.randn(3, 27)
    stored = quantize_tensor(w, "int4", group_size=32, pad=True)
    assert stored.layout["padded_columns"] == 32 and stored.codes.count == 3 * 32 and stored.scales.count == 3
    assert stored.dequantize().shape == w.shape
    codes = stored.codes.codes().reshape(3, 32)
    assert (codes[:, 27:] == 0).all()
    mx = quantize_tensor(w, "mxfp4", pad=True)
    assert mx.codes.count == 96 and mx.dequantize().shape == w.shape


@pytest.mark.parametrize(
    "tensor,format,options,error,message",
    [
        (torch.randn(4, 27), "int4", {"group_size": 32}, ParamCorruptError, r"^group size 32 of int4 does not divide the 27 columns of w \(shape \[4, 27\], rows of 27\); give pad=True to append 5 zeros to each row \(32 columns\)$"),
        (torch.randn(4, 3, 3, 3), "mxfp4", {}, ParamCorruptError, r"^group size 32 of mxfp4 does not divide the 27 columns of w"),
        (torch.randn(4, 48), "int8-group", {"group_size": 32}, ParamCorruptError, "does not divide the 48 columns"),
        (torch.randn(3), "int4", {"group_size": 3}, ParamCorruptError, r"^int4 packs two codes per byte: w has an odd number of codes \(3\); give pad=True to add one zero code$"),
        (torch.randn(4, 32), "int3", {}, ParamCorruptError, r"^unknown quantisation format 'int3'; expected one of float32, float16, bfloat16, int8, "),
        (torch.randn(4, 32), "int4", {"groupsize": 32}, ParamCorruptError, r"^unknown option groupsize for format 'int4'; its options: group_size, asymmetric, pad$"),
        (torch.randn(4, 32), "int8", {"group_size": 32}, ParamCorruptError, r"^unknown option group_size for format 'int8'; its options: none$"),
        (torch.randn(4, 32), "int4", {"group_size": 0}, ParamCorruptError, r"^group_size must be a positive integer, got group_size=0$"),
        (torch.randn(4, 32), "nf4", {"block_size": 2.5}, ParamCorruptError, r"^block_size must be a positive integer"),
        (torch.randn(4, 32), "fp8-e4m3", {"per_channel": "yes"}, InputTypeError, r"^per_channel must be True or False"),
        (torch.zeros(0, 32), "int8", {}, ParamCorruptError, r"^w is empty"),
        (torch.ones(4, 32, dtype=torch.int32), "int8", {}, InputTypeError, r"^w must be a floating-point tensor, got torch.int32$"),
    ],
)
def test_bad_input_is_one_clear_line(tensor, format, options, error, message):
    with pytest.raises(error, match=message) as raised:
        quantize_tensor(tensor, format, "w", **options)
    assert "\n" not in str(raised.value)
