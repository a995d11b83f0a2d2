"""A small, generic training loop: plain, corruption-resistant or regularised.

It runs any ``loss_fn(model, batch)`` (see :mod:`paramcorrupt.losses`) with any torch
optimiser — :class:`~paramcorrupt.train.CorruptionResistant` included — and handles what
such loops usually get wrong: micro-batch accumulation with exact weights, bfloat16
autocast, a GradScaler, a per-step learning-rate schedule, a checkpoint after every epoch
that loads with ``torch.load(..., weights_only=True)``, and resuming from it bit-exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import parallel as D
from .._progress import progress_bar
from .._state import mode
from ..errors import FileAccessError, InputTypeError, ParamCorruptError, os_error_text
from ..losses import LossFn, as_batch_loss
from .optimizer import CorruptionResistant

__all__ = ["fit", "load_checkpoint", "save_atomically", "save_checkpoint", "split_batch", "training_closure"]

logger = logging.getLogger(__name__)

Penalty = Callable[[Tensor, Iterable[Tensor]], Tensor]


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split a batch (a tensor, or a tuple/list/dict of tensors sharing dim 0) into ``parts``
    micro-batches of near-equal size (fewer if the batch is smaller).

    Example:
        >>> [x.shape[0] for x, _ in split_batch((torch.zeros(10, 2), torch.zeros(10)), 4)]
        [3, 3, 2, 2]
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ParamCorruptError(f"the number of micro-batches must be an integer >= 1, got {parts!r}")
    if parts == 1:
        return [batch]

    def chunks(x: Any) -> list[Any]:
        if isinstance(x, Tensor):
            return list(torch.tensor_split(x, min(parts, x.shape[0])))
        if isinstance(x, dict):
            split = {k: chunks(v) for k, v in x.items()}
            count = min(len(v) for v in split.values())
            return [{k: v[i] for k, v in split.items()} for i in range(count)]
        if isinstance(x, (tuple, list)):
            split = [chunks(v) for v in x]
            count = min(len(v) for v in split)
            return [type(x)(v[i] for v in split) for i in range(count)]
        raise InputTypeError(f"cannot split a batch element of type {type(x).__name__} into micro-batches")

    return chunks(batch)


def training_closure(
    model: nn.Module,
    loss_fn: LossFn,
    micro_batches: Sequence[Any],
    *,
    penalty: Penalty | None = None,
    autocast_dtype: torch.dtype | None = None,
    grad_scaler: Any = None,
    distributed: bool | None = None,
) -> Callable[[], Tensor]:
    """The closure of one step: clear the gradients, back-propagate every micro-batch, return
    the loss.

    The micro-batch losses are weighted by their weights (examples or tokens) so that the
    accumulated gradient is that of the whole batch's mean loss, whatever the split. Called
    twice by :class:`~paramcorrupt.train.CorruptionResistant`, which picks a_hat on the
    accumulated gradient.

    Args:
        model: the network (its gradients are cleared at the start of each call).
        loss_fn: ``loss_fn(model, batch)`` -> BatchLoss, tensor or (loss, weight).
        micro_batches: the pieces of the batch (a list of one for no accumulation).
        penalty: a loss transform ``penalty(loss, params)`` such as
            :class:`~paramcorrupt.train.RegularizedLoss` (only with one micro-batch: the
            norm of an accumulated gradient does not split into micro-batches).
        autocast_dtype: run the forward pass under ``torch.autocast`` with this dtype
            (``torch.bfloat16`` on CPU).
        grad_scaler: back-propagate ``grad_scaler.scale(loss)``.
        distributed: under ``torch.distributed`` (default ``None``: when a process group is
            initialised), ``micro_batches`` are this rank's part of the global batch and
            ``model`` is wrapped by :func:`paramcorrupt.parallel.ddp`: each rank
            back-propagates sum_b W_b L_b (every micro-batch but the last under ``no_sync``,
            so the gradient is synchronised once per call), and the summed gradient is
            divided by the global weight — the single-process gradient of the global batch,
            the same on every rank. The returned loss is the global batch's.

    Returns:
        A closure returning the batch's mean loss (detached).
    """
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ParamCorruptError("a step needs at least one micro-batch")
    if penalty is not None and len(micro_batches) > 1:
        raise ParamCorruptError("a gradient penalty needs the whole batch's gradient: use it without micro-batches")
    distributed = D.use_distributed(distributed)
    if distributed and penalty is not None:
        raise ParamCorruptError(
            "a gradient penalty needs the whole batch's gradient in one process: it is not supported under "
            "torch.distributed (use the resistant method, whose finite-difference form is equivalent)"
        )
    if distributed and not isinstance(model, DistributedDataParallel):
        raise ParamCorruptError("under torch.distributed, wrap the model with paramcorrupt.parallel.ddp(model) first")
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = next(iter(params)).device.type if params else "cpu"

    def backward(loss: Tensor) -> None:
        (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()

    def forward(micro: Any) -> tuple[Tensor, float]:
        context = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with context:
            result = as_batch_loss(loss_fn(model, micro), micro)
            loss = result.loss if penalty is None else penalty(result.loss, params)
        return loss, result.weight

    def closure() -> Tensor:
        model.zero_grad(set_to_none=True)
        if len(micro_batches) == 1 and not distributed:
            loss, _ = forward(micro_batches[0])
            backward(loss)
            return loss.detach()
        # sum_b W_b dL_b, back-propagated micro-batch by micro-batch (one graph alive at a
        # time), then divided by sum_b W_b: the gradient of the whole batch's mean loss
        total, loss_sum = 0.0, 0.0
        for i, micro in enumerate(micro_batches):
            with D.no_sync(model, sync=i == len(micro_batches) - 1):  # DDP syncs the last backward only
                loss, weight = forward(micro)
                backward(loss * weight)
            total += weight
            loss_sum = loss_sum + loss.detach().double() * weight
        divisor = total
        if distributed:  # the gradient is summed over ranks: divide by the global weight
            total, global_loss = D.all_reduce_scalars([total, float(loss_sum)])
            loss_sum, divisor = torch.tensor(global_loss, dtype=torch.float64), D.grad_divisor(model, total)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.div_(divisor)
        return (loss_sum / total).float()

    return closure


def save_checkpoint(path: str | os.PathLike[str], **states: Any) -> None:
    """``torch.save`` a dict of state dicts and plain values, atomically (:func:`save_atomically`).

    Only tensors, numbers, strings, lists and dicts go in, so the file loads with
    ``weights_only=True`` (no code is unpickled).
    """
    save_atomically(states, path)


def save_atomically(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to a temporary file beside ``path``, synced, then renamed over it: a
    process killed at any moment leaves the old file or the new one, never a part of one. The
    temporary file is removed when writing fails; an OS error (no space, a read-only file
    system, no permission, a parent that is a file) is a :class:`FileAccessError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise FileAccessError(f"cannot write {os_error_text(error, path)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        ParamCorruptError: when the file is no regular file, or cannot be read as such a
            checkpoint (damaged, or written by something else): the message says to delete
            it or start over, never to unpickle it.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ParamCorruptError(f"the checkpoint {path} is {'a folder' if path.is_dir() else 'not a regular file'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise FileAccessError(f"cannot read the checkpoint {os_error_text(error, path)}") from None
    except Exception as error:  # damaged, truncated, or a file of something else (a pickled object)
        first = (str(error).strip().splitlines() or [""])[0][:200]
        said = "" if "weights_only" in str(error) or not first else f": {type(error).__name__}: {first}"
        raise ParamCorruptError(
            f"cannot read the checkpoint {path} (damaged, or not written by paramcorrupt train{said}); delete it "
            "to start over (on the command line: --no-resume), or give another output folder"
        ) from None
    if not isinstance(state, Mapping):
        raise ParamCorruptError(f"the checkpoint {path} holds a {type(state).__name__}, not a training checkpoint")
    return state


def _check_resumable(state: Mapping[str, Any], path: Any, identity: str | None) -> None:
    """Refuse a checkpoint written by another run (a checkpoint without an identity passes)."""
    saved = state.get("identity")
    if saved is not None and identity is not None and saved != identity:
        raise ParamCorruptError(
            f"the checkpoint {path} is from another run ({saved}), not this one ({identity}); "
            "start over (resume=False; on the command line --no-resume) or use another path"
        )


def _generator_of(loader: Any) -> torch.Generator | None:
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "generator", None)):
        if isinstance(obj, torch.Generator):
            return obj
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator):
            return gen
    return None


def _check_fit(optimizer: Any, epochs: Any, scheduler_interval: str, grad_scaler: Any, max_grad_norm: Any) -> bool:
    """Check fit's arguments; return whether ``optimizer`` is a CorruptionResistant."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ParamCorruptError(f"epochs must be an integer >= 1, got {epochs!r}")
    if scheduler_interval not in ("step", "epoch"):
        raise ParamCorruptError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
    resistant = isinstance(optimizer, CorruptionResistant)
    if resistant and optimizer.grad_scaler is not grad_scaler:
        raise ParamCorruptError("give the same GradScaler to CorruptionResistant(grad_scaler=...) and to fit(grad_scaler=...)")
    if resistant and max_grad_norm is not None:
        raise ParamCorruptError("CorruptionResistant clips the combined gradient itself: set its max_grad_norm instead")
    return resistant


