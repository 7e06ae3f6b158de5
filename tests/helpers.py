"""Small things several test files share (pytest puts this directory on sys.path)."""

from __future__ import annotations

from pathlib import Path


def evolve_args(model_dir: str, out: Path, *extra: str, workers: int = 1, samples: int = 6) -> list[str]:
    """A small search of the tiny model: 1k tokens, the quick budget, seed 0. The tiny random model solves no
    needle task, so the signal check is off and the template named. ``samples`` documents per evaluation: 6
    make each evaluation last long enough for a SIGKILL to land inside a generation."""
    return [
        "evolve",
        "--model",
        model_dir,
        "--target",
        "1k",
        "--samples",
        str(samples),
        "--budget",
        "quick",
        "--seed",
        "0",
        "--workers",
        str(workers),
        "--template",
        "passkey",
        "--no-signal-check",
        "--out",
        str(out),
        *extra,
    ]
