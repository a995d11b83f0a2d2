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
from ._options import as_bool, as_int, load_into, load_weights, resolve_device
from .base import Task

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


def multi30k_task(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model: str = "small",
    d_model: Any = None,
    ffn_dim: Any = None,
    heads: Any = None,
    layers: Any = None,
    dropout: Any = None,
    normalize_before: Any = False,
    label_smoothing: Any = 0.1,
    min_freq: Any = 2,
    checkpoint: str | os.PathLike[str] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    eval_split: str = "test2016",
    epochs: Any = 0,
    lr: Any = 1e-3,
    warmup: Any = 500,
    max_tokens: Any = 2048,
    eval_max_tokens: Any = 8192,
    limit_train_sentences: Any = None,
    limit_eval_sentences: Any = None,
    seed: Any = 0,
    device: str | torch.device | None = None,
) -> Task:
    """The Multi30k De-En translation task (see the module's docstring).

    Every option may be given as a string (as ``--task-option KEY=VALUE`` passes it).

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
        lr, warmup: Adam's peak learning rate and warm-up steps when training here (the
            defaults, with 2,048-token batches, reach 37.4 and 38.5 BLEU on test2016 (seeds 0
            and 1, greedy) in 12 epochs with the "small" model:
            ``benchmarks/reproduce_transformer.py``).
        max_tokens, eval_max_tokens: token budgets of training / gradient and eval batches.
        limit_train_sentences, limit_eval_sentences: keep only the first pairs (tiny slices).
        seed: seeds the initialisation and the batch order.
        device: "cpu" (default), "cuda", "auto", ...

    Raises:
        FileNotFoundError: when the data (or the checkpoint) is not found.
        ValueError: for bad options or weights that do not fit the model.
    """
    from ..data.multi30k import TranslationBatches, Vocab
    from ..models.transformer import TRANSFORMERS, TransformerModel

    del cache_dir
    if checkpoint is not None and state_dict is not None:
        raise ParamCorruptError("give checkpoint or state_dict, not both")
    if model not in TRANSFORMERS:
        raise ParamCorruptError(f"unknown model {model!r}; expected one of {', '.join(TRANSFORMERS)}")
    seed = as_int(seed, "seed", minimum=0)
    epochs = as_int(epochs, "epochs", minimum=0)
    limit_train = as_int(limit_train_sentences, "limit_train_sentences", optional=True)
    limit_eval = as_int(limit_eval_sentences, "limit_eval_sentences", optional=True)
    device = resolve_device(device)
    key = None if data_dir is None else str(data_dir)
    train_de, train_en = (list(x[:limit_train]) for x in _split(key, "train"))
    eval_de, eval_en = (list(x[:limit_eval]) for x in _split(key, eval_split))
    src_vocab = Vocab(train_de, as_int(min_freq, "min_freq"))
    tgt_vocab = Vocab(train_en, as_int(min_freq, "min_freq"))

    options = dict(TRANSFORMERS[model])
    for name, value in (("d_model", d_model), ("ffn_dim", ffn_dim), ("heads", heads), ("layers", layers)):
        if value is not None:
            options[name] = as_int(value, name)
    if dropout is not None:
        options["dropout"] = float(dropout)
    torch.manual_seed(seed)
    net = TransformerModel(len(src_vocab), len(tgt_vocab), normalize_before=as_bool(normalize_before, "normalize_before"), **options)

    src_ids = [src_vocab.encode(s) for s in train_de]
    tgt_ids = [tgt_vocab.encode(s) for s in train_en]
    budget = as_int(max_tokens, "max_tokens")
    train_loader = TranslationBatches(src_ids, tgt_ids, max_tokens=budget, shuffle=True, seed=seed, device=device)
    gradient_loader = TranslationBatches(src_ids, tgt_ids, max_tokens=budget, device=device)
    eval_loader = TranslationBatches(
        [src_vocab.encode(s) for s in eval_de], [tgt_vocab.encode(s) for s in eval_en],
        max_tokens=as_int(eval_max_tokens, "eval_max_tokens"), refs=eval_en, device=device,
    )
    loss_fn = TranslationLoss(tgt_vocab, float(label_smoothing))
    trained = False
    history: list[dict[str, float]] = []
    if checkpoint is not None:
        state_dict = load_weights(checkpoint)
    if state_dict is not None:
        load_into(net, state_dict, f"the {model} transformer")
        trained = True
    net.to(device)
    recipe = MULTI30K_RECIPE.replace(lr=float(lr), warmup=as_int(warmup, "warmup"))
    if state_dict is None and epochs > 0:
        history = fit_recipe(net, train_loader, loss_fn, recipe, epochs=epochs)
        trained = True
    elif state_dict is None:
        logger.info("multi30k: no checkpoint given, the transformer is untrained")
    net.eval()
    return Task(
        name="multi30k",
        model=net,
        gradient_loader=gradient_loader,
        eval_loader=eval_loader,
        loss_fn=loss_fn,
        metrics={"bleu": BLEU()},
        primary_metric="bleu",
        higher_is_better=True,
        groupings={"type": transformer_groups_by_type, "position": transformer_groups_by_position},
        train_loader=train_loader,
        info={
            "seed": seed,
            "model": model,
            "architecture": {**options, "normalize_before": as_bool(normalize_before, "normalize_before")},
            "parameters": sum(p.numel() for p in net.parameters()),
            "trained": trained,
            "history": history,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "vocab": {"de": len(src_vocab), "en": len(tgt_vocab)},
            "train_pairs": len(train_de),
            "eval_split": eval_split,
            "eval_pairs": len(eval_de),
            "device": str(device),
            "micro_batches": 1,  # eval batches carry references: do not split them
            "recipe": recipe,
        },
    )
