"""Word-level Penn Treebank (Mikolov's preprocessing) from ``<data>/ptb_lm/ptb.zip``.

Each line is a sentence; an ``<eos>`` token is appended to every line. The vocabulary is
built from the training split in order of first appearance: 9,999 word types (``<unk>``
included) plus ``<eos>``, 10,000 in all. Valid/test words outside it (there are none in the
canonical files) map to ``<unk>``.

Language-model batches are time-major: :func:`batchify` folds a token stream into B columns
[T, B], :func:`bptt_batches` cuts those into (input, target) windows of ``bptt`` steps, the
target being the input shifted by one step.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import ParamCorruptError
from ._paths import resolve_data_file

__all__ = [
    "EOS",
    "UNK",
    "BPTTLoader",
    "Corpus",
    "Dictionary",
    "PTBData",
    "batchify",
    "bptt_batches",
    "ptb_loaders",
]

EOS = "<eos>"
UNK = "<unk>"
_SPLITS = ("train", "valid", "test")


class Dictionary:
    """word <-> index, indices in order of first :meth:`add`.

    Example:
        >>> d = Dictionary()
        >>> d.add("a"), d.add("b"), d.add("a"), len(d), d.idx2word
        (0, 1, 0, 2, ['a', 'b'])
    """

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add(self, word: str) -> int:
        """The index of ``word``, adding it if new."""
        index = self.word2idx.get(word)
        if index is None:
            index = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return index

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def decode(self, indices: Sequence[int] | Tensor) -> list[str]:
        """The words of a sequence of indices."""
        return [self.idx2word[int(i)] for i in indices]


def _tokens(text: str) -> list[str]:
    words: list[str] = []
    for line in text.splitlines():
        words.extend(line.split())
        words.append(EOS)
    return words


class Corpus:
    """PTB: a :class:`Dictionary` and the train/valid/test token streams (1-D LongTensors).

    Args:
        data_dir: the folder containing ``ptb_lm/ptb.zip`` (default: ``$PARAMCORRUPT_DATA``).

    Raises:
        FileNotFoundError: when ``ptb.zip`` is not found.
        ValueError: when the zip lacks one of ``ptb.{train,valid,test}.txt``.

    Example (from in-memory text):
        >>> c = Corpus.from_texts(" a b\\n b c\\n", " c d\\n", " a\\n")
        >>> c.dictionary.idx2word
        ['a', 'b', '<eos>', 'c', '<unk>']
        >>> c.valid.tolist(), len(c.train)
        ([3, 4, 2], 6)
    """

    dictionary: Dictionary
    train: Tensor
    valid: Tensor
    test: Tensor

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        path = resolve_data_file(data_dir, "ptb_lm", "ptb.zip")
        texts: dict[str, str] = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                member = PurePosixPath(info.filename)
                if info.is_dir() or "__MACOSX" in member.parts or member.name.startswith("._"):
                    continue
                for split in _SPLITS:
                    if member.name == f"ptb.{split}.txt":
                        texts[split] = archive.read(info).decode("utf-8")
        missing = [f"ptb.{s}.txt" for s in _SPLITS if s not in texts]
        if missing:
            raise ParamCorruptError(f"{path} lacks {', '.join(missing)}")
        self.path = path
        self._build(texts["train"], texts["valid"], texts["test"])

    @classmethod
    def from_texts(cls, train: str, valid: str, test: str) -> Corpus:
        """A corpus from the three texts (one sentence per line)."""
        corpus = cls.__new__(cls)
        corpus.path = None
        corpus._build(train, valid, test)
        return corpus

    def _build(self, train: str, valid: str, test: str) -> None:
        self.dictionary = Dictionary()
        train_words = _tokens(train)
        for word in train_words:
            self.dictionary.add(word)
        self.dictionary.add(EOS)
        self.dictionary.add(UNK)
        self.train = self._encode(train_words)
        self.valid = self._encode(_tokens(valid))
        self.test = self._encode(_tokens(test))

    def _encode(self, words: list[str]) -> Tensor:
        lookup = self.dictionary.word2idx
        unk = lookup[UNK]
        return torch.tensor([lookup.get(w, unk) for w in words], dtype=torch.long)

    @property
    def vocab_size(self) -> int:
        """Number of word types, ``<eos>`` and ``<unk>`` included (10,000 for PTB)."""
        return len(self.dictionary)

    def split(self, name: str) -> Tensor:
        """The token stream of ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in _SPLITS:
            raise ParamCorruptError(f"split must be one of {_SPLITS}, got {name!r}")
        return getattr(self, name)


