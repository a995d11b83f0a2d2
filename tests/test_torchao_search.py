"""The bit search on torchao weights in place (issue 20, point 4 on torchao models), and the
L_p corruptions refused on them in one line (issue 20, the torchao gaps).

The references are literal: every stored bit of every torchao weight (``qdata``, ``scale``,
``zero_point``) flipped on a numpy copy of torchao's fields, the weight dequantised by hand
((q - zp) * s over torchao's ``block_size``), the first-order score sum(g * dw) with g the
gradient of a plain float copy of the model whose weights are those dequantised by hand;
and torchao's own evaluation of the model with the flips written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import paramcorrupt as pc
from paramcorrupt import ParamCorruptError, classification_loss, corrupted, evaluate, select
from paramcorrupt.faults import bit_search
from paramcorrupt.faults.search_torchao import TorchaoSearchImage
from paramcorrupt.formats.torchao import is_torchao_tensor

pytestmark = pytest.mark.slow  # importing torchao takes several seconds


@pytest.fixture(scope="module")
def ao():
    return pytest.importorskip(
        "torchao.quantization",
        reason="torchao is not installed (pip install 'paramcorrupt[torchao]')",
    )


CONFIGS = {
    "int8-weight-only": lambda q: q.Int8WeightOnlyConfig(),
    "float8-weight-only": lambda q: q.Float8WeightOnlyConfig(),
    "intx-int4-weight-only": lambda q: q.IntxWeightOnlyConfig(
        weight_dtype=torch.int4, granularity=q.PerGroup(4)
    ),
}


def quantised_model(ao, config: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    ao.quantize_(model, CONFIGS[config](ao))
    return model


def data(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 16, generator=g), torch.randint(0, 5, (32,), generator=g))]


def snapshot(model: nn.Module) -> dict[str, np.ndarray]:
    """Every stored tensor as raw bytes (numpy copies)."""
    out = {}
    for name, p in model.named_parameters():
        tensors = (
            {f: getattr(p, f) for f in p.__tensor_flatten__()[0]}
            if is_torchao_tensor(p)
            else {"": p}
        )
        for field, t in tensors.items():
            if t is not None:
                out[f"{name}.{field}"] = (
                    t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().copy()
                )
    return out


def by_hand(fields: dict[str, np.ndarray], block: list[int]) -> np.ndarray:
    """(q - zp) * s in float32, s and zp expanded over block_size."""

    def expand(a):
        for dim, size in enumerate(block):
            a = np.repeat(a, size, axis=dim)
        return a

    q = fields["qdata"].astype(np.float32)
    if fields.get("zero_point") is not None:
        q = q - expand(fields["zero_point"].astype(np.float32))
    return (q * expand(fields["scale"].astype(np.float32))).astype(np.float32)


def numpy_fields(weight) -> dict[str, np.ndarray]:
    """torchao's fields as numpy arrays: qdata as its float values (float8 via float32),
    integers as they are."""
    out = {}
    for name in weight.__tensor_flatten__()[0]:
        t = getattr(weight, name)
        if t is None:
            continue
        out[name] = (
            (t.float() if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t)
            .detach()
            .numpy()
            .copy()
        )
    return out


def flipped_field(weight, name: str, element: int, bit: int) -> np.ndarray:
    """The field ``name`` with one bit flipped on its raw bytes (numpy), as numpy values."""
    t = getattr(weight, name).detach()
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().copy()
    width = t.element_size()
    raw[element * width + bit // 8] ^= np.uint8(1 << (bit % 8))  # little endian
    back = torch.from_numpy(raw).view(t.dtype).reshape(t.shape)
    return (back.float() if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else back).numpy()


def float_gradient(model: nn.Module, batches) -> dict[str, np.ndarray]:
    """The gradient of a float copy whose linear weights are torchao's dequantised by hand."""
    plain = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)).eval()
    with torch.no_grad():
        for i in (0, 2):
            w = model[i].weight
            plain[i].weight.copy_(torch.from_numpy(by_hand(numpy_fields(w), list(w.block_size))))
            plain[i].bias.copy_(model[i].bias)
    x, y = batches[0]
    loss = nn.functional.cross_entropy(plain(x), y)
    loss.backward()
    return {f"{i}.weight": plain[i].weight.grad.double().numpy() for i in (0, 2)}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_first_ranking_equals_a_literal_brute_force_over_every_stored_bit(ao, config):
    model, batches = quantised_model(ao, config), data()
    grads = float_gradient(model, batches)
    image = TorchaoSearchImage(dict(model.named_parameters()), "any")
    ours_g = image.gradient(model, batches, classification_loss, select(model))
    for name, weight in image.tensors.items():
        assert np.allclose(ours_g[name].double().numpy(), grads[name], rtol=1e-5, atol=1e-7)
        fields, block = numpy_fields(weight), list(weight.block_size)
        now = by_hand(fields, block).astype(np.float64)
        literal = []
        for field in fields:
            t = getattr(weight, field)
            for element in range(t.numel()):
                for bit in range(t.element_size() * 8):
                    changed = dict(fields, **{field: flipped_field(weight, field, element, bit)})
                    with np.errstate(all="ignore"):
                        score = float(
                            (grads[name] * (by_hand(changed, block).astype(np.float64) - now)).sum()
                        )
                    if not np.isnan(score):
                        literal.append((score, (name, field, element, bit)))
        literal.sort(key=lambda t: -t[0])
        ranked = image.ranked(name, torch.from_numpy(grads[name]), None, 8)
        assert [f for _, f in ranked][:3] == [f for _, f in literal][:3], (
            name,
            ranked[:3],
            literal[:3],
        )
        assert np.allclose([s for s, _ in ranked], [s for s, _ in literal[:8]], rtol=1e-6)
        # k_top: the code bits of the k weights of largest |g| alone; every scale bit stays in
        k = 5
        top = set(np.argsort(-np.abs(grads[name]).reshape(-1), kind="stable")[:k].tolist())
        for _, (_, field, element, _) in image.ranked(name, torch.from_numpy(grads[name]), k, 1000):
            assert field != "qdata" or element in top


