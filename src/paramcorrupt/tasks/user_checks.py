"""The first-batch check of a user's ``--data`` factory (:func:`check_first_batch`): the
loaders are iterables of batches, the loss follows the protocol, the model runs on a batch and
every metric reads its output, each mistake named with its fix instead of a bare torch error.

It changes nothing: the model's mode and the random generators (torch's global one, the
loader's and its sampler's) are restored, so every row and every trained weight is what it
would be without the check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputTypeError, ParamCorruptError
from ..losses import as_batch_loss

__all__ = ["LOSS_PROTOCOL", "check_first_batch", "describe_batch", "remember_user_module", "user_code_location"]

#: what ``loss_fn`` must be, said in every error about it
LOSS_PROTOCOL = (
    "loss_fn(model, batch) -> a scalar loss tensor, (loss, weight) or BatchLoss(loss, weight, output), "
    "e.g. def loss_fn(model, batch): x, y = batch; out = model(x); "
    "return BatchLoss(F.cross_entropy(out, y), len(y), out)"
)


#: the files of the modules that --model/--data named (resolve): the user's own code
_USER_FILES: set[str] = set()
_PACKAGE = Path(__file__).resolve().parents[1]  # paramcorrupt itself: never the user's


def remember_user_module(module: Any) -> None:
    """Count ``module``'s file as the user's own code (for :func:`user_code_location`)."""
    file = getattr(module, "__file__", None)
    installed = file and any(part in ("site-packages", "dist-packages") for part in Path(file).parts)
    if file and not installed and _PACKAGE not in Path(file).resolve().parents:
        _USER_FILES.add(str(Path(file).resolve()))


def user_code_location(error: BaseException) -> str | None:
    """Where in the user's own code (a module ``--model``/``--data`` named) ``error`` was
    raised: ``"path/file.py:12, in forward"`` when the innermost frame of its traceback (or of
    the exception it was raised from) that is the user's or paramcorrupt's is the user's (their
    forward calling torch, say), None otherwise (paramcorrupt's own code failing is a bug)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        where = None
        tb = error.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            file = Path(code.co_filename).resolve()
            if str(file) in _USER_FILES:
                where = f"{code.co_filename}:{tb.tb_lineno}, in {code.co_name}"
            elif _PACKAGE in file.parents:
                where = None
            tb = tb.tb_next
        if where is not None:
            return where
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return None


def describe_batch(batch: Any) -> str:
    """A batch's structure in a few words: tensors by dtype and shape.

    >>> describe_batch((torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))
    '(float32[2, 3], int64[2])'
    """
    if isinstance(batch, Tensor):
        return f"{str(batch.dtype).replace('torch.', '')}{list(batch.shape)}"
    if isinstance(batch, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_batch(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, tuple | list):
        return "(" + ", ".join(describe_batch(v) for v in batch) + ")"
    return type(batch).__name__


def _check_loader(loader: Any, what: str, spec: str) -> None:
    if isinstance(loader, torch.utils.data.Dataset) and not isinstance(loader, torch.utils.data.IterableDataset):
        raise InputTypeError(
            f"--data {spec!r}: {what} is a data set ({type(loader).__name__}), not a loader of batches; "
            f"wrap it: torch.utils.data.DataLoader(dataset, batch_size=64)"
        )
    try:
        iter(loader)
    except TypeError:
        raise InputTypeError(
            f"--data {spec!r}: {what} is a {type(loader).__name__}, not an iterable of batches "
            "(a torch.utils.data.DataLoader, or a list of batches)"
        ) from None


@contextlib.contextmanager
def _untouched(model: nn.Module, loader: Any) -> Iterator[None]:
    """The model's train/eval modes and the random generators the loader draws from, as they were."""
    modes = [(m, m.training) for m in model.modules()]
    generators = [g for g in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None))
                  if isinstance(g, torch.Generator)]
    states = [g.get_state() for g in generators]
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        for module, training in modes:
            module.training = training
        for generator, state in zip(generators, states):
            generator.set_state(state)


def _raised_in(error: BaseException) -> str:
    """" (raised in FILE:LINE, in FUNCTION)" when ``error`` came from the user's own files."""
    where = user_code_location(error)
    return "" if where is None else f" (raised in {where})"


def _one_hot(batch: Any) -> bool:
    """Whether the batch's last tensor looks like one-hot labels (a float matrix of 0/1 rows)."""
    labels = batch[-1] if isinstance(batch, tuple | list) and batch else None
    return (isinstance(labels, Tensor) and labels.dim() == 2 and labels.is_floating_point()
            and bool(((labels == 0) | (labels == 1)).all()) and bool((labels.sum(1) == 1).all()))


def check_first_batch(model: nn.Module, loss_fn: Any, metrics: Mapping[str, Any], loader: Any, spec: str,
                      eval_loader: Any = None) -> None:
    """Run ``loss_fn(model, batch)`` and every metric once on the loader's first batch (no
    gradient, evaluation mode) and raise a user error naming the mistake and its fix: a data
    set given for a loader, a torch loss module given for ``loss_fn`` (the protocol is
    :data:`LOSS_PROTOCOL`), a model that fails on the batch, a metric that fails on the output
    (one-hot labels, for instance).

    Raises:
        InputTypeError, ParamCorruptError: as above.
    """
    _check_loader(loader, "gradient_loader", spec)
    if eval_loader is not None:
        _check_loader(eval_loader, "eval_loader", spec)
    if isinstance(loss_fn, nn.modules.loss._Loss):
        raise InputTypeError(
            f"--data {spec!r}: loss_fn is torch's {type(loss_fn).__name__}(), which takes (output, target); "
            f"the protocol is {LOSS_PROTOCOL}"
        )
    if iter(loader) is loader:  # a one-shot iterator: peeking would eat its first batch
        return
    with _untouched(model, loader):
        batch = next(iter(loader), None)
        if batch is None:
            raise ParamCorruptError(f"--data {spec!r}: gradient_loader gives no batch")
        shape = describe_batch(batch)
        hint = ("; the labels look one-hot: give class indices, labels.argmax(1) (int64, shape [B])"
                if _one_hot(batch) else "")
        model.eval()
        try:
            with torch.no_grad():
                result = as_batch_loss(loss_fn(model, batch), batch)
        except ParamCorruptError as error:
            raise ParamCorruptError(f"--data {spec!r}: on the first batch {shape}: {error}; the protocol is {LOSS_PROTOCOL}") from None
        except Exception as error:  # the user's model or loss on the user's batch: their fix
            text = str(error).splitlines()[0] if str(error) else ""
            raise ParamCorruptError(
                f"--data {spec!r}: loss_fn(model, batch) fails on the first batch {shape}: "
                f"{type(error).__name__}: {text}{_raised_in(error)}{hint or '; check that the model takes these inputs'}"
                f" (the protocol is {LOSS_PROTOCOL})"
            ) from error  # the CLI shows the user's traceback under -v
        for name, metric in metrics.items():
            try:
                with torch.no_grad():
                    metric(result.output, batch)
            except Exception as error:  # the user's metric on their batch
                text = str(error).splitlines()[0] if str(error) else ""
                raise ParamCorruptError(
                    f"--data {spec!r}: metric {name!r} fails on the first batch {shape} and the loss's output "
                    f"{describe_batch(result.output)}: {type(error).__name__}: {text}{_raised_in(error)}"
                    f"{hint or '; a metric is metric(output, batch) -> (total, count), output being what loss_fn returned as BatchLoss.output'}"
                ) from error
