"""A new user's first hour, second pass (issue 22), through real processes: a user's data
mistakes named with their fix, ``-v`` after a subcommand, a typo's closest option, and a
pooled report of the README's three fault examples that shows every row it read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--methods", "random,gradient", "--trials", "2", "--eps", "1e-2", "--quiet", "--threads", "1"]

MISTAKES = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from paramcorrupt.losses import BatchLoss

    torch.manual_seed(0)
    X, Y = torch.randn(64, 4), torch.randint(0, 3, (64,))

    def make_model():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def loss(model, batch):
        x, y = batch
        out = model(x)
        return BatchLoss(F.cross_entropy(out, y), len(x), out)

    def accuracy(out, batch):
        return (out.argmax(1) == batch[1]).sum(), len(batch[1])

    def loader(x, y):
        return DataLoader(TensorDataset(x, y), batch_size=16)

    def good():
        return loader(X, Y), loader(X, Y), loss, {"accuracy": accuracy}

    def datasets():
        return TensorDataset(X, Y), TensorDataset(X, Y), loss

    def torch_loss():
        return loader(X, Y), loader(X, Y), nn.CrossEntropyLoss()

    def wrong_width():
        return loader(torch.randn(64, 5), Y), loader(torch.randn(64, 5), Y), loss

    def one_hot():
        hot = F.one_hot(Y, 3).float()
        soft = lambda model, batch: BatchLoss(F.cross_entropy(model(batch[0]), batch[1]), 16, model(batch[0]))
        return loader(X, hot), loader(X, hot), soft, {"accuracy": accuracy}
    """
)


def cli(*argv, timeout=300):
    done = subprocess.run(
        [sys.executable, "-m", "paramcorrupt", *map(str, argv)], capture_output=True, text=True,
        timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture()
def mistakes(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(MISTAKES)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("datasets", "is a data set (TensorDataset), not a loader of batches; wrap it: torch.utils.data.DataLoader"),
        ("torch_loss", "loss_fn is torch's CrossEntropyLoss(), which takes (output, target); the protocol is loss_fn(model, batch)"),
        ("wrong_width", "fails on the first batch (float32[16, 5], int64[16]): RuntimeError: mat1 and mat2"),
        ("one_hot", "the labels look one-hot: give class indices, labels.argmax(1)"),
    ],
)
def test_each_data_mistake_is_named_with_its_fix(mistakes, tmp_path, factory, expected):
    out = tmp_path / "r.jsonl"
    code, _, err = cli("probe", "--model", f"{mistakes}:make_model", "--data", f"{mistakes}:{factory}", *FAST, "--out", out)
    assert code == 2, err
    assert err.startswith("paramcorrupt probe: error: ") and err.count("\n") == 1, err
    assert expected in err and "internal error" not in err, err
    assert not out.exists() or len(out.read_text().splitlines()) <= 1  # no row
    # the corrected command with the same --out takes the row-less file over (issue 22, point 4)
    code, _, err = cli("probe", "--model", f"{mistakes}:make_model", "--data", f"{mistakes}:good", "--by", "type",
                       *FAST, "--out", out)
    assert code == 0, err


@pytest.mark.slow
def test_a_good_factory_passes_and_its_report_names_the_factory(mistakes, tmp_path):
    out = tmp_path / "r.jsonl"
    code, _, err = cli("probe", "--model", f"{mistakes}:make_model", "--data", f"{mistakes}:good", "--by", "type",
                       *FAST, "--out", out)
    assert code == 0, err
    header = json.loads(out.read_text().splitlines()[0])
    assert header["task_display"] == "make_model"
    code, report, err = cli("report", out, "--out", tmp_path / "rep")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert str(mistakes) in text  # the full identity in the header
    figures = list((tmp_path / "rep" / "figures").glob("*.png"))
    assert figures and all(len(f.name) < 80 and str(tmp_path.name) not in f.name for f in figures)


@pytest.mark.slow
def test_verbose_after_the_subcommand_and_a_typo_names_the_closest_option(tmp_path):
    code, _, err = cli("report", tmp_path / "missing.jsonl", "-v")
    assert code == 2 and "unrecognized" not in err and "results file not found" in err, err
    code, _, err = cli("probe", "--esp", "1e-3")
    assert code == 2
    assert "usage: paramcorrupt probe" in err and "did you mean --eps?" in err, err
    code, _, err = cli("train", "--epoch", "1", "--lrr", "0.1")
    assert code == 2 and "usage: paramcorrupt train" in err and "did you mean --lr?" in err, err


