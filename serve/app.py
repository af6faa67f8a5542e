"""The entry of `serve run serve/config.yaml` / `serve deploy`: the Serve config's `import_path` is
`serve.app:app_builder`, which takes the path of a ServeConfig YAML file as its `config` argument.

The application itself is built in the package: `lift_ray.serving.app.build_app(config)` over the plain
deployment classes of `lift_ray.serving.deployments`. See docs/serving.md.
"""

from lift_ray.serving.app import app_builder, build_app, deployment_options

__all__ = ["app_builder", "build_app", "deployment_options"]
