"""What the tool tells the user while it works: one line on stderr, flushed at once so that it
interleaves correctly with Snakemake's and SkyPilot's own output."""

from __future__ import annotations

import sys


def say(message: str, prefix: str = "") -> None:
    print(f"{prefix}: {message}" if prefix else message, file=sys.stderr, flush=True)
