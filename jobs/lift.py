"""Bulk LIFT as a Ray job.

    ray job submit --working-dir . -- python jobs/lift.py \\
        --input s3://bucket/docs/ --input manifest.jsonl --output s3://bucket/lift --config lift.yaml [--set k=v ...]

Inputs (positional or repeated --input): local files and folders of .txt/.md, s3://bucket/prefix, or a
manifest.jsonl (local or s3://) of {"id", "uri"} / {"id", "text"} lines. --output sets storage.root.
Writes <output>/_reports/<run_id>/report.jsonl and summary.json. Exit status: 0 all published or skipped,
1 any document failed, 2 bad config, unusable output or unreadable input root. Details: docs/jobs.md.
"""

from __future__ import annotations

import sys

from lift_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["lift", *sys.argv[1:]]))
