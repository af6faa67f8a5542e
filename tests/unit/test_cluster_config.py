"""cluster.yaml, cluster/runtime_env.yaml and the KubeRay manifests: valid for Ray and true to the project.

The launcher config goes through the same offline steps `ray up` takes before it talks to AWS
(`prepare_config` merges Ray's AWS defaults, `validate_config` checks ray-schema.json and the worker
bounds). The manifests are checked against the files they point at: jobs/lift.py, serve/config.yaml,
serve.app:app_builder, and the LiftConfig / ServeConfig they mount.
"""

from __future__ import annotations

import ast
import copy
import json
import shlex
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.util import accelerators

from lift_ray.config import LiftConfig, ServeConfig

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
RUNTIME_ENV_YAML = REPO / "cluster" / "runtime_env.yaml"
RAYJOB_YAML = REPO / "cluster" / "kuberay" / "rayjob-lift.yaml"
RAYSERVICE_YAML = REPO / "cluster" / "kuberay" / "rayservice-serve.yaml"

# EC2 GPU instance types this project uses: (GPUs per node, Ray's accelerator type name).
GPU_INSTANCES = {
    "g6.xlarge": (1, accelerators.NVIDIA_L4),
    "g6.12xlarge": (4, accelerators.NVIDIA_L4),
    "g5.xlarge": (1, accelerators.NVIDIA_TESLA_A10G),
    "p5.48xlarge": (8, accelerators.NVIDIA_H100),
}
# The accelerator type names Ray itself uses (the `accelerator_type:<name>` node resources).
RAY_ACCELERATOR_TYPES = {v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)}
# Where the KubeRay image keeps the project (cluster/README.md).
IMAGE_PROJECT_DIR = "/home/ray/lift-ray"
CREDENTIAL_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


@cache
def _cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def cluster() -> dict[str, Any]:
    """A fresh copy of cluster.yaml (Ray's helpers mutate what they are given)."""
    return copy.deepcopy(_cluster())


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in config["available_node_types"].items() if name != config["head_node_type"]}


