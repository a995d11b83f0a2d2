"""A multi-layer LSTM language model in the style of Merity et al. (AWD-LSTM, 2017/2018).

One ``nn.LSTM`` per layer, kept in the ``nn.ModuleList`` ``lstm``, so each layer's
parameters have their own prefix (``lstm.0.weight_ih_l0``, ``lstm.1.weight_hh_l0``, ...)
and per-layer groups are a name pattern away. Regularisation follows AWD-LSTM, all of it
active only in training mode: locked (variational) dropout on the embeddings, between
layers and on the output; optional embedding (word-type) dropout; optional DropConnect on
the hidden-to-hidden weights ("weight drop"), applied functionally so that the parameters
keep their ordinary names and the corruption code sees plain ``nn.LSTM`` weights.

With ``tie_weights`` the decoder reuses the embedding matrix (``decoder.weight is
embedding.weight``): one Parameter, listed once by ``named_parameters()`` as
``embedding.weight``. As in AWD-LSTM, the last layer's hidden size then defaults to the
embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ParamCorruptError

__all__ = ["Hidden", "LSTMLanguageModel", "detach_hidden", "locked_dropout"]

#: One (h, c) pair per layer, each of shape [1, batch, hidden_size of that layer].
Hidden = list[tuple[Tensor, Tensor]]


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Variational dropout on a [T, B, D] sequence: one mask per sequence, shared over time."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1.0 - p) / (1.0 - p)
    return x * mask


def detach_hidden(hidden: Hidden) -> Hidden:
    """The hidden state cut from its history (for truncated back-propagation through time)."""
    return [(h.detach(), c.detach()) for h, c in hidden]


class LSTMLanguageModel(nn.Module):
    """Embedding -> ``num_layers`` LSTM layers -> linear decoder over the vocabulary.

    Args:
        vocab_size: number of word types V.
        emb_size: embedding size.
        hidden_size: hidden size of every layer but the last.
        num_layers: number of LSTM layers (>= 1).
        dropout: locked dropout on the last layer's output (AWD-LSTM ``dropout``); also the
            default of ``dropout_input`` and ``dropout_hidden``.
        tie_weights: share the embedding matrix with the decoder.
        last_hidden_size: hidden size of the last layer; defaults to ``emb_size`` when
            ``tie_weights`` (as AWD-LSTM does) and to ``hidden_size`` otherwise.
        dropout_input: locked dropout on the embeddings (AWD-LSTM ``dropouti``).
        dropout_hidden: locked dropout between LSTM layers (AWD-LSTM ``dropouth``).
        dropout_embedding: probability of dropping a whole word type from the embedding
            matrix (AWD-LSTM ``dropoute``).
        weight_drop: DropConnect probability on each layer's ``weight_hh_l0`` (AWD-LSTM ``wdrop``).

    Raises:
        ValueError: for ``num_layers < 1``, a probability outside [0, 1), or
            ``tie_weights`` with a last hidden size different from ``emb_size``.

    Example:
        >>> import torch
        >>> model = LSTMLanguageModel(50, 8, 12, num_layers=2, dropout=0.1, tie_weights=True)
        >>> logits, hidden = model(torch.zeros(5, 3, dtype=torch.long))
        >>> logits.shape, [h.shape for h, _ in hidden]
        (torch.Size([5, 3, 50]), [torch.Size([1, 3, 12]), torch.Size([1, 3, 8])])
        >>> model.decoder.weight is model.embedding.weight
        True
    """

    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        tie_weights: bool = False,
        *,
        last_hidden_size: int | None = None,
        dropout_input: float | None = None,
        dropout_hidden: float | None = None,
        dropout_embedding: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ParamCorruptError(f"num_layers must be at least 1, got {num_layers}")
        dropout_input = dropout if dropout_input is None else dropout_input
        dropout_hidden = dropout if dropout_hidden is None else dropout_hidden
        for label, p in [
            ("dropout", dropout),
            ("dropout_input", dropout_input),
            ("dropout_hidden", dropout_hidden),
            ("dropout_embedding", dropout_embedding),
            ("weight_drop", weight_drop),
        ]:
            if not 0.0 <= p < 1.0:
                raise ParamCorruptError(f"{label} must be in [0, 1), got {p}")
        if last_hidden_size is None:
            last_hidden_size = emb_size if tie_weights else hidden_size
        if tie_weights and last_hidden_size != emb_size:
            raise ParamCorruptError(
                f"tie_weights needs the last LSTM layer's hidden size ({last_hidden_size}) to equal "
                f"emb_size ({emb_size})"
            )
        self.vocab_size = vocab_size
        self.emb_size = emb_size
        self.num_layers = num_layers
        self.tie_weights = tie_weights
        self.hidden_sizes: tuple[int, ...] = tuple(
            hidden_size if i < num_layers - 1 else last_hidden_size for i in range(num_layers)
        )
        self.dropout = dropout
        self.dropout_input = dropout_input
        self.dropout_hidden = dropout_hidden
        self.dropout_embedding = dropout_embedding
        self.weight_drop = weight_drop

        self.embedding = nn.Embedding(vocab_size, emb_size)
        input_sizes = (emb_size, *self.hidden_sizes[:-1])
        self.lstm = nn.ModuleList(nn.LSTM(i, h) for i, h in zip(input_sizes, self.hidden_sizes))
        self.decoder = nn.Linear(last_hidden_size, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero (h, c) for every layer, on the model's device and dtype."""
        weight = self.decoder.weight
        return [
            (weight.new_zeros(1, batch_size, h), weight.new_zeros(1, batch_size, h))
            for h in self.hidden_sizes
        ]

    def _embed(self, tokens: Tensor) -> Tensor:
        weight = self.embedding.weight
        if self.training and self.dropout_embedding > 0.0:
            keep = 1.0 - self.dropout_embedding
            mask = weight.new_empty(weight.size(0), 1).bernoulli_(keep) / keep
            weight = weight * mask
        return F.embedding(tokens, weight)

    def _run_layer(
        self, index: int, x: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        rnn = self.lstm[index]
        if self.training and self.weight_drop > 0.0:
            dropped = F.dropout(rnn.weight_hh_l0, self.weight_drop, training=True)
            return functional_call(rnn, {"weight_hh_l0": dropped}, (x, state))
        return rnn(x, state)

    def forward(
        self, tokens: Tensor, hidden: Sequence[tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Hidden]:
        """Logits [T, B, V] for tokens [T, B] (time-major), and the new hidden state.

        Args:
            tokens: word indices, shape [T, B].
            hidden: the state from the previous window (default: zeros).
        """
        if tokens.dim() != 2:
            raise ParamCorruptError(f"tokens must be [T, B] (time-major), got shape {tuple(tokens.shape)}")
        if hidden is None:
            hidden = self.init_hidden(tokens.size(1))
        if len(hidden) != self.num_layers:
            raise ParamCorruptError(f"hidden has {len(hidden)} layers, the model {self.num_layers}")
        out = locked_dropout(self._embed(tokens), self.dropout_input, self.training)
        new_hidden: Hidden = []
        for i in range(self.num_layers):
            out, state = self._run_layer(i, out, tuple(hidden[i]))
            new_hidden.append(state)
            p = self.dropout_hidden if i < self.num_layers - 1 else self.dropout
            out = locked_dropout(out, p, self.training)
        return self.decoder(out), new_hidden
