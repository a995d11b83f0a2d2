"""Multi30k (Task 1) German-English: word-level vocabularies and token-budget batches.

Reads the repository's tokenised, lower-cased files ``multi30k/tok/<split>.lc.norm.tok.{de,en}``
under ``data_dir`` (or ``$PARAMCORRUPT_DATA``). Splits: ``train`` (29,000 pairs), ``val``
(1,014), ``test2016`` (= ``test_2016_flickr``, 1,000), ``test2017``, ``test2018``, ``mscoco``.

Vocabularies (:class:`Vocab`) come from the training split, words seen at least ``min_freq``
times, after the specials ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2), ``<unk>`` (3).
Batches (:class:`TranslationBatches`) are mappings ``{"src": [B, S], "tgt_in": [B, T],
"target": [B, T]}`` — ``tgt_in`` is ``<bos> y``, ``target`` is ``y <eos>``, both padded with
``<pad>`` — built from length-sorted sentences under a token budget; evaluation batches also
carry ``refs`` (the reference token lists) and ``first`` (True on a pass's first batch).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ParamCorruptError

__all__ = ["BOS", "EOS", "PAD", "SPLITS", "UNK", "TranslationBatches", "Vocab", "load_multi30k"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

#: split name -> file stem under ``multi30k/tok``.
SPLITS = {
    "train": "train",
    "val": "val",
    "test2016": "test_2016_flickr",
    "test2017": "test_2017_flickr",
    "test2018": "test_2018_flickr",
    "mscoco": "test_2017_mscoco",
}


class Vocab:
    """Word <-> id, specials first, then words by descending frequency (ties: alphabetical).

    Example:
        >>> v = Vocab([["a", "b", "a"], ["c"]], min_freq=2)
        >>> v.itos, v.encode(["a", "z"]), v.decode([4, 2, 4])
        (['<pad>', '<bos>', '<eos>', '<unk>', 'a'], [4, 3], ['a'])
    """

    def __init__(self, sentences: Sequence[Sequence[str]], min_freq: int = 1) -> None:
        counts = Counter(w for s in sentences for w in s)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        self.itos = list(SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: Sequence[str]) -> list[int]:
        return [self.stoi.get(w, UNK) for w in words]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words up to the first ``<eos>``, specials other than ``<unk>`` dropped."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.itos[i])
        return out


def load_multi30k(data_dir: str | os.PathLike[str] | None, split: str) -> tuple[list[list[str]], list[list[str]]]:
    """(German sentences, English sentences) of a split, as whitespace-split token lists.

    Raises:
        FileNotFoundError: when the files are not found.
        ValueError: for an unknown split.
    """
    from ._paths import resolve_data_file

    if split not in SPLITS:
        raise ParamCorruptError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    sides = []
    for lang in ("de", "en"):
        path = resolve_data_file(data_dir, str(Path("multi30k") / "tok"), f"{SPLITS[split]}.lc.norm.tok.{lang}")
        sides.append([line.split() for line in path.read_text(encoding="utf-8").splitlines()])
    if len(sides[0]) != len(sides[1]):
        raise ParamCorruptError(f"multi30k {split}: {len(sides[0])} German but {len(sides[1])} English lines")
    return sides[0], sides[1]


def _pad(rows: Sequence[Sequence[int]]) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class TranslationBatches:
    """Re-iterable batches of sentence pairs under a token budget (see the module's docstring).

    Sentences are sorted by (source, target) length and cut into batches of at most
    ``max_tokens`` padded tokens (source or target side, whichever is longer) and at most
    ``max_sentences`` pairs; ``shuffle`` reorders the batches each pass (seeded). With
    ``refs`` set (evaluation), batches keep the reference token lists and the original order
    of the sentences is recorded in ``index``.
    """

    def __init__(
        self,
        src: Sequence[Sequence[int]],
        tgt: Sequence[Sequence[int]],
        *,
        max_tokens: int = 4096,
        max_sentences: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        refs: Sequence[Sequence[str]] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if len(src) != len(tgt):
            raise ParamCorruptError("source and target differ in length")
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        order = sorted(range(len(src)), key=lambda i: (len(src[i]), len(tgt[i]), i))
        groups: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order:
            size = max(len(src[i]), len(tgt[i]) + 1)
            full = max(longest, size) * (len(current) + 1) > max_tokens or (
                max_sentences is not None and len(current) >= max_sentences
            )
            if current and full:
                groups.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, size)
        if current:
            groups.append(current)
        self.batches: list[dict[str, Any]] = []
        for idx in groups:
            batch: dict[str, Any] = {
                "src": _pad([src[i] for i in idx]),
                "tgt_in": _pad([[BOS, *tgt[i]] for i in idx]),
                "target": _pad([[*tgt[i], EOS] for i in idx]),
            }
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            if refs is not None:
                batch["refs"] = [list(refs[i]) for i in idx]
                batch["index"] = idx
            self.batches.append(batch)
        self.num_tokens = sum(len(t) + 1 for t in tgt)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = torch.randperm(len(self.batches), generator=self.generator).tolist() if self.shuffle else range(len(self.batches))
        for b in order:
            yield self.batches[b]

    def shard(self, rank: int, world_size: int) -> TranslationBatches:
        """Every ``world_size``-th batch from ``rank``."""
        part = object.__new__(TranslationBatches)
        part.shuffle, part.generator = self.shuffle, torch.Generator().manual_seed(int(self.generator.initial_seed()))
        part.batches = self.batches[rank::world_size]
        part.num_tokens = sum(int((b["target"] != PAD).sum()) for b in part.batches)
        return part


def max_decode_length(src_length: int) -> int:
    """The decoding limit for a source sentence of ``src_length`` tokens."""
    return int(math.ceil(1.5 * src_length)) + 10
