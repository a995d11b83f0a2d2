"""An encoder-decoder Transformer in the layout of fairseq's ``transformer_iwslt_de_en``.

Post-norm layers by default (fairseq's ``normalize_before=False``), sinusoidal positions,
embeddings scaled by sqrt(d), the decoder's output projection tied to its input embedding.
Parameter names follow fairseq::

    encoder.embed_tokens, encoder.layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm,
        fc1, fc2, final_layer_norm}
    decoder.embed_tokens, decoder.layers.N.{self_attn, self_attn_layer_norm, cross_attn,
        cross_attn_layer_norm, fc1, fc2, final_layer_norm}, decoder.output_projection (untied)

``transformer_iwslt_de_en`` itself is ``TransformerModel(V_src, V_tgt, d_model=512, ffn=1024,
heads=4, layers=6)``; :data:`TRANSFORMERS` holds the CPU-sized variants.

Decoding: :func:`greedy_decode` (a batch at a time) and :func:`beam_search` (one sentence at
a time), both incremental (:meth:`TransformerModel.decode_step` caches each decoder layer's
inputs, so a step computes one new position). Beam search follows fairseq's stopping rule (a
beam ends when ``beam`` hypotheses have ended); scores are summed log-probabilities divided by
``length ** len_penalty``. Beam 1 is greedy decoding.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ParamCorruptError

__all__ = ["TRANSFORMERS", "MultiheadAttention", "TransformerModel", "beam_search", "greedy_decode"]

#: name -> TransformerModel options.
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "iwslt": {"d_model": 512, "ffn_dim": 1024, "heads": 4, "layers": 6, "dropout": 0.3},
    "small": {"d_model": 256, "ffn_dim": 512, "heads": 4, "layers": 3, "dropout": 0.2},
    "tiny": {"d_model": 32, "ffn_dim": 64, "heads": 2, "layers": 2, "dropout": 0.0},
}


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention with fairseq's ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ParamCorruptError(f"d_model {d_model} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, mask: Tensor | None = None) -> Tensor:
        """``query`` [B, T, d], ``key`` (= value) [B, S, d]; ``mask`` [B or 1, 1, T or 1, S],
        True where attention is allowed."""
        b, t, d = query.shape
        s = key.shape[1]

        def split(x: Tensor, n: int) -> Tensor:
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(query), t), split(self.k_proj(key), s), split(self.v_proj(key), s)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, heads: int, dropout: float, normalize_before: bool) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, heads, dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout, self.normalize_before = nn.Dropout(dropout), normalize_before

    def _block(self, x: Tensor, norm: nn.LayerNorm, fn) -> Tensor:
        if self.normalize_before:
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self._block(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, h, mask))
        return self._block(x, self.final_layer_norm, lambda h: self.fc2(self.dropout(F.relu(self.fc1(h)))))


class DecoderLayer(EncoderLayer):
    def __init__(self, d_model: int, ffn_dim: int, heads: int, dropout: float, normalize_before: bool) -> None:
        super().__init__(d_model, ffn_dim, heads, dropout, normalize_before)
        self.cross_attn = MultiheadAttention(d_model, heads, dropout)
        self.cross_attn_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor, memory_mask: Tensor) -> Tensor:  # type: ignore[override]
        x = self._block(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, h, self_mask))
        x = self._block(x, self.cross_attn_layer_norm, lambda h: self.cross_attn(h, memory, memory_mask))
        return self._block(x, self.final_layer_norm, lambda h: self.fc2(self.dropout(F.relu(self.fc1(h)))))

    def step(self, x: Tensor, past: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """One new position ``x`` [B, 1, d] attending to the layer inputs ``past`` [B, t, d]
        (itself included): the last row of :meth:`forward` on the whole prefix."""
        if self.normalize_before:
            norm = self.self_attn_layer_norm
            x = x + self.dropout(self.self_attn(norm(x), norm(past)))
        else:
            x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, past)))
        x = self._block(x, self.cross_attn_layer_norm, lambda h: self.cross_attn(h, memory, memory_mask))
        return self._block(x, self.final_layer_norm, lambda h: self.fc2(self.dropout(F.relu(self.fc1(h)))))


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """fairseq's sinusoidal table [length, d_model] (sin half, then cos half)."""
    half = d_model // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq[None]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, d_model - 2 * half))


