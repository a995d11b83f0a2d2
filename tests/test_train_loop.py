"""fit(): the generic loop, its checkpoints and resuming."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paramcorrupt.losses import classification_loss
from paramcorrupt.tasks.digits import Batches
from paramcorrupt.train import CorruptionResistant, RegularizedLoss, fit, load_checkpoint


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def loader(seed: int = 0, size: int = 96, batch_size: int = 16) -> Batches:
    g = torch.Generator().manual_seed(123)
    x = torch.rand(size, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (size,), generator=g)
    return Batches(x, y, batch_size, shuffle=True, seed=seed)


def resistant_setup(epochs: int):
    model = small_cnn()
    data = loader()
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, n=50, interval=2, model=model, lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(data))
    return model, data, opt, sched


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    model, data, opt, sched = resistant_setup(3)
    straight = fit(model, opt, data, classification_loss, epochs=3, scheduler=sched)

    path = tmp_path / "ckpt.pt"
    model2, data2, opt2, sched2 = resistant_setup(3)
    fit(model2, opt2, data2, classification_loss, epochs=2, scheduler=sched2, checkpoint=path)
    # a fresh process: new objects, everything restored from the file
    model3, data3, opt3, sched3 = resistant_setup(3)
    resumed = fit(model3, opt3, data3, classification_loss, epochs=3, scheduler=sched3, checkpoint=path)
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert opt3.steps == opt.steps == 3 * len(data)


def test_a_checkpoint_of_another_run_is_refused_before_anything_changes(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, data, opt, sched = resistant_setup(2)
    run = {"method": "resistant", "eps": 0.1, "epochs": 2}
    fit(model, opt, data, classification_loss, epochs=1, scheduler=sched, checkpoint=path, identity=run)
    model2, data2, opt2, sched2 = resistant_setup(2)
    before = {k: v.clone() for k, v in model2.state_dict().items()}
    with pytest.raises(ValueError, match="from another run"):
        fit(model2, opt2, data2, classification_loss, epochs=2, scheduler=sched2, checkpoint=path,
            identity={**run, "epochs": 3})
    assert all(torch.equal(before[k], v) for k, v in model2.state_dict().items())
    assert opt2.steps == 0
    history = fit(model2, opt2, data2, classification_loss, epochs=2, scheduler=sched2, checkpoint=path, identity=run)
    assert len(history) == 2 and opt2.steps == 2 * len(data2)  # the same run resumes


def test_checkpoint_loads_without_unpickling_code(tmp_path):
    model, data, opt, sched = resistant_setup(1)
    path = tmp_path / "ckpt.pt"
    fit(model, opt, data, classification_loss, epochs=1, scheduler=sched, checkpoint=path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "scheduler", "rng", "loader_generator", "history"}
    assert load_checkpoint(path).keys() == state.keys()
    assert "corruption_resistant" in state["optimizer"]


def test_fit_with_plain_sgd_is_the_digits_training_loop():
    """fit() with the digits recipe reproduces the digits task's former loop (train_classifier,
    kept literally in tests/test_task_training.py) bit for bit."""
    from test_task_training import literal_train_classifier

    reference, model = small_cnn(), small_cnn()
    literal_train_classifier(reference, loader(), epochs=2, lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    data = loader()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=2 * len(data), pct_start=0.15)
    fit(model, opt, data, classification_loss, epochs=2, scheduler=sched)
    for a, b in zip(reference.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(dict(micro_batches=3), id="micro-batches"),
        pytest.param(dict(autocast_dtype=torch.bfloat16), id="bf16"),
        pytest.param(dict(scaler=True), id="grad-scaler"),
    ],
)
def test_fit_options_with_the_resistant_optimizer(options):
    model = small_cnn()
    scaler = torch.amp.GradScaler("cpu") if options.pop("scaler", False) else None
    opt = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, model=model, lr=0.05, grad_scaler=scaler)
    history = fit(model, opt, loader(), classification_loss, epochs=2, grad_scaler=scaler, **options)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


def test_fit_with_the_exact_regulariser_and_clipping():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    history = fit(model, opt, loader(), classification_loss, epochs=1, penalty=RegularizedLoss(0.05), max_grad_norm=1.0)
    assert history[0]["loss"] > 0


def test_fit_restores_the_model_mode():
    model = small_cnn().eval()
    fit(model, torch.optim.SGD(model.parameters(), lr=0.01), loader(), classification_loss, epochs=1, progress=True)
    assert not model.training


def test_fit_bad_input():
    model = small_cnn()
    scaler = torch.amp.GradScaler("cpu")
    resistant = CorruptionResistant(model.parameters(), torch.optim.SGD, eps=0.1, lr=0.05)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, resistant, loader(), classification_loss, epochs=0)
    with pytest.raises(ValueError, match="same GradScaler"):
        fit(model, resistant, loader(), classification_loss, epochs=1, grad_scaler=scaler)
    with pytest.raises(ValueError, match="max_grad_norm"):
        fit(model, resistant, loader(), classification_loss, epochs=1, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="micro-batches"):
        fit(model, resistant, loader(), classification_loss, epochs=1, micro_batches=2, penalty=RegularizedLoss(0.1))


def test_custom_loss_fn_returning_a_tensor():
    model = small_cnn()
    opt = CorruptionResistant(model.parameters(), torch.optim.Adam, eps=0.05, lr=1e-3)

    def loss_fn(m, batch):
        return F.cross_entropy(m(batch[0]), batch[1])

    assert len(fit(model, opt, loader(), loss_fn, epochs=1)) == 1
