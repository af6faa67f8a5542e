"""EvalConfig: loading from YAML (eval-shaped or a LIFT config), --set routing, flags, validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lift_ray.config import ConfigError, LiftConfig, ServeConfig, load_config, override_config
from lift_ray.eval.config import EvalConfig
from lift_ray.eval.harness import METHOD_NAMES
from lift_ray.eval.runner import add_eval_arguments, eval_config_from_args


def parse(argv: list[str]) -> EvalConfig:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return eval_config_from_args(parser.parse_args(argv))


def test_defaults_are_the_flags_former_defaults():
    config = parse([])
    assert config == EvalConfig()
    assert config.methods == list(METHOD_NAMES) and config.context_tokens == 1024 and config.context_share is None
    assert config.max_new_tokens == 48 and config.general and config.answer_threads == 2 and config.name == "eval"
    assert config.niah.lengths == [] and config.niah.instances == 1 and config.niah.methods is None
    assert config.judge.url is None and config.judge.model == "gpt-4o" and not config.plan_only
    assert config.lift == LiftConfig()


def test_eval_and_lift_field_names_do_not_collide():
    assert not set(EvalConfig.model_fields) & set(LiftConfig.model_fields)


def test_an_eval_yaml_loads_with_its_lift_section_and_round_trips(tmp_path: Path):
    path = tmp_path / "eval.yaml"
    path.write_text(
        "methods: [base, icl]\ncontext_share: 0.25\nniah: {lengths: [1024], overrides: [train.epochs=8]}\n"
        "lift:\n  preset: paper\n  train: {epochs: 2}\n"
    )
    config = load_config(EvalConfig, path)
    assert config.methods == ["base", "icl"] and config.context_share == 0.25
    assert config.niah.lengths == [1024] and config.niah.overrides == ["train.epochs=8"]
    assert config.lift.train.epochs == 2 and config.lift.lora.rank == 128  # the paper preset still fills lora
    printed = tmp_path / "printed.yaml"
    printed.write_text(config.to_yaml())
    assert load_config(EvalConfig, printed) == config


def test_a_lift_config_file_is_read_as_the_lift_section(tmp_path: Path):
    path = tmp_path / "lift.yaml"
    path.write_text("train: {epochs: 3}\nseed: 7\n")
    config = parse(["--config", str(path), "--set", "train.learning_rate=0.01", "--set", "context_share=0.5"])
    assert config.lift.train.epochs == 3 and config.lift.seed == 7 and config.lift.train.learning_rate == 0.01
    assert config.context_share == 0.5
    # --set wins over the file, whichever way the file writes its LIFT settings
    assert parse(["--config", str(path), "--set", "train.epochs=4"]).lift.train.epochs == 4
    path.write_text("lift: {train: {epochs: 3}}\n")
    assert parse(["--config", str(path), "--set", "train.epochs=4"]).lift.train.epochs == 4
    assert parse(["--config", str(path), "--set", "lift.train.epochs=5"]).lift.train.epochs == 5


def test_flags_win_over_the_file(tmp_path: Path):
    path = tmp_path / "eval.yaml"
    path.write_text("context_tokens: 256\nname: quarter\nniah: {overrides: [train.epochs=8]}\ngeneral: true\n")
    config = parse(
        [
            *("--config", str(path), "--context-tokens", "512", "--context-share", "0.25"),
            *("--niah-lengths", "256", "512", "--niah-depths", "0", "1", "--niah-set", "seed=2"),
            *("--no-general", "--judge-url", "http://127.0.0.1:9/v1", "--plan-only", "--data", str(tmp_path)),
        ]
    )
    assert (config.context_tokens, config.context_share, config.name) == (512, 0.25, "quarter")
    assert config.niah.lengths == [256, 512] and config.niah.depths == [0.0, 1.0]
    assert config.niah.overrides == ["train.epochs=8", "seed=2"]
    assert not config.general and config.plan_only and config.judge.url == "http://127.0.0.1:9/v1"
    assert config.data == tmp_path
    assert parse(["--config", str(path)]).context_tokens == 256


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"context_share": 0}, "context_share"),
        ({"context_share": 1.5}, "context_share"),
        ({"methods": ["rag"]}, "unknown method 'rag'"),
        ({"methods": []}, "at least one method"),
        ({"niah": {"methods": ["rag"]}}, "unknown method"),
        ({"niah": {"depths": [1.5]}}, "depths"),
        ({"name": "../x"}, "results name"),
        ({"answer_threads": 0}, "answer_threads"),
        ({"lift": {"train": {"epochs": 0}}}, "lift.train.epochs"),
        ({"context_shares": 0.5}, "context_shares"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, settings: dict, message: str):
    import yaml

    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=message):
        load_config(EvalConfig, path)


def test_override_config_applies_settings_on_top_of_a_built_config():
    config = load_config(LiftConfig, None, ["preset=paper", "train.epochs=2"])
    changed = override_config(config, ["seed=4", "train.variant=finetune_raw"])
    assert changed.seed == 4 and changed.train.variant == "finetune_raw"
    assert changed.train.epochs == 2 and changed.lora.rank == 128 and config.seed == 0
    with pytest.raises(ConfigError, match="train.epochs"):
        override_config(config, ["train.epochs=0"])
    serve = override_config(ServeConfig(tenants={"api_keys": {"acme": ["secret-key"]}}), ["port=9000"])
    assert serve.port == 9000 and serve.tenants.api_keys["acme"][0].get_secret_value() == "secret-key"
