"""Where result figures go: docs/results/<name>.json (`write_results`), and markdown tables for reports.

Used by the evaluation (`lift-ray eval`, jobs/merge_eval.py) and by the benchmarks (benchmarks/, through
testkit.bench).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "docs" / "results"


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write `figures` to docs/results/<name>.json (sorted keys, stable formatting)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return path


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
