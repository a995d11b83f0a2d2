"""The tasks train through their recipes (``train.recipe.fit_recipe`` -> ``train.fit``), not
through loops of their own: each test runs a literal copy of the loop a task used to own
(``train_classifier``, ``train_parser``, ``train_translation``, as they were before they were
removed) beside the recipe path on a tiny model and asserts the parameters are equal bit for
bit. Data-free: random features and token ids."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt.data.multi30k import TranslationBatches
from paramcorrupt.losses import classification_loss
from paramcorrupt.models.mlp_parser import MLPParser
from paramcorrupt.models.transformer import TransformerModel
from paramcorrupt.tasks.digits import DIGITS_RECIPE, Batches, DigitsResNet
from paramcorrupt.tasks.parser import PARSER_RECIPE, ParserLoss, TransitionBatches
from paramcorrupt.tasks.translation import MULTI30K_RECIPE, TranslationLoss
from paramcorrupt.train.recipe import fit_recipe

# ---------------------------------------------------------------------------------------------
# the loops the tasks owned, literally


def literal_train_classifier(model, loader, *, epochs, lr=0.1, weight_decay=5e-4):
    """tasks.digits.train_classifier."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * len(loader)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model


def literal_train_parser(model, loader, *, epochs, lr=1e-3, decay=0.9, weight_decay=1e-8):
    """tasks.parser.train_parser (without its eval_fn hook, which the task never passed)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)
    loss_fn = ParserLoss()
    for _ in range(epochs):
        model.train()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            out = loss_fn(model, batch)
            out.loss.backward()
            optimizer.step()
        schedule.step()
        model.eval()
    model.eval()


def literal_inverse_sqrt(warmup, init_ratio=1e-4):
    def factor(step):
        step = max(step, 1)
        if step < warmup:
            return init_ratio + (1 - init_ratio) * step / warmup
        return math.sqrt(warmup / step)

    return factor


def literal_train_translation(model, loader, loss_fn, *, epochs, lr=1e-3, warmup=4000, weight_decay=1e-4, clip=0.0):
    """tasks.translation.train_translation (without its eval_fn hook)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, literal_inverse_sqrt(warmup))
    for _ in range(epochs):
        model.train()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            out = loss_fn(model, batch)
            out.loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            schedule.step()
        model.eval()
    model.eval()


# ---------------------------------------------------------------------------------------------


def _equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow
def test_digits_recipe_is_the_old_digits_loop():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(DigitsResNet(width=4))
    literal_train_classifier(models[0], Batches(x, y, 16, shuffle=True, seed=3), epochs=2)
    fit_recipe(models[1], Batches(x, y, 16, shuffle=True, seed=3), classification_loss, DIGITS_RECIPE, epochs=2)
    _equal(*models)


def _parser_data():
    g = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randint(0, 20, (300, 18), generator=g), torch.randint(0, 8, (300, 18), generator=g)], 1)
    return features, torch.randint(0, 3, (300,), generator=g)


def test_parser_recipe_is_the_old_parser_loop():
    """Adam with weight decay 1e-8 and ExponentialLR stepped per epoch (the chained product
    0.9 * 0.9 * ..., which differs from 0.9 ** k in the last bits); dropout 0.5 draws from the
    global RNG in the same order. 5 epochs: at the fourth, 1e-3 * 0.9 * 0.9 * 0.9 != 1e-3 * 0.9 ** 3."""
    features, target = _parser_data()
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        models.append(MLPParser(20, 8, 0, emb_size=8, hidden_size=16))
    torch.manual_seed(2)
    literal_train_parser(models[0], TransitionBatches(features, target, 64, shuffle=True, seed=5), epochs=5, lr=1e-3)
    torch.manual_seed(2)
    history = fit_recipe(
        models[1], TransitionBatches(features, target, 64, shuffle=True, seed=5), ParserLoss(),
        PARSER_RECIPE.replace(lr=1e-3), epochs=5,
    )
    _equal(*models)
    chained = [1e-3]
    for _ in range(5):
        chained.append(chained[-1] * 0.9)
    assert [r["lr"] for r in history] == chained[1:]
    assert chained[3] != 1e-3 * 0.9**3  # the per-step closed form would not have been equal


def _translation_data(n=60):
    g = torch.Generator().manual_seed(0)
    src = [[int(t) for t in torch.randint(4, 12, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)] for _ in range(n)]
    return src, [list(reversed(s)) for s in src]


def test_multi30k_recipe_is_the_old_translation_loop():
    """AdamW (0.9, 0.98), weight decay 1e-4, fairseq's inverse-sqrt warm-up (step 0 counted as
    step 1), dropout on; the warm-up (6 steps) ends inside the run."""
    src, tgt = _translation_data()
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        models.append(TransformerModel(12, 12, d_model=16, ffn_dim=32, heads=2, layers=1, dropout=0.1))
    loss_fn = TranslationLoss(None, label_smoothing=0.1)
    torch.manual_seed(2)
    literal_train_translation(
        models[0], TranslationBatches(src, tgt, max_tokens=64, shuffle=True, seed=4), loss_fn, epochs=2, lr=2e-3, warmup=6
    )
    torch.manual_seed(2)
    fit_recipe(
        models[1], TranslationBatches(src, tgt, max_tokens=64, shuffle=True, seed=4), loss_fn,
        MULTI30K_RECIPE.replace(lr=2e-3, warmup=6), epochs=2,
    )
    _equal(*models)
