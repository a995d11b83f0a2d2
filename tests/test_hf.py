"""Hugging Face models, offline: tiny randomly initialised GPT-2, Llama and BERT built from
configs, saved to local folders (safetensors) and probed / trained through the API and the
CLI; groupings by component and layer; super-weight search; bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import paramcorrupt as pc  # noqa: E402
from paramcorrupt.cli import main  # noqa: E402
from paramcorrupt.groups import component_of, groups_by_component, groups_by_layer  # noqa: E402
from paramcorrupt.probe.super_weights import super_weight_search  # noqa: E402
from paramcorrupt.tasks.hf import DictBatches, hf_loss, hf_task, load_hf_model  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def gpt2_config():
    return transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16,
                                   bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])


def llama_config():
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                    num_key_value_heads=1, vocab_size=40, max_position_embeddings=16,
                                    architectures=["LlamaForCausalLM"])


def bert_config():
    return transformers.BertConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                   vocab_size=40, max_position_embeddings=16, num_labels=3,
                                   architectures=["BertForSequenceClassification"])


CONFIGS = {"gpt2": gpt2_config, "llama": llama_config, "bert": bert_config}
SMALL = {"examples": 16, "eval_examples": 8, "seq_len": 8, "batch_size": 4}


def _save(tmp_path, name):
    task = hf_task(config=CONFIGS[name](), seed=0, **SMALL)
    folder = tmp_path / name
    task.model.save_pretrained(folder)
    return task, folder


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.slow
def test_probe_and_resistant_training_through_the_api(name):
    task = hf_task(config=CONFIGS[name](), **SMALL)
    model = task.model
    before = copy.deepcopy(model.state_dict())
    groups = task.groupings["type"](model)
    assert {"embedding", "attention", "mlp", "norm"} <= set(groups)
    result = pc.indicator(model, pc.Constraint(p=float("inf"), eps=1e-2, n=20), task.gradient_loader, task.loss_fn,
                          groups["mlp"], eval_loader=task.eval_loader, metrics=task.metrics, random_trials=2,
                          generator=torch.Generator().manual_seed(0))
    assert result.loss_change > 0  # the gradient-based corruption raises the loss
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored bit for bit
    from paramcorrupt.train import CorruptionResistant, fit

    optimizer = CorruptionResistant(model.parameters(), torch.optim.Adam, eps=0.05, p=2.0, alpha=0.5, lr=1e-3)
    history = fit(model, optimizer, task.train_loader, task.loss_fn, epochs=1)
    assert len(history) == 1 and all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.slow
def test_probe_and_train_through_the_cli(name, tmp_path, capsys):
    task, folder = _save(tmp_path, name)
    out = tmp_path / f"{name}.jsonl"
    options = ["--task-option", f"path={folder}", "--task-option", "examples=16", "--task-option", "seq_len=8",
               "--task-option", "eval_examples=8"]
    code = main(["probe", "--task", "hf", *options, "--by", "type", "--trials", "1", "--n", "all,5",
                 "--eps", "1e-2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert {r["group"] for r in rows} >= {"embedding", "attention", "mlp", "norm"}
    assert rows[0]["metric"] == task.primary_metric
    code = main(["probe", "--task", "hf", *options, "--by", "layer", "--methods", "gradient", "--n", "5",
                 "--eps", "1e-2", "--out", str(tmp_path / "layer.jsonl"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    layers = {json.loads(line)["group"] for line in (tmp_path / "layer.jsonl").read_text().splitlines()[1:]}
    assert layers == {"input", "layer0", "layer1", "output"}
    code = main(["train", "--task", "hf", *options, "--method", "resistant:eps=0.05", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "model.pt").is_file()


def test_loaded_checkpoint_equals_the_saved_model(tmp_path):
    task, folder = _save(tmp_path, "llama")
    model, head = load_hf_model(folder)
    assert head == "causal-lm" and type(model).__name__ == "LlamaForCausalLM"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), task.model.state_dict().values()))
    bf16, _ = load_hf_model(folder, dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_token_weighted_loss_is_exact_over_uneven_batches():
    """Batches of 3 + 1 rows with padding: the data set gradient is the full-batch one."""
    task = hf_task(config=gpt2_config(), **SMALL)
    model = task.model.double()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 40, (4, 8), generator=g)
    labels = ids.clone()
    labels[0, 5:] = -100  # padding
    labels[3, 2:] = -100
    data = {"input_ids": ids, "labels": labels}
    full = pc.dataset_gradient(model, [data], hf_loss)
    parts = pc.dataset_gradient(model, DictBatches(data, 3), hf_loss)
    for name in full:  # transformers' loss upcasts the logits to float32: float32 rounding
        torch.testing.assert_close(parts[name], full[name], rtol=0, atol=1e-6 * float(full[name].abs().max()))
    # weighting by examples instead of predicted tokens would be far off (the padded rows)
    wrong = pc.dataset_gradient(model, DictBatches(data, 3), lambda m, b: pc.BatchLoss(hf_loss(m, b).loss, len(b["labels"])))
    assert max(float((wrong[n] - full[n]).abs().max() / full[n].abs().max()) for n in full) > 1e-2
    # sequence classification: weight = examples
    bert = hf_task(config=bert_config(), **SMALL)
    batch = next(iter(bert.eval_loader))
    assert hf_loss(bert.model, batch).weight == batch["labels"].shape[0]


def test_groupings_by_component_and_layer():
    gpt2 = hf_task(config=gpt2_config(), **SMALL).model
    kinds = component_of(gpt2)
    # the tied output embedding counts once, as the input embedding
    assert "lm_head.weight" not in kinds and kinds["transformer.wte.weight"] == "embedding"
    assert kinds["transformer.h.0.ln_1.weight"] == "norm" and kinds["transformer.ln_f.bias"] == "norm"
    assert kinds["transformer.h.1.attn.c_proj.weight"] == "attention"
    assert kinds["transformer.h.1.mlp.c_fc.bias"] == "mlp"
    llama = hf_task(config=llama_config(), **SMALL).model
    kinds = component_of(llama)
    assert kinds["model.layers.0.input_layernorm.weight"] == "norm"  # LlamaRMSNorm, by class name
    assert kinds["model.norm.weight"] == "norm" and kinds["lm_head.weight"] == "head"
    assert kinds["model.embed_tokens.weight"] == "embedding"
    assert kinds["model.layers.1.mlp.down_proj.weight"] == "mlp"
    bert = hf_task(config=bert_config(), **SMALL).model
    kinds = component_of(bert)
    # a LayerNorm inside the attention block is norm; BERT's layer.N.output is the MLP
    assert kinds["bert.encoder.layer.0.attention.output.LayerNorm.weight"] == "norm"
    assert kinds["bert.encoder.layer.0.attention.output.dense.weight"] == "attention"
    assert kinds["bert.encoder.layer.0.output.dense.weight"] == "mlp"
    assert kinds["bert.encoder.layer.0.intermediate.dense.weight"] == "mlp"
    assert kinds["classifier.weight"] == "head" and kinds["bert.pooler.dense.weight"] == "head"
    for model in (gpt2, llama, bert):
        groups = groups_by_component(model)
        names = [n for g in groups.values() for n in g.names]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each once
        layers = groups_by_layer(model)
        assert list(layers) == ["input", "layer0", "layer1", "output"]
        assert sum(len(g) for g in layers.values()) == len(names)
    assert groups_by_layer(llama)["output"].names == ("model.norm.weight", "lm_head.weight")
    with pytest.raises(ValueError, match="no list of repeated blocks"):
        groups_by_layer(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_super_weight_search_beats_random_single_weights():
    task = hf_task(config=llama_config(), **SMALL)
    model = task.model
    before = copy.deepcopy(model.state_dict())
    found = super_weight_search(model, task.gradient_loader, task.loss_fn, mode="zero", candidates=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored bit for bit
    assert len(found) == 5 and found[0].new_value == 0.0 and found[0].loss_change > 0
    assert [w.loss for w in found] == sorted((w.loss for w in found), reverse=True)
    # zeroing 20 random single weights does less
    clean = pc.evaluate(model, task.gradient_loader, task.loss_fn)["loss"]
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    names = list(params)
    for _ in range(20):
        name = names[int(torch.randint(len(names), (1,), generator=g))]
        flat = int(torch.randint(params[name].numel(), (1,), generator=g))
        fault = pc.Corruption.from_values({name: torch.zeros(1)}, {name: torch.tensor([flat])})
        with pc.corrupted(model, fault):
            assert pc.evaluate(model, task.gradient_loader, task.loss_fn)["loss"] - clean <= found[0].loss_change
    # n = 1, gradient mode: the candidate set starts at the closed form's coordinate
    grads = pc.dataset_gradient(model, task.gradient_loader, task.loss_fn)
    a_hat = pc.closed_form(grads, pc.Constraint(p=2, eps=0.1, n=1))
    top_name = next(n for n, a in a_hat.items() if a.abs().sum() > 0)
    top = super_weight_search(model, task.gradient_loader, task.loss_fn, mode="gradient", eps=0.1, candidates=1)
    assert top[0].name == top_name and top[0].flat_index == int(a_hat[top_name].abs().flatten().argmax())
    with pytest.raises(ValueError, match="unknown mode 'drop'"):
        super_weight_search(model, task.gradient_loader, task.loss_fn, mode="drop")


def test_bad_input_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is not a Hugging Face checkpoint folder"):
        hf_task(path=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown head type 'token-tagging'"):
        hf_task(config=gpt2_config(), head="token-tagging")
    no_arch = gpt2_config()
    no_arch.architectures = ["GPT2Model"]
    with pytest.raises(ValueError, match=r"cannot tell the head type .*GPT2Model"):
        hf_task(config=no_arch)
    with pytest.raises(ValueError, match="exactly one of path, config or model"):
        hf_task()
    with pytest.raises(ValueError, match="no 'labels'"):
        hf_loss(hf_task(config=gpt2_config(), **SMALL).model, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    code = main(["probe", "--task", "hf", "--task-option", f"path={tmp_path / 'empty'}", "--out", str(tmp_path / "x.jsonl")])
    assert code == 2 and "is not a Hugging Face checkpoint folder" in capsys.readouterr().err


def test_hf_flag_is_short_for_the_task_option(tmp_path, capsys):
    _, folder = _save(tmp_path, "gpt2")
    out = tmp_path / "flag.jsonl"
    code = main(["probe", "--hf", str(folder), "--task-option", "examples=8", "--task-option", "seq_len=8",
                 "--methods", "gradient", "--n", "3", "--eps", "1e-2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    header = json.loads(out.read_text().splitlines()[0])
    assert str(folder) in json.dumps(header)
    assert main(["probe", "--hf", str(folder), "--task", "digits", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "--hf goes with --task hf" in capsys.readouterr().err


@pytest.mark.slow
def test_train_takes_the_hf_flag_and_a_classifier_declares_its_chance(tmp_path, capsys):
    _, folder = _save(tmp_path, "bert")
    small = ["--task-option", "examples=16", "--task-option", "seq_len=8", "--task-option", "eval_examples=8"]
    code = main(["train", "--hf", str(folder), *small, "--method", "resistant:eps=0.05", "--epochs", "1",
                 "--random-trials", "0", "--eval-eps", "0.1", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "model.pt").is_file()
    task = hf_task(path=folder, **SMALL)
    assert task.chance == pytest.approx(1 / task.model.config.num_labels)
    assert hf_task(config=gpt2_config(), **SMALL).chance is None  # a language model has none