def _identity_text(identity: Mapping[str, Any] | None) -> str | None:
    """A run's identity as a checkpoint keeps it: JSON with sorted keys (``None`` without one)."""
    return None if identity is None else json.dumps(identity, sort_keys=True, default=str)


@dataclass
class _States:
    """What a checkpoint of :func:`fit` holds, and how it is written and resumed."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    grad_scaler: Any
    generator: torch.Generator | None
    identity: str | None

    def resume(self, path: str | os.PathLike[str], distributed: bool) -> tuple[list[dict[str, float]], int]:
        """Load the checkpoint at ``path`` if it exists (read by rank 0, handed to every rank);
        return the history so far and the number of epochs done (``[], 0`` without one)."""
        state = D.on_main(lambda: load_checkpoint(path) if Path(path).exists() else None, distributed=distributed)
        if state is None:
            return [], 0
        _check_resumable(state, path, self.identity)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.grad_scaler is not None and state.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        if self.generator is not None and state.get("loader_generator") is not None:
            self.generator.set_state(state["loader_generator"])
        torch.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        logger.info("resumed from %s after epoch %d", path, start_epoch)
        return [dict(r) for r in state["history"]], start_epoch

    def save(self, path: str | os.PathLike[str], epoch: int, history: list[dict[str, float]]) -> None:
        """Write the checkpoint after ``epoch`` epochs (:func:`save_checkpoint`)."""
        save_checkpoint(
            path,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=None if self.scheduler is None else self.scheduler.state_dict(),
            grad_scaler=None if self.grad_scaler is None else self.grad_scaler.state_dict(),
            loader_generator=None if self.generator is None else self.generator.get_state(),
            rng=torch.get_rng_state(),
            epoch=epoch,
            identity=self.identity,
            history=history,
        )


@dataclass
class _Epochs:
    """The epochs of :func:`fit`: an optimiser step per batch, with fit's settings."""

    net: nn.Module  # the model, or its DDP wrapper: the passes run through it
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    params: list[Tensor]  # the parameters clipped by max_grad_norm
    resistant: bool
    penalty: Penalty | None
    micro_batches: int
    autocast_dtype: torch.dtype | None
    grad_scaler: Any
    max_grad_norm: float | None
    scheduler: Any
    scheduler_interval: str
    distributed: bool

    def step(self, batch: Any) -> tuple[Any, int]:
        """One optimiser step on ``batch``; returns its loss and 1 if the step was skipped."""
        optimizer, grad_scaler, skipped = self.optimizer, self.grad_scaler, 0
        if self.distributed:
            batch = D.batch_part(batch)  # this rank's rows of the global batch
        closure = training_closure(
            self.net,
            self.loss_fn,
            split_batch(batch, self.micro_batches),
            penalty=self.penalty,
            autocast_dtype=self.autocast_dtype,
            grad_scaler=grad_scaler,
            distributed=self.distributed,
        )
        if self.resistant:
            loss = optimizer.step(closure)
            skipped += int(optimizer.skipped)
        else:
            with torch.enable_grad():
                loss = closure()
            if grad_scaler is not None:
                grad_scaler.unscale_(optimizer)
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            if grad_scaler is not None:
                scale = grad_scaler.get_scale()
                grad_scaler.step(optimizer)
            else:
                optimizer.step()
        if grad_scaler is not None:
            grad_scaler.update()
            if not self.resistant and grad_scaler.get_scale() < scale:
                skipped += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return loss, skipped

    def epoch(self, batches: Iterable[Any], epoch: int) -> dict[str, float]:
        """Train on every batch of epoch ``epoch`` (from 0); return the epoch's record."""
        started = time.perf_counter()
        loss_sum, count, skipped = 0.0, 0, 0
        for batch in batches:
            loss, skip = self.step(batch)
            skipped += skip
            loss_sum += float(loss)
            count += 1
        if count == 0:
            raise ParamCorruptError("the loader yielded no batch")
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            self.scheduler.step()
        lr = self.optimizer.param_groups[0]
        return {
            "epoch": float(epoch + 1),
            "loss": loss_sum / count,
            "seconds": time.perf_counter() - started,
            "lr": float(lr["lr"]) if "lr" in lr else math.nan,
            "skipped": float(skipped),
        }


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    loss_fn: LossFn,
    *,
    epochs: int,
    scheduler: Any = None,
    scheduler_interval: str = "step",
    penalty: Penalty | None = None,
    micro_batches: int = 1,
    autocast_dtype: torch.dtype | None = None,
    grad_scaler: Any = None,
    max_grad_norm: float | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = True,
    identity: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    distributed: bool | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs; return one record per epoch.

    Each batch is one optimiser step: :class:`~paramcorrupt.train.CorruptionResistant` gets
    a closure (it runs it twice), any other optimiser runs it once. The scheduler, if any,
    steps after every optimiser step (``scheduler_interval="step"``) or after every epoch
    (``"epoch"``). The model is in training mode during the fit and its
    modes are restored afterwards.

    Args:
        model: the network.
        optimizer: any torch optimiser, or a :class:`~paramcorrupt.train.CorruptionResistant`.
        loader: re-iterable batches (shuffled by a ``torch.Generator`` it exposes as
            ``.generator`` for resuming to be exact).
        loss_fn: ``loss_fn(model, batch)`` (see :mod:`paramcorrupt.losses`).
        epochs: the total number of epochs (a resumed fit runs only the remaining ones).
        scheduler: a learning-rate scheduler stepped after each step (or epoch).
        scheduler_interval: ``"step"`` (default): step the scheduler after every optimiser
            step; ``"epoch"``: after every epoch, before the epoch's record and checkpoint
            (e.g. ``ExponentialLR``, a rate multiplied by a factor per epoch, as the parser's
            recipe does).
        penalty: a loss transform such as :class:`~paramcorrupt.train.RegularizedLoss`.
        micro_batches: split each batch into this many micro-batches and accumulate.
        autocast_dtype: forward under ``torch.autocast`` with this dtype.
        grad_scaler: a ``torch.amp.GradScaler`` (give the same one to CorruptionResistant).
        max_grad_norm: clip the gradient norm, for plain optimisers (CorruptionResistant
            clips itself: set its ``max_grad_norm``).
        checkpoint: a file to save after every epoch (model, optimiser, scheduler, scaler,
            RNG and loader-generator states, the history).
        resume: continue from ``checkpoint`` when it exists. A checkpoint saved with another
            ``identity`` is refused with a ``ValueError`` before anything is loaded.
        identity: what makes this run this run (JSON values: the method and its settings, the
            epochs of the schedule, the seed...). Saved in the checkpoint and compared on
            resume, so that a changed recipe does not continue another recipe's optimiser and
            schedule states.
        progress: show a progress bar.
        on_epoch_end: called as ``on_epoch_end(epoch, record)`` after every epoch.
        distributed: data-parallel training under ``torch.distributed`` (default ``None``:
            when a process group is initialised). Every rank iterates the same global batches
            (seed the loader alike) and trains on its part (:func:`~paramcorrupt.parallel.batch_part`)
            through :func:`~paramcorrupt.parallel.ddp`; gradients are synchronised once per
            pass, so :class:`CorruptionResistant` picks a_hat (top-n included) from the
            all-reduced gradient, identically on every rank, and the parameters follow the
            single-process ones. Rank 0 alone writes the checkpoint.

    Returns:
        ``[{"epoch", "loss", "seconds", "lr", "skipped"}, ...]`` for every epoch, the resumed
        ones included.

    Raises:
        ValueError: for epochs < 1, a GradScaler not shared with CorruptionResistant,
            ``max_grad_norm`` with CorruptionResistant, or a checkpoint of another run.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> data = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
        >>> from paramcorrupt.losses import classification_loss
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> [round(r["epoch"]) for r in fit(model, opt, data, classification_loss, epochs=2)]
        [1, 2]
    """
    resistant = _check_fit(optimizer, epochs, scheduler_interval, grad_scaler, max_grad_norm)
    distributed = D.use_distributed(distributed)
    states = _States(model, optimizer, scheduler, grad_scaler, _generator_of(loader), _identity_text(identity))
    history, start_epoch = states.resume(checkpoint, distributed) if checkpoint is not None and resume else ([], 0)
    net = D.ddp(model) if distributed else model  # the passes run through DDP; the rest sees the model
    params = [p for p in model.parameters() if p.requires_grad]
    training = _Epochs(net, optimizer, loss_fn, params, resistant, penalty, micro_batches, autocast_dtype,
                       grad_scaler, max_grad_norm, scheduler, scheduler_interval, distributed)
    progress = progress and D.is_main_process()
    with mode(net, True):
        for epoch in range(start_epoch, epochs):
            record = training.epoch(progress_bar(loader, enabled=progress, desc=f"epoch {epoch + 1}/{epochs}"), epoch)
            history.append(record)
            logger.info("epoch %d: loss %.4f (%.1f s)", epoch + 1, record["loss"], record["seconds"])
            if checkpoint is not None and D.is_main_process():
                states.save(checkpoint, epoch + 1, history)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    return history
