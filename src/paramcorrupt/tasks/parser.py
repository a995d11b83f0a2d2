"""The ``ptb-dep`` and ``ud-ewt`` tasks: Chen & Manning's MLP dependency parser on NLTK's Penn
Treebank sample (unlabelled: UAS) and on UD English-EWT (labelled: UAS and LAS).

Data (:mod:`paramcorrupt.data.dependency`): ``data_dir`` or ``$PARAMCORRUPT_DATA`` names the
folder holding ``ptb_dep_nltk/dependency_treebank.zip`` (3,907 well-formed sentences,
unlabelled). A seeded random ``held_out`` share (10 % by default) of the sentences (or of the
files, ``split_by="file"``) is the evaluation set; the rest is the training set, its
vocabulary and the data the gradient is taken on.

Batches:

- ``train_loader`` / ``gradient_loader``: :class:`TransitionBatches`, mappings
  ``{"features": [B, 36 or 48], "target": [B]}`` of the static oracle's configurations of the
  training trees (non-projective trees left out), shuffled (training) or in order (gradient);
- ``eval_loader``: :class:`SentenceBatches`, the held-out sentences ``batch_size`` at a time,
  mappings with the oracle's ``features`` / ``target`` of the batch's projective trees and the
  encoded ``sentences``.

The loss (:class:`ParserLoss`) is the mean cross-entropy over oracle transitions (weight: the
number of transitions). On a batch that carries ``sentences`` it also parses them greedily with
the model as it is — corrupted weights included — and hands the predicted trees to the
metrics: ``uas`` (and ``las`` for labelled data), the share of non-punctuation tokens with
the right head, so ``evaluate(task.model, task.eval_loader, ...)`` gives the UAS. UAS is not
differentiable: gradient-based corruption uses the gradient of the loss, as in the paper.

``ud-ewt`` (:func:`ud_ewt_task`) is the same task on UD English-EWT's official split
(``ud_english_ewt/``): 12,544 labelled training trees (288 non-projective), the test (or dev)
split for evaluation, 48 features (words, Penn Treebank POS tags from the XPOS column, labels).

Groupings: ``"type"`` — ``embeddings`` (word, POS, label), ``hidden``, ``output``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ParamCorruptError
from ..groups import ParameterGroup, select
from ..losses import BatchLoss, describe_metric
from ..models.mlp_parser import (
    EncodedSentence,
    MLPParser,
    ParserVocab,
    attachment_scores,
    oracle,
    parse,
)
from ..train.recipe import Recipe, fit_recipe
from .base import Task, check_int
from .weights import load_given, resolve_device

__all__ = [
    "PARSER_RECIPE",
    "ParseOutput",
    "ParserLoss",
    "SentenceBatches",
    "TransitionBatches",
    "attachment_metric",
    "parser_groups",
    "ptb_dep_task",
    "ud_ewt_task",
]

logger = logging.getLogger(__name__)


def oracle_tensors(
    sentences: Sequence[EncodedSentence], num_labels: int, labelled: bool
) -> tuple[Tensor, Tensor, int]:
    """(features [N, F], transitions [N], number of non-projective trees left out)."""
    feats: list[list[int]] = []
    moves: list[int] = []
    skipped = 0
    for s in sentences:
        result = oracle(s, num_labels, labelled)
        if result is None:
            skipped += 1
            continue
        feats += result[0]
        moves += result[1]
    width = 48 if labelled else 36
    x = torch.tensor(feats, dtype=torch.long) if feats else torch.zeros(0, width, dtype=torch.long)
    return x, torch.tensor(moves, dtype=torch.long), skipped


class TransitionBatches:
    """Re-iterable ``{"features", "target"}`` batches of oracle configurations, in order or
    shuffled by a seeded generator."""

    def __init__(self, features: Tensor, target: Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        self.features, self.target = features, target
        self.batch_size, self.shuffle = check_int(batch_size, "batch_size"), shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.target) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        n = len(self.target)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield {"features": self.features[start : start + self.batch_size], "target": self.target[start : start + self.batch_size]}
            else:
                idx = order[start : start + self.batch_size]
                yield {"features": self.features[idx], "target": self.target[idx]}

    def shard(self, rank: int, world_size: int) -> TransitionBatches:
        """Every ``world_size``-th configuration from ``rank`` (one process's part)."""
        return TransitionBatches(
            self.features[rank::world_size], self.target[rank::world_size], self.batch_size,
            shuffle=self.shuffle, seed=int(self.generator.initial_seed()),
        )


class SentenceBatches:
    """Re-iterable batches of whole sentences: ``{"features", "target", "sentences"}``."""

    def __init__(self, sentences: Sequence[EncodedSentence], batch_size: int, num_labels: int, labelled: bool) -> None:
        self.sentences = list(sentences)
        self.batch_size = check_int(batch_size, "batch_size")
        self.batches = []
        self.non_projective = 0
        for start in range(0, len(self.sentences), self.batch_size):
            part = self.sentences[start : start + self.batch_size]
            x, y, skipped = oracle_tensors(part, num_labels, labelled)
            self.non_projective += skipped
            self.batches.append({"features": x, "target": y, "sentences": part})

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def shard(self, rank: int, world_size: int) -> SentenceBatches:
        part = object.__new__(SentenceBatches)
        part.sentences, part.batch_size = self.sentences, self.batch_size
        part.batches, part.non_projective = self.batches[rank::world_size], self.non_projective
        return part


class ParseOutput(NamedTuple):
    """What :class:`ParserLoss` hands to metrics."""

    logits: Tensor
    parses: list | None
    """greedy ``(heads, labels)`` per sentence of the batch, or None (no sentences)"""


class ParserLoss:
    """Cross-entropy over oracle transitions; parses the batch's ``sentences`` (if any)."""

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> BatchLoss:
        target = batch["target"]
        logits = model(batch["features"])
        if len(target):
            loss = F.cross_entropy(logits.float(), target)
        else:  # only non-projective trees in the batch: no oracle transitions
            loss = logits.sum() * 0.0
        parses = parse(model, batch["sentences"]) if "sentences" in batch else None
        return BatchLoss(loss, float(max(len(target), 1)), ParseOutput(logits, parses))


def attachment_metric(labelled: bool = False):
    """``uas`` (``labelled=False``) or ``las``: correct attachments / non-punctuation tokens."""

    def metric(output: ParseOutput, batch: Mapping[str, Any]) -> tuple[int, int]:
        if output.parses is None:
            raise ParamCorruptError("attachment scores need a batch with 'sentences' (the eval loader)")
        heads_ok, both_ok, total = attachment_scores(output.parses, batch["sentences"])
        return (both_ok if labelled else heads_ok), total

    return describe_metric(metric, higher_is_better=True, display_name="LAS" if labelled else "UAS", scale=100.0)


def parser_groups(model: nn.Module) -> dict[str, ParameterGroup]:
    """``embeddings`` (word, POS and label embeddings), ``hidden``, ``output``."""
    return {
        "embeddings": select(model, ["word_embedding", "pos_embedding", "label_embedding"], name="embeddings"),
        "hidden": select(model, "hidden", name="hidden"),
        "output": select(model, "output", name="output"),
    }


#: how the parser trains (the paper's appendix): Adam, lr 1e-3, weight decay 1e-8, the rate
#: multiplied by 0.9 at the end of every epoch (``ExponentialLR``, stepped per epoch), batches
#: of 1,024 transitions. The task trains with it when ``epochs > 0``; ``paramcorrupt train``
#: too. See :class:`~paramcorrupt.train.recipe.Recipe` for the fields.
PARSER_RECIPE = Recipe(
    optimizer="adam",
    lr=1e-3,
    weight_decay=1e-8,
    schedule="exponential",
    decay=0.9,
    scheduler_interval="epoch",
    batch_size=1024,
)


@functools.lru_cache(maxsize=2)
def _sentences(data_dir: str | None) -> tuple:
    from ..data.dependency import load_ptb_dependency

    return tuple(load_ptb_dependency(data_dir))


def ptb_dep_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    held_out: float = 0.1,
    split_by: str = "sentence",
    split_seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    min_count: int = 2,
    emb_size: int = 50,
    hidden_size: int = 200,
    activation: str = "cube",
    dropout: float = 0.5,
    epochs: int = 0,
    lr: float = 1e-3,
    batch_size: int = 1024,
    gradient_batch_size: int = 4096,
    eval_batch_size: int = 512,
    limit_train_sentences: int | None = None,
    limit_eval_sentences: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Task:
    """The PTB dependency-parsing task (see the module's docstring).

    The options are typed values; ``paramcorrupt probe/train --task-option KEY=VALUE``
    converts its strings by these annotations.

    Args:
        data_dir: the folder containing ``ptb_dep_nltk/dependency_treebank.zip``.
        cache_dir: accepted for symmetry with the other tasks (unused).
        held_out: the share of sentences (or files) held out for evaluation.
        split_by: "sentence" or "file".
        split_seed: seeds the split.
        checkpoint, state_dict: trained weights (a file, or the weights themselves).
        min_count: words seen fewer times in training map to UNK.
        emb_size, hidden_size, activation ("cube" or "relu"), dropout: the model.
        epochs: (0: the model stays untrained) train this many epochs in the task when no
            weights are given.
        lr: Adam's learning rate when training here (:data:`PARSER_RECIPE`, x 0.9 per epoch).
        batch_size, gradient_batch_size, eval_batch_size: transitions per training and
            gradient batch; sentences per evaluation batch.
        limit_train_sentences, limit_eval_sentences: keep only the first sentences of each
            part (tiny slices for tests).
        seed: seeds the initialisation and the batch order.
        device: "cpu" (default), "cuda", "auto", ...

    Raises:
        FileNotFoundError: when the archive (or the checkpoint) is not found.
        ValueError: for bad options or weights that do not fit the model.
    """
    from ..data.dependency import split_sentences

    options = {k: v for k, v in locals().items() if k in _MODEL_OPTIONS}
    sentences = _sentences(None if data_dir is None else str(data_dir))
    train, test = split_sentences(sentences, float(held_out), check_int(split_seed, "split_seed", minimum=0), split_by)
    return _parser_task("ptb-dep", train, test, **options)


@functools.lru_cache(maxsize=4)
def _ud_split(data_dir: str | None, split: str) -> tuple:
    from ..data.dependency import load_ud_ewt

    return tuple(load_ud_ewt(data_dir, split))


def ud_ewt_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    eval_split: str = "test",
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    min_count: int = 2,
    emb_size: int = 50,
    hidden_size: int = 200,
    activation: str = "cube",
    dropout: float = 0.5,
    epochs: int = 0,
    lr: float = 1e-3,
    batch_size: int = 1024,
    gradient_batch_size: int = 4096,
    eval_batch_size: int = 512,
    limit_train_sentences: int | None = None,
    limit_eval_sentences: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Task:
    """The labelled parsing task ``ud-ewt``: the same parser on UD English-EWT (12,544
    training trees, the official dev and test splits), with 48 features (18 words, 18 PTB
    POS tags, 12 labels) and the metrics ``uas`` and ``las``.

    ``eval_split`` is "test" (default) or "dev"; the training split is always "train". The
    other options (model, training, slices, seed, device, weights) are :func:`ptb_dep_task`'s.

    Raises:
        FileNotFoundError: when the data (or the checkpoint) is not found.
        ValueError: for bad options or weights that do not fit the model.
    """
    options = {k: v for k, v in locals().items() if k in _MODEL_OPTIONS}
    if eval_split not in ("dev", "test"):
        raise ParamCorruptError(f"eval_split must be 'dev' or 'test', got {eval_split!r}")
    key = None if data_dir is None else str(data_dir)
    train, test = list(_ud_split(key, "train")), list(_ud_split(key, eval_split))
    return _parser_task("ud-ewt", train, test, extra_info={"eval_split": eval_split}, **options)


def _limit(value: int | None, what: str) -> int | None:
    return None if value is None else check_int(value, what)


def _parser_task(
    name: str,
    train: list,
    test: list,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    min_count: int = 2,
    emb_size: int = 50,
    hidden_size: int = 200,
    activation: str = "cube",
    dropout: float = 0.5,
    epochs: int = 0,
    lr: float = 1e-3,
    batch_size: int = 1024,
    gradient_batch_size: int = 4096,
    eval_batch_size: int = 512,
    limit_train_sentences: int | None = None,
    limit_eval_sentences: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    extra_info: Mapping[str, Any] | None = None,
) -> Task:
    """The parser task on these training and evaluation trees (see :func:`ptb_dep_task`)."""
    if checkpoint is not None and state_dict is not None:
        raise ParamCorruptError("give checkpoint or state_dict, not both")
    seed = check_int(seed, "seed", minimum=0)
    epochs = check_int(epochs, "epochs", minimum=0)
    limit_train = _limit(limit_train_sentences, "limit_train_sentences")
    limit_eval = _limit(limit_eval_sentences, "limit_eval_sentences")
    resolved = resolve_device(device)
    train, test = train[:limit_train], test[:limit_eval]
    vocab = ParserVocab(train, check_int(min_count, "min_count"))
    num_labels = max(1, len(vocab.labels))
    train_enc = [vocab.encode(s) for s in train]
    test_enc = [vocab.encode(s) for s in test]
    x, y, non_projective = oracle_tensors(train_enc, num_labels, vocab.labelled)
    x, y = x.to(resolved), y.to(resolved)

    torch.manual_seed(seed)
    net = MLPParser(
        len(vocab.words), len(vocab.pos), len(vocab.labels),
        emb_size=check_int(emb_size, "emb_size"), hidden_size=check_int(hidden_size, "hidden_size"),
        activation=activation, dropout=float(dropout),
    )
    train_loader = TransitionBatches(x, y, batch_size, shuffle=True, seed=seed)
    eval_loader = SentenceBatches(test_enc, eval_batch_size, num_labels, vocab.labelled)
    if resolved.type != "cpu":
        for batch in eval_loader.batches:
            batch["features"], batch["target"] = batch["features"].to(resolved), batch["target"].to(resolved)
    history: list[dict[str, float]] = []
    loaded = trained = load_given(net, checkpoint, state_dict, "the MLP parser")
    net.to(resolved)
    recipe = PARSER_RECIPE.replace(lr=float(lr), batch_size=check_int(batch_size, "batch_size"))
    if not loaded and epochs > 0:
        history = fit_recipe(net, train_loader, ParserLoss(), recipe, epochs=epochs)
        trained = True
    elif not loaded:
        logger.info("%s: no checkpoint given, the parser is untrained", name)
    net.eval()

    metrics: dict[str, Any] = {"uas": attachment_metric(False)}
    if vocab.labelled:
        metrics["las"] = attachment_metric(True)
    return Task(
        name=name,
        model=net,
        gradient_loader=TransitionBatches(x, y, gradient_batch_size),
        eval_loader=eval_loader,
        loss_fn=ParserLoss(),
        metrics=metrics,
        primary_metric="uas",
        groupings={"type": parser_groups, "position": parser_groups},
        train_loader=train_loader,
        info={
            "seed": seed,
            "trained": trained,
            "history": history,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "train_sentences": len(train),
            "eval_sentences": len(test),
            "train_transitions": len(y),
            "non_projective_train": non_projective,
            "non_projective_eval": eval_loader.non_projective,
            "vocab": {"words": len(vocab.words), "pos": len(vocab.pos), "labels": len(vocab.labels)},
            "labelled": vocab.labelled,
            "parameters": sum(p.numel() for p in net.parameters()),
            "device": str(resolved),
            "recipe": recipe,
            **(extra_info or {}),
        },
    )


#: the options of the model, its training and the slices, shared by both parser tasks
_MODEL_OPTIONS = tuple(inspect.signature(_parser_task).parameters)[3:-1]
