"""frozen_norm_stats (the batch-norm guard of corrupted()) saves statistics lazily, when a
forward pass runs a norm layer in training mode: its promise is checked where the mode
changes inside the block, for layers in training mode on entry, nested guards, cumulative
averages (momentum=None), instance norm, norm layers outside the model, and that it leaves
no hook behind and copies nothing for an evaluation-mode block."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from paramcorrupt import corrupted, frozen_norm_stats
from paramcorrupt.faults import random_bit_faults


def make(seed=0, momentum=0.1):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3, momentum=momentum),
        nn.ReLU(),
        nn.Sequential(
            nn.Conv2d(3, 3, 1),
            nn.BatchNorm2d(3),
            nn.InstanceNorm2d(3, track_running_stats=True, affine=True),
        ),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def bits(model):
    out = {f"p:{k}": v.detach().clone() for k, v in model.named_parameters()}
    out.update({f"b:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return out


def assert_same(model, before):
    now = bits(model)
    assert now.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(now[k].view(-1).view(torch.uint8), v.view(-1).view(torch.uint8)), k


def x():
    return torch.randn(8, 2, 4, 4)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_an_eval_model_switched_to_train_inside_the_block(momentum):
    model = make(momentum=momentum)
    before = bits(model)
    fault = random_bit_faults(model, flips=3, generator=torch.Generator().manual_seed(0))
    with corrupted(model, fault):
        model(x())  # evaluation mode: nothing moves
        model.train()
        for _ in range(3):
            model(x())
        moved = bits(model)
        assert not torch.equal(moved["b:1.running_mean"], before["b:1.running_mean"])
        assert not torch.equal(moved["b:3.2.running_var"], before["b:3.2.running_var"])
        assert int(model[1].num_batches_tracked) == 10
        model.eval()
        model(x())
    assert model.training is False
    assert_same(model, before)


def test_one_submodule_switched_to_train_and_an_exception():
    model = make()
    before = bits(model)
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_norm_stats(model):
            model[3][1].train()  # only the inner batch norm
            model(x())
            assert not torch.equal(model[3][1].running_mean, before["b:3.1.running_mean"])
            raise RuntimeError("boom")
    model[3][1].eval()
    assert_same(model, before)


def test_a_model_in_training_mode_on_entry_and_nested_guards():
    model = make().train()
    before = bits(model)
    with frozen_norm_stats(model):
        model(x())
        with frozen_norm_stats(model):
            model(x())
        model(x())
    assert_same(model, before)


def test_the_inner_guard_restores_what_it_found():
    model = make().train()
    with frozen_norm_stats(model):
        model(x())
        middle = bits(model)
        with frozen_norm_stats(model):
            model(x())
        assert_same(model, middle)  # the inner block's passes are undone, the outer's kept
        model(x())
    assert model.training


def test_a_norm_layer_outside_the_model_keeps_its_own_updates():
    model = make()
    other = nn.BatchNorm1d(3).train()
    with frozen_norm_stats(model):
        other(torch.randn(16, 3) + 5)
    assert float(other.running_mean.mean()) > 0.1  # not restored: it is not the model's


def test_no_hook_is_left_and_an_eval_block_copies_nothing(monkeypatch):
    model = make()
    hooks = len(module_hooks._global_forward_pre_hooks)
    clones = []
    real_clone = torch.Tensor.clone

    def counting_clone(self, *args, **kwargs):
        clones.append(self.shape)
        return real_clone(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counting_clone)
    with frozen_norm_stats(model):
        assert len(module_hooks._global_forward_pre_hooks) == hooks + 1
        with torch.no_grad():
            model(x())
    assert clones == []
    with pytest.raises(KeyboardInterrupt), frozen_norm_stats(model):
        raise KeyboardInterrupt
    assert len(module_hooks._global_forward_pre_hooks) == hooks
