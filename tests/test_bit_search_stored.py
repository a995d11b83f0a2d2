"""The bit search on a quantised model's stored image (issue 20, point 4): codes, scales and
zero points ranked by g times the decoded change, the best evaluated exactly.

References kept here: literal decoders of the stored bytes (int4 symmetric and asymmetric low
nibble first, NF4 high nibble first with bitsandbytes' levels written out, MX FP4 with its
E8M0 scale; numpy float32 products), each stored bit flipped by the test's own reading of the
layouts (not ``Field.locate``); the gradient by autograd; each flip's loss by a forward pass
with the literally decoded weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paramcorrupt as pc
from paramcorrupt.errors import InputTypeError, ParamCorruptError
from paramcorrupt.faults import bit_search
from paramcorrupt.faults.search_stored import StoredSearchImage
from paramcorrupt.formats import NF4_LEVELS
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

#: bitsandbytes' NF4 levels (functional.get_4bit_type("nf4")), written out here
LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)  # fmt: skip
FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)

ROWS, COLUMNS = 4, 64
CASES = {
    "int4": ("int4", {"group_size": 32}),
    "int4-asymmetric": ("int4", {"group_size": 32, "asymmetric": True}),
    "nf4": ("nf4", {"block_size": 64}),
    "mxfp4": ("mxfp4", {}),
}


def test_the_nf4_levels_written_here_are_the_packages():
    assert np.array_equal(LEVELS, np.array(NF4_LEVELS, dtype=np.float32))


# -- the literal image: bytes, their flips, their decoding --------------------------------------


def image_of(st) -> dict[str, np.ndarray]:
    """The stored fields as raw memory: uint8 bytes (codes, E8M0 scales, zero points) or
    uint32 words (float32 scales), copied (codes re-derived from the weights where quantize
    does not hold them: Field.held)."""
    out = {}
    for name, field in st.fields.items():
        data = field.held().data.detach().contiguous().reshape(-1)
        width = data.element_size()
        raw = data.view({1: torch.uint8, 4: torch.int32}[width]).numpy().copy()
        out[name] = raw.view(np.uint32) if width == 4 else raw
    return out


def literal_flip(case: str, image: dict[str, np.ndarray], field: str, entry: int, bit: int) -> dict[str, np.ndarray]:
    """A copy of the image with bit ``bit`` of entry ``entry`` of ``field`` flipped, where the
    layouts put it: int4 two per byte low nibble first, nf4 high nibble first, mxfp4 codes
    and zero points one per byte, float32 scales one per word."""
    out = {k: v.copy() for k, v in image.items()}
    raw = out[field]
    if field == "codes" and case.startswith("int4"):
        raw[entry // 2] ^= np.uint8(1 << (bit + 4 * (entry % 2)))
    elif field == "codes" and case == "nf4":
        raw[entry // 2] ^= np.uint8(1 << (bit + (4 if entry % 2 == 0 else 0)))
    else:
        raw[entry] ^= raw.dtype.type(1 << bit)
    return out


def literal_decode(case: str, image: dict[str, np.ndarray]) -> np.ndarray:
    """The flat float32 weights the image decodes to."""
    codes = image["codes"]
    n = ROWS * COLUMNS
    j = np.arange(n)
    if case.startswith("int4"):
        nibble = (codes[j // 2] >> (4 * (j % 2))) & 0xF
        scale = image["scales"].view(np.float32)[(j // COLUMNS) * (COLUMNS // 32) + (j % COLUMNS) // 32]
        if case == "int4":
            return np.where(nibble >= 8, nibble.astype(np.float32) - 16, nibble.astype(np.float32)) * scale
        zero = (image["zero_points"] & 0xF)[(j // COLUMNS) * (COLUMNS // 32) + (j % COLUMNS) // 32]
        return (nibble.astype(np.float32) - zero.astype(np.float32)) * scale
    if case == "nf4":
        nibble = (codes[j // 2] >> np.where(j % 2 == 0, 4, 0)) & 0xF
        return LEVELS[nibble] * image["scales"].view(np.float32)[j // 64]
    code = codes[j] & 0xF
    value = np.where(code & 8, -1.0, 1.0).astype(np.float32) * FP4[code & 7]
    e = image["scales"][(j // COLUMNS) * (COLUMNS // 32) + (j % COLUMNS) // 32].astype(np.int64)
    with np.errstate(over="ignore"):
        scale = np.where(e == 255, np.float32(np.nan), np.ldexp(np.float32(1.0), e - 127).astype(np.float32))
    return value * scale.astype(np.float32)


def every_stored_bit(case: str, st) -> list[tuple[str, int, int]]:
    """(field, entry, bit) of every stored bit (no padding in these shapes)."""
    widths = {"codes": 4, "scales": 8 if case == "mxfp4" else 32, "zero_points": 4}
    return [(f, j, b) for f, field in st.fields.items() for j in range(field.count) for b in range(widths[f])]


def square(case: str, seed: int = 0):
    """A ROWS x COLUMNS weight (so that every layout above applies) and data for it."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(COLUMNS, ROWS, bias=False), nn.Tanh(), nn.Linear(ROWS, 3))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(40, COLUMNS, generator=g)
    y = (x[:, 0] + x[:, 5] > 0).long() + (x[:, 9] > 1).long()
    return model, [(x, y)]


