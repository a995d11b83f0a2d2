"""Dependency treebanks: NLTK's Penn Treebank sample (``ptb_dep_nltk``) and CoNLL-like files.

The NLTK sample (``ptb_dep_nltk/dependency_treebank.zip``: 199 ``.dp`` files, 3,914 sentences)
has three tab-separated columns, ``FORM  POS  HEAD`` (HEAD 1-based, 0 = the root), and no
dependency labels, so only UAS can be scored. :func:`read_conll` also reads a fourth LABEL
column and 10-column CoNLL-X / CoNLL-U lines (FORM, UPOS/XPOS, HEAD, DEPREL; multi-word and
empty-node lines skipped).

There is no official split of the sample; :func:`split_sentences` holds out a seeded random
share of the sentences (or, with ``by="file"``, of whole files).

:func:`load_ud_ewt` reads the Universal Dependencies English Web Treebank (``ud_english_ewt/``,
gzipped CoNLL-U with its official train / dev / test split): labelled trees whose XPOS column
holds Penn Treebank tags, so the parser gets word, PTB-POS and label features.
"""

from __future__ import annotations

import gzip
import os
import random
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParamCorruptError

__all__ = [
    "Sentence",
    "is_projective",
    "load_ptb_dependency",
    "load_ud_ewt",
    "parse_conll",
    "read_conll",
    "split_sentences",
]


@dataclass(frozen=True)
class Sentence:
    """One dependency tree: tokens 1..n (index 0 is the artificial root, not stored).

    Attributes:
        words: the word forms.
        pos: the part-of-speech tags.
        heads: the head of each token (1-based; 0 = the root).
        labels: the dependency labels, or ``None`` for unlabelled data.
        source: the file the sentence comes from.
    """

    words: tuple[str, ...]
    pos: tuple[str, ...]
    heads: tuple[int, ...]
    labels: tuple[str, ...] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.words)


def is_projective(heads: Sequence[int]) -> bool:
    """Whether no two arcs cross (the artificial root at position 0 included).

    Example:
        >>> is_projective([2, 0, 2]), is_projective([3, 4, 0, 3])
        (True, False)
    """
    arcs = [(min(h, d), max(h, d)) for d, h in enumerate(heads, start=1)]
    for i, (a, b) in enumerate(arcs):
        for c, d in arcs[i + 1 :]:
            if a < c < b < d or c < a < d < b:
                return False
    return True


def _is_tree(heads: Sequence[int]) -> bool:
    for d in range(1, len(heads) + 1):
        seen, node = set(), d
        while node != 0:
            if node in seen:
                return False
            seen.add(node)
            node = heads[node - 1]
    return True


#: sources of the malformed sentences :func:`parse_conll` skipped (a head outside the
#: sentence, a self-loop or a cycle); the NLTK sample has seven (4 of them in wsj_0127).
skipped: list[str] = []


def parse_conll(text: str, source: str = "") -> list[Sentence]:
    """Sentences from CoNLL-like text (blank-line separated; see the module's docstring).

    Malformed trees (a head outside the sentence, a self-loop, a cycle) are skipped and
    their source appended to :data:`skipped`.
    """
    sentences: list[Sentence] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if not rows:
            return
        if len(rows[0]) >= 10:  # CoNLL-X / CoNLL-U: ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL ...
            words = tuple(r[1] for r in rows)
            pos = tuple(r[4] if r[4] not in ("_", "") else r[3] for r in rows)
            heads = tuple(int(r[6]) for r in rows)
            labels: tuple[str, ...] | None = tuple(r[7] for r in rows)
        else:
            words = tuple(r[0] for r in rows)
            pos = tuple(r[1] for r in rows)
            heads = tuple(int(r[2]) for r in rows)
            labels = tuple(r[3] for r in rows) if all(len(r) >= 4 for r in rows) else None
        n = len(words)
        rows.clear()
        if any(h < 0 or h > n or h == d for d, h in enumerate(heads, start=1)) or not _is_tree(heads):
            skipped.append(source)  # a head outside the sentence, a self-loop or a cycle
            return
        sentences.append(Sentence(words, pos, heads, labels, source))

    for line in text.splitlines():
        line = line.rstrip("\n\r")
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) >= 10 and ("-" in cols[0] or "." in cols[0]):
            continue  # multi-word token or empty node
        rows.append(cols)
    flush()
    return sentences