def batchify(data: Tensor, batch_size: int) -> Tensor:
    """Fold a 1-D token stream into ``batch_size`` contiguous columns: [T, B], the tail dropped.

    Column b holds tokens ``b*T .. (b+1)*T - 1``.

    Example:
        >>> batchify(torch.arange(7), 2).tolist()
        [[0, 3], [1, 4], [2, 5]]
    """
    if data.dim() != 1:
        raise ParamCorruptError(f"data must be a 1-D token stream, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ParamCorruptError(f"batch_size must be positive, got {batch_size}")
    steps = data.size(0) // batch_size
    if steps == 0:
        raise ParamCorruptError(f"{data.size(0)} tokens cannot fill {batch_size} columns")
    return data[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_batches(source: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(input [t, B], target [t, B]) windows of ``t <= bptt`` steps; target = input shifted by one.

    Every position but the last is an input once; the last window may be shorter.

    Example:
        >>> [(x.tolist(), y.tolist()) for x, y in bptt_batches(torch.arange(5).view(5, 1), 3)]
        [([[0], [1], [2]], [[1], [2], [3]]), ([[3]], [[4]])]
    """
    if bptt < 1:
        raise ParamCorruptError(f"bptt must be positive, got {bptt}")
    for start in range(0, source.size(0) - 1, bptt):
        length = min(bptt, source.size(0) - 1 - start)
        yield source[start : start + length], source[start + 1 : start + 1 + length]


class BPTTLoader:
    """A re-iterable, sized loader of BPTT windows over a batchified token stream.

    Args:
        data: a 1-D token stream.
        batch_size: number of columns B.
        bptt: window length.
        device: where to put the batchified stream (default: CPU).

    Example:
        >>> loader = BPTTLoader(torch.arange(21), batch_size=2, bptt=4)
        >>> len(loader), [x.shape[0] for x, _ in loader], loader.num_targets
        (3, [4, 4, 1], 18)
    """

    def __init__(
        self, data: Tensor, batch_size: int, bptt: int, device: torch.device | str | None = None
    ) -> None:
        if bptt < 1:
            raise ParamCorruptError(f"bptt must be positive, got {bptt}")
        self.source = batchify(data, batch_size)
        if device is not None:
            self.source = self.source.to(device)
        self.batch_size = batch_size
        self.bptt = bptt

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return bptt_batches(self.source, self.bptt)

    def __len__(self) -> int:
        return math.ceil((self.source.size(0) - 1) / self.bptt)

    @property
    def num_targets(self) -> int:
        """Number of predicted tokens per pass, ``(T - 1) * B``."""
        return (self.source.size(0) - 1) * self.batch_size


class PTBData(NamedTuple):
    """What :func:`ptb_loaders` returns."""

    corpus: Corpus
    train: BPTTLoader
    valid: BPTTLoader
    test: BPTTLoader


def ptb_loaders(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 20,
    eval_batch_size: int = 10,
    test_batch_size: int = 1,
    bptt: int = 70,
    device: torch.device | str | None = None,
) -> PTBData:
    """The PTB corpus and its train/valid/test BPTT loaders (defaults as in AWD-LSTM on PTB)."""
    corpus = Corpus(data_dir)
    return PTBData(
        corpus,
        BPTTLoader(corpus.train, batch_size, bptt, device),
        BPTTLoader(corpus.valid, eval_batch_size, bptt, device),
        BPTTLoader(corpus.test, test_batch_size, bptt, device),
    )
