"""The MLP dependency parser (Chen & Manning 2014) and the ``ptb-dep`` task.

Data-free checks on hand-made trees, and real-data tests (marked ``data``) on NLTK's PTB
dependency sample, read from ``$PARAMCORRUPT_DATA`` or else ``<repo>/../shared/data`` and
skipped, with the path in the reason, when it is absent.
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
from paramcorrupt.data.dependency import Sentence, is_projective, parse_conll, split_sentences
from paramcorrupt.models.mlp_parser import (
    Configuration,
    MLPParser,
    ParserVocab,
    attachment_scores,
    features,
    oracle,
    parse,
)
from paramcorrupt.tasks import TASKS, get_task
from paramcorrupt.tasks.parser import ParserLoss, SentenceBatches, attachment_metric, parser_groups

PTB_DEP = "ptb_dep_nltk/dependency_treebank.zip"
needs_ptb_dep = pytest.mark.data(PTB_DEP)  # skipped when absent (tests/conftest.py)
needs_ud_ewt = pytest.mark.data("ud_english_ewt/en_ewt-ud-train.conllu.gz")

TEXT = "The\tDT\t2\ncat\tNN\t3\nsat\tVBD\t0\n.\t.\t3\n\nIt\tPRP\t2\nran\tVBD\t0\nfast\tRB\t2\n"
LABELLED = "A\tDT\t2\tdet\ndog\tNN\t3\tnsubj\nbarks\tVBZ\t0\troot\nloudly\tRB\t3\tadvmod\n"


def _replay(sentence, moves, num_labels):
    config = Configuration(len(sentence))
    for move in moves:
        assert config.legal(num_labels)[move]
        config.apply(move, num_labels)
    assert config.terminal
    return config


def test_read_and_split():
    sentences = parse_conll(TEXT, "x")
    assert [s.heads for s in sentences] == [(2, 3, 0, 3), (2, 0, 2)]
    assert sentences[0].labels is None
    assert parse_conll(LABELLED)[0].labels == ("det", "nsubj", "root", "advmod")
    assert parse_conll("a\tDT\t5\n") == []  # a head outside the sentence: skipped
    many = [Sentence(("a",), ("DT",), (0,), source=str(i % 3)) for i in range(30)]
    train, test = split_sentences(many, 0.2, seed=3)
    assert (train, test) == split_sentences(many, 0.2, seed=3) and len(test) == 6
    train, test = split_sentences(many, 0.34, seed=0, by="file")
    assert len({s.source for s in test}) == 1 and not {s.source for s in test} & {s.source for s in train}


def test_projectivity():
    assert is_projective([2, 0, 2]) and not is_projective([3, 4, 0, 3])


@pytest.mark.parametrize("text", [TEXT, LABELLED])
def test_oracle_reproduces_trees(text):
    sentences = parse_conll(text)
    vocab = ParserVocab(sentences, min_count=1)
    num_labels = max(1, len(vocab.labels))
    for s in sentences:
        enc = vocab.encode(s)
        feats, moves = oracle(enc, num_labels, vocab.labelled)
        assert len(moves) == 2 * len(s) and len(feats[0]) == (48 if vocab.labelled else 36)
        config = _replay(enc, moves, num_labels)
        assert config.heads[1:] == list(s.heads)
        if vocab.labelled:
            assert [vocab.labels[i] for i in config.labels[1:]] == list(s.labels)
        # the gold transitions' trees score 100 %
        heads_ok, both_ok, total = attachment_scores([(config.heads, config.labels)], [enc])
        assert heads_ok == total and (both_ok == total or not vocab.labelled)


def test_oracle_fails_on_non_projective():
    s = Sentence(tuple("abcd"), ("NN",) * 4, (3, 4, 0, 3))
    assert oracle(ParserVocab([s]).encode(s), 1, False) is None


def test_features_of_the_initial_configuration():
    s = parse_conll(TEXT)[0]
    vocab = ParserVocab([s], min_count=1)
    enc = vocab.encode(s)
    f = features(Configuration(len(s)), enc, False)
    assert f[0] == 2 and f[1:3] == [0, 0]  # s1 = ROOT, no s2, s3
    assert f[3:6] == [vocab.word_id["the"], vocab.word_id["cat"], vocab.word_id["sat"]]


@pytest.mark.slow
def test_greedy_parse_is_a_tree_and_the_loss_trains():
    torch.manual_seed(0)
    sentences = parse_conll(TEXT)
    vocab = ParserVocab(sentences, min_count=1)
    encoded = [vocab.encode(s) for s in sentences]
    model = MLPParser(len(vocab.words), len(vocab.pos), 0, hidden_size=16, activation="relu", dropout=0.0)
    loader = SentenceBatches(encoded, 2, 1, False)
    metric = attachment_metric()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        for batch in loader:
            optimizer.zero_grad()
            out = ParserLoss()(model, batch)
            out.loss.backward()
            optimizer.step()
    model.eval()
    for heads, _ in parse(model, encoded):
        assert all(0 <= h <= len(heads) for h in heads[1:]) and heads[1:].count(0) == 1
    result = evaluate(model, loader, ParserLoss(), {"uas": metric})
    assert result["uas"] == 1.0  # memorised: the greedy parses are the gold trees


def test_task_is_registered():
    assert "ptb-dep" in TASKS and "ud-ewt" in TASKS


@pytest.fixture(scope="module")
def real_sentences(require_data):
    from paramcorrupt.data.dependency import load_ptb_dependency

    return load_ptb_dependency(require_data(PTB_DEP))


@pytest.mark.data
@needs_ptb_dep
@pytest.mark.slow
def test_oracle_on_every_training_tree(real_sentences, capsys):
    train, _ = split_sentences(real_sentences, 0.1, seed=0)
    vocab = ParserVocab(train)
    non_projective = 0
    for s in train:
        enc = vocab.encode(s)
        result = oracle(enc, 1, False)
        if not is_projective(s.heads):
            non_projective += 1
            assert result is None
            continue
        config = _replay(enc, result[1], 1)
        assert config.heads[1:] == list(s.heads)
        assert attachment_scores([(config.heads, config.labels)], [enc])[0] == sum(enc.scored)
    with capsys.disabled():
        print(f"\nptb-dep: {len(train)} training trees, {non_projective} non-projective (left out by the oracle)")
    assert len(real_sentences) == 3907 and non_projective == 3


@pytest.mark.data
@needs_ud_ewt
@pytest.mark.slow
def test_labelled_oracle_on_every_ud_ewt_training_tree(capsys, data_dir):
    """UD English-EWT: the static oracle rebuilds every projective training tree with its
    labels (LAS 100% of the gold transitions); the non-projective ones are counted."""
    from paramcorrupt.data.dependency import load_ud_ewt

    train = load_ud_ewt(data_dir, "train")
    vocab = ParserVocab(train)
    assert vocab.labelled
    num_labels = len(vocab.labels)
    non_projective = 0
    for s in train:
        enc = vocab.encode(s)
        result = oracle(enc, num_labels, True)
        if not is_projective(s.heads):
            non_projective += 1
            assert result is None
            continue
        config = _replay(enc, result[1], num_labels)
        assert config.heads[1:] == list(s.heads)
        heads_ok, both_ok, scored = attachment_scores([(config.heads, config.labels)], [enc])
        assert heads_ok == both_ok == scored
    with capsys.disabled():
        print(f"\nud-ewt: {len(train)} training trees, {non_projective} non-projective (left out by the oracle)")
    assert len(train) == 12544 and non_projective == 288


@pytest.mark.data
@needs_ud_ewt
@pytest.mark.slow
def test_ud_ewt_task_end_to_end_on_a_slice(data_dir):
    task = get_task(
        "ud-ewt", data_dir=str(data_dir), limit_train_sentences=80, limit_eval_sentences=20,
        hidden_size=32, epochs=2, eval_batch_size=8, eval_split="dev",
    )
    assert task.name == "ud-ewt" and task.info["labelled"] and task.info["eval_split"] == "dev"
    assert task.model.num_features == 48  # 18 words, 18 POS tags, 12 labels
    clean = evaluate(task.model, task.eval_loader, task.loss_fn, task.metrics)
    assert 0.0 <= clean["las"] <= clean["uas"] <= 1.0
    group = parser_groups(task.model)["embeddings"]
    assert "label_embedding.weight" in group.names
    gradient = dataset_gradient(task.model, task.gradient_loader, task.loss_fn, group)
    with corrupted(task.model, gradient_corruption(gradient, Constraint(math.inf, 1.0, n=100), group)):
        hit = evaluate(task.model, task.eval_loader, task.loss_fn, task.metrics)
    assert hit["loss"] > clean["loss"]
    assert evaluate(task.model, task.eval_loader, task.loss_fn, task.metrics) == clean  # weights restored
    with pytest.raises(ValueError, match="eval_split"):
        get_task("ud-ewt", data_dir=str(data_dir), eval_split="train")
    from paramcorrupt.data.dependency import load_ud_ewt

    with pytest.raises(ValueError, match="'validation'"):
        load_ud_ewt(data_dir, "validation")


@pytest.mark.data
@needs_ptb_dep
@pytest.mark.slow
def test_task_end_to_end_on_a_slice(data_dir):
    torch.manual_seed(0)
    task = get_task(
        "ptb-dep", data_dir=str(data_dir), limit_train_sentences=60, limit_eval_sentences=20,
        hidden_size=32, epochs=2, eval_batch_size=8,
    )
    model = task.model
    assert task.info["trained"] and task.info["non_projective_eval"] >= 0
    groups = parser_groups(model)
    assert list(groups) == ["embeddings", "hidden", "output"]
    names = [n for g in groups.values() for n in g.names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    clean = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    assert 0.0 <= clean["uas"] <= 1.0 and clean == evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    group = groups["hidden"]
    gradient = dataset_gradient(model, task.gradient_loader, task.loss_fn, group)
    base = evaluate(model, task.gradient_loader, task.loss_fn)["loss"]
    with corrupted(model, gradient_corruption(gradient, Constraint(2.0, 1.0), group)):
        assert evaluate(model, task.gradient_loader, task.loss_fn)["loss"] > base
        hit = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    assert hit["uas"] <= clean["uas"] + 1e-9
    with corrupted(model, random_corruption(model, Constraint(math.inf, 10.0), generator=torch.Generator().manual_seed(0))):
        destroyed = evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    assert 0.0 <= destroyed["uas"] <= 1.0  # still parses (every sentence gets a tree)
    assert evaluate(model, task.eval_loader, task.loss_fn, task.metrics) == clean  # weights restored


@pytest.mark.data
@needs_ptb_dep
@pytest.mark.slow
def test_probe_and_train_cli(tmp_path, data_dir):
    import subprocess
    import sys

    common = [
        "--task", "ptb-dep", "--data-dir", str(data_dir), "--threads", "1", "--quiet",
        "--task-option", "limit_train_sentences=100", "--task-option", "limit_eval_sentences=20",
        "--task-option", "hidden_size=16",
    ]
    probe = [sys.executable, "-m", "paramcorrupt", "probe", *common, "--task-option", "epochs=1",
             "--by", "type", "--methods", "gradient", "--eps", "0.1", "--n", "100", "--out", str(tmp_path / "p.jsonl")]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "embeddings" in done.stdout and "uas" in done.stdout
    train = [sys.executable, "-m", "paramcorrupt", "train", *common, "--epochs", "1", "--method", "plain",
             "--eval-eps", "0.1", "--random-trials", "1", "--out", str(tmp_path / "t")]
    done = subprocess.run(train, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "UAS" in done.stdout and (tmp_path / "t" / "model.pt").is_file()


@pytest.mark.data
@pytest.mark.slow
@needs_ptb_dep
def test_reproduce_parser_smoke(tmp_path, data_dir):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "reproduce_parser.py"
    command = [sys.executable, str(script), "--smoke", "--out", str(tmp_path), "--data-dir", str(data_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "parser" / "summary.md").read_text()
    assert "## Table 1: ptb-dep" in summary and "## Table 2" in summary and "| hidden |" in summary
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # reuses models and rows
    assert again.returncode == 0 and "reusing" in again.stderr
