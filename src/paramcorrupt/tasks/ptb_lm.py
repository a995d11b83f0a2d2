"""The ``ptb-lm`` task: an LSTM language model (Merity et al. style) on word-level Penn Treebank.

Data (see :mod:`paramcorrupt.data.ptb`): ``data_dir`` or ``$PARAMCORRUPT_DATA`` names the folder
holding ``ptb_lm/ptb.zip``; a missing file raises ``FileNotFoundError`` with one sentence.
The vocabulary (10,000 words with ``<eos>``) comes from the training split.

Loaders yield :class:`LMWindow` batches — ``(input [t, B], target [t, B], start)``, time-major
BPTT windows of a batchified stream and the position of the window's first step:

- ``train_loader``: the training stream, ``batch_size`` columns, windows of ``bptt`` steps;
- ``gradient_loader``: the training stream again (the paper takes the gradient on the
  training set), ``gradient_batch_size`` columns, in order;
- ``eval_loader``: the ``eval_split`` stream ("test" by default, as the paper's tables;
  "valid" for model selection), ``eval_batch_size`` columns.

``limit_*_tokens`` keep only a prefix of a stream (tiny slices for tests and quick runs).

**Hidden state across windows.** The loss function, :class:`CarriedStateLoss`, carries the
LSTM state from one window to the next, detached (truncated back-propagation through time),
exactly as language models are trained and evaluated; each column of the batchified stream
is one long sequence. The state is reset to zeros at the window whose ``start`` is 0, so every
pass over a loader — an evaluation, a data set gradient, a training epoch — starts from zeros
and is deterministic: the same weights give the same loss, whatever ran before. A window
that does not follow the previous one (another loader, a skipped window) also starts from
zeros, with a logged warning. A window seen twice in a row (corruption-resistant training
runs each batch at w and at w + a_hat) gets the same incoming state both times; the state
carried on is that of the first call (at w). The data set gradient is therefore the
truncated-BPTT gradient: each window's loss is differentiated with its incoming state held
constant. Results depend (slightly) on the number of columns, which fixes where the
zero-state restarts fall; the task reports them in ``info``.

Metrics (see :mod:`paramcorrupt.losses`): ``log_ppl``, the token-mean cross-entropy (the
paper's Table 1 "Log PPL", equal to the loss) and ``perplexity``, exp of the aggregated
log-perplexity (Table 2 "PPL"): a metric with a ``finalize`` function, which
:func:`paramcorrupt.evaluate` applies after summing (``exp(sum(total) / sum(count))``; the
mean of per-batch perplexities would be wrong).

Groupings: ``"position"`` — ``embedding``, ``lstm.0`` ... ``lstm.{L-1}``, ``decoder``;
``"type"`` — ``embedding``, ``recurrent``, ``linear``. With tied weights the shared matrix is
counted once, in ``embedding`` (its first name), and ``decoder`` holds only the output bias.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParamCorruptError
from ..groups import ParameterGroup, select
from ..train.recipe import Recipe
from .base import Task, check_int
from .lm import CarriedStateLoss, LMOutput, LMWindow, LogPerplexity, Perplexity, WindowLoader
from .weights import load_given, resolve_device

__all__ = [
    "MODELS",
    "PTB_LM_RECIPE",
    "CarriedStateLoss",
    "LMOutput",
    "LMWindow",
    "LogPerplexity",
    "Perplexity",
    "WindowLoader",
    "build_lm",
    "lm_groups_by_position",
    "lm_groups_by_type",
    "ptb_lm_task",
]

logger = logging.getLogger(__name__)

#: model name -> LSTMLanguageModel options. "awd" is the paper's (Merity et al.) size; "small"
#: is the CPU-sized model of the reproductions; "tiny" is for tests.
MODELS: dict[str, dict[str, Any]] = {
    "awd": {
        "emb_size": 400,
        "hidden_size": 1150,
        "num_layers": 3,
        "tie_weights": True,
        "dropout": 0.4,
        "dropout_input": 0.4,
        "dropout_hidden": 0.25,
        "dropout_embedding": 0.1,
        "weight_drop": 0.5,
    },
    "medium": {
        "emb_size": 650,
        "hidden_size": 650,
        "num_layers": 2,
        "tie_weights": True,
        "dropout": 0.5,
    },
    "small": {
        "emb_size": 256,
        "hidden_size": 256,
        "num_layers": 2,
        "tie_weights": True,
        "dropout": 0.25,
        "dropout_embedding": 0.05,
    },
    "tiny": {
        "emb_size": 32,
        "hidden_size": 32,
        "num_layers": 2,
        "tie_weights": True,
        "dropout": 0.0,
    },
}

#: the full reproduction's recipe (benchmarks/repro_common.py, docs/reproduction.md), for the
#: train CLI: Adam, a one-cycle schedule peaking at 2e-3 after 5% of the steps, clipping at 0.25
PTB_LM_RECIPE = Recipe(
    optimizer="adam", lr=2e-3, weight_decay=1.2e-6, max_grad_norm=0.25, schedule="onecycle", pct_start=0.05
)

_MODEL_OPTIONS = (
    "emb_size",
    "hidden_size",
    "num_layers",
    "tie_weights",
    "dropout",
    "dropout_input",
    "dropout_hidden",
    "dropout_embedding",
    "weight_drop",
)


def build_lm(vocab_size: int, model: str = "small", **overrides: Any) -> nn.Module:
    """An :class:`~paramcorrupt.models.LSTMLanguageModel` by name (see :data:`MODELS`),
    with any of its options overridden (``None`` values are ignored).

    Example:
        >>> build_lm(100, "tiny", num_layers=1).num_layers
        1
    """
    from ..models.lstm_lm import LSTMLanguageModel

    if model not in MODELS:
        raise ParamCorruptError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    options = dict(MODELS[model])
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _MODEL_OPTIONS:
            raise ParamCorruptError(
                f"unknown model option {key!r}; expected some of {', '.join(_MODEL_OPTIONS)}"
            )
        if key in ("emb_size", "hidden_size", "num_layers"):
            value = check_int(value, key)
        elif key == "tie_weights":
            value = bool(value)
        else:
            value = float(value)
        options[key] = value
    return LSTMLanguageModel(vocab_size, **options)


def lm_groups_by_position(model: nn.Module) -> dict[str, ParameterGroup]:
    """``embedding``, ``lstm.0`` ... ``lstm.{L-1}``, ``decoder`` (tied weights counted once, in
    ``embedding``; ``decoder`` then holds the output bias alone)."""
    groups = {"embedding": select(model, "embedding", name="embedding")}
    for i in range(len(model.lstm)):
        groups[f"lstm.{i}"] = select(model, f"lstm.{i}", name=f"lstm.{i}")
    groups["decoder"] = select(model, "decoder", name="decoder")
    return groups


def lm_groups_by_type(model: nn.Module) -> dict[str, ParameterGroup]:
    """``embedding`` (the tied matrix included), ``recurrent`` (every LSTM layer), ``linear``
    (the decoder's own parameters)."""
    return {t: select(model, types=t, name=t) for t in ("embedding", "recurrent", "linear")}


@functools.lru_cache(maxsize=4)
def _corpus(path: str) -> Any:
    from ..data.ptb import Corpus

    return Corpus(Path(path).parent)  # the folder holding ptb.zip


def load_corpus(data_dir: str | os.PathLike[str] | None) -> Any:
    """The PTB :class:`~paramcorrupt.data.Corpus` (parsed once per process and file)."""
    from ..data._paths import resolve_data_file

    return _corpus(str(resolve_data_file(data_dir, "ptb_lm", "ptb.zip").resolve()))


def _prefix(tokens: Tensor, limit: int | None) -> Tensor:
    return tokens if limit is None else tokens[: limit + 1]


def _lm_model(
    vocab_size: int,
    model: str,
    overrides: Mapping[str, Any],
    checkpoint: str | os.PathLike[str] | None,
    state_dict: Mapping[str, Tensor] | None,
    seed: int,
) -> tuple[nn.Module, bool]:
    """The language model initialised from ``seed``, the weights loaded when given; and whether they were."""
    torch.manual_seed(seed)
    net = build_lm(vocab_size, model, **overrides)
    if not load_given(net, checkpoint, state_dict, f"the {model} language model"):
        logger.info("ptb-lm: no checkpoint given, the %s language model is untrained", model)
        return net, False
    return net, True


def _architecture(net: nn.Module) -> dict[str, Any]:
    return {
        "vocab_size": net.vocab_size,
        "emb_size": net.emb_size,
        "hidden_sizes": list(net.hidden_sizes),
        "num_layers": net.num_layers,
        "tie_weights": net.tie_weights,
        "dropout": net.dropout,
        "dropout_input": net.dropout_input,
        "dropout_hidden": net.dropout_hidden,
        "dropout_embedding": net.dropout_embedding,
        "weight_drop": net.weight_drop,
    }


def _stream_info(train: WindowLoader, gradient: WindowLoader, evaluation: WindowLoader) -> dict[str, Any]:
    """The loaders' predicted tokens and columns (``info``)."""
    return {
        "train_tokens": train.num_targets,
        "gradient_tokens": gradient.num_targets,
        "eval_tokens": evaluation.num_targets,
        "columns": {"train": train.batch_size, "gradient": gradient.batch_size, "eval": evaluation.batch_size},
    }


def _limit(value: int | None, what: str) -> int | None:
    return None if value is None else check_int(value, what, minimum=2)


def ptb_lm_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model: str = "small",
    emb_size: int | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    tie_weights: bool | None = None,
    dropout: float | None = None,
    dropout_input: float | None = None,
    dropout_hidden: float | None = None,
    dropout_embedding: float | None = None,
    weight_drop: float | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    eval_split: str = "test",
    limit_train_tokens: int | None = None,
    limit_eval_tokens: int | None = None,
    limit_gradient_tokens: int | None = None,
    batch_size: int = 20,
    eval_batch_size: int = 10,
    gradient_batch_size: int = 20,
    bptt: int = 35,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Task:
    """The PTB language-modelling task (see the module's docstring).

    The options are typed values; ``paramcorrupt probe/train --task-option KEY=VALUE``
    converts its strings by these annotations.

    Args:
        data_dir: the folder containing ``ptb_lm/ptb.zip`` (default: ``$PARAMCORRUPT_DATA``).
        cache_dir: accepted for symmetry with ``cifar10`` (PTB needs no cache).
        model: "small" (default: 2 x 256, tied), "medium", "awd" (the paper's 3-layer
            400/1150) or "tiny".
        emb_size, hidden_size, num_layers, tie_weights, dropout, dropout_input,
            dropout_hidden, dropout_embedding, weight_drop: override the named model's
            options (see :class:`~paramcorrupt.models.LSTMLanguageModel`).
        checkpoint: a file with the weights (a state dict or a training checkpoint).
        state_dict: the weights themselves (instead of ``checkpoint``).
        eval_split: "test" (the paper's tables) or "valid".
        limit_train_tokens: train on the first tokens of the training stream only.
        limit_eval_tokens: evaluate on the first tokens of the evaluation stream only.
        limit_gradient_tokens: take the gradient on the first tokens of the training stream
            (default: ``limit_train_tokens``).
        batch_size: columns of the training stream (AWD-LSTM: 20).
        eval_batch_size: columns of the evaluation stream.
        gradient_batch_size: columns of the gradient's stream.
        bptt: window length.
        seed: seeds the initialisation.
        device: "cpu" (default), "cuda", "auto", ...

    Raises:
        FileNotFoundError: when ``ptb.zip`` (or the checkpoint) is not found.
        ValueError: for bad options or weights that do not fit the model.
    """
    overrides = {k: v for k, v in locals().items() if k in _MODEL_OPTIONS}
    del cache_dir
    if checkpoint is not None and state_dict is not None:
        raise ParamCorruptError("give checkpoint or state_dict, not both")
    if eval_split not in ("test", "valid"):
        raise ParamCorruptError(f"eval_split must be 'test' or 'valid', got {eval_split!r}")
    seed = check_int(seed, "seed", minimum=0)
    limit_train, limit_eval = _limit(limit_train_tokens, "limit_train_tokens"), _limit(limit_eval_tokens, "limit_eval_tokens")
    limit_gradient = limit_train if limit_gradient_tokens is None else _limit(limit_gradient_tokens, "limit_gradient_tokens")
    resolved = resolve_device(device)
    corpus = load_corpus(data_dir)
    net, trained = _lm_model(corpus.vocab_size, model, overrides, checkpoint, state_dict, seed)
    net.to(resolved).eval()
    train_loader = WindowLoader(_prefix(corpus.train, limit_train), batch_size, bptt, resolved)
    gradient_loader = WindowLoader(_prefix(corpus.train, limit_gradient), gradient_batch_size, bptt, resolved)
    eval_loader = WindowLoader(_prefix(corpus.split(eval_split), limit_eval), eval_batch_size, bptt, resolved)
    return Task(
        name="ptb-lm",
        model=net,
        gradient_loader=gradient_loader,
        eval_loader=eval_loader,
        loss_fn=CarriedStateLoss(),
        metrics={"log_ppl": LogPerplexity(), "perplexity": Perplexity()},
        primary_metric="log_ppl",
        groupings={"position": lm_groups_by_position, "type": lm_groups_by_type},
        train_loader=train_loader,
        info={
            "seed": seed,
            "model": model,
            "architecture": _architecture(net),
            "parameters": sum(p.numel() for p in net.parameters()),
            "trained": trained,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "vocab_size": corpus.vocab_size,
            "eval_split": eval_split,
            **_stream_info(train_loader, gradient_loader, eval_loader),
            "bptt": int(bptt),
            "device": str(resolved),
            "micro_batches": 1,  # LMWindow batches are time-major: never split them on dim 0
            "recipe": PTB_LM_RECIPE,
        },
    )
