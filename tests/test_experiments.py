"""paramcorrupt.experiments: finished models saved and found again, the table helpers."""

from __future__ import annotations

import pytest
import torch

from paramcorrupt.experiments import digest, load_saved, mean, save_model, table
from paramcorrupt.tasks.digits import digits_task


@pytest.mark.slow
def test_save_model_then_load_saved_by_identity(tmp_path):
    trained = digits_task(epochs=1, width=4)
    ident = digest({"task": "digits", "epochs": 1})
    weights = tmp_path / f"digits.{ident}.pt"
    save_model(trained, weights, {"id": ident, "note": "x"})
    assert trained.info["model_id"] == ident
    fresh = digits_task(train=False, width=4)
    assert load_saved(fresh, weights, weights.with_suffix(".json"), "another") is None  # another identity
    meta = load_saved(fresh, weights, weights.with_suffix(".json"), ident)
    assert meta["note"] == "x" and fresh.info["trained"] and not fresh.model.training
    for a, b in zip(trained.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    assert load_saved(fresh, tmp_path / "missing.pt", tmp_path / "missing.json", ident) is None


def test_table_and_mean():
    assert table(["a", "b"], [[1, 2]]) == ["| a | b |", "|---|---|", "| 1 | 2 |", ""]
    assert mean([1.0, None, float("nan"), 3.0]) == 2.0 and mean([None]) is None
