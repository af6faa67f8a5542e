"""Add `qa_coverage` (did the generator write each question's answer?) to an evaluation run that predates it.

    .venv/bin/python jobs/eval_coverage.py eval_recipe_sft --set storage.root=<store> \
        --set generator.model=qwen2.5-coder-0.5b --set train.epochs=5

`lift-ray eval` now writes `qa_coverage` itself (`runner.qa_coverage`). For a run written before, this reads
its predictions (docs/results/<name>_predictions.json), the QA caches of the same LIFT config (give the run's
own `--config`/`--set`) and writes the figure into docs/results/<name>.json for every adapter method.
"""

from __future__ import annotations

import argparse
import json

from lift_ray.config import add_config_arguments
from lift_ray.eval.harness import load_docqa
from lift_ray.eval.runner import eval_config_from_args, method_config, qa_coverage
from lift_ray.results import RESULTS_DIR, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("name", help="run name: docs/results/<name>.json and <name>_predictions.json")
    add_config_arguments(parser)
    args = parser.parse_args()
    args.niah_overrides, args.no_general = [], False
    config = eval_config_from_args(args)
    results = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())
    predictions = json.loads((RESULTS_DIR / f"{args.name}_predictions.json").read_text())
    documents, _ = load_docqa(config.data)
    for method in config.method_list():
        if method.adapter is None or method.name not in predictions or method.name not in results:
            continue
        coverage = qa_coverage(method_config(method, config.lift), documents, predictions[method.name])
        results[method.name]["qa_coverage"] = coverage
        print(f"{method.name}: {coverage}")
    print(f"wrote {write_results(args.name, results)}")


if __name__ == "__main__":
    main()
