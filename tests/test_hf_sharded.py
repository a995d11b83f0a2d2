"""Sharded parameters: the global top-n from per-rank candidates (one all_gather) equals the
unsharded closed form; FSDP2 (``fully_shard``) on CPU with 2 gloo processes gives the
unsharded data set gradient of a tiny GPT-2."""

from __future__ import annotations

import copy
import math
import multiprocessing
import os

import pytest
import torch

from paramcorrupt import dataset_gradient
from paramcorrupt import parallel as D
from paramcorrupt.constraint import Constraint, sparse_closed_form
from paramcorrupt.parallel.fsdp import (
    flat_shard,
    fsdp_dataset_gradient,
    gradient_memory,
    local_shard,
    sharded_closed_form,
    sharded_top_n,
)

START = os.environ.get(
    "PARAMCORRUPT_TEST_START",
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn",
)
pytestmark = pytest.mark.timeout(300)

SHAPES = [(7, 3), (5,), (4, 2, 2), (), (1, 6)]
CONSTRAINTS = [(math.inf, 5), (2.0, 5), (3.0, 7), (1.0, 1), (2.0, 1), (1.5, 40), (math.inf, None),
               (2.0, None), (3.0, None), (1.0, None)]


def _tensors(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]


def _dense(per_rank, tensors):
    """Assemble each rank's (global flat index, value) pieces into dense tensors."""
    out = [torch.zeros(t.numel(), dtype=t.dtype) for t in tensors]
    for pieces in per_rank:
        for j, (idx, val) in enumerate(pieces):
            out[j][idx] = val
    return [o.view(t.shape) for o, t in zip(out, tensors)]


def _reference(tensors, constraint):
    idx, val = sparse_closed_form(tensors, constraint)
    out = []
    for t, i, v in zip(tensors, idx, val):
        if i is None:
            out.append(v.reshape(t.shape))
        else:
            dense = torch.zeros(t.numel(), dtype=t.dtype)
            dense[i] = v
            out.append(dense.view(t.shape))
    return out


def _flat_worker():
    tensors = _tensors()
    shards = [flat_shard(t) for t in tensors]
    results = {}
    for p, n in CONSTRAINTS:
        idx, val = sharded_closed_form(shards, Constraint(p, 0.1, n))
        pieces = []
        for s, i, v in zip(shards, idx, val):
            local = torch.arange(s.tensor.numel()) if i is None else i
            pieces.append((local + s.offset, v.reshape(-1)))
        results[(p, n)] = pieces
    top_idx, top_val = sharded_top_n(shards, 6)
    return {"closed_form": results, "top": (top_idx, top_val), "sizes": [s.tensor.numel() for s in shards]}


def test_sharded_closed_form_equals_unsharded_bit_for_bit():
    per_rank = D.spawn(_flat_worker, 2, start_method=START)
    tensors = _tensors()
    assert sum(map(sum, (r["sizes"] for r in per_rank))) == sum(t.numel() for t in tensors)
    for p, n in CONSTRAINTS:
        got = _dense([r["closed_form"][(p, n)] for r in per_rank], tensors)
        want = _reference(tensors, Constraint(p, 0.1, n))
        for g, w in zip(got, want):
            if n is None and p not in (1.0, math.inf):  # dense: the norm is summed in another order
                torch.testing.assert_close(g, w, rtol=1e-6, atol=0)
            else:
                assert torch.equal(g, w), (p, n)
    # the top-6 is the same on both ranks and is the unsharded one
    from paramcorrupt.constraint import global_top_n

    want_idx, want_val = global_top_n(tensors, 6)
    for r in per_rank:
        idx, val = r["top"]
        assert all(torch.equal(a, b) for a, b in zip(idx, want_idx))
        assert all(torch.equal(a, b) for a, b in zip(val, want_val))


def test_single_process_sharded_equals_unsharded():
    tensors = _tensors(torch.float64)
    for p, n in CONSTRAINTS:
        idx, val = sharded_closed_form([local_shard(t) for t in tensors], Constraint(p, 0.3, n))
        want = _reference(tensors, Constraint(p, 0.3, n))
        for t, i, v, w in zip(tensors, idx, val, want):
            got = v.reshape(t.shape) if i is None else torch.zeros(t.numel(), dtype=t.dtype).index_copy_(0, i, v).view(t.shape)
            torch.testing.assert_close(got, w, rtol=1e-12, atol=0)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).double().eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (7, 12), generator=g)
    return [{"input_ids": ids[i : i + 2], "labels": ids[i : i + 2]} for i in range(0, 7, 2)]  # 2, 2, 2, 1


