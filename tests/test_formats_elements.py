"""Element formats (issue 20): codes and roundings equal to ml_dtypes, the independent
reference (a registry package, no torch), bit for bit; NF4 and the integers against literal
loops; bit classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.formats import ELEMENTS, NF4_LEVELS, get_element

ml_dtypes = pytest.importorskip("ml_dtypes")

#: our element format -> ml_dtypes' type (names checked in dir(ml_dtypes), version 0.7)
REFERENCE = {
    "fp8-e4m3": ml_dtypes.float8_e4m3fn,
    "fp8-e5m2": ml_dtypes.float8_e5m2,
    "fp6-e2m3": ml_dtypes.float6_e2m3fn,
    "fp6-e3m2": ml_dtypes.float6_e3m2fn,
    "fp4-e2m1": ml_dtypes.float4_e2m1fn,
    "e8m0": ml_dtypes.float8_e8m0fnu,
}


def reference_codes(x: torch.Tensor, name: str) -> np.ndarray:
    """ml_dtypes' cast of float32 values, as integer codes."""
    return x.numpy().astype(np.float32).astype(REFERENCE[name]).view(np.uint8).astype(np.int64)


def reference_values(name: str) -> np.ndarray:
    bits = ELEMENTS[name].bits
    return np.arange(1 << bits, dtype=np.uint8).view(REFERENCE[name]).astype(np.float32)


def same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit patterns, any NaN equal to any NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.uint32) == b.view(np.uint32))))


def edge_values(name: str) -> torch.Tensor:
    """Every value, every midpoint between neighbours (the halfway cases), their float32
    neighbours, the max normal and beyond (overflow), subnormals, signed zeros, Inf, NaN."""
    fmt = ELEMENTS[name]
    v = torch.from_numpy(reference_values(name)).double()
    v = v[torch.isfinite(v)].unique()
    mids = ((v[1:] + v[:-1]) / 2).float()
    top = float(v.max())
    beyond = torch.tensor([top * 1.01, top * 1.0625, top * 1.07, top * 1.125, top * 1.2, top * 2, 3e38])
    tiny = torch.tensor([1e-45, 1e-40, 2.0**-127, 2.0**-128, 1.5 * 2.0**-127, 2.0**-130])
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan])
    base = torch.cat([v.float(), mids, beyond, tiny])
    near = torch.cat([torch.nextafter(base, torch.full_like(base, math.inf)), torch.nextafter(base, torch.zeros_like(base))])
    out = torch.cat([base, -base, near, -near, special])
    assert out.dtype == torch.float32 and fmt.bits <= 8
    return out


def random_values(name: str, n: int = 20000) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(name))
    fmt = ELEMENTS[name]
    scaled = torch.randn(n, generator=g) * fmt.max / 3
    spread = torch.randn(n, generator=g) * torch.pow(2.0, torch.randint(-140, 128, (n,), generator=g).float())
    return torch.cat([scaled, spread])


@pytest.mark.parametrize("name", list(REFERENCE))
def test_every_code_decodes_as_ml_dtypes_does(name):
    ours = ELEMENTS[name].values().numpy()
    assert len(ours) == 1 << ELEMENTS[name].bits
    assert same_floats(ours, reference_values(name))


@pytest.mark.parametrize("name,dtype", [("fp8-e4m3", torch.float8_e4m3fn), ("fp8-e5m2", torch.float8_e5m2)])
def test_torch_float8_dtypes_decode_every_code_as_ml_dtypes(name, dtype):
    torch_values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float().numpy()
    assert same_floats(torch_values, reference_values(name))
    assert ELEMENTS[name].dtype == dtype


@pytest.mark.parametrize("name", list(REFERENCE))
def test_rounding_of_edge_and_random_values_equals_ml_dtypes(name):
    x = torch.cat([edge_values(name), random_values(name)])
    ours = ELEMENTS[name].encode(x).numpy()
    ref = reference_codes(x, name)
    bad = np.nonzero(ours != ref)[0]
    assert bad.size == 0, (x[bad[:5]].tolist(), ours[bad[:5]], ref[bad[:5]])


def test_overflow_is_nan_for_e4m3_inf_for_e5m2_saturation_for_fp6_fp4():
    big = torch.tensor([1e6, -1e6])
    assert torch.isnan(ELEMENTS["fp8-e4m3"].decode(ELEMENTS["fp8-e4m3"].encode(big))).all()
    assert ELEMENTS["fp8-e5m2"].decode(ELEMENTS["fp8-e5m2"].encode(big)).tolist() == [math.inf, -math.inf]
    for name, top in (("fp6-e2m3", 7.5), ("fp6-e3m2", 28.0), ("fp4-e2m1", 6.0)):
        assert ELEMENTS[name].decode(ELEMENTS[name].encode(big)).tolist() == [top, -top]
    # 464 is halfway between 448 and the code above it (NaN): to even, 448
    assert ELEMENTS["fp8-e4m3"].decode(ELEMENTS["fp8-e4m3"].encode(torch.tensor([464.0, 464.01]))).tolist()[0] == 448.0


