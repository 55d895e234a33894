"""Provenance of results files: commit, versions, machine, time, and atomic writes."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

import pnpbook


def git_commit(path: str | Path | None = None) -> str | None:
    """The checkout's commit, suffixed ``-dirty`` if tracked files outside ``data/results`` changed; None outside git."""
    cwd = Path(path or Path(pnpbook.__file__).parent)
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=cwd, capture_output=True, text=True,
                                        check=True, timeout=10).stdout.strip()
        commit = run("rev-parse", "HEAD")
        # results files are outputs: rewriting one does not make the code that writes the next one dirty
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)data/results")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def load_average() -> list[float] | None:
    """The machine's load average over 1, 5 and 15 minutes (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def provenance() -> dict[str, Any]:
    """What produced a result: package version and commit, library versions, machine, UTC time."""
    return {
        "pnpbook": pnpbook.__version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average": load_average()},
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    Parameters
    ----------
    path : path-like
        Destination.
    write : callable
        ``write(tmp_path)`` writes the whole content to ``tmp_path``.

    A crash leaves either the old file or the new one, never a partial file
    (a leftover ``.*.tmp`` file at worst).  The file gets the usual permissions
    (0666 less the umask), not the private ones of a temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