class Encoder(nn.Module):
    def __init__(self, vocab: int, d_model: int, ffn_dim: int, heads: int, layers: int, dropout: float, pad: int, normalize_before: bool) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d_model, padding_idx=pad)
        nn.init.normal_(self.embed_tokens.weight, 0.0, d_model**-0.5)
        nn.init.zeros_(self.embed_tokens.weight[pad])
        self.layers = nn.ModuleList(EncoderLayer(d_model, ffn_dim, heads, dropout, normalize_before) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.dropout, self.scale = nn.Dropout(dropout), math.sqrt(d_model)


class Decoder(Encoder):
    def __init__(self, vocab: int, d_model: int, ffn_dim: int, heads: int, layers: int, dropout: float, pad: int, normalize_before: bool, tie: bool) -> None:
        super().__init__(vocab, d_model, ffn_dim, heads, 0, dropout, pad, normalize_before)
        self.layers = nn.ModuleList(DecoderLayer(d_model, ffn_dim, heads, dropout, normalize_before) for _ in range(layers))
        self.output_projection = None
        if not tie:
            self.output_projection = nn.Linear(d_model, vocab, bias=False)
            nn.init.normal_(self.output_projection.weight, 0.0, d_model**-0.5)


class TransformerModel(nn.Module):
    """``model(src [B, S], tgt_in [B, T])`` -> logits [B, T, V_tgt].

    Example:
        >>> model = TransformerModel(10, 12, d_model=8, ffn_dim=16, heads=2, layers=1)
        >>> model(torch.tensor([[4, 5, 0]]), torch.tensor([[1, 6]])).shape
        torch.Size([1, 2, 12])
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        *,
        d_model: int = 256,
        ffn_dim: int = 512,
        heads: int = 4,
        layers: int = 3,
        decoder_layers: int | None = None,
        dropout: float = 0.2,
        normalize_before: bool = False,
        share_decoder_embeddings: bool = True,
        pad: int = 0,
        max_positions: int = 1024,
    ) -> None:
        super().__init__()
        self.pad, self.d_model = pad, d_model
        self.encoder = Encoder(src_vocab, d_model, ffn_dim, heads, layers, dropout, pad, normalize_before)
        self.decoder = Decoder(
            tgt_vocab, d_model, ffn_dim, heads, layers if decoder_layers is None else decoder_layers,
            dropout, pad, normalize_before, share_decoder_embeddings,
        )
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)

    def _embed(self, part: Encoder, tokens: Tensor, offset: int = 0) -> Tensor:
        x = part.embed_tokens(tokens) * part.scale + self.positions[offset : offset + tokens.shape[1]]
        return part.dropout(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """(memory [B, S, d], memory mask [B, 1, 1, S])."""
        mask = (src != self.pad)[:, None, None, :]
        x = self._embed(self.encoder, src)
        for layer in self.encoder.layers:
            x = layer(x, mask)
        if self.encoder.layer_norm is not None:
            x = self.encoder.layer_norm(x)
        return x, mask

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Logits [B, T, V] of the next token at every position of ``tgt_in``."""
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()[None, None]
        x = self._embed(self.decoder, tgt_in)
        for layer in self.decoder.layers:
            x = layer(x, memory, causal, memory_mask)
        if self.decoder.layer_norm is not None:
            x = self.decoder.layer_norm(x)
        weight = self.decoder.embed_tokens.weight if self.decoder.output_projection is None else self.decoder.output_projection.weight
        return F.linear(x, weight)

    def decode_step(
        self, token: Tensor, step: int, memory: Tensor, memory_mask: Tensor, cache: list[Tensor] | None
    ) -> tuple[Tensor, list[Tensor]]:
        """Incremental decoding: the logits [B, V] after ``token`` [B] at position ``step``,
        and the cache (each decoder layer's inputs at positions 0..step, [B, step + 1, d]).
        Equal to ``decode(prefix)[:, -1]`` without recomputing the earlier positions."""
        x = self._embed(self.decoder, token[:, None], offset=step)
        new_cache = []
        for i, layer in enumerate(self.decoder.layers):
            past = x if cache is None else torch.cat([cache[i], x], dim=1)
            new_cache.append(past)
            x = layer.step(x, past, memory, memory_mask)
        if self.decoder.layer_norm is not None:
            x = self.decoder.layer_norm(x)
        weight = self.decoder.embed_tokens.weight if self.decoder.output_projection is None else self.decoder.output_projection.weight
        return F.linear(x[:, 0], weight), new_cache

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


def _limits(src: Tensor, pad: int, max_len: int | None) -> list[int]:
    from ..data.multi30k import max_decode_length

    lengths = (src != pad).sum(dim=1).tolist()
    return [max_len if max_len is not None else max_decode_length(n) for n in lengths]


@torch.no_grad()
def greedy_decode(model: TransformerModel, src: Tensor, *, bos: int = 1, eos: int = 2, max_len: int | None = None) -> list[list[int]]:
    """The argmax translation of every source row (without ``<bos>`` / ``<eos>``); each stops at
    ``<eos>`` or its length limit (``max_len``, default 1.5 x source length + 10)."""
    limits = _limits(src, model.pad, max_len)
    memory, mask = model.encode(src)
    token = torch.full((src.shape[0],), bos, dtype=torch.long, device=src.device)
    done = [False] * src.shape[0]
    out: list[list[int]] = [[] for _ in range(src.shape[0])]
    cache = None
    for step in range(max(limits)):
        logits, cache = model.decode_step(token, step, memory, mask, cache)
        nxt = logits.float().nan_to_num(nan=-1e30).argmax(dim=-1)
        for i, token in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if token == eos:
                done[i] = True
            else:
                out[i].append(token)
                done[i] = len(out[i]) >= limits[i]
        if all(done):
            break
        token = nxt
    return out


@torch.no_grad()
def beam_search(
    model: TransformerModel,
    src: Tensor,
    *,
    beam: int = 5,
    len_penalty: float = 1.0,
    bos: int = 1,
    eos: int = 2,
    max_len: int | None = None,
) -> list[list[int]]:
    """Beam-search translations, one source row at a time (see the module's docstring)."""
    limits = _limits(src, model.pad, max_len)
    results = []
    for row, limit in zip(src, limits):
        row = row[row != model.pad][None]
        memory, mask = model.encode(row)
        hyps: list[tuple[list[int], float]] = [([], 0.0)]  # (tokens, summed log-probability)
        finished: list[tuple[list[int], float]] = []
        token = torch.tensor([bos], dtype=torch.long, device=src.device)
        cache = None
        for step in range(limit + 1):
            if step == limit:  # out of length: every live hypothesis ends here
                finished += [(h, s) for h, s in hyps]
                break
            logits, cache = model.decode_step(token, step, memory.expand(len(hyps), -1, -1), mask, cache)
            logp = F.log_softmax(logits.float(), dim=-1).nan_to_num(nan=-1e30)
            scores = (torch.tensor([s for _, s in hyps], device=logp.device)[:, None] + logp).view(-1)
            top = scores.topk(min(2 * beam, scores.numel()))
            vocab = logp.shape[1]
            nxt, origins = [], []
            for rank, (score, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                h, word = hyps[flat // vocab][0], flat % vocab
                if word == eos:
                    if rank < beam:
                        finished.append((h, score))
                elif len(nxt) < beam:
                    nxt.append((h + [word], score))
                    origins.append(flat // vocab)
            if len(finished) >= beam or not nxt:
                break
            hyps = nxt
            index = torch.tensor(origins, dtype=torch.long, device=src.device)
            cache = [c.index_select(0, index) for c in cache]
            token = torch.tensor([h[-1] for h, _ in hyps], dtype=torch.long, device=src.device)
        best = max(finished, key=lambda f: f[1] / (max(len(f[0]) + 1, 1) ** len_penalty))
        results.append(best[0])
    return results
