"""``probe --second-order`` on the built-in task kinds that are cheap: the digits ResNet, tiny
Hugging Face models built from a config (SDPA attention: run by its math kernel), the PTB
LSTM language model with a tiny config (data-backed: skipped without the data). Every row gets
finite second-order columns and the model comes back bit for bit. The values themselves are
checked against the exact Hessian in tests/test_second_order.py."""

from __future__ import annotations

import math

import pytest
import torch

from paramcorrupt.probe.plan import SweepConfig
from paramcorrupt.probe.sweep import sweep
from paramcorrupt.tasks import get_task

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check(task, grouping: str = "type", groups: tuple[str, ...] | None = None) -> list[dict]:
    before = _state(task.model)
    all_groups = task.groupings[grouping](task.model)
    config = SweepConfig(
        methods=("random", "gradient"),
        trials=1,
        p_values=(2,),
        eps_values=(1e-3,),
        second_order=2,
        groups=groups or tuple(all_groups)[:2],
    )
    rows = sweep(
        task.model,
        config,
        task.gradient_loader,
        task.eval_loader,
        task.loss_fn,
        task.metrics,
        groups=all_groups,
        progress=False,
    )
    after = _state(task.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for row in rows:
        for name in ("second_order", "predicted_ratio", "trace_per_k", "lambda_max"):
            assert row[name] is not None and math.isfinite(row[name]), (row["key"], name)
        assert (row["predicted_mean"] is not None) == (row["method"] == "random")
    return rows


def test_digits():
    _check(get_task("digits", train=False, width=4))


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_tiny_hugging_face_models(kind):
    transformers = pytest.importorskip("transformers")
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=1,
            n_embd=16,
            n_head=2,
            vocab_size=40,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
            architectures=["GPT2LMHeadModel"],
        )
    else:
        config = transformers.BertConfig(
            num_hidden_layers=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            vocab_size=40,
            max_position_embeddings=16,
            num_labels=3,
            architectures=["BertForSequenceClassification"],
        )
    task = get_task("hf", config=config, examples=8, eval_examples=4, seq_len=8, batch_size=4)
    _check(task)


@pytest.mark.data("ptb_lm/ptb.zip")
def test_lstm_language_model(require_data):
    task = get_task(
        "ptb-lm",
        data_dir=require_data("ptb_lm/ptb.zip"),
        model="tiny",
        limit_train_tokens=400,
        limit_eval_tokens=200,
        limit_gradient_tokens=200,
        batch_size=4,
        eval_batch_size=4,
        gradient_batch_size=4,
        bptt=10,
        seed=0,
    )
    _check(task)