def literal_gradient(model, data, name: str) -> torch.Tensor:
    x, y = data[0]
    param = dict(model.named_parameters())[name]
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), [param])
    return grad.reshape(-1)


def brute_force_ranking(case, st, weights_now, g, k_top=None):
    """Every stored bit's first-order gain Σ g_i Δw_i (Δw from the literal decoding of the
    flipped image), NaN left out, best first; with ``k_top`` the code bits of the k_top
    weights of largest |g| only (the weight index is the code entry here), scales always."""
    image = image_of(st)
    clean = literal_decode(case, image)
    assert np.array_equal(clean.view(np.uint32), weights_now.numpy().view(np.uint32)), "the model holds the decoded image"
    g64 = g.double().numpy()
    allowed = None if k_top is None else set(torch.topk(g.abs(), k_top).indices.tolist())
    out = []
    for field, entry, bit in every_stored_bit(case, st):
        if field == "codes" and allowed is not None and entry not in allowed:
            continue
        flipped = literal_decode(case, literal_flip(case, image, field, entry, bit))
        with np.errstate(invalid="ignore", over="ignore"):
            score = float(np.sum(g64 * (flipped.astype(np.float64) - clean.astype(np.float64))))
        if not math.isnan(score):
            out.append((score, field, entry, bit))
    out.sort(key=lambda t: -t[0])
    return out


# -- the ranking against the brute force ------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("k_top", [None, 5])
def test_the_ranking_equals_a_literal_brute_force_over_every_stored_bit(case, k_top):
    model, data = square(case)
    fmt, options = CASES[case]
    stored = pc.quantize(model, fmt, "0.weight", **options)
    try:
        name = "0.weight"
        st = stored[name]
        g = literal_gradient(model, data, name)
        want = brute_force_ranking(case, st, model[0].weight.detach().reshape(-1), g, k_top)
        top = 24
        image = StoredSearchImage(dict(model.named_parameters()), stored, "any")
        got = image.ranked(name, g, k_top, top)
        assert len(got) == top and len(set(flip for _, flip in got)) == top
        assert [s for s, _ in got] == pytest.approx([s for s, *_ in want[:top]], rel=1e-9)
        for i, (_, flip) in enumerate(got):  # the same flip, or one tied with it to 1e-9 (an order of sums)
            tied = {(name, f, e, b) for s, f, e, b in want if s == pytest.approx(want[i][0], rel=1e-9)}
            assert flip == (name, *want[i][1:]) or flip in tied, (i, flip, want[i])
        exact = sum(flip == (name, *w[1:]) for (_, flip), w in zip(got, want))
        assert exact >= top - 4  # ties are rare: nearly every place is the same flip
        fields = {f for _, f, _, _ in want[:top]}
        assert "scales" in fields  # the scales compete in the ranking
        assert "codes" in fields or case == "mxfp4"
    finally:
        stored.restore(model)


def test_k_top_restricts_the_code_bits_but_every_scale_stays_a_candidate():
    model, data = square("int4")
    stored = pc.quantize(model, "int4", "0.weight", group_size=32)
    g = literal_gradient(model, data, "0.weight")
    image = StoredSearchImage(dict(model.named_parameters()), stored, "any")
    everything = image.ranked("0.weight", g, 1, 10_000)
    top = int(torch.argmax(g.abs()))
    codes = {(e, b) for _, (_, f, e, b) in everything if f == "codes"}
    scales = {(e, b) for _, (_, f, e, b) in everything if f == "scales"}
    assert {e for e, _ in codes} == {top}
    assert len(scales) == len(brute_force_scales(stored["0.weight"], g)) > 200  # all 8 x 32 but NaN ones
    stored.restore(model)


@pytest.mark.parametrize("case", ["int4-asymmetric", "mxfp4"])
def test_fields_codes_ranks_the_code_bits_alone(case):
    model, data = square(case)
    fmt, options = CASES[case]
    stored = pc.quantize(model, fmt, "0.weight", **options)
    g = literal_gradient(model, data, "0.weight")
    want = [t for t in brute_force_ranking(case, stored["0.weight"], model[0].weight.detach().reshape(-1), g) if t[1] == "codes"]
    got = StoredSearchImage(dict(model.named_parameters()), stored, "any", ("codes",)).ranked("0.weight", g, None, 10)
    assert [flip for _, flip in got] == [("0.weight", *t[1:]) for t in want[:10]]
    search = bit_search(model, data, pc.classification_loss, "0.weight", flips=2, stored=stored, fields=["codes"])
    assert all(f[1] == "codes" for f in search.flips) and search.corruption().info["scale_faults"] == 0
    stored.restore(model)


