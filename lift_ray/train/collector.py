"""`ResultCollector`: the outcome of every document of a training run, kept outside the worker group.

A module of its own with nothing but the standard library, so the actor's process starts without importing
torch and transformers (measured: ready in ~0.6 s with ~0.55 s of CPU, against 1.75 s and 1.7 s from
`lift_ray.train.trainer`; on a small node that CPU is taken from the workers starting up at the same time).
"""

from __future__ import annotations

import time
from typing import Any


class ResultCollector:
    """Outcome of every document of a run, as rank 0 reports it; survives worker-group restarts."""

    def __init__(self) -> None:
        self._results: dict[str, dict[str, Any]] = {}
        self._publishes: dict[str, int] = {}
        self.started_at = time.time()

    def record(self, doc_id: str, result: dict[str, Any]) -> None:
        """Keep `result` for `doc_id` (the last one wins) and count publishes."""
        result = {**result, "recorded_at": time.time()}
        self._results[doc_id] = result
        if result.get("status") == "published":
            self._publishes[doc_id] = self._publishes.get(doc_id, 0) + 1

    def finished(self) -> list[str]:
        """Documents with a final outcome (published, or failed for a reason of their own)."""
        return list(self._results)

    def results(self) -> dict[str, dict[str, Any]]:
        """Every recorded outcome, by document id."""
        return dict(self._results)

    def publishes(self) -> dict[str, int]:
        """How many times each document was published in this run."""
        return dict(self._publishes)
