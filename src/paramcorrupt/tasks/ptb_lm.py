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
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputTypeError, ParamCorruptError
from ..groups import ParameterGroup, select
from ..losses import BatchLoss
from ..train.recipe import Recipe
from ._options import as_bool, as_int, load_into, load_weights, resolve_device
from .base import Task

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


class LMWindow(NamedTuple):
    """One BPTT window of a batchified token stream."""

    input: Tensor
    """word indices [t, B]"""
    target: Tensor
    """the next words [t, B]"""
    start: int
    """the row of the batchified stream the window starts at (0: a new pass)"""


class LMOutput(NamedTuple):
    """What :class:`CarriedStateLoss` hands to metrics (``output[0]`` are the logits)."""

    logits: Tensor
    hidden: list
    loss: float
    """the window's token-mean cross-entropy"""


class WindowLoader:
    """Re-iterable, sized :class:`LMWindow` batches: a stream folded into ``batch_size`` columns
    and cut into windows of ``bptt`` steps.

    Example:
        >>> loader = WindowLoader(torch.arange(21), batch_size=2, bptt=4)
        >>> len(loader), [(w.start, w.input.shape[0]) for w in loader], loader.num_targets
        (3, [(0, 4), (4, 4), (8, 1)], 18)
    """

    def __init__(
        self, tokens: Tensor, batch_size: int, bptt: int, device: torch.device | str | None = None
    ) -> None:
        from ..data.ptb import batchify

        self.batch_size = as_int(batch_size, "batch_size")
        self.bptt = as_int(bptt, "bptt")
        self.source = batchify(tokens, self.batch_size)
        if device is not None:
            self.source = self.source.to(device)

    def __iter__(self) -> Iterator[LMWindow]:
        rows = self.source.size(0)
        for start in range(0, rows - 1, self.bptt):
            length = min(self.bptt, rows - 1 - start)
            yield LMWindow(
                self.source[start : start + length],
                self.source[start + 1 : start + 1 + length],
                start,
            )

    def __len__(self) -> int:
        return math.ceil((self.source.size(0) - 1) / self.bptt)

    @property
    def num_targets(self) -> int:
        """Predicted tokens per pass, ``(T - 1) * B``."""
        return (self.source.size(0) - 1) * self.batch_size

    def shard(self, rank: int, world_size: int) -> WindowLoader:
        """Columns ``rank, rank + world_size, ...`` (independent streams) for one process of a
        distributed run (:func:`paramcorrupt.parallel.shard`). Splitting by columns keeps
        the carried hidden state exact; splitting window by window would break it."""
        if self.batch_size < world_size:
            raise ParamCorruptError(f"{self.batch_size} columns cannot be shared by {world_size} processes")
        part = object.__new__(WindowLoader)
        part.bptt, part.source = self.bptt, self.source[:, rank::world_size].contiguous()
        part.batch_size = int(part.source.size(1))
        return part


def _window_parts(batch: Any) -> tuple[Tensor, Tensor, int | None]:
    if isinstance(batch, LMWindow):
        return batch.input, batch.target, int(batch.start)
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        start = int(batch[2]) if len(batch) == 3 else None
        return batch[0], batch[1], start
    raise InputTypeError(
        f"a language-model batch is (input, target[, start]), got {type(batch).__name__}"
    )


class CarriedStateLoss:
    """``loss_fn(model, window)`` for LSTM language models, carrying the hidden state across
    consecutive windows (detached), reset at ``start == 0`` (see the module's docstring).

    A batch without a ``start`` (a plain ``(input, target)`` pair) is treated as a fresh
    sequence (zero state). The loss is the token-mean cross-entropy; the weight is the
    number of target tokens; the output is an :class:`LMOutput`.

    Example:
        >>> from paramcorrupt.models import LSTMLanguageModel
        >>> model = LSTMLanguageModel(20, 4, 4, 1).eval()
        >>> loss_fn, loader = CarriedStateLoss(), WindowLoader(torch.arange(40) % 20, 2, 5)
        >>> first = [loss_fn(model, w).loss.item() for w in loader]
        >>> first == [loss_fn(model, w).loss.item() for w in loader]  # every pass starts from zeros
        True
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the carried state."""
        self._model_id: int | None = None
        self._last_start: int | None = None
        self._next_start: int | None = None
        self._state_in: list | None = None
        self._state_out: list | None = None
        self._columns: int | None = None
        self._warned = False

    def _incoming(self, model: nn.Module, start: int | None, columns: int) -> list | None:
        if start is None or start == 0 or self._model_id != id(model) or self._columns != columns:
            return None
        if start == self._last_start:  # the same window again (e.g. at w + a_hat)
            return self._state_in
        if start == self._next_start:
            return self._state_out
        if not self._warned:
            logger.warning(
                "window at row %d does not follow the previous one (expected %s): its hidden state "
                "starts from zeros",
                start,
                self._next_start,
            )
            self._warned = True
        return None

    def __call__(self, model: nn.Module, batch: Any) -> BatchLoss:
        inputs, target, start = _window_parts(batch)
        columns = int(inputs.shape[1]) if inputs.dim() == 2 else -1
        state_in = self._incoming(model, start, columns)
        logits, hidden = model(inputs, state_in)
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the softmax in float32
            logits = logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        repeated = (
            start is not None
            and start != 0
            and start == self._last_start
            and self._model_id == id(model)
        )
        if not repeated or self._state_out is None:
            self._state_out = [(h.detach(), c.detach()) for h, c in hidden]
        self._state_in = state_in
        self._model_id, self._columns, self._last_start = id(model), columns, start
        self._next_start = None if start is None else start + int(inputs.shape[0])
        value = float(loss.detach())
        return BatchLoss(loss, float(target.numel()), LMOutput(logits, hidden, value))


