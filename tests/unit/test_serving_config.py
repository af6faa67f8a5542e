"""The Serve profiles: serve/config*.yaml are valid Serve configs for this app, with autoscaling and resources."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lift_ray.config import AutoscalingSettings, ServeConfig, load_config

REPO = Path(__file__).resolve().parents[2]
PROFILES = {"cpu": REPO / "serve" / "config.yaml", "gpu": REPO / "serve" / "config-gpu.yaml"}


def deployment_names() -> set[str]:
    """Names of the deployments `build_app` makes."""
    from lift_ray.serving.app import ingress_deployment, model_deployment

    return {model_deployment(ServeConfig()).name, ingress_deployment(ServeConfig()).name}


@pytest.mark.parametrize("profile", PROFILES, ids=list(PROFILES))
def test_profile_is_a_serve_config_for_this_app_with_autoscaling(profile):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(PROFILES[profile].read_text()))
    [app] = schema.applications
    assert app.import_path == "serve.app:app_builder"
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == deployment_names() == {"AdapterModel", "OpenAIIngress"}
    model = deployments["AdapterModel"]
    scaling = model.autoscaling_config
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert 0 < scaling["target_ongoing_requests"] <= model.max_ongoing_requests
    config = load_config(ServeConfig, REPO / app.args["config"])
    gpus = model.ray_actor_options.num_gpus or 0
    assert gpus == config.num_gpus_per_replica
    assert model.ray_actor_options.num_cpus == config.num_cpus_per_replica
    assert model.max_ongoing_requests == config.max_ongoing_requests
    assert config.autoscaling is not None and config.autoscaling.max_replicas == scaling["max_replicas"]
    if profile == "gpu":
        assert gpus >= 1 and config.engine == "vllm" and config.storage.root.startswith("s3://")
        assert config.max_loras <= config.max_adapters_per_replica
    else:
        assert gpus == 0 and config.engine == "hf"


def test_build_app_options_follow_the_config():
    from lift_ray.serving.app import deployment_options

    fixed = deployment_options(ServeConfig(num_replicas=3, num_cpus_per_replica=1.5, max_ongoing_requests=5))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 1.5, "num_gpus": 0.0} and fixed["max_ongoing_requests"] == 5
    scaled = deployment_options(ServeConfig(autoscaling=AutoscalingSettings(min_replicas=0, max_replicas=5)))
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 5
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig(**scaled["autoscaling_config"])  # Serve accepts every key
    cpu_vllm = deployment_options(ServeConfig(engine="vllm", torch_threads=2))
    env = cpu_vllm["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "2"


def test_autoscaling_bounds_are_checked():
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalingSettings(min_replicas=3, max_replicas=2)


def test_the_serve_entry_builds_the_package_app():
    """`serve.app:app_builder` (the profiles' import_path) builds the package's app, without Ray running."""
    from ray.serve import Application

    from lift_ray.serving import app
    from serve import app as entry

    assert entry.build_app is app.build_app
    [application] = yaml.safe_load(PROFILES["cpu"].read_text())["applications"]
    assert isinstance(entry.app_builder({"config": str(REPO / application["args"]["config"])}), Application)