def read_conll(path: str | os.PathLike[str]) -> list[Sentence]:
    """Sentences of one CoNLL-like file."""
    path = Path(path)
    return parse_conll(path.read_text(encoding="utf-8"), path.name)


def load_ptb_dependency(data_dir: str | os.PathLike[str] | None = None) -> list[Sentence]:
    """Every sentence of NLTK's PTB dependency sample, files in name order (wsj_0001 first).

    ``data_dir`` (or ``$PARAMCORRUPT_DATA``) holds ``ptb_dep_nltk/dependency_treebank.zip``.

    Raises:
        FileNotFoundError: when the archive is not found.
    """
    from ._paths import resolve_data_file

    archive = resolve_data_file(data_dir, "ptb_dep_nltk", "dependency_treebank.zip")
    sentences: list[Sentence] = []
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".dp")):
            sentences.extend(parse_conll(zf.read(name).decode("utf-8"), Path(name).stem))
    return sentences


UD_EWT_SPLITS = ("train", "dev", "test")


def load_ud_ewt(data_dir: str | os.PathLike[str] | None = None, split: str = "train") -> list[Sentence]:
    """The sentences of one split of UD English-EWT, in file order (POS: the XPOS column, Penn
    Treebank tags; labels: the UD relations; multi-word tokens and empty nodes skipped).

    ``data_dir`` (or ``$PARAMCORRUPT_DATA``) holds ``ud_english_ewt/en_ewt-ud-<split>.conllu.gz``.

    Raises:
        ValueError: for a split other than "train", "dev" or "test".
        FileNotFoundError: when the file is not found.
    """
    from ._paths import resolve_data_file

    if split not in UD_EWT_SPLITS:
        raise ParamCorruptError(f"unknown UD English-EWT split {split!r}; expected one of {', '.join(UD_EWT_SPLITS)}")
    path = resolve_data_file(data_dir, "ud_english_ewt", f"en_ewt-ud-{split}.conllu.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return parse_conll(f.read(), f"en_ewt-ud-{split}")


def split_sentences(
    sentences: Iterable[Sentence], held_out: float = 0.1, seed: int = 0, by: str = "sentence"
) -> tuple[list[Sentence], list[Sentence]]:
    """(train, held_out): a seeded random ``held_out`` share of the sentences (``by="sentence"``)
    or of the files (``by="file"``), each part in its original order.

    Example:
        >>> s = [Sentence(("a",), ("DT",), (0,), source=str(i)) for i in range(10)]
        >>> train, test = split_sentences(s, 0.2, seed=1)
        >>> len(train), len(test), set(train).isdisjoint(test)
        (8, 2, True)
    """
    sentences = list(sentences)
    if not 0.0 < held_out < 1.0:
        raise ParamCorruptError(f"held_out must lie in (0, 1), got {held_out}")
    if by not in ("sentence", "file"):
        raise ParamCorruptError(f"by must be 'sentence' or 'file', got {by!r}")
    keys = list(range(len(sentences))) if by == "sentence" else sorted({s.source for s in sentences})
    order = list(keys)
    random.Random(seed).shuffle(order)
    chosen = set(order[: max(1, round(held_out * len(order)))])
    key_of = (lambda i, s: i) if by == "sentence" else (lambda i, s: s.source)
    train = [s for i, s in enumerate(sentences) if key_of(i, s) not in chosen]
    test = [s for i, s in enumerate(sentences) if key_of(i, s) in chosen]
    return train, test
