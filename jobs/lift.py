"""Bulk LIFT entry point for `ray job submit --working-dir . -- python jobs/lift.py <inputs> --config lift.yaml`."""

from __future__ import annotations

import sys

from lift_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["lift", *sys.argv[1:]]))
