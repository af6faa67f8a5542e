"""A document's outcome in a LIFT run: plain data, importable without torch or Ray.

`lift-ray lift` writes one report row per document even when the run broke down before or inside the
pipeline (a module missing from the job's Python included), so this type must not depend on the pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DocumentReport:
    """What happened to one document in a LIFT run."""

    doc_id: str
    status: str  # published | low_quality | skipped | failed
    error: str | None = None
    sentences: int = 0
    sentences_with_pairs: int = 0
    qa_count: int = 0
    malformed_outputs: int = 0
    retried_sentences: int = 0
    dropped_pairs: int = 0
    ungrounded_pairs: int = 0
    unverified_pairs: int = 0
    dropped_rewrites: int = 0
    cached_sentences: int = 0
    final_loss: float | None = None
    adapter_uri: str | None = None
    adapter_bytes: int | None = None
    quality: dict[str, Any] | None = None  # the quality gate's verdict (lift_ray/train/gate.py)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return asdict(self)
