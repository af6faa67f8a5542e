"""The Ray Serve application: `build_app(config)` wires the plain deployment classes of `deployments.py`.

An OpenAI-compatible ingress (`OpenAIIngress`) in front of replicas that multiplex per-document adapters
(`AdapterModel`). `lift-ray serve` calls `build_app`, and so does `serve/app.py`'s `app_builder`, the entry of
`serve run serve/config.yaml` / `serve deploy`. See docs/serving.md.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Deployment

from lift_ray.config import ServeConfig, TenantSettings
from lift_ray.online import lift_config_for
from lift_ray.serving.deployments import AdapterModel, ingress_class


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """Serve options of the adapter deployment: replica resources and fixed replicas or autoscaling."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus_per_replica, "num_gpus": config.num_gpus_per_replica},
        "max_ongoing_requests": config.max_ongoing_requests,
    }
    if config.engine == "vllm" and config.num_gpus_per_replica == 0:
        from lift_ray.engines import cpu_runtime_env

        options["ray_actor_options"]["runtime_env"] = cpu_runtime_env(config.vllm, config.torch_threads)
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.model_dump()
    else:
        options["num_replicas"] = config.num_replicas
    return options


def model_deployment(config: ServeConfig, model_class: type = AdapterModel) -> Deployment:
    """The adapter replicas' deployment (`AdapterModel`, or a subclass of it) with `deployment_options`."""
    return serve.deployment(model_class).options(**deployment_options(config))


def ingress_deployment(config: ServeConfig) -> Deployment:
    """The ingress's deployment: a small CPU share, room for many requests waiting on the model replicas."""
    return serve.deployment(ingress_class()).options(
        ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=max(100, 4 * config.max_ongoing_requests)
    )


def build_app(config: ServeConfig) -> serve.Application:
    """The Serve application for `config`: ingress → multiplexed adapter model."""
    # The model replicas never see API keys; only the ingress does (as an object, not a logged dict).
    model_config = config.model_copy(update={"tenants": TenantSettings(api_keys={}, api_keys_env=None)})
    model = model_deployment(config).bind(model_config)
    # Built here, so a LIFT config that does not fit the served model fails `serve run` at once, with the reason.
    lift_config = lift_config_for(config) if config.online_lift.enabled else None
    return ingress_deployment(config).bind(model, config, lift_config)
