"""The bit-fault write path (faults/sampler.py `BitFaultSampler._write_bits`, through NumPy
views and through `take`) and its apply / restore (corruption/apply.py, `take`/`put_`)
against literal Python loops: chosen (coordinate, bit) pairs over several tensors, two bits
on one coordinate, tensor boundaries, non-contiguous parameters, stuck-at ops that change
nothing."""

from __future__ import annotations

import struct

import pytest
import torch
from torch import nn

from paramcorrupt import corrupted, select
from paramcorrupt.faults import BitFaultSampler, random_bit_faults


def float_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def model_of_three(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 5))


def literal(params: dict, pairs: list[tuple[int, int]], op: str) -> dict:
    """name -> {flat index: new float32 bits}, by a loop over the pairs one at a time."""
    names, flat = [], []
    for name, p in params.items():
        for i, v in enumerate(p.detach().reshape(-1).tolist()):
            names.append((name, i))
            flat.append(float_bits(v))
    codes = dict(enumerate(flat))
    touched = set()
    for coord, bit in pairs:
        if op == "flip":
            codes[coord] ^= 1 << bit
        elif op == "stuck-1":
            codes[coord] |= 1 << bit
        else:
            codes[coord] &= ~(1 << bit) & 0xFFFFFFFF
        touched.add(coord)
    out: dict = {}
    for coord in sorted(touched):
        if codes[coord] != flat[coord]:
            name, i = names[coord]
            out.setdefault(name, {})[i] = codes[coord]
    return out


@pytest.mark.parametrize("path", ["numpy", "torch"])
@pytest.mark.parametrize("op", ["flip", "stuck-0", "stuck-1"])
def test_write_bits_equals_a_literal_loop(op, path):
    model = model_of_three()
    group = select(model, kind="weight", name="weights")
    params = group.tensors(model)  # 12, 8, 10 weights
    sampler = BitFaultSampler(model, group, op=op)
    assert (sampler._arrays is not None) == (op == "flip")  # a flip in float32: NumPy views
    if path == "torch":
        sampler._arrays = None
    # sorted pairs: coordinate 0, the last of tensor 0 (11) twice (two bits), the first of
    # tensor 2 (20) with three bits, the very last (29); tensor 1 (12..19) untouched
    pairs = [(0, 31), (11, 3), (11, 30), (20, 0), (20, 22), (20, 23), (29, 31)]
    for chosen in (pairs, [pairs[0], pairs[1], pairs[3], pairs[6]]):  # with and without repeats
        coords = torch.tensor([c for c, _ in chosen])
        bit_of = torch.tensor([b for _, b in chosen])
        fault, writes = sampler._write_bits(coords, bit_of)
        want = literal(params, chosen, op)
        got = {
            name: dict(zip(idx.tolist(), [float_bits(v) for v in fault.values[name].tolist()]))
            for name, idx in fault.indices.items()
        }
        assert got == want
        assert fault.info["changed"] == sum(len(v) for v in want.values())
        # the writes hold the values they replace, read from the model
        for write in writes:
            name = next(n for n, p in params.items() if p is write[0])
            old = torch.as_tensor(write[4]).view(torch.float32)
            assert torch.equal(old, params[name].detach().reshape(-1)[torch.as_tensor(write[2])])


def test_many_flips_on_few_weights_flip_exactly_that_many_bits():
    """Collisions of coordinates are common (200 flips among 15 x 32 bits): every drawn
    bit flips once, so the popcounts of old ^ new sum to the count."""
    model = nn.Linear(3, 5, bias=False)
    before = model.weight.detach().clone()
    fault = random_bit_faults(model, flips=200, generator=torch.Generator().manual_seed(1))
    with corrupted(model, fault):
        xor = (
            (model.weight.detach().view(torch.int32) ^ before.view(torch.int32))
            .reshape(-1)
            .tolist()
        )
        flipped = sum(bin(x & 0xFFFFFFFF).count("1") for x in xor)
    assert flipped == 200 == fault.info["bit_errors"]
    assert torch.equal(model.weight.view(torch.int32), before.view(torch.int32))


def test_a_non_contiguous_parameter_is_written_and_restored_at_logical_indices():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight = nn.Parameter(torch.randn(4, 3).t())  # shape (3, 4), strides (1, 3)
    assert not model.weight.is_contiguous()
    before = model.weight.detach().clone()
    fault = random_bit_faults(model, flips=5, bits=31, generator=torch.Generator().manual_seed(0))
    with corrupted(model, fault):
        changed = (model.weight.reshape(-1) != before.reshape(-1)).nonzero().reshape(-1)
        assert changed.tolist() == fault.indices["weight"].tolist()
        # the sign bit, at the logical (row-major) index the fault names
        assert torch.equal(model.weight.reshape(-1)[changed], -before.reshape(-1)[changed])
    assert torch.equal(model.weight.view(torch.int32), before.view(torch.int32))
    assert model.weight.stride() == (1, 3)


def test_no_fault_reads_no_tensor():
    model = model_of_three()
    fault = random_bit_faults(model, flips=0, generator=torch.Generator().manual_seed(0))
    assert fault.indices == {} and fault.info["changed"] == 0 and fault.info["bit_errors"] == 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with corrupted(model, fault):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    ("bits", "allowed"),
    [
        ("sign", 1 << 31),
        ("exponent", 0xFF << 23),
        ("mantissa", (1 << 23) - 1),
        (7, 1 << 7),
        ("any", 0xFFFFFFFF),
    ],
)
def test_drawn_bits_stay_in_their_class(bits, allowed):
    """Every flipped bit of 40 drawn over 20 weights lies in the class (the draw maps
    candidate numbers to bits by a shift, a division or a table, by the class's shape)."""
    model = nn.Linear(4, 5, bias=False)
    before = model.weight.detach().clone()
    fault = random_bit_faults(
        model,
        bits=bits,
        flips=20 if bits in ("sign", 7) else 40,
        generator=torch.Generator().manual_seed(3),
    )
    with corrupted(model, fault):
        xor = (
            (model.weight.detach().view(torch.int32) ^ before.view(torch.int32))
            .reshape(-1)
            .tolist()
        )
    seen = 0
    for x in xor:
        seen |= x & 0xFFFFFFFF
    assert seen & ~allowed == 0
    assert sum(bin(x & 0xFFFFFFFF).count("1") for x in xor) == fault.info["bit_errors"]
    if bits in ("sign", 7):
        assert seen == allowed  # 20 flips of 20 candidates: every one
