"""Hugging Face ``transformers`` models: dict batches, ``ModelOutput``, local checkpoints.

Everything here works offline: checkpoints are local folders read with
``from_pretrained(path, local_files_only=True, use_safetensors=True)`` (no hub access, no
pickled weights), and tiny models for tests are built from a config
(``GPT2Config``, ``LlamaConfig``, ``BertConfig``, ...) with :func:`build_from_config`.

- :func:`hf_loss`: the library's loss interface for any HF model that computes its own loss:
  ``model(**batch).loss`` with the batch's weight counted the way the model averages (tokens
  that are predicted for a causal LM, labelled tokens for token-level heads, examples for
  sequence classification), so the data set loss and gradient are exact over uneven batches.
- metrics reading ``.logits`` / ``.loss`` of the ``ModelOutput``: :func:`hf_accuracy`,
  :class:`HFLogPerplexity`, :class:`HFPerplexity` (``finalize`` = exp), :func:`hf_token_accuracy`.
- :func:`hf_task`: a :class:`~paramcorrupt.tasks.Task` from a local checkpoint folder (or a
  config, or a model) and token data (a ``.safetensors``/``.pt`` file of token ids, a text
  file tokenised with the folder's tokenizer, or seeded synthetic tokens), with the groupings
  ``type`` (embedding, attention, mlp, norm, head: :func:`~paramcorrupt.groups.groups_by_component`)
  and ``position``/``layer`` (input, layer0..layerN-1, output: :func:`~paramcorrupt.groups.groups_by_layer`).

The task is registered as ``hf`` (head read from the checkpoint's ``config.architectures``),
``hf-causal-lm`` and ``hf-seq-cls``::

    paramcorrupt probe --task hf-causal-lm --task-option path=DIR --by type --out hf.jsonl
    paramcorrupt train --task hf-seq-cls --task-option path=DIR --method resistant --out runs/r0
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputTypeError, ParamCorruptError
from ..groups import groups_by_component, groups_by_layer
from ..losses import BatchLoss, describe_metric
from ..train.recipe import Recipe
from .base import Task, check_int
from .hf_data import DataFiles, DictBatches, require_transformers, split_rows, synthetic_data

__all__ = [
    "HEADS",
    "DictBatches",
    "HFLogPerplexity",
    "HFPerplexity",
    "build_from_config",
    "head_of",
    "hf_accuracy",
    "hf_loss",
    "hf_task",
    "hf_token_accuracy",
    "is_causal_lm",
    "load_hf_model",
]

#: the model heads :func:`hf_task` supports, by the names the task options take
HEADS = ("causal-lm", "sequence-classification")
_HEAD_ALIASES = {
    "causal-lm": "causal-lm",
    "causal_lm": "causal-lm",
    "clm": "causal-lm",
    "lm": "causal-lm",
    "sequence-classification": "sequence-classification",
    "sequence_classification": "sequence-classification",
    "seq-cls": "sequence-classification",
    "classification": "sequence-classification",
}

#: what a training run of an HF task uses (``paramcorrupt train``): Adam at 1e-3, clipping 1.0
HF_RECIPE = Recipe(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule=None, max_grad_norm=1.0, epochs=1)


# -- loss and metrics ---------------------------------------------------------------------------


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model (its labels are shifted by one inside).

    Read from the class name (``...ForCausalLM``, ``...LMHeadModel``), as ``transformers``
    names them.
    """
    name = type(model).__name__
    return name.endswith("ForCausalLM") or name.endswith("LMHeadModel")


def _labels(batch: Any) -> Tensor:
    if not isinstance(batch, Mapping):
        raise InputTypeError(
            f"a Hugging Face batch is a mapping of keyword inputs (input_ids, attention_mask, labels); got {type(batch).__name__}"
        )
    if "labels" not in batch:
        raise ParamCorruptError(f"the batch has no 'labels' (keys: {', '.join(batch)}); the model cannot compute its loss")
    return batch["labels"]


def _weight(model: nn.Module, labels: Tensor, ignore_index: int = -100) -> float:
    """The number of terms the model's mean loss averages over."""
    if labels.dim() >= 2 and not labels.is_floating_point():
        if is_causal_lm(model):  # position t predicts labels[t + 1]
            return float((labels[..., 1:] != ignore_index).sum())
        return float((labels != ignore_index).sum())
    return float(labels.shape[0])