@pytest.mark.slow
def test_a_pooled_report_of_the_three_fault_examples_shows_every_row(tmp_path):
    common = ["--task", "digits", "--epochs", "1", "--trials", "2", "--quiet", "--threads", "1"]
    runs = {
        "ber": ["--by", "type", "--fault", "bitflip", "--format", "int8", "--ber", "1e-5,1e-4"],
        "flips": ["--fault", "bitflip,bit-search", "--format", "int8", "--flips", "1,2"],
        "stuck": ["--fault", "stuck-at", "--value", "1", "--bits", "sign", "--flips", "10"],
    }
    counts = {}
    for name, argv in runs.items():
        code, _, err = cli("probe", *common, *argv, "--out", tmp_path / f"{name}.jsonl", timeout=600)
        assert code == 0, err
        counts[name] = len((tmp_path / f"{name}.jsonl").read_text().splitlines()) - 1
    code, _, err = cli("report", *(tmp_path / f"{n}.jsonl" for n in runs), "--out", tmp_path / "rep")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    total = sum(counts.values())
    assert f"{total} rows read, all {total} shown." in text, text[:400]
    # every row in one table line: sum each fault table's trials column (found by its header)
    shown, column = 0, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            column = None
        elif column is None:
            column = cells.index("trials") if "trials" in cells else -1
        elif column >= 0 and not cells[0].startswith("---"):
            shown += int(cells[column])
    assert shown == total
    # random flips and the bit search of one run in one figure (issue 21): curves + a heatmap for
    # the BER run, one curve figure + a heatmap per fault for the flips run, two for stuck-at
    assert "bitflip by bit error rate (BER)" in text and "bitflip and bit-search by flipped bits" in text
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == len(set(links)) == 7
    assert all((tmp_path / "rep" / link).is_file() for link in links)


