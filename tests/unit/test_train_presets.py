"""Presets: defaults that explicit settings override, reflected in the adapter hash."""

from __future__ import annotations

import pytest

from lift_ray.config import ALL_LINEAR, ConfigError, LiftConfig, LoraSettings, load_config


def test_cpu_is_the_default_preset_and_paper_is_appendix_a() -> None:
    cpu, paper = LiftConfig(), load_config(LiftConfig, None, ["preset=paper"])
    assert (cpu.preset, cpu.lora.rank, cpu.lora.alpha, cpu.train.learning_rate) == ("cpu", 16, 32, 1e-3)
    assert (paper.lora.rank, paper.lora.alpha, paper.lora.target_modules) == (128, 256, ALL_LINEAR)
    assert (paper.train.learning_rate, paper.train.epochs, paper.model.dtype) == (5e-5, 5, "bfloat16")
    assert cpu.adapter_hash() != paper.adapter_hash()


def test_explicit_settings_win_over_the_preset_and_change_the_hash() -> None:
    paper = load_config(LiftConfig, None, ["preset=paper"])
    tuned = load_config(LiftConfig, None, ["preset=paper", "lora.rank=64", "train.epochs=8"])
    assert (tuned.lora.rank, tuned.lora.alpha, tuned.train.epochs, tuned.train.learning_rate) == (64, 256, 8, 5e-5)
    assert tuned.adapter_hash() != paper.adapter_hash()
    built = LiftConfig(preset="paper", lora=LoraSettings(rank=8))
    assert (built.lora.rank, built.lora.alpha) == (8, 256)
    # A config dumped with its preset reloads to the same effective values.
    assert LiftConfig.model_validate(tuned.model_dump(mode="json")).adapter_hash() == tuned.adapter_hash()


def test_the_hash_covers_variant_knobs_only_where_they_matter() -> None:
    lift = LiftConfig()
    assert load_config(LiftConfig, None, ["train.gamma=0.5"]).adapter_hash() == lift.adapter_hash()
    raw = load_config(LiftConfig, None, ["train.variant=finetune_raw"])
    assert raw.adapter_hash() != lift.adapter_hash()
    mixed = load_config(LiftConfig, None, ["train.variant=lift_mixed"])
    assert load_config(LiftConfig, None, ["train.variant=lift_mixed", "train.gamma=0.5"]).adapter_hash() != (
        mixed.adapter_hash()
    )
    with pytest.raises(ConfigError, match="preset"):
        load_config(LiftConfig, None, ["preset=huge"])
    with pytest.raises(ConfigError, match="variant"):
        load_config(LiftConfig, None, ["train.variant=raw"])
