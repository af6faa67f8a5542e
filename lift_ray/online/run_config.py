"""The LiftConfig of online runs: the endpoint's `online_lift` settings checked against what it serves."""

from __future__ import annotations

from lift_ray.config import ConfigError, LiftConfig, ServeConfig, StorageSettings, load_config
from lift_ray.storage import Store


def lift_config_for(serve_config: ServeConfig) -> LiftConfig:
    """The LiftConfig of online runs: `online_lift.config` + overrides, storage root = the served store.

    ConfigError if its base model is not the one the endpoint serves, its LoRA rank is above what the
    endpoint's vLLM engine accepts (`max_lora_rank`), or it names another storage root.
    """
    settings = serve_config.online_lift
    lift = load_config(LiftConfig, settings.config, settings.overrides)
    served, lifted = serve_config.model.base_model, lift.model.base_model
    if lifted != served:
        raise ConfigError(
            f"online_lift: the LIFT config trains on model.base_model={lifted!r} but the endpoint serves "
            f"{served!r}; adapters only fit the model they were trained on, so set the same base model in both"
        )
    if serve_config.engine == "vllm" and lift.lora.rank > serve_config.max_lora_rank:
        raise ConfigError(
            f"online_lift: the LIFT config trains lora.rank={lift.lora.rank} but the endpoint's vllm engine "
            f"accepts adapters up to max_lora_rank={serve_config.max_lora_rank}; every adapter it made would be "
            "refused. Lower lora.rank in the LIFT config or raise max_lora_rank in the endpoint's config"
        )
    root = serve_config.storage.root
    if "root" in lift.storage.model_fields_set and Store.from_uri(lift.storage.root).uri != Store.from_uri(root).uri:
        raise ConfigError(
            f"online_lift: the LIFT config publishes to storage.root={lift.storage.root!r} but the endpoint "
            f"reads {root!r}; leave storage.root out of the LIFT config (the endpoint's is used)"
        )
    storage = StorageSettings(root=root, namespace=serve_config.storage.namespace, progress=True)
    update: dict[str, object] = {"storage": storage}
    if "draft_after_epochs" not in lift.train.model_fields_set:
        update["train"] = lift.train.model_copy(update={"draft_after_epochs": settings.draft_after_epochs})
    return lift.model_copy(update=update)


def for_namespace(config: LiftConfig, namespace: str) -> LiftConfig:
    """`config` publishing into the tenant's `namespace`."""
    return config.model_copy(update={"storage": config.storage.model_copy(update={"namespace": namespace})})
