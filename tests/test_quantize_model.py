"""paramcorrupt.quantize (issue 20): a model as stored. The weights equal the dequantised
codes, the metric of the quantised model is the deployed model's (against a copy quantised
by a literal reference), the float weights come back bit for bit, bad input changes nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import paramcorrupt
from paramcorrupt import accuracy, classification_loss, evaluate, quantize, quantized
from paramcorrupt.errors import ParamCorruptError


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # rows of 9
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 64),  # rows of 256
        nn.LayerNorm(64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def data(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(3)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def bit_equal(a: dict[str, torch.Tensor], model: nn.Module) -> bool:
    return all(torch.equal(a[n].view(torch.int32), p.detach().view(torch.int32)) for n, p in model.named_parameters())


WEIGHTS = ["0.weight", "4.weight", "7.weight"]


def test_the_root_exports_quantize():
    assert paramcorrupt.quantize is quantize and paramcorrupt.formats.quantize is quantize
    assert {"quantize", "quantized", "quantize_tensor", "StoredTensor", "Quantized"} <= set(paramcorrupt.__all__)


@pytest.mark.parametrize(
    "format,options",
    [("int8", {}), ("int8-channel", {}), ("int4", {"group_size": 32, "pad": True}), ("nf4", {}), ("fp8-e4m3", {}), ("mxfp4", {"pad": True}), ("bfloat16", {})],
)
def test_the_weights_equal_their_dequantised_codes_and_come_back_bit_for_bit(format, options):
    model = small_model()
    before = snapshot(model)
    stored = quantize(model, format, **options)
    assert list(stored) == WEIGHTS and stored.format == format
    params = dict(model.named_parameters())
    for name in WEIGHTS:
        assert torch.equal(params[name], stored[name].dequantize())
        assert not torch.equal(params[name], before[name])
    for name in params:
        if name not in WEIGHTS:  # biases and norms stay float
            assert torch.equal(params[name], before[name])
    stored.restore(model)
    assert bit_equal(before, model)


def test_quantized_restores_on_exit_and_on_an_error():
    model = small_model()
    before = snapshot(model)
    with quantized(model, "int8-channel") as stored:
        assert torch.equal(model[4].weight, stored["4.weight"].dequantize())
    assert bit_equal(before, model)
    with pytest.raises(RuntimeError, match="inside"):
        with quantized(model, "nf4"):
            raise RuntimeError("inside")
    assert bit_equal(before, model)


def test_a_flipped_stored_bit_and_inf_nan_weights_restore_bit_for_bit():
    model = small_model()
    with torch.no_grad():
        model[4].weight[0, :3] = torch.tensor([float("inf"), float("nan"), -0.0])
    before = snapshot(model)
    with quantized(model, "fp8-e5m2") as stored:
        assert torch.isinf(model[4].weight[0, 0]) and torch.isnan(model[4].weight[0, 1])
        field = stored["4.weight"].codes
        field.integer_view().view(-1)[5] ^= 0x40  # a fault in the stored code
    assert bit_equal(before, model)


def literal_int8_channel(weight: torch.Tensor) -> torch.Tensor:
    """Per-row int8, written out with numpy float32: s = amax / 127, round half even."""
    rows = weight.detach().reshape(weight.shape[0], -1).numpy().astype(np.float32)
    out = np.empty_like(rows)
    for i, row in enumerate(rows):
        scale = np.float32(np.abs(row).max() / np.float32(127))
        scale = scale if scale > 0 else np.float32(1)
        codes = np.clip(np.round(row / scale), -127, 127)  # np.round: half to even
        out[i] = (codes * scale).astype(np.float32)
    return torch.from_numpy(out.reshape(weight.shape))


def test_the_quantised_model_gives_the_quantised_accuracy():
    model, batches = small_model(), data()
    float_metrics = evaluate(model, batches, classification_loss, {"accuracy": accuracy})
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in WEIGHTS:
            param = dict(reference.named_parameters())[name]
            param.copy_(literal_int8_channel(param))
    expected = evaluate(reference, batches, classification_loss, {"accuracy": accuracy})
    with quantized(model, "int8-channel"):
        for name in WEIGHTS:
            assert torch.equal(dict(model.named_parameters())[name], dict(reference.named_parameters())[name])
        got = evaluate(model, batches, classification_loss, {"accuracy": accuracy})
    assert got == expected
    assert evaluate(model, batches, classification_loss, {"accuracy": accuracy}) == float_metrics


def test_default_weights_take_matrices_kernels_embeddings_and_attention_not_biases_or_norms():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 32)
            self.attn = nn.MultiheadAttention(32, 2)
            self.norm = nn.LayerNorm(32)
            self.head = nn.Linear(32, 4)

    net = Net()
    names = sorted(quantize(net, "int8").stored)
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "embed.weight", "head.weight"]


def test_groups_choose_the_parameters():
    model = small_model()
    stored = quantize(model, "int8", ["4.*"])
    assert list(stored) == ["4.weight", "4.bias"]


def test_one_way_quantisation_cannot_be_undone():
    model = small_model()
    stored = quantize(model, "int8", restorable=False)
    assert stored.originals is None
    with pytest.raises(ParamCorruptError, match="restorable=False"):
        stored.restore(model)


@pytest.mark.parametrize(
    "format,options,message",
    [
        ("int4", {"group_size": 32}, r"^group size 32 of int4 does not divide the 9 columns of 0.weight \(shape \[4, 1, 3, 3\], rows of 9\); give pad=True"),
        ("mxfp4", {}, "group size 32 of mxfp4 does not divide the 9 columns of 0.weight"),
        ("int5", {}, "unknown quantisation format 'int5'"),
        ("nf4", {"group_size": 64}, "unknown option group_size for format 'nf4'; its options: block_size"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(format, options, message):
    model = small_model()
    before = snapshot(model)
    with pytest.raises(ParamCorruptError, match=message) as raised:
        quantize(model, format, **options)
    assert "\n" not in str(raised.value)
    assert bit_equal(before, model)


def test_a_later_weight_that_fails_the_check_leaves_the_earlier_ones_unchanged():
    model = nn.Sequential(nn.Linear(64, 4), nn.Linear(4, 48))  # 64 columns, then 4
    before = snapshot(model)
    with pytest.raises(ParamCorruptError, match="of 1.weight"):
        quantize(model, "int8-group", group_size=32)
    assert bit_equal(before, model)
