"""Codes re-derived from the decoded weights (issue 20, the memory goal): a decoded weight
and its scale (and zero point) determine its code exactly wherever no other code decodes to
the same bits, for every code of every format (NaN, Inf and negative zero codes of FP8/MX
included) under scales from subnormal to huge; the codes the weights do not determine are
kept. The reference is a brute force: every code decoded with numpy float32 arithmetic,
(value - zero) * scale, and the codes grouped by the bits they decode to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import paramcorrupt as pc
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.formats import get_element, quantize_tensor
from paramcorrupt.formats.derive import codes_from_weights, derive_codes

F32 = np.float32

#: format, options, the scales tried (float32 values; MX: every E8M0 code), zero points
CASES = [
    ("int8", {}, [0.0123, 1.0, 3e-39, 1e-30, 2.5e36, 3.3e38], [None]),
    ("int8-channel", {}, [0.5, 1e-41], [None]),
    ("int8-group", {"group_size": 32}, [0.07, 7e-45], [None]),
    ("int4", {"group_size": 32}, [0.3, 1.0, 2e-40, 6e37], [None]),
    ("int4", {"group_size": 32, "asymmetric": True}, [0.3, 1e-39, 5e37], [0, 7, 15]),
    ("nf4", {}, [0.37, 1.0, 0.0, 1e-40, 3.4e38], [None]),
    ("fp8-e4m3", {}, [None], [None]),
    ("fp8-e5m2", {}, [None], [None]),
    ("fp8-e4m3", {"per_channel": True}, [0.01, 1.0, 1e-41, 3e35, 1e38], [None]),
    ("fp8-e5m2", {"per_channel": True}, [0.02, 1e-44], [None]),
    ("mxfp8", {}, list(range(256)), [None]),
    ("mxfp6", {}, list(range(256)), [None]),
    ("mxfp4", {}, list(range(256)), [None]),
    ("float16", {}, [None], [None]),
    ("bfloat16", {}, [None], [None]),
]


def decoded_bits(values: np.ndarray, scale: float | None, zero: float | None) -> np.ndarray:
    """numpy float32: (value - zero) * scale, as uint32 bits (NaN payloads kept)."""
    v = values.astype(F32)
    if zero is not None:
        v = (v - F32(zero)).astype(F32)
    if scale is not None:
        v = (v * F32(scale)).astype(F32)
    return v.view(np.uint32)


def stored_with(format: str, options: dict, codes: torch.Tensor, scale, zero):
    """A stored tensor of one row holding ``codes``, every scale ``scale`` (MX: an E8M0 code)
    and every zero point ``zero``."""
    st = quantize_tensor(
        torch.randn(1, codes.numel(), generator=torch.Generator().manual_seed(0)), format, **options
    )
    st = st.with_field("codes", st.codes.with_codes(codes))
    if st.scales is not None:
        field = st.scales
        code = (
            scale
            if field.format == "e8m0"
            else int(get_element("float32").encode(torch.tensor([scale]))[0])
        )
        st = st.with_field(
            "scales", field.with_codes(torch.full((field.count,), code, dtype=torch.long))
        )
    if st.zero_points is not None:
        st = st.with_field(
            "zero_points",
            st.zero_points.with_codes(torch.full((st.zero_points.count,), zero, dtype=torch.long)),
        )
    return st


@pytest.mark.parametrize(
    "format,options,scales,zeros",
    CASES,
    ids=[f"{c[0]}{'-' + '-'.join(c[1]) if c[1] else ''}" for c in CASES],
)
def test_every_code_is_derived_from_its_decoded_weight_or_kept(format, options, scales, zeros):
    element = get_element(_codes_element(format, options))
    n_codes = 1 << element.bits
    everything = torch.arange(n_codes)
    table = (
        element.decode(everything).float().numpy()
    )  # every code's value (tested against ml_dtypes elsewhere)
    length = max(n_codes, 64)
    codes = everything.repeat(length // n_codes)
    determined_total = kept_total = 0
    for scale in scales:
        for zero in zeros:
            st = stored_with(format, options, codes, scale, zero)
            scale_value = None if st.scales is None else float(st.scales.values()[0])
            zero_value = None if st.zero_points is None else float(st.zero_points.values()[0])
            bits = decoded_bits(table, scale_value, zero_value)
            # the brute force: a code is determined where no other code decodes to its bits
            _, inverse, counts = np.unique(bits, return_inverse=True, return_counts=True)
            unique_code = torch.from_numpy(counts[inverse] == 1)[codes]
            weights = st.dequantize()
            assert np.array_equal(
                weights.numpy().reshape(-1).view(np.uint32), bits[codes.numpy()]
            )  # our decode = numpy's
            derived = codes_from_weights(st, weights, torch.arange(st.codes.entries), check=False)
            assert torch.equal(derived[unique_code], codes[unique_code]), (format, scale, zero)
            lean = derive_codes(st, weights)
            if lean.codes.derived:
                assert torch.equal(lean.codes.codes(), codes), (
                    format,
                    scale,
                    zero,
                )  # kept where not determined
                assert set(lean.kept[0].tolist()) <= set(
                    (~unique_code).nonzero().reshape(-1).tolist()
                )
                kept_total += lean.kept[0].numel()
            else:  # too many kept: the codes stay held
                assert (
                    lean is st
                    and (~unique_code).sum() * 16
                    > lean.codes.data.numel() * lean.codes.data.element_size() / 8
                )
            determined_total += int(unique_code.sum())
    assert determined_total > 0
    assert kept_total == KEPT.get((format, tuple(options)), kept_total)


#: codes kept over every scale of a case whose products neither overflow nor underflow into
#: another code's value: none (a field that stays held, MX under the NaN scale, counts none)
KEPT = {
    ("int8-channel", ()): 0,
    ("int8-group", ("group_size",)): 0,
    ("nf4", ()): 0,
    ("mxfp6", ()): 0,
    ("mxfp4", ()): 0,
}


def _codes_element(format: str, options: dict) -> str:
    return quantize_tensor(torch.ones(1, 64), format, **options).codes.format


def test_the_ambiguous_codes_are_the_nan_codes_and_overflows_by_hand():
    """By hand: FP8 e4m3 has two NaN codes (S.1111.111) and e5m2 six (S.11111.{01,10,11});
    each decodes to one float32 NaN, so one of each pair (or set) cannot come back."""
    for format, nan_codes in (
        ("fp8-e4m3", {0x7F, 0xFF}),
        ("fp8-e5m2", {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}),
    ):
        table = get_element(format).decode(torch.arange(256)).numpy()
        assert set(np.isnan(table).nonzero()[0].tolist()) == nan_codes
        codes = torch.cat(
            [torch.arange(256), torch.zeros(8192 - 256, dtype=torch.long)]
        )  # room for 64 kept codes
        st = stored_with(format, {}, codes, None, None)
        weights = st.dequantize()
        derived = codes_from_weights(st, weights, torch.arange(8192), check=False)
        wrong = set((derived != codes).nonzero().reshape(-1).tolist())
        assert (
            wrong < nan_codes and len(wrong) == len(nan_codes) - 1
        )  # one NaN code comes back, the others not
        lean = derive_codes(st, weights)
        assert (
            lean.codes.derived
            and set(lean.kept[0].tolist()) == wrong
            and torch.equal(lean.codes.codes(), codes)
        )
        assert lean.held_bytes == 16 * len(wrong)
    # too many kept (a fifth of the entries): the codes stay held
    st = stored_with("fp8-e5m2", {}, torch.tensor([0x7D, 0x7E, 0x7F, 0x01, 0x02] * 64), None, None)
    assert derive_codes(st, st.dequantize()) is st
    # negative zero and the infinities come back from the weights alone
    st = stored_with("fp8-e5m2", {}, torch.tensor([0x00, 0x80, 0x7C, 0xFC] * 16), None, None)
    lean = derive_codes(st, st.dequantize())
    assert lean.kept[0].numel() == 0 and lean.codes.codes()[:4].tolist() == [0x00, 0x80, 0x7C, 0xFC]


def test_quantize_holds_no_codes_and_the_model_restores_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for fmt, options in (
        ("int8", {}),
        ("int4", {"group_size": 32, "asymmetric": True}),
        ("nf4", {}),
        ("mxfp4", {}),
        ("fp8-e4m3", {}),
    ):
        q = pc.quantize(model, fmt, restorable="file", **options)
        assert q.originals is None and q.offload is not None
        for name, st in q.items():
            assert st.codes.derived and st.codes.data.device.type == "meta"
            held = sum(
                f.data.numel() * f.data.element_size() for k, f in st.fields.items() if k != "codes"
            )
            assert st.held_bytes == held + 16 * st.kept[0].numel()
            assert torch.equal(st.dequantize(), dict(model.named_parameters())[name])
        assert q.held_bytes < 0.1 * sum(p.numel() * 4 for p in model.parameters())
        q.restore(model)
        for n, p in model.named_parameters():
            assert torch.equal(p.view(torch.int32), before[n].view(torch.int32)), (fmt, n)


def test_a_weight_changed_after_quantize_is_refused_not_derived_to_a_wrong_code():
    model = nn.Linear(64, 4)
    q = pc.quantize(model, "int8")
    with torch.no_grad():
        model.weight[1, 2] += 1e-3
    with pytest.raises(
        ParamCorruptError,
        match=r"^'weight' holds .* at flat index 66, which is not the decoded value of its stored int8 code",
    ):
        pc.faults.stored_faults(model, q, [("weight", "codes", 66, 0)])
    with pytest.raises(ParamCorruptError, match="restorable must be True, 'file' or False"):
        pc.quantize(model, "int8", restorable="disk")


def test_file_restore_puts_back_inf_nan_and_negative_zero_and_quantized_accepts_it():
    model = nn.Linear(64, 4)
    with torch.no_grad():
        model.weight[0, :4] = torch.tensor([float("inf"), float("nan"), -0.0, -float("inf")])
    before = model.weight.detach().clone()
    with pc.quantized(model, "fp8-e5m2", restorable="file") as q:
        assert q.offload is not None and q["weight"].codes.derived
        fault = pc.faults.stored_faults(model, q, [("weight", "codes", 5, 6)])
        with pc.corrupted(model, fault):
            pass
    assert torch.equal(model.weight.view(torch.int32), before.view(torch.int32))
    with pytest.raises(ParamCorruptError, match="quantized.. restores the float weights on exit"):
        with pc.quantized(model, "int8", restorable=False):
            pass