def hf_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> BatchLoss:
    """``model(**batch)``'s own loss (``outputs.loss``), weighted as the model averages.

    The weight is the number of predicted tokens for a causal LM (labels shifted by one,
    ``-100`` ignored), of labelled tokens for other token-level labels, and the number of
    examples for sequence-level labels. The ``ModelOutput`` is handed to the metrics.

    Raises:
        TypeError: for a batch that is not a mapping.
        ValueError: when the batch has no labels or the model returns no loss.
    """
    labels = _labels(batch)
    outputs = model(**batch)
    loss = getattr(outputs, "loss", None)
    if loss is None and isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    if loss is None:
        raise ParamCorruptError(f"{type(model).__name__} returned no loss for a batch with labels")
    return BatchLoss(loss, max(_weight(model, labels), 1.0), outputs)


def _logits_of(output: Any) -> Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None:
        raise ParamCorruptError(f"the model output ({type(output).__name__}) has no logits")
    return logits


def hf_accuracy(output: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, int]:
    """Sequence-classification accuracy: ``output.logits.argmax(-1)`` against ``labels``."""
    labels = _labels(batch)
    return (_logits_of(output).argmax(dim=-1) == labels).sum(), labels.numel()


def hf_token_accuracy(output: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Next-token accuracy of a causal LM (position t predicts labels[t + 1]; -100 ignored)."""
    labels = _labels(batch)[..., 1:]
    predicted = _logits_of(output)[..., :-1, :].argmax(dim=-1)
    keep = labels != -100
    return ((predicted == labels) & keep).sum(), keep.sum()


describe_metric(hf_accuracy, higher_is_better=True, display_name="Accuracy", scale=100.0)
describe_metric(hf_token_accuracy, higher_is_better=True, display_name="Token accuracy", scale=100.0)


class HFLogPerplexity:
    """``log_ppl``: the token-mean cross-entropy in nats, from ``output.loss`` (no recomputation)."""

    higher_is_better = False
    display_name = "Log-perplexity"
    scale = 1.0
    unit = ""

    def __call__(self, output: Any, batch: Mapping[str, Tensor]) -> tuple[float, float]:
        tokens = float((_labels(batch)[..., 1:] != -100).sum())
        loss = getattr(output, "loss", None)
        if loss is None:
            raise ParamCorruptError("the model output has no loss: the batch needs labels")
        return float(loss.detach()) * tokens, tokens


class HFPerplexity(HFLogPerplexity):
    """``perplexity`` = exp(aggregated log-perplexity); ``inf`` beyond float range."""

    display_name = "Perplexity"

    @staticmethod
    def finalize(log_ppl: float) -> float:
        return math.exp(log_ppl) if log_ppl < 709.0 else math.inf


# -- models -------------------------------------------------------------------------------------


def head_of(architectures: Any, what: str = "the checkpoint") -> str:
    """The head type of an architecture list (``config.architectures``).

    Raises:
        ValueError: naming the architectures, when no supported head is recognised.
    """
    for arch in architectures or ():
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "causal-lm"
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classification"
    raise ParamCorruptError(
        f"cannot tell the head type of {what} from its architectures {list(architectures or [])}; "
        f"give head= one of {', '.join(HEADS)}"
    )


def _head(head: str | None) -> str | None:
    if head is None or head == "auto":
        return None
    if head not in _HEAD_ALIASES:
        raise ParamCorruptError(f"unknown head type {head!r}; expected one of {', '.join(HEADS)} (or auto)")
    return _HEAD_ALIASES[head]


def _auto_class(head: str) -> Any:
    transformers = require_transformers()
    return transformers.AutoModelForCausalLM if head == "causal-lm" else transformers.AutoModelForSequenceClassification


def _dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if str(dtype) not in names:
        raise ParamCorruptError(f"unknown dtype {dtype!r}; expected one of {', '.join(names)}")
    return names[str(dtype)]


def load_hf_model(path: str | os.PathLike[str], head: str | None = None, *, dtype: Any = None) -> tuple[nn.Module, str]:
    """A model from a local checkpoint folder (``config.json`` + ``*.safetensors``), offline.

    Args:
        path: the folder ``save_pretrained`` wrote.
        head: "causal-lm", "sequence-classification" or None/"auto" (from ``config.architectures``).
        dtype: load in this dtype ("float32", "bfloat16", ...; default: the checkpoint's).

    Returns:
        ``(model, head)``, the model in evaluation mode.

    Raises:
        ValueError: when the folder is not a Hugging Face checkpoint, for an unknown head type,
            or when the weights cannot be loaded.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ParamCorruptError(f"{folder} is not a Hugging Face checkpoint folder (no config.json in it)")
    transformers = require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ParamCorruptError(f"{folder}/config.json is not a Hugging Face config: {str(error).splitlines()[0]}") from None
    chosen = _head(head) or head_of(getattr(config, "architectures", None), str(folder))
    if not any(folder.glob("*.safetensors")):
        raise ParamCorruptError(f"{folder} holds no .safetensors weights (only safetensors checkpoints are loaded)")
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    if _dtype(dtype) is not None:
        kwargs["dtype"] = _dtype(dtype)
    try:
        model = _auto_class(chosen).from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as error:
        raise ParamCorruptError(f"cannot load a {chosen} model from {folder}: {str(error).splitlines()[0]}") from None
    return model.eval(), chosen


def build_from_config(config: Any, head: str | None = None, *, seed: int = 0) -> tuple[nn.Module, str]:
    """A randomly initialised model (seeded) from a ``transformers`` config: no file, no hub."""
    chosen = _head(head) or head_of(getattr(config, "architectures", None), type(config).__name__)
    torch.manual_seed(seed)
    model = _auto_class(chosen).from_config(config)
    return model.eval(), chosen


# -- the task -----------------------------------------------------------------------------------


def _hf_model(
    path: str | os.PathLike[str] | None,
    head: str | None,
    model: nn.Module | None,
    config: object | None,
    dtype: str | torch.dtype | None,
    seed: int,
) -> tuple[nn.Module, str, Path | None]:
    """(the model in evaluation mode, its head, the folder of its tokenizer or None) from
    exactly one of ``path``, ``config`` and ``model``."""
    given = [name for name, value in (("path", path), ("config", config), ("model", model)) if value is not None]
    if len(given) != 1:
        raise ParamCorruptError(f"give exactly one of path, config or model for a Hugging Face task (got {', '.join(given) or 'none'})")
    tokenizer_dir = None
    if path is not None:
        net, chosen = load_hf_model(path, head, dtype=dtype)
        tokenizer_dir = Path(path).expanduser()
    elif config is not None:
        net, chosen = build_from_config(config, head, seed=seed)
    else:
        assert model is not None
        net = model
        chosen = _head(head) or head_of([type(model).__name__], type(model).__name__)
    if dtype is not None and path is None:
        net = net.to(_dtype(dtype))
    net.eval()
    cfg = net.config
    if getattr(cfg, "use_cache", None):
        cfg.use_cache = False  # no key/value caches kept in outputs
    return net, chosen, tokenizer_dir


def _metrics(head: str, num_labels: int) -> tuple[dict[str, Any], str, float | None]:
    """(metrics, the primary one, its chance level) of a head: a k-class classifier's chance
    accuracy is 1 / k (the report's dotted line); a language model has none."""
    if head == "causal-lm":
        return {"log_ppl": HFLogPerplexity(), "perplexity": HFPerplexity(), "token_accuracy": hf_token_accuracy}, "log_ppl", None
    return {"accuracy": hf_accuracy}, "accuracy", 1.0 / num_labels if num_labels > 1 else None


def hf_task(
    path: str | os.PathLike[str] | None = None,
    *,
    head: str | None = None,
    model: nn.Module | None = None,
    config: object | None = None,
    data: str | os.PathLike[str] | None = None,
    eval_data: str | os.PathLike[str] | None = None,
    seq_len: int = 32,
    examples: int = 64,
    eval_examples: int = 32,
    batch_size: int = 8,
    eval_batch_size: int | None = None,
    dtype: str | torch.dtype | None = None,
    lr: float | None = None,
    epochs: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> Task:
    """A task around a Hugging Face model: a local checkpoint folder, a config or a model.

    Exactly one of ``path`` (a folder ``save_pretrained`` wrote; loaded offline, safetensors
    only), ``config`` (a ``transformers`` config: a seeded random model) or ``model`` (an HF
    model object) gives the model. The options are typed values; ``--task-option KEY=VALUE``
    converts its strings by these annotations.

    Args:
        path: the checkpoint folder.
        head: "causal-lm", "sequence-classification", or None/"auto" (from the config's
            ``architectures``, or the model's class).
        model, config: the model, or a ``transformers`` config (``PretrainedConfig``) to
            build one from.
        data: token data: a ``.safetensors``/``.pt`` file with ``input_ids`` [N, L] (and
            ``attention_mask``, ``labels``; a causal LM's labels default to its inputs), a
            text file tokenised with the folder's tokenizer (``.txt``: running text for a
            causal LM, cut into ``seq_len`` blocks; ``.tsv``: ``LABEL<TAB>TEXT`` lines for
            classification), or None/"synthetic": seeded random tokens (a learnable pattern).
        eval_data: the evaluation data (default: the last 20% of ``data``; synthetic: a
            second seeded draw of ``eval_examples`` rows).
        seq_len, examples, eval_examples: synthetic data's shape (and the text block length).
        batch_size, eval_batch_size: training and gradient/evaluation batch sizes.
        dtype: the parameters' dtype ("float32", "bfloat16"; default: as loaded).
        lr, epochs: override :data:`HF_RECIPE` for ``paramcorrupt train``.
        seed: seeds the synthetic data, a config's initialisation and the training order.
        data_dir: accepted (the CLI passes ``--data-dir``), unused unless ``data`` is relative.

    Raises:
        ValueError: for no or several model sources, a folder that is not a checkpoint, an
            unknown head type or dtype, or unreadable data.
    """
    seed = check_int(seed, "seed", minimum=0)
    seq_len = check_int(seq_len, "seq_len")
    batch_size = check_int(batch_size, "batch_size")
    eval_batch_size = batch_size if eval_batch_size is None else check_int(eval_batch_size, "eval_batch_size")
    net, chosen, tokenizer_dir = _hf_model(path, head, model, config, dtype, seed)
    vocab = int(net.config.vocab_size)
    num_labels = int(getattr(net.config, "num_labels", 2))
    if data is None or str(data) == "synthetic":
        rows = check_int(examples, "examples")
        train_data = synthetic_data(chosen, vocab, num_labels, rows, seq_len, seed)
        test_data = synthetic_data(chosen, vocab, num_labels, check_int(eval_examples, "eval_examples"), seq_len, seed + 1)
        source = f"synthetic({rows}x{seq_len})"
    else:
        files = DataFiles(chosen, tokenizer_dir, seq_len, data_dir)
        train_data = files.read(data)
        if eval_data is None:
            train_data, test_data = split_rows(train_data, 0.2)
        else:
            test_data = files.read(eval_data)
        source = str(data)
    metrics, primary, chance = _metrics(chosen, num_labels)
    recipe = HF_RECIPE.replace(batch_size=batch_size)
    if lr is not None:
        recipe = recipe.replace(lr=float(lr))
    if epochs is not None:
        recipe = recipe.replace(epochs=check_int(epochs, "epochs"))
    params = sum(p.numel() for p in net.parameters())
    return Task(
        name=f"hf-{chosen}",
        model=net,
        gradient_loader=DictBatches(train_data, eval_batch_size),
        eval_loader=DictBatches(test_data, eval_batch_size),
        loss_fn=hf_loss,
        metrics=metrics,
        primary_metric=primary,
        groupings={"type": groups_by_component, "position": groups_by_layer, "layer": groups_by_layer,
                   "component": groups_by_component},
        train_loader=DictBatches(train_data, batch_size, shuffle=True, seed=seed),
        info={"head": chosen, "architecture": type(net).__name__, "parameters": params, "data": source,
              "path": None if path is None else str(path), "recipe": recipe},
        chance=chance,
    )
