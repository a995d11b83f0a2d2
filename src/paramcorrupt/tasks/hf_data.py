"""The data of a Hugging Face task (:func:`paramcorrupt.tasks.hf.hf_task`): dict batches
(:class:`DictBatches`), seeded synthetic tokens (:func:`synthetic_data`), token files read or
tokenised (:class:`DataFiles`) and the split into gradient and evaluation rows
(:func:`split_rows`); and :func:`require_transformers`, the import of the optional package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ParamCorruptError
from ..files import check_regular

__all__ = ["DataFiles", "DictBatches", "require_transformers", "split_rows", "synthetic_data"]


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Hugging Face models need the transformers package: pip install 'paramcorrupt[hf]'"
        ) from error
    return transformers


class DictBatches:
    """A re-iterable loader of dict batches cut from tensors of equal first dimension.

    Args:
        data: name -> tensor [N, ...] (``input_ids``, ``attention_mask``, ``labels``).
        batch_size: rows per batch (the last one may be smaller).
        shuffle: a seeded permutation per pass (training); ``False``: in order.
        seed: the permutation's seed.
    """

    def __init__(self, data: Mapping[str, Tensor], batch_size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ParamCorruptError(f"batch_size must be >= 1, got {batch_size}")
        sizes = {int(t.shape[0]) for t in data.values()}
        if len(sizes) != 1:
            raise ParamCorruptError(f"the data's tensors have different numbers of rows: {sorted(sizes)}")
        self.data, self.batch_size, self.shuffle = dict(data), batch_size, shuffle
        self.rows = sizes.pop()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = torch.randperm(self.rows, generator=self.generator) if self.shuffle else torch.arange(self.rows)
        for start in range(0, self.rows, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield {k: v[idx] for k, v in self.data.items()}


def synthetic_data(head: str, vocab_size: int, num_labels: int, rows: int, seq_len: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (rows, seq_len), generator=g)
    if head == "causal-lm":
        # a learnable pattern: every other token repeats its predecessor
        ids[:, 1::2] = ids[:, 0::2][:, : ids[:, 1::2].shape[1]]
        labels = ids.clone()
    else:
        labels = ids[:, 0] % num_labels  # the label is readable from the first token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        blob: Any = load_file(str(path))
    else:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, Mapping) or "input_ids" not in blob:
        raise ParamCorruptError(f"data file {path} must hold a mapping with 'input_ids' (and optionally attention_mask, labels)")
    return {k: v for k, v in blob.items() if isinstance(v, Tensor)}


#: the files a saved tokenizer leaves in its folder (``tokenizer.save_pretrained``), any one of them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                   "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def _tokenizer(path: Path, tokenizer_dir: Path | None) -> Any:
    """The tokenizer of the model's folder for the text data file ``path``; a folder without
    one is named (transformers would build an empty tokenizer from the config alone, which
    turns any text into 0 tokens)."""
    fix = "save the model's tokenizer there (tokenizer.save_pretrained(folder)) or give a .safetensors file with input_ids"
    if tokenizer_dir is None:
        raise ParamCorruptError(f"a text data file ({path}) needs a tokenizer: load the model from a folder that has one, or {fix}")
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ParamCorruptError(
            f"the text data file {path} needs a tokenizer, but the model folder {tokenizer_dir} has none "
            f"(none of {', '.join(TOKENIZER_FILES)}): {fix}"
        )
    transformers = require_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ParamCorruptError(f"cannot load a tokenizer from {tokenizer_dir}: {str(error).splitlines()[0]}") from None
    if len(tokenizer) <= 1:
        raise ParamCorruptError(f"the tokenizer in {tokenizer_dir} is empty ({len(tokenizer)} tokens): {fix}")
    return tokenizer


def _tokenise(path: Path, head: str, tokenizer_dir: Path | None, seq_len: int) -> dict[str, Tensor]:
    tokenizer = _tokenizer(path, tokenizer_dir)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if head == "causal-lm":
        ids = tokenizer("\n".join(lines))["input_ids"]
        blocks = len(ids) // seq_len
        if blocks < 2:
            raise ParamCorruptError(f"{path} gives {len(ids)} tokens: fewer than two blocks of seq_len={seq_len}")
        ids_t = torch.tensor(ids[: blocks * seq_len]).view(blocks, seq_len)
        return {"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t), "labels": ids_t.clone()}
    labels, texts = [], []
    for number, line in enumerate(lines, 1):
        label, sep, text = line.partition("\t")
        if not sep or not label.strip().isdigit():
            raise ParamCorruptError(
                f"{path}:{number}: expected LABEL<TAB>TEXT with LABEL a class index (0, 1, ...), got {line[:40]!r}; "
                "a sequence-classification data file needs labels"
            )
        labels.append(int(label))
        texts.append(text)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": torch.tensor(labels)}


def split_rows(data: dict[str, Tensor], eval_fraction: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    rows = int(next(iter(data.values())).shape[0])
    cut = rows - max(1, int(round(rows * eval_fraction)))
    if cut < 1:
        raise ParamCorruptError(f"the data has {rows} rows: too few to split into gradient and evaluation sets")
    return {k: v[:cut] for k, v in data.items()}, {k: v[cut:] for k, v in data.items()}


class DataFiles:
    """Reads a task's token data files: relative paths against ``data_dir`` (when not found
    where they are), ``.txt``/``.tsv`` tokenised with the tokenizer of ``tokenizer_dir``,
    ``.safetensors``/``.pt`` tensors completed with ``labels`` (a causal LM's: its inputs)
    and ``attention_mask`` (ones)."""

    def __init__(self, head: str, tokenizer_dir: Path | None, seq_len: int, data_dir: str | os.PathLike[str] | None) -> None:
        self.head, self.tokenizer_dir, self.seq_len, self.data_dir = head, tokenizer_dir, seq_len, data_dir

    def resolve(self, value: str | os.PathLike[str]) -> Path:
        file = Path(value).expanduser()
        if not file.is_absolute() and self.data_dir is not None and not file.exists():
            file = Path(self.data_dir) / file
        check_regular(file, "data file")  # a pipe or a device is never read
        if not file.is_file():
            raise ParamCorruptError(f"data file {file} does not exist")
        return file

    def read(self, value: str | os.PathLike[str]) -> dict[str, Tensor]:
        file = self.resolve(value)
        if file.suffix in (".txt", ".tsv"):
            return _tokenise(file, self.head, self.tokenizer_dir, self.seq_len)
        tensors = _read_tensors(file)
        if "labels" not in tensors:
            if self.head != "causal-lm":
                raise ParamCorruptError(
                    f"data file {file} has no 'labels' (keys: {', '.join(tensors)}): a sequence-classification "
                    "data file needs labels, one class index per row of input_ids (int64 [N])"
                )
            tensors["labels"] = tensors["input_ids"].clone()
        tensors.setdefault("attention_mask", torch.ones_like(tensors["input_ids"]))
        return tensors