@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_search_writes_torchaos_own_fields_and_restores_bit_for_bit(ao, config):
    model, batches = quantised_model(ao, config), data()
    before = snapshot(model)
    weights = select(model, ["0.weight", "2.weight"])
    search = bit_search(model, batches, classification_loss, weights, flips=3, fields=("codes",))
    assert snapshot(model).keys() == before.keys()
    assert all(
        np.array_equal(before[k], v) for k, v in snapshot(model).items()
    )  # the search left it as it was
    assert len(search.flips) == 3 and search.losses[3] > search.losses[0]
    for m in (1, 2, 3):
        fault = search.corruption(m)
        with corrupted(model, fault):
            # torchao's own forward with the flipped integers gives the loss the search recorded
            assert evaluate(model, batches, classification_loss)["loss"] == pytest.approx(
                search.losses[m], rel=1e-6
            )
        assert all(np.array_equal(before[k], v) for k, v in snapshot(model).items())
    # every flip is one stored bit of torchao's fields, changed on the raw bytes
    fault = search.corruption(3)
    with corrupted(model, fault):
        after = snapshot(model)
    diff = sum(int(np.unpackbits(before[k] ^ after[k]).sum()) for k in before)
    assert diff == 3 and all(f[1] == "qdata" for f in search.flips)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_with_the_scales_in_reach_one_scale_flip_destroys_the_model(ao, config):
    model, batches = quantised_model(ao, config), data()
    search = bit_search(model, batches, classification_loss, select(model), flips=2)
    assert search.flips[0][1] == "scale" and search.corruption(1).info["scale_faults"] == 1
    assert search.ended or search.losses[-1] > 10 * search.losses[0]


def test_a_sweeps_bit_search_rows_on_a_torchao_model(ao, tmp_path):
    from paramcorrupt.probe import SweepConfig, sweep

    model, batches = quantised_model(ao, "int8-weight-only"), data()
    before = snapshot(model)
    config = SweepConfig(
        methods=["bit-search"], settings={"bit-search": {"flips": [1, 2], "k_top": [4]}}
    )
    rows = sweep(
        model,
        config,
        batches,
        batches,
        classification_loss,
        groups={"all": select(model)},
        progress=False,
    )
    assert [r["flips"] for r in rows] == [1, 2] and [r["k_top"] for r in rows] == [4, 4]
    assert all(
        not r["loss_after"] <= r["loss_before"] for r in rows
    )  # higher, or NaN: a scale's exponent bit
    assert rows[0]["scale_faults"] == 1 and rows[0]["zero_point_faults"] == 0
    assert all(np.array_equal(before[k], v) for k, v in snapshot(model).items())


# -- L_p corruptions on torchao weights: one line, before anything changes ------------------------


@pytest.mark.parametrize(
    "method", ["random", "gradient", "iterative", "relative-random", "relative-gradient"]
)
def test_lp_methods_on_torchao_weights_are_one_clear_line_before_anything_changes(
    ao, method, tmp_path
):
    from paramcorrupt.probe import ResultsStore, SweepConfig, sweep

    model, batches = quantised_model(ao, "int8-weight-only"), data()
    before = snapshot(model)
    path = tmp_path / "rows.jsonl"
    message = (
        rf"^parameter '0.weight' is a torchao Int8Tensor: the '{method}' corruption needs float weights, and a torchao "
        r"weight holds codes and scales; what works on it: bit faults in place \(bitflip, stuck-at, bit-search\), "
        r"or leave it out of the group$"
    )
    with pytest.raises(ParamCorruptError, match=message):
        sweep(model, SweepConfig(methods=[method], eps_values=[1e-3]), batches, batches, classification_loss,
              groups={"all": select(model)}, store=ResultsStore(path), progress=False)  # fmt: skip
    assert not path.exists()
    assert all(np.array_equal(before[k], v) for k, v in snapshot(model).items())
    # the plain parameters alone: it runs
    rows = sweep(model, SweepConfig(methods=[method], eps_values=[1e-3]), batches, batches, classification_loss,
                 groups={"biases": select(model, ["0.bias", "2.bias"])}, progress=False)  # fmt: skip
    assert rows and all(np.array_equal(before[k], v) for k, v in snapshot(model).items())


def test_the_data_set_gradient_of_a_torchao_weight_is_one_line(ao):
    model, batches = quantised_model(ao, "float8-weight-only"), data()
    with pytest.raises(
        ParamCorruptError,
        match=r"^parameter '2.weight' is a torchao Float8Tensor: the data set gradient needs",
    ):
        pc.dataset_gradient(model, batches, classification_loss, ["2.weight"])