def manifest(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def ray_cluster_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == "RayJob":
            return doc["spec"]["rayClusterSpec"]
        if doc["kind"] == "RayService":
            return doc["spec"]["rayClusterConfig"]
    raise AssertionError("no RayJob or RayService in the manifest")


def pod_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def mounted_file(docs: list[dict[str, Any]], pod: dict[str, Any], path: str) -> str:
    """The text of the ConfigMap entry that `path` is inside the pod's first container."""
    target = PurePosixPath(path)
    for mount in pod["containers"][0].get("volumeMounts", []):
        if target.parent == PurePosixPath(mount["mountPath"]):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert "configMap" in volume, f"{path} is mounted from {volume}, not a ConfigMap"
            config_map = next(
                d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
            )
            assert target.name in config_map["data"], f"ConfigMap {config_map['metadata']['name']} has no {target.name}"
            return config_map["data"][target.name]
    raise AssertionError(f"{path} is not inside any volume mounted in the pod")


# --- cluster.yaml: Ray's own validation ---------------------------------------------------------


def test_cluster_yaml_passes_ray_autoscaler_validation():
    validate_config(cluster())
    prepared = prepare_config(cluster())
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["gpu.l4.x1"]["resources"].update(GPU=0.5),
        lambda c: c.update(idle_timeout_minute=10),
        lambda c: c["docker"].update(imagee="rayproject/ray"),
    ],
    ids=["fractional-resource", "misspelt-top-level-key", "misspelt-docker-key"],
)
def test_ray_schema_rejects_broken_variants_of_the_config(breakage):
    broken = cluster()
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_ray_rejects_minimums_above_the_global_cap():
    broken = cluster()
    broken["available_node_types"]["gpu.l4.x1"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(broken)


# --- cluster.yaml: project invariants -----------------------------------------------------------


def test_every_worker_type_scales_from_zero():
    config = cluster()
    types = worker_types(config)
    assert types, "cluster.yaml has no worker types"
    for name, spec in types.items():
        assert spec.get("min_workers") == 0, f"{name}: min_workers must be 0 so an idle cluster costs only the head"
        assert spec.get("max_workers", 0) >= 1, f"{name}: max_workers must allow at least one node"


def test_worker_bounds_fit_the_global_cap():
    config = cluster()
    types = worker_types(config)
    assert config["max_workers"] >= sum(spec.get("min_workers", 0) for spec in types.values())
    for name, spec in types.items():
        assert spec["max_workers"] <= config["max_workers"], f"{name}: per-type cap above the global max_workers"


def test_idle_nodes_are_released():
    timeout = cluster().get("idle_timeout_minutes")
    assert isinstance(timeout, int | float) and 0 < timeout <= 60


def test_head_holds_no_gpu_work():
    config = cluster()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    assert head["node_config"]["InstanceType"] not in GPU_INSTANCES


def test_gpu_worker_types_declare_their_gpus_and_accelerator_type():
    for name, spec in worker_types(cluster()).items():
        resources = spec["resources"]
        assert resources.get("GPU", 0) >= 1, f"{name}: a worker type without GPUs"
        declared = [key.removeprefix("accelerator_type:") for key in resources if key.startswith("accelerator_type:")]
        assert len(declared) == 1 and declared[0] in RAY_ACCELERATOR_TYPES, f"{name}: accelerator type {declared}"
        instance = spec["node_config"]["InstanceType"]
        if instance in GPU_INSTANCES:
            assert (resources["GPU"], declared[0]) == GPU_INSTANCES[instance], f"{name}: {instance} has other GPUs"


def test_market_labels_match_the_purchase_option_and_pass_ray_label_checks():
    from ray._private.label_utils import validate_node_label_syntax, validate_node_labels

    for name, spec in worker_types(cluster()).items():
        labels = spec.get("labels", {})
        validate_node_label_syntax(labels)
        validate_node_labels(labels)
        on_spot = spec["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        assert labels.get("lift-ray/market") == ("spot" if on_spot else "on-demand"), name


def test_l4_and_a10g_run_on_spot_and_h100_on_demand():
    for name, spec in worker_types(cluster()).items():
        instance = spec["node_config"]["InstanceType"]
        on_spot = spec["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        assert on_spot == (not instance.startswith("p5.")), f"{name} ({instance})"


def test_nodes_run_the_installed_ray_version_and_install_the_gpu_extra():
    config = cluster()
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert config["file_mounts"] == {"~/lift-ray": "."}
    installs = [cmd for cmd in config["setup_commands"] if "pip install" in cmd and "~/lift-ray" in cmd]
    assert installs and all("-e '.[gpu]'" in cmd for cmd in installs), config["setup_commands"]
    prepared = prepare_config(cluster())
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("'.[gpu]'" in cmd for cmd in prepared[key]), f"{key} would not install the gpu extra"


def test_local_state_is_not_synced_to_the_cluster():
    excluded = set(cluster()["rsync_exclude"])
    assert {".venv", ".git", "runs", "lift_store"} <= excluded


def test_start_commands_are_rays_aws_defaults_run_from_the_repository():
    defaults_file = Path(ray.__file__).parent / "autoscaler" / "aws" / "defaults.yaml"
    defaults = yaml.safe_load(defaults_file.read_text())
    config = cluster()
    # One change: Ray starts in the repository, so its workers resolve repository-relative paths
    # (serve/config.yaml's `args.config: serve/lift-serve.yaml`) as they do locally.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert [cmd.replace("cd ~/lift-ray && ray start", "ray start") for cmd in config[key]] == defaults[key]
        assert any("cd ~/lift-ray && ray start" in cmd for cmd in config[key]), key


# --- cluster/runtime_env.yaml -------------------------------------------------------------------


def test_runtime_env_is_accepted_by_ray_and_ships_no_local_state_or_secrets():
    from ray.runtime_env import RuntimeEnv

    data = yaml.safe_load(RUNTIME_ENV_YAML.read_text())
    assert data["working_dir"] == "."  # the repository root, where `ray job submit` is run
    RuntimeEnv(**{**data, "working_dir": str(REPO)})  # Ray checks that a local working_dir exists
    assert {".venv/", ".git/", "runs/", "lift_store/"} <= set(data["excludes"])
    assert not CREDENTIAL_VARS & set(data.get("env_vars", {}))


# --- KubeRay manifests --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RAYJOB_YAML, RAYSERVICE_YAML], ids=["rayjob", "rayservice"])
def test_kuberay_clusters_autoscale_gpu_groups_from_zero_on_one_image(path):
    docs = manifest(path)
    for doc in docs:
        if doc["kind"] in ("RayJob", "RayService"):
            assert doc["apiVersion"] == "ray.io/v1"
    spec = ray_cluster_spec(docs)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, group["groupName"]
        assert group["maxReplicas"] >= 1, group["groupName"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, group["groupName"]
        custom = json.loads(json.loads(group["rayStartParams"]["resources"]))
        types = [key.removeprefix("accelerator_type:") for key in custom if key.startswith("accelerator_type:")]
        assert len(types) == 1 and types[0] in RAY_ACCELERATOR_TYPES, group["groupName"]
    images = {c["image"] for pod in pod_specs(spec) for c in pod["containers"]}
    assert len(images) == 1, f"head and workers must share one image (one Ray, one Python): {images}"


@pytest.mark.parametrize("path", [RAYJOB_YAML, RAYSERVICE_YAML], ids=["rayjob", "rayservice"])
def test_kuberay_pods_take_s3_credentials_from_a_secret(path):
    docs = manifest(path)
    for pod in pod_specs(ray_cluster_spec(docs)):
        for container in pod["containers"]:
            env = {var["name"]: var for var in container.get("env", [])}
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{container['name']}: {name}"
    # Nowhere in the file, in any object, may a credential be written as a literal value.
    text = path.read_text()
    for doc in docs:
        stack: list[Any] = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("name") in CREDENTIAL_VARS:
                    assert "value" not in node, f"{path.name}: literal {node['name']}"
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    assert "aws_secret_access_key:" not in text.lower()


def test_rayjob_runs_jobs_lift_py_with_a_valid_lift_config():
    docs = manifest(RAYJOB_YAML)
    job = one(docs, "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/lift.py"]
    assert (REPO / argv[1]).is_file()
    assert argv[2 : argv.index("--config")], "jobs/lift.py needs at least one input path before --config"
    config_path = argv[argv.index("--config") + 1]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    config = LiftConfig.model_validate(yaml.safe_load(mounted_file(docs, head, config_path)))
    assert config.train.use_gpu and config.generator.num_gpus >= 1
    assert config.storage.root.startswith("s3://")
    # Ray Train's storage_path (under work_dir) must be on the volume every pod shares.
    shared = next(v["name"] for v in head["volumes"] if "persistentVolumeClaim" in v)
    for pod in pod_specs(job["spec"]["rayClusterSpec"]):
        mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == shared]
        assert mounts and any(PurePosixPath(config.work_dir).is_relative_to(m) for m in mounts)
    # The submitter pod uploads the project folder of the image (cluster/README.md builds it there).
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == IMAGE_PROJECT_DIR
    recipe = (REPO / "cluster" / "README.md").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311-gpu" in recipe
    assert f"pip install --no-cache-dir -e '{IMAGE_PROJECT_DIR}[gpu]'" in recipe
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**{**runtime_env, "working_dir": str(REPO)})  # Ray checks that a local working_dir exists


def test_rayservice_runs_the_serve_app_of_serve_config_yaml_with_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    docs = manifest(RAYSERVICE_YAML)
    service = one(docs, "RayService")
    deployed = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    local = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve" / "config.yaml").read_text()))
    assert [(a.name, a.route_prefix, a.import_path) for a in deployed.applications] == [
        (a.name, a.route_prefix, a.import_path) for a in local.applications
    ]
    for app in deployed.applications:
        module, attribute = app.import_path.split(":")
        source = REPO / (module.replace(".", "/") + ".py")
        defined = {node.name for node in ast.parse(source.read_text()).body if isinstance(node, ast.FunctionDef)}
        assert attribute in defined, f"{app.import_path}: no {attribute} in {source}"
        # app_builder may run on any node, so every pod mounts the same ServeConfig.
        texts = {mounted_file(docs, pod, app.args["config"]) for pod in pod_specs(service["spec"]["rayClusterConfig"])}
        assert len(texts) == 1
        config = ServeConfig.model_validate(yaml.safe_load(texts.pop()))
        assert config.num_gpus_per_replica >= 1
        assert config.storage.root.startswith("s3://")
    assert deployed.http_options.port == 8000