def _token_loss(output: Any, batch: Any) -> tuple[float, int]:
    target = batch[1]
    if isinstance(output, LMOutput):
        return output.loss * target.numel(), target.numel()
    logits = output[0] if isinstance(output, (tuple, list)) else output
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
    )
    return float(total), target.numel()


class LogPerplexity:
    """``log_ppl``: the token-mean cross-entropy in nats (the paper's Table 1 "Log PPL")."""

    higher_is_better = False
    display_name = "Log-perplexity"
    scale = 1.0
    unit = ""

    def __call__(self, output: Any, batch: Any) -> tuple[float, int]:
        return _token_loss(output, batch)


class Perplexity(LogPerplexity):
    """``perplexity`` = exp(aggregated log-perplexity) (the paper's Table 2 "PPL").

    Its per-batch ``(total, count)`` are those of :class:`LogPerplexity`; ``finalize`` (exp)
    is applied by :func:`paramcorrupt.evaluate` to the aggregate ``sum(total) / sum(count)``.
    """

    display_name = "Perplexity"

    @staticmethod
    def finalize(log_ppl: float) -> float:
        """exp(log_ppl), ``inf`` beyond float range (a destroyed model's perplexity)."""
        return math.exp(log_ppl) if log_ppl < 709.0 else math.inf


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
            value = as_int(value, key)
        elif key == "tie_weights":
            value = as_bool(value, key)
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


def ptb_lm_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model: str = "small",
    emb_size: Any = None,
    hidden_size: Any = None,
    num_layers: Any = None,
    tie_weights: Any = None,
    dropout: Any = None,
    dropout_input: Any = None,
    dropout_hidden: Any = None,
    dropout_embedding: Any = None,
    weight_drop: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    eval_split: str = "test",
    limit_train_tokens: Any = None,
    limit_eval_tokens: Any = None,
    limit_gradient_tokens: Any = None,
    batch_size: Any = 20,
    eval_batch_size: Any = 10,
    gradient_batch_size: Any = 20,
    bptt: Any = 35,
    seed: Any = 0,
    device: str | torch.device | None = None,
) -> Task:
    """The PTB language-modelling task (see the module's docstring).

    Every option may be given as a string (as ``--task-option KEY=VALUE`` passes it).

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
    del cache_dir
    if checkpoint is not None and state_dict is not None:
        raise ParamCorruptError("give checkpoint or state_dict, not both")
    if eval_split not in ("test", "valid"):
        raise ParamCorruptError(f"eval_split must be 'test' or 'valid', got {eval_split!r}")
    seed = as_int(seed, "seed", minimum=0)
    limit_train = as_int(limit_train_tokens, "limit_train_tokens", minimum=2, optional=True)
    limit_eval = as_int(limit_eval_tokens, "limit_eval_tokens", minimum=2, optional=True)
    limit_gradient = as_int(
        limit_gradient_tokens, "limit_gradient_tokens", minimum=2, optional=True
    )
    if limit_gradient is None:
        limit_gradient = limit_train
    device = resolve_device(device)

    corpus = load_corpus(data_dir)
    torch.manual_seed(seed)
    overrides = {
        "emb_size": emb_size,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "tie_weights": tie_weights,
        "dropout": dropout,
        "dropout_input": dropout_input,
        "dropout_hidden": dropout_hidden,
        "dropout_embedding": dropout_embedding,
        "weight_drop": weight_drop,
    }
    net = build_lm(corpus.vocab_size, model, **overrides)
    trained = False
    if checkpoint is not None:
        state_dict = load_weights(checkpoint)
    if state_dict is not None:
        load_into(net, state_dict, f"the {model} language model")
        trained = True
    else:
        logger.info("ptb-lm: no checkpoint given, the %s language model is untrained", model)
    net.to(device).eval()

    train_loader = WindowLoader(_prefix(corpus.train, limit_train), batch_size, bptt, device)
    gradient_loader = WindowLoader(
        _prefix(corpus.train, limit_gradient), gradient_batch_size, bptt, device
    )
    eval_loader = WindowLoader(
        _prefix(corpus.split(eval_split), limit_eval), eval_batch_size, bptt, device
    )
    return Task(
        name="ptb-lm",
        model=net,
        gradient_loader=gradient_loader,
        eval_loader=eval_loader,
        loss_fn=CarriedStateLoss(),
        metrics={"log_ppl": LogPerplexity(), "perplexity": Perplexity()},
        primary_metric="log_ppl",
        higher_is_better=False,
        groupings={"position": lm_groups_by_position, "type": lm_groups_by_type},
        train_loader=train_loader,
        info={
            "seed": seed,
            "model": model,
            "architecture": {
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
            },
            "parameters": sum(p.numel() for p in net.parameters()),
            "trained": trained,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "vocab_size": corpus.vocab_size,
            "eval_split": eval_split,
            "train_tokens": train_loader.num_targets,
            "gradient_tokens": gradient_loader.num_targets,
            "eval_tokens": eval_loader.num_targets,
            "columns": {
                "train": train_loader.batch_size,
                "gradient": gradient_loader.batch_size,
                "eval": eval_loader.batch_size,
            },
            "bptt": int(bptt),
            "device": str(device),
            "micro_batches": 1,  # LMWindow batches are time-major: never split them on dim 0
            "recipe": PTB_LM_RECIPE,
        },
    )
