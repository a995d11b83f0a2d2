"""The single most damaging weight of a language model: n = 1 ("super weights", Yu et al. 2024).

    .venv/bin/python examples/super_weights.py                    # a tiny Llama trained here (~30 s)
    .venv/bin/python examples/super_weights.py --hf DIR --data ids.safetensors   # your checkpoint

Yu et al. find single scalars in LLMs (in an early layer's mlp.down_proj) whose removal
(setting them to 0) destroys the model. This script searches for them with one data set
gradient: every weight is scored by the first-order loss change of zeroing it (-w g), the
``--candidates`` best are zeroed one at a time and measured exactly, and the result is set
beside n = 1 gradient-based corruption (+eps sign(g) on the largest |g|: Proposition 1 with
n = 1) and beside zeroing random single weights. Offline: ``--hf`` reads a local folder
(``save_pretrained``, safetensors); without it a tiny Llama is built from a config and
trained for ``--steps`` steps on a synthetic copy task, where nothing forces a super weight
to exist — on a real LLM checkpoint the same call finds them.
"""

from __future__ import annotations

import argparse
import time

import torch

import paramcorrupt as pc
from paramcorrupt.probe.super_weights import super_weight_search
from paramcorrupt.tasks.hf import hf_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", default=None, metavar="DIR", help="a local Hugging Face checkpoint folder")
    parser.add_argument("--data", default=None, help="token data for --hf (.safetensors/.pt with input_ids, or .txt)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the tiny model (default 300)")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--eps", type=float, default=1.0, help="radius of the n = 1 gradient-based corruption")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.hf:
        task = hf_task(args.hf, data=args.data)
    else:
        from transformers import LlamaConfig

        config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=172, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                             architectures=["LlamaForCausalLM"])
        task = hf_task(config=config, examples=512, eval_examples=64, seq_len=32, batch_size=16)
        optimizer = torch.optim.Adam(task.model.parameters(), lr=3e-3)
        task.model.train()
        step = 0
        start = time.perf_counter()
        while step < args.steps:
            for batch in task.train_loader:
                optimizer.zero_grad(set_to_none=True)
                task.loss_fn(task.model, batch).loss.backward()
                optimizer.step()
                step += 1
                if step == args.steps:
                    break
        task.model.eval()
        print(f"trained the tiny Llama for {args.steps} steps in {time.perf_counter() - start:.0f} s")
    model = task.model
    clean = pc.evaluate(model, task.eval_loader, task.loss_fn, task.metrics)
    print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; clean {clean}")
    start = time.perf_counter()
    zeroed = super_weight_search(model, task.gradient_loader, task.loss_fn, eval_loader=task.eval_loader,
                                 metrics=task.metrics, mode="zero", candidates=args.candidates)
    pushed = super_weight_search(model, task.gradient_loader, task.loss_fn, eval_loader=task.eval_loader,
                                 metrics=task.metrics, mode="gradient", eps=args.eps, candidates=args.candidates)
    print(f"searched in {time.perf_counter() - start:.1f} s\n")
    print("| mode | parameter | index | value | new value | first-order | loss change | metric after |")
    print("|---|---|---|---|---|---|---|---|")
    metric = task.primary_metric
    for mode, found in (("zero", zeroed[:5]), (f"+{args.eps:g} sign(g)", pushed[:5])):
        for w in found:
            print(f"| {mode} | {w.name} | {w.index} | {w.value:+.4g} | {w.new_value:+.4g} | {w.score:+.3g} "
                  f"| {w.loss_change:+.4g} | {w.metrics.get(metric, float('nan')):.4g} |")
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    names = list(params)
    changes = []
    for _ in range(20):
        name = names[int(torch.randint(len(names), (1,), generator=g))]
        flat = int(torch.randint(params[name].numel(), (1,), generator=g))
        fault = pc.Corruption.from_values({name: torch.zeros(1)}, {name: torch.tensor([flat])})
        with pc.corrupted(model, fault):
            changes.append(pc.evaluate(model, task.eval_loader, task.loss_fn)["loss"] - clean["loss"])
    print(f"\nzeroing 20 random single weights: loss change max {max(changes):+.3g}, "
          f"mean {sum(changes) / len(changes):+.3g}; the searched weight: {zeroed[0].loss_change:+.3g}")


if __name__ == "__main__":
    main()