def _fsdp_worker():
    from torch.distributed.fsdp import fully_shard

    from paramcorrupt.tasks.hf import hf_loss

    model = _gpt2()
    model.config.use_cache = False
    reference = dataset_gradient(model, _batches(), hf_loss, distributed=False)
    sharded = copy.deepcopy(model)
    for block in sharded.transformer.h:
        fully_shard(block)
    fully_shard(sharded)
    param = next(sharded.parameters())
    grads = fsdp_dataset_gradient(sharded, D.split(_batches()), hf_loss, accumulate_dtype=torch.float64)
    out = {"param_type": type(param).__name__, "grad_type": type(next(iter(grads.values()))).__name__}
    out["pieces"] = {name: (local_shard(g).offset, local_shard(g).tensor.clone()) for name, g in grads.items()}
    out["reference"] = reference
    constraint = Constraint(2.0, 0.5, 10)
    idx, val = sharded_closed_form(list(grads.values()), constraint)
    out["corruption"] = {name: (i + local_shard(g).offset, v) for (name, g), i, v in zip(grads.items(), idx, val)}
    out["grad_none"] = all(p.grad is None for p in sharded.parameters())
    # a float64 model whose loss stays in float64: the sharded gradient to float64 rounding
    from paramcorrupt.losses import classification_loss

    torch.manual_seed(2)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.LayerNorm(9), torch.nn.Tanh(), torch.nn.Linear(9, 3)).double()
    g = torch.Generator().manual_seed(4)
    data = [(torch.randn(m, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (m,), generator=g)) for m in (4, 4, 3)]
    plain = dataset_gradient(mlp, data, classification_loss, distributed=False)
    fully_shard(mlp)
    sharded_mlp = fsdp_dataset_gradient(mlp, D.split(data), classification_loss, accumulate_dtype=torch.float64)
    out["mlp"] = (plain, {n: (local_shard(v).offset, local_shard(v).tensor.clone()) for n, v in sharded_mlp.items()})
    return out


def test_fsdp2_fully_shard_on_cpu_gloo_equals_unsharded():
    per_rank = D.spawn(_fsdp_worker, 2, start_method=START)
    assert per_rank[0]["param_type"] == "DTensor" and per_rank[0]["grad_type"] == "DTensor"
    assert all(r["grad_none"] for r in per_rank)  # .grad left as it was
    reference = per_rank[0]["reference"]
    for name, want in reference.items():
        flat = torch.zeros(want.numel(), dtype=want.dtype)
        covered = 0
        for r in per_rank:
            offset, piece = r["pieces"][name]
            flat[offset : offset + piece.numel()] = piece
            covered += piece.numel()
        assert covered == want.numel()
        # float64 model, but transformers' loss upcasts the logits to float32 (logits.float()):
        # the last-bit differences of a sharded matmul reach the float32 rounding there
        # (measured: at most 9e-8 of each tensor's largest entry)
        torch.testing.assert_close(flat.view(want.shape), want, rtol=0, atol=2e-7 * float(want.abs().max()))
    plain = per_rank[0]["mlp"][0]
    for name, want in plain.items():
        flat = torch.zeros(want.numel(), dtype=want.dtype)
        for r in per_rank:
            offset, piece = r["mlp"][1][name]
            flat[offset : offset + piece.numel()] = piece
        torch.testing.assert_close(flat.view(want.shape), want, rtol=1e-12, atol=1e-15)
    # the sharded closed form on the FSDP gradients == the unsharded closed form
    names = list(reference)
    want = dict(zip(names, _reference([reference[n] for n in names], Constraint(2.0, 0.5, 10))))
    for name in names:
        got = torch.zeros(reference[name].numel(), dtype=torch.float64)
        for r in per_rank:
            idx, val = r["corruption"][name]
            got[idx] = val
        torch.testing.assert_close(got.view(reference[name].shape), want[name], rtol=1e-5, atol=1e-9)


def test_gradient_memory_and_low_precision_accumulation():
    from transformers import LlamaConfig

    from paramcorrupt.tasks.hf import hf_task

    task = hf_task(config=LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=40, max_position_embeddings=16,
                                      architectures=["LlamaForCausalLM"]), examples=24, seq_len=8, batch_size=4)
    k = sum(p.numel() for p in task.model.parameters())
    memory = {d: gradient_memory(task.model, accumulate_dtype=d)["sums"] for d in (torch.float64, torch.float32, torch.bfloat16)}
    assert memory == {torch.float64: 8 * k, torch.float32: 4 * k, torch.bfloat16: 2 * k}
    exact = dataset_gradient(task.model, task.gradient_loader, task.loss_fn)
    single = dataset_gradient(task.model, task.gradient_loader, task.loss_fn, accumulate_dtype=torch.float32)
    for name in exact:
        torch.testing.assert_close(single[name], exact[name], rtol=1e-5, atol=1e-7)
    bf16 = copy.deepcopy(task.model).to(torch.bfloat16)
    low = dataset_gradient(bf16, task.gradient_loader, task.loss_fn, accumulate_dtype=torch.bfloat16)
    assert all(g.dtype == torch.bfloat16 for g in low.values())
    cos = torch.nn.functional.cosine_similarity(
        torch.cat([low[n].float().flatten() for n in exact]), torch.cat([exact[n].flatten() for n in exact]), dim=0
    )
    assert cos > 0.95
