"""Evaluation entry point: `ray job submit --working-dir . -- python jobs/eval.py --config lift.yaml`."""

from __future__ import annotations

import sys

from lift_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
