"""The typed, frozen training Recipe: unknown keys refused, the schedule always named."""

from __future__ import annotations

import dataclasses

import pytest

from paramcorrupt.tasks.digits import DIGITS_RECIPE
from paramcorrupt.tasks.parser import PARSER_RECIPE
from paramcorrupt.tasks.translation import MULTI30K_RECIPE
from paramcorrupt.train.recipe import RECIPE_KEYS, Recipe, as_recipe, schedule_name


def test_unknown_key_is_refused_naming_it_and_the_valid_ones():
    with pytest.raises(ValueError, match="unknown recipe key 'label_smoothing'") as error:
        as_recipe({"lr": 0.1, "label_smoothing": 0.1})
    assert all(key in str(error.value) for key in RECIPE_KEYS)
    with pytest.raises(ValueError, match="unknown recipe key 'lrr'"):
        DIGITS_RECIPE.replace(lrr=0.2)


def test_recipe_is_frozen_and_replace_makes_a_copy():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DIGITS_RECIPE.lr = 0.2  # type: ignore[misc]
    faster = DIGITS_RECIPE.replace(lr=0.2, epochs=3)
    assert (faster.lr, faster.epochs, DIGITS_RECIPE.lr, DIGITS_RECIPE.epochs) == (0.2, 3, 0.1, 30)


def test_the_schedule_is_explicit():
    assert MULTI30K_RECIPE.schedule == "inverse_sqrt" and PARSER_RECIPE.schedule == "exponential"
    with pytest.raises(ValueError, match="warmup"):
        Recipe(lr=1e-3, warmup=500)  # no hidden "a warmup key means inverse_sqrt"
    with pytest.raises(ValueError, match="decay"):
        Recipe(lr=1e-3, decay=0.9)
    assert schedule_name({"lr": 1.0, "schedule": "constant"}) is None
    with pytest.raises(ValueError, match="unknown schedule"):
        Recipe(lr=1.0, schedule="step")
    with pytest.raises(ValueError, match="unknown optimizer"):
        Recipe(optimizer="lion", lr=1.0)


def test_mapping_and_dict_round_trip():
    assert as_recipe(MULTI30K_RECIPE.to_dict()) == MULTI30K_RECIPE
    assert as_recipe(DIGITS_RECIPE) is DIGITS_RECIPE
    assert as_recipe({"optimizer": "adamw", "lr": 1e-3, "betas": [0.9, 0.98]}).betas == (0.9, 0.98)
