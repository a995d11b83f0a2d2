"""The bit search's ``k_top`` (rank only the bits of each tensor's k weights of largest |g|,
as the Bit-Flip Attack code does) against a literal brute-force ranking kept here: int8 codes
in Python integers, the gradient by autograd, each flip's loss by a forward pass of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt import classification_loss, select
from paramcorrupt.errors import ParamCorruptError
from paramcorrupt.faults import BitSearchFault, bit_search
from paramcorrupt.probe import ResultsStore, SweepConfig, sweep

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Tanh(), nn.Linear(6, 3, bias=False))
    g = torch.Generator().manual_seed(12)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return model, [(x, y)]


def flipped_value(w: torch.Tensor, i: int, bit: int) -> float:
    """Literal int8 per tensor: s = max|w| / 127, q = clamp(round(w / s)), flip the bit of
    q's two's complement byte, decode, times s."""
    flat = w.detach().reshape(-1).double()
    s = float(flat.abs().max()) / 127.0
    q = max(-127, min(127, round(float(flat[i]) / s)))
    u = (q & 0xFF) ^ (1 << bit)
    return (u - 256 if u >= 128 else u) * s


def literal_loss(model, data, name=None, i=None, value=None) -> float:
    x, y = data[0]
    with torch.no_grad():
        param = dict(model.named_parameters())[name] if name else None
        if param is not None:
            old = param.reshape(-1)[i].clone()
            param.reshape(-1)[i] = value
        loss = float(F.cross_entropy(model(x), y))
        if param is not None:
            param.reshape(-1)[i] = old
    return loss


def literal_gradient(model, data) -> dict[str, torch.Tensor]:
    x, y = data[0]
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    return {n: gr.reshape(-1) for n, gr in zip(params, grads)}


def literal_candidates(model, data, k_top) -> dict[str, list[tuple[float, int, int]]]:
    """Per tensor, every (first-order score, index, bit) of its k_top weights of largest |g|
    (sorted by |g| in plain Python; None: every weight), best score first."""
    grads = literal_gradient(model, data)
    out = {}
    for name, param in model.named_parameters():
        g = grads[name].tolist()
        order = sorted(range(len(g)), key=lambda i: -abs(g[i]))
        chosen = order if k_top is None else order[:k_top]
        w = param.detach().reshape(-1).tolist()
        scored = [(g[i] * (flipped_value(param, i, b) - w[i]), i, b) for i in chosen for b in range(8)]
        out[name] = sorted(scored, key=lambda t: -t[0])
    return out


def literal_first_flip(model, data, k_top, candidates):
    """The search's first flip, literally: each tensor's top ``candidates`` by score,
    evaluated exactly; the largest loss wins."""
    best = []
    params = dict(model.named_parameters())
    for name, ranked in literal_candidates(model, data, k_top).items():
        for _, i, b in ranked[:candidates]:
            best.append((literal_loss(model, data, name, i, flipped_value(params[name], i, b)), name, i, b))
    best.sort(key=lambda t: -t[0])
    assert best[0][0] - best[1][0] > 1e-6, "a near tie: the test's model should not have one"
    return best[0]


def test_k_top_one_considers_only_each_tensors_largest_gradient_weight():
    model, data = tiny()
    # every bit of the top weight evaluated exactly: the candidate set is what is tested
    want = literal_first_flip(model, data, k_top=1, candidates=8)
    everything = literal_first_flip(model, data, k_top=None, candidates=8 * 24)
    assert want[1:] != everything[1:], "k_top=1 must exclude the unrestricted best flip here"
    search = bit_search(model, data, classification_loss, flips=1, k_top=1, candidates=8)
    assert search.flips[0] == want[1:]
    assert search.losses[1] == pytest.approx(want[0], rel=1e-5)
    # the ranking itself (candidates=1): each tensor's best first-order bit of its top weight
    want = literal_first_flip(model, data, k_top=1, candidates=1)
    assert bit_search(model, data, classification_loss, flips=1, k_top=1).flips[0] == want[1:]


@pytest.mark.parametrize("k_top", [2, 5])
def test_k_top_k_ranks_the_bits_of_the_top_k_weights_by_gradient(k_top):
    model, data = tiny()
    for candidates in (1, 3, 8 * k_top):
        want = literal_first_flip(model, data, k_top=k_top, candidates=candidates)
        search = bit_search(model, data, classification_loss, flips=1, k_top=k_top, candidates=candidates)
        assert search.flips[0] == want[1:], candidates


def test_k_top_covering_every_weight_is_the_full_ranking():
    model, data = tiny()
    largest = max(p.numel() for p in model.parameters())
    for candidates in (1, 4):
        want = literal_first_flip(model, data, k_top=None, candidates=candidates)
        covering = bit_search(model, data, classification_loss, flips=5, k_top=largest, candidates=candidates)
        default = bit_search(model, data, classification_loss, flips=5, candidates=candidates)
        assert covering.flips[0] == want[1:]
        assert covering.flips == default.flips and covering.losses == default.losses
    # and k_top=1 really is another search on this model
    assert bit_search(model, data, classification_loss, flips=5, k_top=1).flips != default.flips


@pytest.mark.parametrize("bad", [0, -3, 2.5, "ten", True])
def test_a_bad_k_top_is_one_clear_error(bad):
    model, data = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ParamCorruptError, match=r"^k_top must be an integer >= 1 or 'all' \(every weight\), got k_top="):
        bit_search(model, data, classification_loss, flips=1, k_top=bad)
    with pytest.raises(ParamCorruptError, match="k_top must be an integer >= 1"):
        SweepConfig(methods=["bit-search"], settings={"bit-search": {"flips": [1], "k_top": [10, bad]}})
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_k_top_in_a_sweep_keys_only_the_rows_that_set_it(tmp_path):
    assert BitSearchFault(flips=2).key() == "format=int8|bits=any|flips=2|candidates=1|batches=1"
    assert BitSearchFault(flips=2, k_top="all").key() == "format=int8|bits=any|flips=2|candidates=1|batches=1"
    assert BitSearchFault(flips=2, k_top=3).key() == "format=int8|bits=any|flips=2|candidates=1|batches=1|k_top=3"
    model, data = tiny()
    config = SweepConfig(methods=["bit-search"], settings={"bit-search": {"flips": [1, 2], "k_top": [1, None]}})
    rows = sweep(model, config, data, data, classification_loss, {}, groups={"all": select(model)},
                 store=ResultsStore(tmp_path / "k.jsonl"), progress=False)
    assert [r["key"] for r in rows] == [
        "all|bit-search|format=int8|bits=any|flips=1|candidates=1|batches=1|k_top=1|trial=0",
        "all|bit-search|format=int8|bits=any|flips=1|candidates=1|batches=1|trial=0",
        "all|bit-search|format=int8|bits=any|flips=2|candidates=1|batches=1|k_top=1|trial=0",
        "all|bit-search|format=int8|bits=any|flips=2|candidates=1|batches=1|trial=0",
    ]
    assert rows[0]["k_top"] == 1 and "k_top" not in rows[1]
    # each row holds its own search's flips: k_top=1's loss is that of the k_top=1 search
    assert rows[2]["search_loss"] == bit_search(model, data, classification_loss, flips=2, k_top=1).losses[2]
    assert rows[3]["search_loss"] == bit_search(model, data, classification_loss, flips=2).losses[2]


@pytest.mark.parametrize("value, message", [("0", "got k_top=0"), ("-2", "got k_top=-2"), ("ten", "got k_top='ten'")])
def test_a_bad_k_top_from_the_cli_is_one_line_exit_2(tmp_path, capsys, value, message):
    from paramcorrupt.cli import main

    example = Path(__file__).resolve().parents[1] / "examples" / "user_model.py"
    path = tmp_path / "k.jsonl"
    code = main(["probe", "--model", f"{example}:make_model", "--data", f"{example}:make_data", "--quiet",
                 "--fault", "bit-search", "--flips", "1", "--fault-setting", f"k_top={value}", "--out", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "k_top must be an integer >= 1" in err
