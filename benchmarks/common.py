"""Helpers shared by the benchmark scripts: timing, peak memory, and writing a results file.

Imported as a sibling module (``from common import ...``).  Only ``write_result`` needs
pnpbook, and imports it when called, so the workers that run in the oracle environment
(kymatio main, see ``tests/oracle/README.md``) can import this module too.
"""
from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable


def wall_time(fn: Callable[[], object]) -> float:
    """Wall time of one call ``fn()`` in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    return statistics.median(wall_time(fn) for _ in range(repeats))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(out: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` plus a ``provenance`` entry as indented JSON to ``out``, atomically."""
    from pnpbook.provenance import provenance, write_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**result, "provenance": provenance()}, indent=2) + "\n"
    return write_atomic(out, lambda tmp: tmp.write_text(text))
