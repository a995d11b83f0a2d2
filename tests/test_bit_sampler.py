"""BitFaultSampler: its draws equal random_bit_faults' (same generator, every format, op and
bit class); one trial (`injected`) writes what `corrupted()` writes for those faults and
restores every bit — on exit, on an exception, on KeyboardInterrupt, through Inf/NaN — by
NumPy views or by `put_`; an in-place write is seen by autograd; a replaced storage is
followed; batch-norm statistics are kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramcorrupt import corrupted, select
from paramcorrupt.faults import BitFaultSampler, random_bit_faults


def bits_of(model):
    return {k: v.detach().clone().view(torch.int8 if v.element_size() == 1 else torch.int16 if v.element_size() == 2 else torch.int32)
            for k, v in model.state_dict().items() if v.is_floating_point()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def small(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to(dtype).eval()


CASES = [  # (model dtype, format, op, bits, NumPy views)
    (torch.float32, "float32", "flip", "any", True),
    (torch.float32, "float32", "flip", "exponent", True),
    (torch.bfloat16, "bfloat16", "flip", "any", True),
    (torch.float16, "float16", "flip", "mantissa", True),
    (torch.float32, "float16", "flip", "any", False),
    (torch.float32, "int8", "flip", "any", False),
    (torch.float32, "int8-channel", "flip", "msb", False),
    (torch.float32, "float32", "stuck-1", "any", False),
    (torch.float32, "float32", "stuck-0", "exponent", False),
]


@pytest.mark.parametrize(("dtype", "fmt", "op", "bits", "views"), CASES)
def test_a_trial_writes_what_corrupted_writes_and_restores_every_bit(dtype, fmt, op, bits, views):
    model = small(dtype)
    group = select(model, kind="weight")
    sampler = BitFaultSampler(model, group, format=fmt, op=op, bits=bits)
    assert (sampler._arrays is not None) == views
    before = bits_of(model)
    changed = 0
    for seed in range(12):
        for rate in ({"flips": 1}, {"flips": 7}, {"ber": 0.02}, {"flips": 0}):
            drawn = random_bit_faults(model, group, format=fmt, op=op, bits=bits, generator=torch.Generator().manual_seed(seed), **rate)
            # the sampler's draw is random_bit_faults' (same generator)
            again = sampler(generator=torch.Generator().manual_seed(seed), **rate)
            assert again.info == drawn.info and again.indices.keys() == drawn.indices.keys()
            for name in drawn.indices:
                assert torch.equal(again.indices[name], drawn.indices[name])
                assert torch.equal(again.values[name].view(torch.uint8), drawn.values[name].view(torch.uint8))
            with corrupted(model, drawn):
                want = bits_of(model)
            with sampler.injected(generator=torch.Generator().manual_seed(seed), **rate) as fault:
                assert same(bits_of(model), want)
                assert fault.info == drawn.info
            changed += fault.info["changed"]
            assert same(bits_of(model), before)
    assert changed > 0  # some trial wrote something: the test can fail


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("views", [True, False])
def test_a_trial_that_raises_restores_every_bit_through_inf_and_nan(error, views):
    model = small()
    sampler = BitFaultSampler(model, bits="exponent")
    if not views:
        sampler._arrays = None
    before = bits_of(model)
    nonfinite = 0
    for seed in range(20):
        with pytest.raises(error), sampler.injected(flips=6, generator=torch.Generator().manual_seed(seed)):
            nonfinite += sum(int((~torch.isfinite(p)).sum()) for p in model.parameters())
            raise error()
        assert same(bits_of(model), before)
    assert nonfinite > 0  # exponent flips made Inf/NaN: the restore went through them


def test_an_in_place_write_is_seen_by_autograd():
    """The NumPy write bumps the parameter's version, as PyTorch's own in-place writes do: a
    graph that saved the weight before the fault refuses to back-propagate through it."""
    model = nn.Linear(4, 3)
    sampler = BitFaultSampler(model, "weight")
    assert sampler._arrays is not None
    out = model(torch.randn(2, 4, requires_grad=True)).sum()
    version = model.weight._version
    with sampler.injected(flips=2, generator=torch.Generator().manual_seed(0)):
        assert model.weight._version > version
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.backward(retain_graph=True)
    # gradients at the faulty point work inside the block
    with sampler.injected(flips=2, generator=torch.Generator().manual_seed(0)):
        model.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        assert model.weight.grad is not None


def test_a_replaced_storage_is_followed():
    model = nn.Linear(4, 3)
    sampler = BitFaultSampler(model, "weight")
    with torch.no_grad():
        model.weight.data = torch.randn(3, 4)  # a new storage under the same parameter
    before = model.weight.detach().clone()
    with sampler.injected(flips=3, generator=torch.Generator().manual_seed(0)) as fault:
        idx = fault.indices["weight"]
        assert not torch.equal(model.weight.view(torch.int32).reshape(-1)[idx], before.view(torch.int32).reshape(-1)[idx])
    assert torch.equal(model.weight.view(torch.int32), before.view(torch.int32))


def test_batch_norm_statistics_are_kept_and_a_stored_model_takes_the_general_path():
    from paramcorrupt import quantize

    model = small()
    before = bits_of(model)
    sampler = BitFaultSampler(model, bits="mantissa")
    with sampler.injected(flips=4, generator=torch.Generator().manual_seed(1)):
        model.train()
        model(torch.randn(8, 6))  # updates the running statistics
        model.eval()
    assert same(bits_of(model), before)
    stored = quantize(model, "int8", restorable=True)  # name -> StoredTensor, a Mapping
    try:
        kept = bits_of(model)
        group = select(model, kind="weight")
        sampler = BitFaultSampler(model, group, stored=stored)
        assert not sampler._plain  # a trial goes through corrupted()
        drawn = random_bit_faults(model, group, ber=0.01, stored=stored, generator=torch.Generator().manual_seed(2))
        assert drawn.indices  # the draw hit something
        with corrupted(model, drawn):
            want = bits_of(model)
        with sampler.injected(ber=0.01, generator=torch.Generator().manual_seed(2)):
            assert same(bits_of(model), want)
        assert same(bits_of(model), kept)
    finally:
        stored.restore(model)
    assert same(bits_of(model), before)


def test_a_parameter_moved_to_another_dtype_is_refused_in_one_line():
    model = nn.Linear(4, 3)
    sampler = BitFaultSampler(model, "weight")
    model.half()  # the same Parameter object, a new float16 storage
    with pytest.raises(ValueError, match="'weight' changed its layout, dtype or device"):
        with sampler.injected(flips=3, generator=torch.Generator().manual_seed(0)):
            pass
