"""Language-model batches and losses, shared by LSTM language models (the ``ptb-lm`` task):
time-major BPTT windows of a batchified token stream (:class:`LMWindow`, :class:`WindowLoader`),
the loss that carries the hidden state across windows (:class:`CarriedStateLoss`; see
:mod:`paramcorrupt.tasks.ptb_lm` for why and how) and the metrics :class:`LogPerplexity` and
:class:`Perplexity`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputTypeError, ParamCorruptError
from ..losses import BatchLoss
from .base import check_int

__all__ = ["CarriedStateLoss", "LMOutput", "LMWindow", "LogPerplexity", "Perplexity", "WindowLoader"]

logger = logging.getLogger(__name__)


class LMWindow(NamedTuple):
    """One BPTT window of a batchified token stream."""

    input: Tensor
    """word indices [t, B]"""
    target: Tensor
    """the next words [t, B]"""
    start: int
    """the row of the batchified stream the window starts at (0: a new pass)"""


class LMOutput(NamedTuple):
    """What :class:`CarriedStateLoss` hands to metrics (``output[0]`` are the logits,
    time-major: ``[t, B, vocabulary]``)."""

    #: the dimension of the logits along which examples lie: an example is one stream's
    #: window of ``t`` tokens (outcome classes: SDC when any of its predicted tokens changed)
    examples_dim = 1

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

        self.batch_size = check_int(batch_size, "batch_size")
        self.bptt = check_int(bptt, "bptt")
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