@pytest.mark.parametrize("name", list(REFERENCE))
def test_saturating_rounding_equals_ml_dtypes_of_the_clamped_value(name):
    fmt = ELEMENTS[name]
    x = torch.cat([edge_values(name), random_values(name)])
    clamped = torch.where(torch.isnan(x), x, x.clamp(-fmt.max, fmt.max))
    assert np.array_equal(fmt.encode(x, saturate=True).numpy(), reference_codes(clamped, name))


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_ieee_formats_are_torch_bit_patterns(name, dtype):
    x = random_values("fp8-e5m2")
    view = {torch.float32: torch.int32}.get(dtype, torch.int16)
    expected = x.to(dtype).view(view).long() & ((1 << ELEMENTS[name].bits) - 1)
    codes = ELEMENTS[name].encode(x)
    assert torch.equal(codes, expected)
    assert torch.equal(ELEMENTS[name].decode(codes).view(view), x.to(dtype).view(view))


def test_integer_formats_round_half_to_even_and_clamp():
    x = torch.tensor([-9.0, -8.5, -7.5, -2.5, -0.5, 0.5, 1.5, 2.5, 6.5, 7.5, 8.0, 100.0])
    for name, low, high in (("int4", -8, 7), ("uint4", 0, 15), ("int8", -128, 127)):
        fmt = ELEMENTS[name]
        expected = []
        for value in x.tolist():  # Python's round is half to even
            q = min(max(round(value), low), high)
            expected.append(q % (1 << fmt.bits))
        assert fmt.encode(x).tolist() == expected
        assert fmt.decode(torch.tensor(expected)).tolist() == [float(min(max(round(v), low), high)) for v in x.tolist()]


def literal_nf4(value: float) -> int:
    """bitsandbytes' rule: walk the levels, move up while the value is above the midpoint
    (a float32 constant) to the next level."""
    code = 0
    for i in range(15):
        midpoint = float(np.float32((NF4_LEVELS[i] + NF4_LEVELS[i + 1]) / 2))
        if value > midpoint:
            code = i + 1
    return code


def test_nf4_levels_and_nearest_level_rounding():
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[7] == 0.0 and NF4_LEVELS[15] == 1.0
    assert list(NF4_LEVELS) == sorted(NF4_LEVELS)
    fmt = get_element("nf4")
    g = torch.Generator().manual_seed(0)
    mids = torch.tensor([(a + b) / 2 for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:])], dtype=torch.float32)
    x = torch.cat([torch.rand(3000, generator=g) * 2 - 1, mids, torch.tensor(NF4_LEVELS, dtype=torch.float32), torch.tensor([-1.5, 1.5])])
    assert fmt.encode(x).tolist() == [literal_nf4(v) for v in x.tolist()]
    assert fmt.decode(torch.arange(16)).tolist() == [float(np.float32(v)) for v in NF4_LEVELS]


def test_bit_classes():
    e4m3 = get_element("fp8-e4m3")
    assert (e4m3.select("sign"), e4m3.select("exponent"), e4m3.select("mantissa"), e4m3.select("msb")) == ((7,), (3, 4, 5, 6), (0, 1, 2), (6,))
    assert get_element("fp4-e2m1").select("exponent") == (1, 2) and get_element("fp6-e3m2").select("mantissa") == (0, 1)
    assert get_element("e8m0").select("exponent") == tuple(range(8)) and get_element("e8m0").select("msb") == (7,)
    assert get_element("int4").select("sign") == (3,) and get_element("nf4").select("msb") == (3,)
    assert get_element("fp6-e2m3").select(5) == (5,) and get_element("uint4").select("any") == (0, 1, 2, 3)
    for name, bits, message in (
        ("e8m0", "sign", "e8m0 has no sign bits"),
        ("e8m0", "mantissa", "e8m0 has no mantissa bits"),
        ("nf4", "exponent", "nf4 has no exponent bits"),
        ("uint4", "sign", "uint4 has no sign bits"),
        ("fp4-e2m1", 4, "bit index 4 is out of range for fp4-e2m1 (0 to 3)"),
        ("int4", "middle", "unknown bit class 'middle'"),
    ):
        with pytest.raises(ParamCorruptError, match=message.replace("(", r"\(").replace(")", r"\)")):
            get_element(name).select(bits)
    with pytest.raises(ParamCorruptError, match="unknown element format 'fp3'"):
        get_element("fp3")