@pytest.mark.parametrize("bad", ["scale", [], ["codes", "weights"], 5])
def test_a_bad_fields_is_one_line(bad):
    model, data = square("int4")
    stored = pc.quantize(model, "int4", "0.weight", group_size=32)
    before = model[0].weight.detach().clone()
    with pytest.raises(ParamCorruptError, match=r"^fields must name stored fields among codes, scales, zero_points, got fields="):
        bit_search(model, data, pc.classification_loss, flips=1, stored=stored, fields=bad)
    assert torch.equal(before, model[0].weight.detach())
    stored.restore(model)


def brute_force_scales(st, g):
    return [t for t in brute_force_ranking("int4", st, st.dequantize().reshape(-1), g) if t[1] == "scales"]


# -- the search itself -----------------------------------------------------------------------------


def exact_losses(case, model, data, st, name="0.weight"):
    """The loss after every single stored-bit flip, each weight tensor literally decoded."""
    x, y = data[0]
    param = dict(model.named_parameters())[name]
    image = image_of(st)
    saved = param.detach().clone()
    out = []
    with torch.no_grad():
        for field, entry, bit in every_stored_bit(case, st):
            flipped = literal_decode(case, literal_flip(case, image, field, entry, bit))
            param.copy_(torch.from_numpy(flipped).reshape(param.shape))
            loss = float(F.cross_entropy(model(x), y))
            out.append((math.inf if math.isnan(loss) else loss, field, entry, bit))
        param.copy_(saved)
    return out


@pytest.mark.parametrize("case", ["int4", "mxfp4"])
def test_the_first_flip_is_the_scale_flip_that_is_by_construction_the_most_damaging(case):
    """Inputs of 1e-3 keep every logit finite: a code flip moves a logit by at most 15 scales x
    1e-3, a scale's top exponent bit (float32 bit 30, E8M0 bit 7) multiplies its block by
    2^128 (or 2^128 / 2^e), and one linear layer passes that on to the loss: the worst single
    flip is one of them, found by brute force."""
    _, data = square(case)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(COLUMNS, ROWS, bias=False))
    x, y = data[0]
    data = [(x * 1e-3, y)]
    fmt, options = CASES[case]
    stored = pc.quantize(model, fmt, "0.weight", **options)
    layer = model[0]
    before = layer.weight.detach().clone()
    try:
        losses = sorted(exact_losses(case, model, data, stored["0.weight"]), key=lambda t: -t[0])
        worst = losses[0]
        assert worst[1] == "scales" and math.isfinite(worst[0]) and worst[0] > 1.01 * losses[1][0] > 0
        assert worst[0] > max(t[0] for t in losses if t[1] == "codes") * 1e3
        for candidates in (1, 3):
            search = bit_search(model, data, pc.classification_loss, "0.weight", flips=2, candidates=candidates, stored=stored)
            assert search.flips[0] == ("0.weight", *worst[1:])
            assert search.losses[1] == pytest.approx(worst[0], rel=1e-5)
            info = search.corruption(1).info
            assert (info["scale_faults"], info["code_faults"]) == (1, 0)
        assert torch.equal(layer.weight.detach().view(torch.int32), before.view(torch.int32))
    finally:
        stored.restore(model)


@pytest.mark.parametrize("case", list(CASES))
def test_the_corruption_writes_the_literal_decoding_of_the_flipped_image_and_restores_bit_exactly(case):
    model, data = square(case, seed=3)
    fmt, options = CASES[case]
    stored = pc.quantize(model, fmt, "0.weight", **options)
    st = stored["0.weight"]
    fields_before = {k: v.copy() for k, v in image_of(st).items()}
    state = {k: v.detach().clone().view(torch.int32) for k, v in model.state_dict().items()}
    try:
        search = bit_search(model, data, pc.classification_loss, None, flips=4, candidates=2, stored=stored)
        assert len(search.flips) == 4 and search.losses == sorted(search.losses)
        for m in (1, 4):
            corruption = search.corruption(m)
            stored_flips = [f for f in search.flips[:m] if len(f) == 4]
            image = image_of(st)
            for _, field, entry, bit in [f for f in stored_flips if f[0] == "0.weight"]:
                image = literal_flip(case, image, field, entry, bit)
            want = literal_decode(case, image)
            kinds = [f[1] for f in stored_flips]
            assert corruption.info["scale_faults"] == kinds.count("scales")
            assert corruption.info["code_faults"] == kinds.count("codes")
            assert corruption.info["zero_point_faults"] == kinds.count("zero_points")
            with pc.corrupted(model, corruption):
                now = model[0].weight.detach().reshape(-1).numpy()
                assert np.array_equal(now.view(np.uint32), want.view(np.uint32))  # NaN payloads included
                loss = pc.evaluate(model, data, pc.classification_loss)["loss"]
                assert loss == pytest.approx(search.losses[m], rel=1e-6) or math.isinf(search.losses[m])
            assert all(torch.equal(state[k], v.detach().view(torch.int32)) for k, v in model.state_dict().items())
        assert all(np.array_equal(fields_before[k], v) for k, v in image_of(st).items())  # the stored tensors untouched
    finally:
        stored.restore(model)


