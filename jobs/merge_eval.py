"""Merge evaluation runs into docs/results/eval.json: document QA from one run, NIAH cells from others.

    .venv/bin/python jobs/merge_eval.py --docqa eval_docqa5 --niah eval_qwen_niah eval_niah2k [--out eval]

A full evaluation on 2 CPU cores is several runs (document QA, NIAH 1K, NIAH 2K), each written by
`lift-ray eval --name <run>` to docs/results/<run>.json. This takes every method's document-QA figures
(scores, general questions, costs) from the `--docqa` run and its NIAH cells from the `--niah` runs (a
later run's cell replaces an earlier one's), recomputes `niah_accuracy` over the merged cells, notes
where each part came from, and redraws `<out>_scores.png`, `<out>_niah.png` and `<out>_predictions.json`.
"""

from __future__ import annotations

import argparse
import json

from lift_ray.eval.harness import plot_niah_grids, plot_scores, write_eval_results
from lift_ray.eval.runner import load_eval_run, merge_eval_runs, niah_cells
from lift_ray.results import RESULTS_DIR, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--docqa", required=True, help="run name whose document-QA figures are kept")
    parser.add_argument("--niah", nargs="*", default=[], help="run names whose NIAH cells are merged, in order")
    parser.add_argument("--out", default="eval")
    args = parser.parse_args()

    merged = merge_eval_runs(load_eval_run(args.docqa), {name: load_eval_run(name) for name in args.niah}, args.docqa)
    path = write_eval_results(merged, args.out)
    plot_scores(merged, RESULTS_DIR / f"{args.out}_scores.png", "Document QA: scores and LIFT cost per document")
    grids = {name: niah_cells(entry["niah_grid"]) for name, entry in merged.items() if entry.get("niah_grid")}
    if grids:
        plot_niah_grids(grids, RESULTS_DIR / f"{args.out}_niah.png")
    predictions = json.loads((RESULTS_DIR / f"{args.docqa}_predictions.json").read_text())
    write_results(f"{args.out}_predictions", predictions)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
