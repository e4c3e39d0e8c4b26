"""Learning-rate schedules: cosine with warm-up for every training, one rate per strategy."""

from __future__ import annotations

import math

import pytest
import torch
from finetune_helpers import labelled_crops, tiny_settings
from training_helpers import PlainRestoration, crop_set, tiny_cnn

from bids_pcs.config import RecipeError, load_settings
from bids_pcs.finetuning import finetune
from bids_pcs.training.engine import Engine, TrainConfig
from bids_pcs.training.schedule import LearningRateSchedule, check_schedule

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_cosine_warms_up_linearly_then_decays_to_zero():
    schedule = LearningRateSchedule("cosine", total_steps=100, warmup_fraction=0.1)
    factors = [schedule.factor(step) for step in range(100)]
    assert schedule.warmup_steps == 10
    assert factors[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])
    assert factors[10] == pytest.approx(1.0)
    after = factors[10:]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))  # strictly decreasing
    assert factors[55] == pytest.approx(0.5, abs=0.02)  # half-way down the cosine
    assert 0.0 < factors[-1] < 0.01
    constant = LearningRateSchedule("constant", total_steps=100, warmup_fraction=0.0)
    assert {constant.factor(step) for step in range(100)} == {1.0}


@pytest.mark.bad_input("recipe:unknown lr_schedule", "recipe:warmup_fraction 1")
def test_a_bad_schedule_is_refused_in_one_sentence():
    with pytest.raises(RecipeError, match=r"\[finetune\] lr_schedule 'step' is unknown"):
        check_schedule("[finetune]", "step", 0.1)
    with pytest.raises(RecipeError, match="warmup_fraction must lie in"):
        check_schedule("[pretrain]", "cosine", 1.0)


def test_the_engine_sets_the_scheduled_rate_before_every_step():
    torch.manual_seed(0)
    network = tiny_cnn()
    objective = PlainRestoration()
    objective.setup(network)
    config = TrainConfig(epochs=3, batch_size=2, learning_rate=1e-2, lr_schedule="cosine",
                         warmup_fraction=0.25, progress=False)
    engine = Engine(network, objective, config)
    seen: list[float] = []
    step = engine.optimizers["main"].step

    def record(*args, **kwargs):
        seen.append(engine.optimizers["main"].param_groups[0]["lr"])
        return step(*args, **kwargs)

    engine.optimizers["main"].step = record
    result = engine.fit(crop_set(8))  # 4 steps per epoch, 12 in all, 3 warming up
    expected = [1e-2 * LearningRateSchedule("cosine", 12, 0.25).factor(k) for k in range(12)]
    assert seen == pytest.approx(expected)
    assert seen[2] == pytest.approx(1e-2) and seen[-1] < 1e-3
    assert [row["learning_rate"] for row in result.history] == pytest.approx(
        [expected[3], expected[7], expected[11]])
    assert result.schedule == {"kind": "cosine", "warmup_fraction": 0.25, "warmup_steps": 3,
                               "total_steps": 12}


def test_each_strategy_trains_at_its_own_recipe_rate():
    train = labelled_crops(4)
    settings = tiny_settings(strategy="top", learning_rate=5e-3,
                             learning_rates={"top": 2e-2, "full": 1e-3})
    top = finetune(settings, train, None, progress=False)
    optimizer = top.card["training"]["optimizer"]
    assert optimizer["learning_rate"] == 2e-2
    assert optimizer["schedule"]["kind"] == "cosine"
    lora = finetune(settings.replace(finetune={"strategy": "lora"}), train, None,
                    progress=False)
    assert lora.card["training"]["optimizer"]["learning_rate"] == 5e-3  # the fallback
    assert settings.finetune.learning_rate_for("full") == 1e-3


@pytest.mark.bad_input("recipe:learning rate of an unknown strategy")
def test_a_learning_rate_for_an_unknown_strategy_is_refused():
    settings = tiny_settings(learning_rates={"topp": 1e-3})
    with pytest.raises(RecipeError, match="unknown strategy 'topp'"):
        finetune(settings, labelled_crops(4), None, progress=False)


def test_every_recipe_trains_with_a_cosine_schedule():
    for recipe in ("default", "tiny-cpu-2mm", "demo", "study-quick", "study-paper"):
        settings = load_settings(recipe)
        assert settings.finetune.lr_schedule == settings.pretrain.lr_schedule == "cosine"
        assert 0 < settings.finetune.warmup_fraction < 0.5, recipe
        assert all(math.isfinite(r) and r > 0 for r in settings.finetune.learning_rates.values())
