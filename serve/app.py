"""The entry of `serve run serve/config.yaml` / `serve deploy`: the Serve configs' `import_path` is
`serve.app:app_builder`.

The application itself is built in the package, by `lift_ray.serving.app.build_app(config)` over the plain
deployment classes of `lift_ray.serving.deployments`. See docs/serving.md.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from lift_ray.config import ServeConfig, load_config
from lift_ray.serving.app import build_app, deployment_options

__all__ = ["app_builder", "build_app", "deployment_options"]


def app_builder(args: dict[str, Any]) -> Application:
    """The application for a Serve config's `args`: `args.config` is the path of a ServeConfig YAML file."""
    return build_app(load_config(ServeConfig, args.get("config")))