def test_a_quantised_sweeps_bit_search_rows_count_the_flips_in_scales(tmp_path):
    model, data = square("int4")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = SweepConfig(methods=["bit-search"], settings={"bit-search": {"flips": [1, 3], "format": "float32"}},
                         quantize="int4", quantize_options={"group_size": 32, "pad": True})
    rows = sweep(model, config, data, data, pc.classification_loss, {}, groups={"all": pc.select(model)},
                 store=ResultsStore(tmp_path / "q.jsonl"), progress=False)
    assert [r["flips"] for r in rows] == [1, 3]
    stored = pc.quantize(model, "int4", group_size=32, pad=True)
    try:
        direct = bit_search(model, data, pc.classification_loss, flips=3, format="float32", stored=stored)
        for row in rows:
            m = row["flips"]
            info = direct.corruption(m).info
            assert row["search_loss"] == info["search_loss"] == direct.losses[min(m, len(direct.flips))]
            assert row["bit_errors"] == info["bit_errors"] == min(m, len(direct.flips))
            assert (row["code_faults"], row["scale_faults"], row["zero_point_faults"]) == (
                info["code_faults"], info["scale_faults"], info["zero_point_faults"])
            assert row["quantized"] == "int4"
        assert rows[-1]["scale_faults"] >= 1  # on this model the search hits a scale
        if len(direct.flips) < 3:  # a flip made the attack loss Inf: the search ended there
            assert direct.ended and rows[-1]["bit_errors"] == len(direct.flips)
    finally:
        stored.restore(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_bad_stored_input_is_one_clear_line_before_anything_changes():
    model, data = square("int4")
    other, _ = square("int4", seed=9)
    stored = pc.quantize(other, "int4", "0.weight", group_size=32)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with pytest.raises(ParamCorruptError, match=r"^'0.weight' does not hold the decoded values of its stored tensor \(int4\)") as err:
        bit_search(model, data, pc.classification_loss, flips=1, stored=stored)
    assert "\n" not in str(err.value)
    with pytest.raises(InputTypeError, match="stored must map parameter names to StoredTensors"):
        bit_search(model, data, pc.classification_loss, flips=1, stored=[1, 2])
    wide = pc.quantize(nn.Linear(32, 4, bias=False), "int4", group_size=32)
    with pytest.raises(ParamCorruptError, match=r"holds a torch.float32 tensor of shape \[4, 32\].*quantised from another model"):
        bit_search(model, data, pc.classification_loss, "0.weight", flips=1, stored={"0.weight": wide["weight"]})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# -- the digits model stored in int4 (slow) -----------------------------------------------------


@pytest.mark.slow
def test_on_digits_in_int4_the_search_beats_random_flips_of_the_same_count():
    from paramcorrupt.faults import random_bit_faults
    from paramcorrupt.tasks import get_task

    task = get_task("digits")
    model = task.model
    group = pc.select(model, types=("conv", "linear"), kind="weight", name="weights")
    attack = [next(iter(task.gradient_loader))]
    metrics = {"accuracy": pc.accuracy}
    stored = pc.quantize(model, "int4", group_size=32, pad=True)
    try:
        clean = pc.evaluate(model, task.eval_loader, pc.classification_loss, metrics)["accuracy"]
        flips = 3
        search = bit_search(model, attack, pc.classification_loss, group, flips=flips, format="float32", stored=stored)
        with pc.corrupted(model, search.corruption(flips)):
            searched = pc.evaluate(model, task.eval_loader, pc.classification_loss, metrics)["accuracy"]
        randoms = []
        for t in range(5):
            fault = random_bit_faults(model, group, flips=flips, generator=torch.Generator().manual_seed(t), stored=stored)
            with pc.corrupted(model, fault):
                randoms.append(pc.evaluate(model, task.eval_loader, pc.classification_loss, metrics)["accuracy"])
        assert clean > 0.9
        assert searched < min(randoms) and searched < 0.5, (clean, searched, randoms)
    finally:
        stored.restore(model)
