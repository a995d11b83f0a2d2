"""Chen & Manning (2014): a greedy arc-standard dependency parser scored by an MLP.

- **Transitions** (arc-standard, the artificial root at the bottom of the stack): ``SHIFT``,
  ``LEFT-ARC(l)`` (the second item of the stack becomes a dependent of the top) and
  ``RIGHT-ARC(l)`` (the top becomes a dependent of the second item). Without labels there is
  one label, so three transitions. Ids: 0 = SHIFT, ``1 + l`` = LEFT(l), ``1 + L + l`` = RIGHT(l).
- **Static oracle**: LEFT when the second item's gold head is the top; RIGHT when the top's
  gold head is the second item and every gold dependent of the top is attached; else SHIFT.
  It reproduces every projective tree (non-projective ones make it fail: ``oracle`` returns
  ``None``).
- **Features** (48): the words and POS tags of the 18 tokens s1..s3, b1..b3, the first and
  second leftmost / rightmost children of s1 and s2, and the leftmost-of-leftmost /
  rightmost-of-rightmost children of s1 and s2 (18 + 18), and the labels of the last 12
  tokens; without labels only the 36 word and POS features.
- **Model** (:class:`MLPParser`): ``word_embedding``, ``pos_embedding``, ``label_embedding``
  (labelled data only), concatenated -> ``hidden`` (Linear) -> cube or ReLU -> dropout ->
  ``output`` (Linear, one score per transition).
- **Greedy parsing** (:func:`parse`): all sentences of a batch advance together, one forward
  pass per step, the best legal transition taken (a single root: RIGHT-ARC onto the root only
  when the buffer is empty).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ParamCorruptError

__all__ = [
    "NULL",
    "PUNCT_TAGS",
    "ROOT",
    "UNK",
    "Configuration",
    "EncodedSentence",
    "MLPParser",
    "ParserVocab",
    "attachment_scores",
    "features",
    "oracle",
    "parse",
]

NULL, UNK, ROOT = 0, 1, 2
#: Gold POS tags not scored (Chen & Manning's PTB evaluation, and UD's PUNCT).
PUNCT_TAGS = frozenset({"``", "''", ",", ".", ":", "PUNCT"})

NUM_WORD_FEATURES = 18
NUM_LABEL_FEATURES = 12


class ParserVocab:
    """Word, POS and label ids from training sentences (ids 0, 1, 2: NULL, UNK, ROOT).

    Words are lower-cased; words seen fewer than ``min_count`` times map to UNK. Labels:
    ``labels`` lists the dependency labels (empty for unlabelled data); a label feature is
    ``0`` (NULL, no dependent) or ``1 + index``.
    """

    def __init__(self, sentences: Iterable, min_count: int = 2) -> None:
        sentences = list(sentences)
        words = Counter(w.lower() for s in sentences for w in s.words)
        self.words = ["<null>", "<unk>", "<root>"] + sorted(w for w, c in words.items() if c >= min_count)
        self.pos = ["<null>", "<unk>", "<root>"] + sorted({p for s in sentences for p in s.pos})
        labelled = bool(sentences) and all(s.labels is not None for s in sentences)
        self.labels: list[str] = sorted({lab for s in sentences for lab in s.labels}) if labelled else []
        self.word_id = {w: i for i, w in enumerate(self.words)}
        self.pos_id = {p: i for i, p in enumerate(self.pos)}
        self.label_id = {lab: i for i, lab in enumerate(self.labels)}

    @property
    def labelled(self) -> bool:
        return bool(self.labels)

    @property
    def num_transitions(self) -> int:
        return 1 + 2 * max(1, len(self.labels))

    def encode(self, sentence) -> EncodedSentence:
        """A :class:`EncodedSentence` (position 0 is the root)."""
        words = [ROOT] + [self.word_id.get(w.lower(), UNK) for w in sentence.words]
        pos = [ROOT] + [self.pos_id.get(p, UNK) for p in sentence.pos]
        labels = None
        if self.labelled and sentence.labels is not None:
            labels = [-1] + [self.label_id.get(lab, 0) for lab in sentence.labels]
        scored = [False] + [p not in PUNCT_TAGS for p in sentence.pos]
        return EncodedSentence(words, pos, [-1, *sentence.heads], labels, scored)


@dataclass
class EncodedSentence:
    """Ids of a sentence with the root at position 0 (``heads[0] = labels[0] = -1``)."""

    words: list[int]
    pos: list[int]
    heads: list[int]
    labels: list[int] | None
    scored: list[bool]
    """tokens counted by the attachment scores (not punctuation)"""

    def __len__(self) -> int:
        return len(self.words) - 1


class Configuration:
    """A parser state: stack, buffer position, the arcs built so far, children lists."""

    __slots__ = ("n", "stack", "next", "heads", "labels", "left", "right")

    def __init__(self, n: int) -> None:
        self.n = n
        self.stack = [0]
        self.next = 1  # the first buffer token
        self.heads = [-1] * (n + 1)
        self.labels = [-1] * (n + 1)
        self.left: list[list[int]] = [[] for _ in range(n + 1)]  # ascending
        self.right: list[list[int]] = [[] for _ in range(n + 1)]  # descending

    @property
    def terminal(self) -> bool:
        return self.next > self.n and len(self.stack) == 1

    def legal(self, num_labels: int) -> list[bool]:
        """Which transitions are allowed (SHIFT, LEFT x L, RIGHT x L)."""
        shift = self.next <= self.n
        left = len(self.stack) > 2
        right = len(self.stack) > 2 or (len(self.stack) == 2 and not shift)
        return [shift] + [left] * num_labels + [right] * num_labels

    def apply(self, transition: int, num_labels: int) -> None:
        if transition == 0:
            self.stack.append(self.next)
            self.next += 1
            return
        label = (transition - 1) % num_labels
        top = self.stack.pop()
        second = self.stack.pop()
        if transition <= num_labels:  # LEFT: second <- top
            head, dep = top, second
        else:  # RIGHT: top is a dependent of second
            head, dep = second, top
        self.heads[dep], self.labels[dep] = head, label
        if dep < head:
            self.left[head].append(dep)
            self.left[head].sort()
        else:
            self.right[head].append(dep)
            self.right[head].sort(reverse=True)
        self.stack.append(head)


def features(config: Configuration, sentence: EncodedSentence, labelled: bool) -> list[int]:
    """The 48 (labelled) or 36 feature ids of a configuration (see the module's docstring)."""
    stack, left, right = config.stack, config.left, config.right

    def lc(t: int, i: int) -> int:
        return left[t][i] if t >= 0 and len(left[t]) > i else -1

    def rc(t: int, i: int) -> int:
        return right[t][i] if t >= 0 and len(right[t]) > i else -1

    s = [stack[-1 - i] if len(stack) > i else -1 for i in range(3)]
    b = [config.next + i if config.next + i <= config.n else -1 for i in range(3)]
    children = []
    for t in s[:2]:
        children += [lc(t, 0), rc(t, 0), lc(t, 1), rc(t, 1)]
    for t in s[:2]:
        children += [lc(lc(t, 0), 0), rc(rc(t, 0), 0)]
    tokens = s + b + children
    words, pos = sentence.words, sentence.pos
    out = [words[t] if t >= 0 else NULL for t in tokens] + [pos[t] if t >= 0 else NULL for t in tokens]
    if labelled:
        out += [config.labels[t] + 1 if t >= 0 else NULL for t in children]
    return out


def oracle(sentence: EncodedSentence, num_labels: int, labelled: bool) -> tuple[list[list[int]], list[int]] | None:
    """(features of each configuration, gold transitions) of a projective tree; ``None`` when
    the static oracle gets stuck (a non-projective tree)."""
    n = len(sentence)
    heads = sentence.heads
    pending = [0] * (n + 1)  # gold dependents not yet attached
    for d in range(1, n + 1):
        pending[heads[d]] += 1
    config = Configuration(n)
    feats: list[list[int]] = []
    moves: list[int] = []
    while not config.terminal:
        stack = config.stack
        move = None
        if len(stack) >= 2:
            top, second = stack[-1], stack[-2]
            if second != 0 and heads[second] == top:
                label = sentence.labels[second] if labelled else 0
                move = 1 + label
            elif heads[top] == second and pending[top] == 0:
                label = sentence.labels[top] if labelled else 0
                move = 1 + num_labels + label
        if move is None:
            if config.next > n:
                return None
            move = 0
        feats.append(features(config, sentence, labelled))
        moves.append(move)
        if move != 0:
            dep = stack[-2] if move <= num_labels else stack[-1]
            pending[heads[dep]] -= 1
        config.apply(move, num_labels)
    return feats, moves


class MLPParser(nn.Module):
    """Embeddings -> one hidden layer (cube or ReLU) -> a score per transition.

    Example:
        >>> model = MLPParser(10, 5, num_labels=0)
        >>> model(torch.zeros(4, 36, dtype=torch.long)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        num_words: int,
        num_pos: int,
        num_labels: int = 0,
        *,
        emb_size: int = 50,
        hidden_size: int = 200,
        activation: str = "cube",
        dropout: float = 0.5,
        init_range: float = 0.01,
    ) -> None:
        super().__init__()
        if activation not in ("cube", "relu"):
            raise ParamCorruptError(f"activation must be 'cube' or 'relu', got {activation!r}")
        self.num_labels = num_labels
        self.labelled = num_labels > 0
        self.num_transitions = 1 + 2 * max(1, num_labels)
        self.activation = activation
        self.word_embedding = nn.Embedding(num_words, emb_size)
        self.pos_embedding = nn.Embedding(num_pos, emb_size)
        self.num_features = 2 * NUM_WORD_FEATURES
        if self.labelled:
            self.label_embedding = nn.Embedding(num_labels + 1, emb_size)
            self.num_features += NUM_LABEL_FEATURES
        self.hidden = nn.Linear(self.num_features * emb_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, self.num_transitions)
        for emb in (self.word_embedding, self.pos_embedding, getattr(self, "label_embedding", None)):
            if emb is not None:
                nn.init.uniform_(emb.weight, -init_range, init_range)
        nn.init.xavier_uniform_(self.hidden.weight)
        nn.init.zeros_(self.hidden.bias)

    def forward(self, features: Tensor) -> Tensor:
        """Transition scores [B, T] for feature ids [B, 36 or 48]."""
        w = NUM_WORD_FEATURES
        parts = [self.word_embedding(features[:, :w]), self.pos_embedding(features[:, w : 2 * w])]
        if self.labelled:
            parts.append(self.label_embedding(features[:, 2 * w :]))
        x = torch.cat(parts, dim=1).flatten(1)
        h = self.hidden(x)
        h = h * h * h if self.activation == "cube" else torch.relu(h)
        return self.output(self.dropout(h))


@torch.no_grad()
def parse(model: MLPParser, sentences: Sequence[EncodedSentence]) -> list[tuple[list[int], list[int]]]:
    """Greedy parses, ``(heads, labels)`` per sentence (index 0, the root, included as -1)."""
    num_labels = max(1, model.num_labels)
    configs = [Configuration(len(s)) for s in sentences]
    device = next(model.parameters()).device
    active = [i for i, c in enumerate(configs) if not c.terminal]
    while active:
        feats = torch.tensor(
            [features(configs[i], sentences[i], model.labelled) for i in active], dtype=torch.long, device=device
        )
        legal = torch.tensor([configs[i].legal(num_labels) for i in active], dtype=torch.bool, device=device)
        scores = model(feats).float().nan_to_num(nan=-1e30, posinf=1e30, neginf=-1e30)
        best = torch.where(legal, scores, torch.tensor(float("-inf"), device=device)).argmax(dim=1).tolist()
        for i, move in zip(active, best):
            configs[i].apply(move, num_labels)
        active = [i for i in active if not configs[i].terminal]
    return [(c.heads, c.labels) for c in configs]


def attachment_scores(
    predicted: Sequence[tuple[Sequence[int], Sequence[int]]], sentences: Sequence[EncodedSentence]
) -> tuple[int, int, int]:
    """(correct heads, correct heads and labels, scored tokens) over non-punctuation tokens."""
    heads_ok = both_ok = total = 0
    for (heads, labels), s in zip(predicted, sentences):
        for t in range(1, len(s) + 1):
            if not s.scored[t]:
                continue
            total += 1
            if heads[t] == s.heads[t]:
                heads_ok += 1
                if s.labels is not None and labels[t] == s.labels[t]:
                    both_ok += 1
    return heads_ok, both_ok, total
