"""The ``multi30k`` task: a Transformer (fairseq ``transformer_iwslt_de_en`` layout, scaled
down) translating German to English on Multi30k, the paper's De-En stand-in.

Data (:mod:`paramcorrupt.data.multi30k`): the tokenised, lower-cased files under
``multi30k/tok``; word vocabularies from the training split (``min_freq``). Loaders yield
mappings ``{"src", "tgt_in", "target"}`` under a token budget:

- ``train_loader``: the training pairs, batches shuffled each pass;
- ``gradient_loader``: the training pairs in order (the paper's dataset gradient);
- ``eval_loader``: ``eval_split`` ("test2016" by default; "val" for model selection), its
  batches also carrying the references.

The loss (:class:`TranslationLoss`) is the label-smoothed token cross-entropy (padding not
counted; weight: the target tokens). On a batch with references it also decodes the sources
greedily with the model as it is (corrupted or not) and hands the hypotheses to the ``bleu``
metric (:class:`BLEU`), a corpus BLEU on the tokenised text: it returns each batch's n-gram
statistics, :func:`paramcorrupt.evaluate` sums them over the pass (and over the processes of
a distributed evaluation) and turns the sum into BLEU with the metric's ``finalize`` — so
``evaluate(model, eval_loader, ...)["bleu"]`` is the corpus BLEU (0-100). It equals
sacrebleu's ``corpus_bleu(..., tokenize="none")`` (checked in the tests when sacrebleu is
installed).
BLEU is not differentiable: gradient-based corruption uses the gradient of the loss.

Groupings: ``"type"`` — ``embedding``, ``attention``, ``ffn`` (``fc1``/``fc2``), ``layernorm``;
``"position"`` — ``encoder.layers.N`` and ``decoder.layers.N`` (Table 5, Figure 4 d, f).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ParamCorruptError
from ..groups import ParameterGroup, select
from ..losses import BatchLoss
from ..train.recipe import Recipe, fit_recipe
from .base import Task, check_int
from .weights import load_given, resolve_device

__all__ = [
    "BLEU",
    "MULTI30K_RECIPE",
    "TranslationLoss",
    "TranslationOutput",
    "bleu_score",
    "bleu_stats",
    "corpus_bleu",
    "multi30k_task",
    "transformer_groups_by_position",
    "transformer_groups_by_type",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# BLEU


def bleu_stats(hypothesis: Sequence[str], reference: Sequence[str], order: int = 4) -> list[int]:
    """[matches_1..order, totals_1..order, hypothesis length, reference length] of one pair."""
    stats = []
    totals = []
    for n in range(1, order + 1):
        hyp = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
        ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
        stats.append(sum(min(c, ref[g]) for g, c in hyp.items()))
        totals.append(max(len(hypothesis) - n + 1, 0))
    return stats + totals + [len(hypothesis), len(reference)]


def bleu_score(stats: Sequence[float], order: int = 4) -> float:
    """Corpus BLEU (0-100) from summed :func:`bleu_stats` (no smoothing, as sacrebleu's
    default: 0 when some n-gram order has no match)."""
    matches, totals = stats[:order], stats[order : 2 * order]
    hyp_len, ref_len = stats[2 * order], stats[2 * order + 1]
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / order
    brevity = 0.0 if hyp_len >= ref_len else 1.0 - ref_len / hyp_len
    return 100.0 * math.exp(log_precision + brevity)


def corpus_bleu(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU of tokenised sentences: sacrebleu's (``tokenize="none"``) when installed,
    else :func:`bleu_score` (the same number).

    Example:
        >>> round(corpus_bleu([["a", "cat", "sat", "on", "the", "mat"]], [["a", "cat", "sat", "on", "the", "mat"]]), 6)
        100.0
    """
    try:
        import sacrebleu
    except ImportError:
        sums = [0] * 10
        for h, r in zip(hypotheses, references):
            sums = [a + b for a, b in zip(sums, bleu_stats(h, r))]
        return bleu_score(sums)
    return float(
        sacrebleu.corpus_bleu([" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]], tokenize="none").score
    )


class TranslationOutput(NamedTuple):
    """What :class:`TranslationLoss` hands to metrics."""

    logits: Tensor
    hypotheses: list | None
    """the greedy translations (word lists), or None (a batch without references)"""


class BLEU:
    """The ``bleu`` metric: corpus BLEU over an evaluation pass (see the module's docstring).

    Its per-batch total is the vector of summed :func:`bleu_stats` of the batch's sentences;
    :func:`paramcorrupt.evaluate` sums the vectors over the pass (and over the processes of a
    distributed evaluation) and calls :meth:`finalize` on the sum.

    Example:
        >>> from types import SimpleNamespace
        >>> metric = BLEU()
        >>> stats, count = metric(SimpleNamespace(hypotheses=[["a", "b", "c", "d"]]), {"refs": [["a", "b", "c", "d"]]})
        >>> count, metric.finalize(stats)
        (1, 100.0)
    """

    higher_is_better = True
    display_name = "BLEU"
    scale = 1.0
    unit = "BLEU"

    def __call__(self, output: TranslationOutput, batch: Mapping[str, Any]) -> tuple[list[int], int]:
        if output.hypotheses is None or "refs" not in batch:
            raise ParamCorruptError("bleu needs a batch with references (the eval loader)")
        stats = [0] * 10
        for h, r in zip(output.hypotheses, batch["refs"]):
            stats = [a + b for a, b in zip(stats, bleu_stats(h, r))]
        return stats, len(batch["refs"])

    @staticmethod
    def finalize(stats: Sequence[float]) -> float:
        return bleu_score(stats)


class TranslationLoss:
    """Label-smoothed token cross-entropy; decodes batches that carry references."""

    def __init__(self, vocab: Any, label_smoothing: float = 0.1, pad: int = 0) -> None:
        self.vocab, self.label_smoothing, self.pad = vocab, label_smoothing, pad

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> BatchLoss:
        target = batch["target"]
        logits = model(batch["src"], batch["tgt_in"])
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
            ignore_index=self.pad, label_smoothing=self.label_smoothing,
        )
        tokens = int((target != self.pad).sum())
        hypotheses = None
        if "refs" in batch:
            from ..models.transformer import greedy_decode

            hypotheses = [self.vocab.decode(h) for h in greedy_decode(model, batch["src"])]
        return BatchLoss(loss, float(max(tokens, 1)), TranslationOutput(logits, hypotheses))


# ---------------------------------------------------------------------------------------------
# groups


def transformer_groups_by_type(model: nn.Module) -> dict[str, ParameterGroup]:
    """``embedding``, ``attention``, ``ffn``, ``layernorm`` (Figure 4 b); ``output`` too when
    the output projection is not tied."""
    groups = {
        "embedding": select(model, types="embedding", name="embedding"),
        "attention": select(model, types="attention", name="attention"),
        "ffn": select(model, ["*.fc1", "*.fc2"], name="ffn"),
        "layernorm": select(model, types="norm", name="layernorm"),
    }
    if getattr(model.decoder, "output_projection", None) is not None:
        groups["output"] = select(model, "decoder.output_projection", name="output")
    return groups


def transformer_groups_by_position(model: nn.Module) -> dict[str, ParameterGroup]:
    """``encoder.layers.0`` ... ``decoder.layers.{N-1}`` (Table 5, Figure 4 d, f)."""
    groups = {}
    for part in ("encoder", "decoder"):
        for i in range(len(getattr(model, part).layers)):
            name = f"{part}.layers.{i}"
            groups[name] = select(model, name, name=name)
    return groups


# ---------------------------------------------------------------------------------------------
# training


#: how the Transformer trains (the defaults of :func:`multi30k_task`; the full run of
#: ``benchmarks/reproduce_transformer.py`` adds bfloat16 autocast): AdamW (0.9, 0.98), weight
#: decay 1e-4, peak lr 1e-3 after fairseq's inverse-sqrt warm-up of 500 steps, batches of
#: 2,048 tokens (the task's ``max_tokens``), 12 epochs; the loss's label smoothing (0.1) is
#: the task's ``label_smoothing``.
MULTI30K_RECIPE = Recipe(
    optimizer="adamw",
    betas=(0.9, 0.98),
    lr=1e-3,
    schedule="inverse_sqrt",
    warmup=500,
    weight_decay=1e-4,
    epochs=12,
)


# ---------------------------------------------------------------------------------------------
# the task


@functools.lru_cache(maxsize=8)
def _split(data_dir: str | None, split: str) -> tuple:
    from ..data.multi30k import load_multi30k

    de, en = load_multi30k(data_dir, split)
    return tuple(map(tuple, de)), tuple(map(tuple, en))


def _limit(value: int | None, what: str) -> int | None:
    return None if value is None else check_int(value, what)


def _transformer(
    model: str,
    sizes: Mapping[str, int | None],
    dropout: float | None,
    normalize_before: bool,
    vocab_sizes: tuple[int, int],
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """The named transformer with its sizes overridden, initialised from ``seed``; and its options."""
    from ..models.transformer import TRANSFORMERS, TransformerModel

    options = dict(TRANSFORMERS[model])
    for name, value in sizes.items():
        if value is not None:
            options[name] = check_int(value, name)
    if dropout is not None:
        options["dropout"] = float(dropout)
    torch.manual_seed(seed)
    return TransformerModel(*vocab_sizes, normalize_before=bool(normalize_before), **options), options


def _pairs(
    data_dir: str | os.PathLike[str] | None, eval_split: str, limit_train: int | None, limit_eval: int | None, min_freq: int
) -> tuple[tuple[list, list, list, list], tuple[Any, Any]]:
    """((train De, train En, eval De, eval En) tokenised sentences, the first ones only with a
    limit; (De, En) vocabularies of the training sentences)."""
    from ..data.multi30k import Vocab

    key = None if data_dir is None else str(data_dir)
    train_de, train_en = (list(x[:limit_train]) for x in _split(key, "train"))
    eval_de, eval_en = (list(x[:limit_eval]) for x in _split(key, eval_split))
    min_freq = check_int(min_freq, "min_freq")
    return (train_de, train_en, eval_de, eval_en), (Vocab(train_de, min_freq), Vocab(train_en, min_freq))


def _loaders(
    vocabs: tuple[Any, Any],
    train: tuple[list, list],
    evaluation: tuple[list, list],
    *,
    max_tokens: int,
    eval_max_tokens: int,
    seed: int,
    device: torch.device,
) -> tuple[Any, Any, Any]:
    """The training (shuffled), gradient and evaluation loaders of token-budget batches."""
    from ..data.multi30k import TranslationBatches

    src_vocab, tgt_vocab = vocabs
    src_ids = [src_vocab.encode(s) for s in train[0]]
    tgt_ids = [tgt_vocab.encode(s) for s in train[1]]
    train_loader = TranslationBatches(src_ids, tgt_ids, max_tokens=max_tokens, shuffle=True, seed=seed, device=device)
    gradient_loader = TranslationBatches(src_ids, tgt_ids, max_tokens=max_tokens, device=device)
    eval_loader = TranslationBatches(
        [src_vocab.encode(s) for s in evaluation[0]], [tgt_vocab.encode(s) for s in evaluation[1]],
        max_tokens=eval_max_tokens, refs=evaluation[1], device=device,
    )
    return train_loader, gradient_loader, eval_loader


def _load_or_fit(
    net: nn.Module,
    what: str,
    checkpoint: str | os.PathLike[str] | None,
    state_dict: Mapping[str, Tensor] | None,
    device: torch.device,
    training: tuple[Any, Any, Recipe, int],
) -> tuple[bool, list[dict[str, float]]]:
    """Load the given weights, else train ``epochs`` epochs here (none: the model stays
    untrained); the model ends on ``device`` in evaluation mode. (Whether it is trained, the
    training history.)"""
    loaded = load_given(net, checkpoint, state_dict, what)
    net.to(device)
    train_loader, loss_fn, recipe, epochs = training
    history: list[dict[str, float]] = []
    if not loaded and epochs > 0:
        history = fit_recipe(net, train_loader, loss_fn, recipe, epochs=epochs)
    elif not loaded:
        logger.info("multi30k: no checkpoint given, the transformer is untrained")
    net.eval()
    return loaded or epochs > 0, history


def multi30k_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model: str = "small",
    d_model: int | None = None,
    ffn_dim: int | None = None,
    heads: int | None = None,
    layers: int | None = None,
    dropout: float | None = None,
    normalize_before: bool = False,
    label_smoothing: float = 0.1,
    min_freq: int = 2,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    eval_split: str = "test2016",
    epochs: int = 0,
    lr: float = 1e-3,
    warmup: int = 500,
    max_tokens: int = 2048,
    eval_max_tokens: int = 8192,
    limit_train_sentences: int | None = None,
    limit_eval_sentences: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Task:
    """The Multi30k De-En translation task (see the module's docstring).

    The options are typed values; ``paramcorrupt probe/train --task-option KEY=VALUE``
    converts its strings by these annotations.

    Args:
        data_dir: the folder containing ``multi30k/tok/`` (default: ``$PARAMCORRUPT_DATA``).
        cache_dir: accepted for symmetry with the other tasks (unused).
        model: "small" (default: 3+3 layers, d 256, ffn 512, 4 heads), "iwslt" (fairseq's
            transformer_iwslt_de_en: 6+6, 512, 1024, 4) or "tiny".
        d_model, ffn_dim, heads, layers, dropout, normalize_before: override the model's.
        label_smoothing: of the loss (fairseq's 0.1).
        min_freq: vocabulary threshold on the training split.
        checkpoint / state_dict: trained weights.
        eval_split: "test2016" (default), "val", "test2017", "test2018", "mscoco".
        epochs: train this many epochs here when no weights are given (default 0: untrained).
        lr, warmup: Adam's peak learning rate and warm-up steps when training here (the defaults,
            with 2,048-token batches, reach 37.4 and 38.5 BLEU on test2016 (seeds 0 and 1,
            greedy) in 12 epochs with the "small" model: ``benchmarks/reproduce_transformer.py``).
        max_tokens, eval_max_tokens: token budgets of training / gradient and eval batches.
        limit_train_sentences, limit_eval_sentences: keep only the first pairs (tiny slices).
        seed: seeds the initialisation and the batch order.
        device: "cpu" (default), "cuda", "auto", ...

    Raises:
        FileNotFoundError: when the data (or the checkpoint) is not found.
        ValueError: for bad options or weights that do not fit the model.
    """
    from ..models.transformer import TRANSFORMERS

    del cache_dir
    if checkpoint is not None and state_dict is not None:
        raise ParamCorruptError("give checkpoint or state_dict, not both")
    if model not in TRANSFORMERS:
        raise ParamCorruptError(f"unknown model {model!r}; expected one of {', '.join(TRANSFORMERS)}")
    seed, epochs = check_int(seed, "seed", minimum=0), check_int(epochs, "epochs", minimum=0)
    limits = _limit(limit_train_sentences, "limit_train_sentences"), _limit(limit_eval_sentences, "limit_eval_sentences")
    resolved = resolve_device(device)
    (train_de, train_en, eval_de, eval_en), (src_vocab, tgt_vocab) = _pairs(data_dir, eval_split, *limits, min_freq)
    sizes = {"d_model": d_model, "ffn_dim": ffn_dim, "heads": heads, "layers": layers}
    net, options = _transformer(model, sizes, dropout, normalize_before, (len(src_vocab), len(tgt_vocab)), seed)
    train_loader, gradient_loader, eval_loader = _loaders(
        (src_vocab, tgt_vocab), (train_de, train_en), (eval_de, eval_en), max_tokens=check_int(max_tokens, "max_tokens"),
        eval_max_tokens=check_int(eval_max_tokens, "eval_max_tokens"), seed=seed, device=resolved,
    )
    loss_fn = TranslationLoss(tgt_vocab, float(label_smoothing))
    recipe = MULTI30K_RECIPE.replace(lr=float(lr), warmup=check_int(warmup, "warmup"))
    trained, history = _load_or_fit(net, f"the {model} transformer", checkpoint, state_dict, resolved,
                                    (train_loader, loss_fn, recipe, epochs))
    return Task(
        name="multi30k", model=net, gradient_loader=gradient_loader, eval_loader=eval_loader, loss_fn=loss_fn,
        metrics={"bleu": BLEU()}, primary_metric="bleu",
        groupings={"type": transformer_groups_by_type, "position": transformer_groups_by_position},
        train_loader=train_loader,
        info={
            "seed": seed,
            "model": model,
            "architecture": {**options, "normalize_before": bool(normalize_before)},
            "parameters": sum(p.numel() for p in net.parameters()),
            "trained": trained,
            "history": history,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "vocab": {"de": len(src_vocab), "en": len(tgt_vocab)},
            "train_pairs": len(train_de),
            "eval_split": eval_split,
            "eval_pairs": len(eval_de),
            "device": str(resolved),
            "micro_batches": 1,  # eval batches carry references: do not split them
            "recipe": recipe,
        },
    )