# -- the points left open by the first pass: 2, 4, 8 -----------------------------------------


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny GPT-2 and a tiny BERT classifier built from configs and saved, without tokenizers;
    a copy of the BERT folder with a word-piece tokenizer saved beside it; small data files."""
    transformers = pytest.importorskip("transformers")
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2-tiny")
    bert = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32, num_labels=2)
    for name in ("bert-tiny", "bert-tok"):
        transformers.BertForSequenceClassification(bert).save_pretrained(root / name)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    transformers.BertTokenizer(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert-tok")
    save_file({"input_ids": torch.randint(0, 64, (20, 8))}, str(root / "nolabels.safetensors"))
    (root / "text.txt").write_text("hello world, some running text\n" * 20)
    (root / "unlabelled.tsv").write_text("hello world\nworld hello\n")
    return root


@pytest.mark.slow
def test_synthetic_hf_data_is_said_and_nothing_claims_training(hf_folders, tmp_path):
    out = tmp_path / "s.jsonl"
    code, stdout, err = cli("probe", "--hf", hf_folders / "gpt2-tiny", "--by", "type", "--methods", "random,gradient",
                            "--trials", "1", "--eps", "1e-2", "--threads", "1", "--out", out)  # not --quiet
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning: the hf-causal-lm task has no data")]
    assert len(warning) == 1 and "seeded synthetic tokens" in warning[0], err
    assert "training" not in (stdout + err).lower()
    code, _, err = cli("report", out, "--out", tmp_path / "rep")
    assert code == 0, err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "**Synthetic data**" in text and "seeded random data (synthetic(64x32))" in text
    assert "training" not in text.lower()


@pytest.mark.slow
def test_a_header_only_file_of_another_sweep_is_taken_over(mistakes, tmp_path):
    from paramcorrupt.probe.store import ResultsStore, read_results

    out = tmp_path / "r.jsonl"
    with ResultsStore(out) as store:  # what a run that failed before its first row leaves
        store.open("0123456789abcdef", {"task": "another", "eps_values": [0.5]})
    assert len(out.read_text().splitlines()) == 1
    code, _, err = cli("probe", "--model", f"{mistakes}:make_model", "--data", f"{mistakes}:good", "--by", "type",
                       *FAST, "--out", out)
    assert code == 0, err
    assert err.count("holds only the header of another sweep, no row: this sweep takes it over") == 1, err
    header, rows = read_results(out)
    assert header["sweep_id"] != "0123456789abcdef" and "extends" not in header and len(rows) == 3
    # a file with one row of another sweep is still refused, untouched
    before = out.read_bytes()
    code, _, err = cli("probe", "--model", f"{mistakes}:make_model", "--data", f"{mistakes}:good", "--by", "type",
                       *FAST[:-2], "--eps", "0.5", "--out", out)
    assert code == 2 and "holds the results of another sweep" in err and out.read_bytes() == before, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("folder", "option", "expected"),
    [
        ("gpt2-tiny", "data=text.txt",
         "needs a tokenizer, but the model folder {root}/gpt2-tiny has none (none of tokenizer.json"),
        ("gpt2-tiny", "seqlen=8", "unknown --task-option 'seqlen' for the hf task; did you mean 'seq_len'? valid: "
         "batch_size, config, data, data_dir, dtype, epochs, eval_batch_size, eval_data, eval_examples, examples, "
         "head, lr, model, path, seed, seq_len"),
        ("bert-tiny", "data=nolabels.safetensors",
         "has no 'labels' (keys: input_ids): a sequence-classification data file needs labels"),
        ("bert-tok", "data=unlabelled.tsv",
         "unlabelled.tsv:1: expected LABEL<TAB>TEXT with LABEL a class index (0, 1, ...), got 'hello world'; "
         "a sequence-classification data file needs labels"),
    ],
)
def test_hugging_face_data_mistakes_are_named(hf_folders, tmp_path, folder, option, expected):
    out = tmp_path / "r.jsonl"
    option = option.replace("data=", f"data={hf_folders}/")
    code, _, err = cli("probe", "--hf", hf_folders / folder, "--task-option", option, *FAST, "--out", out)
    assert code == 2, err
    assert expected.format(root=hf_folders) in err and "internal error" not in err, err
    assert err.strip().splitlines()[-1].startswith("paramcorrupt probe: error: "), err
    assert not out.exists() or not out.read_bytes()  # no header, no row


# -- point 6: one seed has no standard deviation ---------------------------------------------


def _result(label, seed, clean, after):
    return {"label": label, "seed": seed, "clean": clean, "gradient": {"0.1": after}, "random": {"0.1": clean},
            "train_seconds": 1.0, "metric": "accuracy", "higher_is_better": True}


def test_one_seed_prints_no_std_and_draws_no_std_conclusion():
    from paramcorrupt.experiments.markdown import goal_check, table2_markdown

    one = [_result("plain", 0, 0.9, 0.5), _result("resistant", 0, 0.9, 0.8)]
    table = table2_markdown(one, ["plain", "resistant"], (0.1,))
    assert "±" not in table.split("\n\n")[0]
    assert "| w/o corruption | - | 90.00 | 90.00 (+0.00) |" in table
    assert "| gradient corruption | 0.1 | 50.00 | 80.00 (+30.00) |" in table
    assert "on the test set, one seed (0): no standard deviation;" in table
    checks = goal_check(one, "plain", "resistant", (0.1,))
    assert checks[1] == "eps=0.1: baseline loses 40.0 points; 80.00 vs 50.00 (one seed: no standard deviation, no conclusion)"
    assert checks[2].endswith("by > 1 std: not assessed (one seed: no standard deviation; give --seeds 0,1,2)")
    assert not any("by more than one std" in line for line in checks)
    # two seeds: mean ± std (ddof=1) as before: 90, 80 -> 85 ± 7.07; 50, 40 -> 45 ± 7.07; 80, 70 -> 75 ± 7.07
    two = [*one, _result("plain", 1, 0.8, 0.4), _result("resistant", 1, 0.8, 0.7)]
    table = table2_markdown(two, ["plain", "resistant"], (0.1,))
    assert "| gradient corruption | 0.1 | 45.00 ± 7.07 | 75.00 ± 7.07 (+30.00) |" in table
    assert "mean ± std (ddof=1) over seeds 0, 1;" in table
    checks = goal_check(two, "plain", "resistant", (0.1,))
    assert checks[1] == "eps=0.1: baseline loses 40.0 points; 75.00 ± 7.07 vs 45.00 ± 7.07: higher by more than one std"
    assert checks[2].endswith("by > 1 std: 1")


@pytest.mark.slow
def test_compare_and_train_with_one_seed_say_so(mistakes, tmp_path):
    common = ["--model", f"{mistakes}:make_model", "--data", f"{mistakes}:good", "--epochs", "1", "--eval-eps", "0.1",
              "--random-trials", "1", "--quiet", "--threads", "1"]
    code, out, err = cli("compare", *common, "--seeds", "0", "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "one seed (0): no standard deviation" in out and "± 0.00" not in out and "by more than one std" not in out, out
    assert "not assessed (one seed" in out and (tmp_path / "cmp" / "table2.md").read_text() in out
    code, out, err = cli("train", *common, "--out", tmp_path / "one")
    assert code == 0, err
    assert "one seed (0): no standard deviation" in out and "± 0.00" not in out, out


def test_every_subcommand_has_a_description_and_compare_takes_a_users_model():
    import argparse

    from paramcorrupt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert command.description and len(command.description) > 80, name
    compare = sub.choices["compare"].parse_args(["--model", "m.py:f", "--data", "d.py:g", "--checkpoint", "w.pt"])
    assert (compare.model, compare.data, str(compare.checkpoint), compare.checkpoint_key) == ("m.py:f", "d.py:g", "w.pt", None)
    assert "one seed there is no std" in sub.choices["compare"].description


@pytest.mark.slow
def test_an_n_larger_than_a_group_is_said_once_per_sweep(mistakes, tmp_path):
    out = tmp_path / "n.jsonl"
    code, _, err = cli("probe", "--model", f"{mistakes}:make_model", "--data", f"{mistakes}:good", "--by", "type",
                       *FAST[:4], "--eps", "1e-2,1e-1", "--n", "10,5000", "--quiet", "--threads", "1", "--out", out)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "exceeds" in line]
    # linear: 4*8 + 8 + 8*3 + 3 = 67 weights; n = 10 fits, 5000 is cut (rows of both eps, both methods: one note)
    assert notes == ["note: --n 5000 exceeds the size k of group linear (k = 67): there n is cut to k, every "
                     "coordinate (the rows keep n_requested)"], err
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert {(r["n"], r["n_requested"]) for r in rows} == {(10, 10), (67, 5000)}
