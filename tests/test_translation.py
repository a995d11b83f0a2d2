"""The Transformer, its decoding, BLEU and the ``multi30k`` task.

Data-free checks on a toy copy task, and real-data tests (marked ``data``) on Multi30k, read
from ``$PARAMCORRUPT_DATA`` or else ``<repo>/../shared/data`` and skipped, with the path in
the reason, when it is absent.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from paramcorrupt import (
    Constraint,
    corrupted,
    dataset_gradient,
    evaluate,
    gradient_corruption,
    random_corruption,
)
from paramcorrupt.data.multi30k import EOS, TranslationBatches, Vocab
from paramcorrupt.models.transformer import TransformerModel, beam_search, greedy_decode
from paramcorrupt.tasks import TASKS, get_task
from paramcorrupt.tasks.translation import (
    BLEU,
    TranslationLoss,
    bleu_score,
    bleu_stats,
    corpus_bleu,
    transformer_groups_by_position,
    transformer_groups_by_type,
)

needs_multi30k = pytest.mark.data("multi30k/tok/train.lc.norm.tok.de")  # tests/conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def _own_bleu(hyps, refs):
    sums = [0] * 10
    for h, r in zip(hyps, refs):
        sums = [a + b for a, b in zip(sums, bleu_stats(h, r))]
    return bleu_score(sums)


REFS = [
    "a man in an orange hat starring at something .".split(),
    "a boston terrier is running on lush green grass in front of a white fence .".split(),
    "a girl in karate uniform breaking a stick with a front kick .".split(),
]
HYPS = [
    "a man in an orange hat looking at something .".split(),
    "a dog runs on the green grass in front of a white fence .".split(),
    "a girl in a karate uniform breaks a stick with a kick .".split(),
]


def test_bleu_of_references_is_100():
    assert _own_bleu(REFS, REFS) == pytest.approx(100.0)
    assert corpus_bleu(REFS, REFS) == pytest.approx(100.0)


def test_bleu_known_values():
    # hand-computed: 1 hypothesis, 4 of 4 unigrams, 2 of 3 bigrams, 1 of 2 trigrams, 0 of 1 4-gram
    assert bleu_stats("a b c d".split(), "a b c e".split()) == [3, 2, 1, 0, 4, 3, 2, 1, 4, 4]
    assert bleu_score([3, 2, 1, 1, 4, 3, 2, 1, 4, 4]) == pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1) ** 0.25)
    # brevity penalty: a perfect prefix of half the reference's length
    ref = "the quick brown fox jumps over the lazy dog".split()
    assert _own_bleu([ref[:6]], [ref]) == pytest.approx(100 * math.exp(1 - 9 / 6))
    assert _own_bleu([[]], [ref]) == 0.0


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    expected = sacrebleu.corpus_bleu([" ".join(h) for h in HYPS], [[" ".join(r) for r in REFS]], tokenize="none").score
    assert _own_bleu(HYPS, REFS) == pytest.approx(expected, abs=1e-9)
    assert corpus_bleu(HYPS, REFS) == pytest.approx(expected, abs=1e-9)


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = [[int(t) for t in torch.randint(4, 12, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)] for _ in range(n)]
    return src, [list(s) for s in src]  # copy task


def test_beam_one_equals_greedy():
    torch.manual_seed(0)
    model = TransformerModel(12, 12, d_model=16, ffn_dim=32, heads=2, layers=2, dropout=0.0).eval()
    src, _ = _toy(16)
    batch = TranslationBatches(src, src, max_tokens=1000).batches[0]["src"]
    greedy = greedy_decode(model, batch)
    assert greedy == beam_search(model, batch, beam=1)
    assert all(len(g) <= math.ceil(1.5 * len(s[s != 0])) + 10 for g, s in zip(greedy, batch))
    assert len(beam_search(model, batch[:2], beam=4)) == 2


@pytest.mark.parametrize("normalize_before", [False, True])
def test_incremental_decoding_equals_full_decoding(normalize_before):
    torch.manual_seed(0)
    model = TransformerModel(12, 12, d_model=16, ffn_dim=32, heads=2, layers=2, dropout=0.0, normalize_before=normalize_before).eval()
    src = torch.tensor([[4, 5, 6, 0], [7, 8, 9, 10]])
    prefix = torch.tensor([[1, 5, 6, 7], [1, 9, 4, 4]])
    memory, mask = model.encode(src)
    full = model.decode(prefix, memory, mask)
    cache = None
    for step in range(prefix.shape[1]):
        logits, cache = model.decode_step(prefix[:, step], step, memory, mask, cache)
        torch.testing.assert_close(logits, full[:, step], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_copy_task_learns_and_bleu_metric():
    torch.manual_seed(0)
    src, tgt = _toy(128)
    vocab = Vocab([[f"w{i:02d}" for i in range(4, 12)]])  # ids 4..11 are the words w04..w11
    words = [[f"w{t:02d}" for t in s] for s in tgt]
    assert [vocab.encode(w) for w in words] == tgt
    model = TransformerModel(12, 12, d_model=32, ffn_dim=64, heads=2, layers=1, dropout=0.0)
    train = TranslationBatches(src, tgt, max_tokens=256, shuffle=True)
    loss_fn = TranslationLoss(vocab, label_smoothing=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        for batch in train:
            optimizer.zero_grad()
            loss_fn(model, batch).loss.backward()
            optimizer.step()
    model.eval()
    evaluation = TranslationBatches(src[:32], tgt[:32], max_tokens=64, refs=words[:32])
    assert len(evaluation) > 1
    result = evaluate(model, evaluation, loss_fn, {"bleu": BLEU()})
    assert result["bleu"] > 50.0  # untrained: about 0
    assert evaluate(model, evaluation, loss_fn, {"bleu": BLEU()}) == result  # reset each pass
    hyps = [vocab.decode(h) for b in evaluation for h in greedy_decode(model, b["src"])]
    refs = [r for b in evaluation for r in b["refs"]]
    assert result["bleu"] == pytest.approx(corpus_bleu(hyps, refs), abs=1e-6)
    assert Vocab([["a"]]).decode([4, EOS, 4]) == ["a"]


def test_groups_cover_the_layers():
    model = TransformerModel(12, 12, d_model=16, ffn_dim=32, heads=2, layers=2)
    by_type = transformer_groups_by_type(model)
    assert list(by_type) == ["embedding", "attention", "ffn", "layernorm"]
    names = sorted(n for g in by_type.values() for n in g.names)
    assert names == sorted(n for n, _ in model.named_parameters())
    assert "decoder.layers.1.cross_attn.out_proj.weight" in by_type["attention"].names
    by_position = transformer_groups_by_position(model)
    assert list(by_position) == ["encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"]
    assert "multi30k" in TASKS


@pytest.mark.data
@needs_multi30k
def test_task_end_to_end_on_a_slice(data_dir):
    task = get_task(
        "multi30k", data_dir=str(data_dir), model="tiny", limit_train_sentences=300,
        limit_eval_sentences=24, epochs=1, warmup=10, max_tokens=1024,
    )
    model = task.model
    assert task.info["trained"] and task.info["eval_pairs"] == 24
    batch = next(iter(task.eval_loader))
    assert set(batch) >= {"src", "tgt_in", "target", "refs"}
    clean = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    assert 0.0 <= clean["bleu"] <= 100.0 and math.isfinite(clean["loss"])
    group = task.groupings["position"](model)["decoder.layers.1"]
    gradient = dataset_gradient(model, task.gradient_loader, task.loss_fn, group)
    base = evaluate(model, task.gradient_loader, task.loss_fn)["loss"]
    with corrupted(model, gradient_corruption(gradient, Constraint(2.0, 1.0), group)):
        assert evaluate(model, task.gradient_loader, task.loss_fn)["loss"] > base
    with corrupted(model, random_corruption(model, Constraint(math.inf, 10.0), generator=torch.Generator().manual_seed(0))):
        destroyed = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    assert 0.0 <= destroyed["bleu"] <= 100.0
    assert evaluate(model, task.eval_loader, task.loss_fn, task.metrics) == clean  # weights restored


@pytest.mark.data
@needs_multi30k
@pytest.mark.slow
def test_probe_and_train_cli(tmp_path, data_dir):
    import subprocess
    import sys

    common = [
        "--task", "multi30k", "--data-dir", str(data_dir), "--threads", "1", "--quiet",
        "--task-option", "model=tiny", "--task-option", "limit_train_sentences=100",
        "--task-option", "limit_eval_sentences=8",
    ]
    probe = [sys.executable, "-m", "paramcorrupt", "probe", *common, "--by", "position", "--methods", "gradient",
             "--p", "2", "--eps", "1", "--n", "100", "--out", str(tmp_path / "p.jsonl")]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "decoder.layers.1" in done.stdout and "bleu" in done.stdout
    train = [sys.executable, "-m", "paramcorrupt", "train", *common, "--epochs", "1", "--method", "plain",
             "--eval-eps", "0.1", "--random-trials", "1", "--out", str(tmp_path / "t")]
    done = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "BLEU" in done.stdout and (tmp_path / "t" / "model.pt").is_file()


@pytest.mark.data
@pytest.mark.slow
@needs_multi30k
def test_reproduce_transformer_smoke(tmp_path, data_dir):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "reproduce_transformer.py"
    command = [sys.executable, str(script), "--smoke", "--out", str(tmp_path), "--data-dir", str(data_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "transformer" / "summary.md").read_text()
    for part in ("## Table 1: multi30k", "## Table 2", "| decoder.layers.1 |", "| layernorm |"):
        assert part in summary
    only = subprocess.run([*command, "--only", "table2"], capture_output=True, text=True, timeout=600)
    assert only.returncode == 0, only.stderr[-2000:]
    assert "reusing" in only.stderr and "epoch 1:" not in only.stderr  # nothing retrained
    summary = (tmp_path / "transformer" / "summary.md").read_text()
    assert "## Table 2" in summary and "## Table 1" not in summary
    bad = subprocess.run([*command, "--only", "table9"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "table9" in bad.stderr


@pytest.mark.data
@pytest.mark.slow
@needs_multi30k
def test_table2_models_continue_the_baseline_run(tmp_path, data_dir):
    """reproduce_transformer's Table 2 models continue the baseline's run: the plain one is
    bit for bit the baseline trained for the extra epochs in one go, and the L* one starts
    from the same AdamW moments and schedule step (so its optimiser has counted every step)."""
    import copy
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import reproduce_parser as rp
    import reproduce_transformer as rt

    from paramcorrupt.train.loop import load_checkpoint

    args = rp.arguments("test", ["--smoke", "--out", str(tmp_path), "--data-dir", str(data_dir)])
    rp.setup(args, "transformer")
    family = copy.deepcopy(rt.FAMILY)
    family["sizes"]["smoke"]["task"].update(model="tiny", dropout="0.1")  # dropout: the RNG state must carry over
    plain, _ = rt.continued(family, args, seed=0, variant="baseline")
    resistant, meta = rt.continued(family, args, seed=0, variant="resistant")

    longer = copy.deepcopy(family)
    longer["sizes"]["smoke"]["epochs"] = 2
    straight, _ = rp.trained(longer, args, seed=0)
    for (name, a), b in zip(plain.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(resistant.model.parameters(), plain.model.parameters()))

    steps = len(straight.train_loader)
    state = load_checkpoint(next((tmp_path / "models").glob("multi30k-resistant-ft1-seed0.*.ckpt.pt")))
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {2.0 * steps}
    assert state["optimizer"]["param_groups"][0]["corruption_eps"] == family["resistant"]["eps"]
    assert meta["from"] != meta["id"] and meta["variant"] == "resistant"
    again, _ = rt.continued(family, args, seed=0, variant="resistant")  # reused, not retrained
    assert all(torch.equal(a, b) for a, b in zip(again.model.parameters(), resistant.model.parameters()))
