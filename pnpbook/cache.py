"""A small on-disk cache of named arrays, keyed by the config that produced them.

One cache entry is one ``.npz`` file (NumPy's zip of ``.npy`` arrays, written
with :func:`numpy.savez`, uncompressed, read with ``allow_pickle=False``):

* its name is ``STEM-HASH.npz`` under the cache root, where ``HASH`` is the
  first :data:`HASH_CHARS` hex digits of :func:`config_hash`, the SHA-256 of the
  config's canonical JSON, so a different config is a different file and never
  reads another's numbers;
* it stores, beside the arrays, the config itself (as JSON text) and a format
  marker, so a file can be checked against what was asked for;
* it is written through :func:`pnpbook.provenance.write_atomic`, so a crash
  leaves no partial entry under the final name.

A file that cannot be read whole (corrupt or truncated), that is not a pnpbook
cache entry (foreign), or whose stored config differs from the requested one
raises ``ValueError`` naming the file and saying to delete it; the cache never
deletes or overwrites a damaged file by itself, so nothing is lost silently.

The root is, in order: the ``root`` argument, the environment variable
:data:`CACHE_ENV`, or ``data/cache`` relative to the working directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pnpbook.provenance import write_atomic

#: Environment variable that overrides the default cache root.
CACHE_ENV = "PNPBOOK_CACHE"

#: Default cache root, relative to the working directory.
DEFAULT_ROOT = Path("data") / "cache"

#: The value of the ``__format__`` entry of every cache file.
FORMAT = "pnpbook-array-cache-v1"

#: Hex digits of the config hash in a file name (48 bits: collisions are also caught by the stored config).
HASH_CHARS = 12

_META = ("__format__", "__config__")


def normalise(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists, keys strings).

    Raises
    ------
    TypeError
        If the config holds something JSON cannot write (a tensor, an array, a path).
    """
    try:
        return json.loads(json.dumps(config, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"a cache config must be plain JSON data (str, int, float, bool, None, lists and "
                        f"dicts with str keys): {e}") from None


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the config's canonical JSON: sorted keys, no spaces."""
    canonical = json.dumps(normalise(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_root(root: str | Path | None = None) -> Path:
    """The cache root: ``root``, else ``$PNPBOOK_CACHE``, else ``data/cache``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_ROOT


def cache_path(path_stem: str, config: Mapping[str, Any], root: str | Path | None = None) -> Path:
    """Where the entry of ``config`` lives: ``ROOT/PATH_STEM-HASH.npz``.

    Parameters
    ----------
    path_stem : str
        Relative path without suffix, e.g. ``"features/ftm_tiny_train"``;
        folders in it are created on write.
    config : mapping
        Everything that changes the arrays (JSON data).
    root : path-like, optional
        Cache root (see :func:`cache_root`).
    """
    stem = Path(path_stem)
    if stem.is_absolute() or ".." in stem.parts or not stem.name:
        raise ValueError(f"path_stem must be a relative path inside the cache root, got {path_stem!r}")
    return cache_root(root) / stem.parent / f"{stem.name}-{config_hash(config)[:HASH_CHARS]}.npz"


def _differences(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> str:
    keys = sorted(set(stored) | set(asked))
    return "; ".join(f"{k}: stored {stored.get(k)!r} != asked {asked.get(k)!r}"
                     for k in keys if stored.get(k) != asked.get(k))


def load(path: str | Path, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Read a cache entry and check that it is whole and was made with ``config``.

    Parameters
    ----------
    path : path-like
        The ``.npz`` file.
    config : mapping
        The config the entry must have been computed with.

    Returns
    -------
    dict of str to ndarray
        The stored arrays (without the metadata entries).

    Raises
    ------
    FileNotFoundError
        If there is no file.
    ValueError
        If the file is corrupt or truncated, not a pnpbook cache entry, or
        made with another config; the message names the file and says to
        delete it.
    """
    path = Path(path)
    delete = f"delete {path} and run again to recompute it"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reading every member checks its CRC
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"cache file {path} is corrupt or truncated ({type(e).__name__}: {e}); {delete}") from None
    fmt = arrays.get("__format__")
    if fmt is None or fmt.shape != () or str(fmt) != FORMAT or "__config__" not in arrays:
        raise ValueError(f"{path} is not a pnpbook cache file (no {FORMAT!r} marker); {delete}")
    try:
        stored = json.loads(str(arrays["__config__"]))
    except json.JSONDecodeError as e:
        raise ValueError(f"cache file {path} has a damaged config ({e}); {delete}") from None
    asked = normalise(config)
    if stored != asked:
        raise ValueError(f"cache file {path} was computed with another config "
                         f"({_differences(stored, asked)}); {delete}")
    return {k: v for k, v in arrays.items() if k not in _META}


def save(path: str | Path, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write a cache entry atomically (see :func:`pnpbook.provenance.write_atomic`).

    Parameters
    ----------
    path : path-like
        Destination ``.npz`` file; its folder is created.
    config : mapping
        Stored inside the file as JSON.
    arrays : mapping of str to ndarray
        Numeric or string arrays (no object arrays); names must not start
        with ``__``.
    """
    path = Path(path)
    bad = [k for k in arrays if not isinstance(k, str) or k.startswith("__")]
    if bad:
        raise ValueError(f"array names must be strings not starting with '__', got {bad}")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    objects = [k for k, v in arrays.items() if v.dtype == object]
    if objects:
        raise ValueError(f"arrays {objects} have dtype object, which the cache does not store (no pickle)")
    meta = {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(normalise(config), sort_keys=True))}
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **meta, **arrays)

    return write_atomic(path, write)


def cached(path_stem: str, config: Mapping[str, Any], compute: Callable[[], Mapping[str, np.ndarray]],
           root: str | Path | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``config``: read from the cache, or computed once and written.

    Parameters
    ----------
    path_stem : str
        Relative path of the entry without hash and suffix (see :func:`cache_path`).
    config : mapping
        Everything that changes the arrays, as JSON data; its hash names the file.
    compute : callable
        ``compute() -> {name: array}``, called only when the entry does not exist.
    root : path-like, optional
        Cache root; default ``$PNPBOOK_CACHE``, else ``data/cache``.

    Returns
    -------
    dict of str to ndarray
        Equal, array by array (dtype and shape included), whether read or computed.

    Raises
    ------
    ValueError
        If an existing entry is damaged or foreign (see :func:`load`).
    """
    path = cache_path(path_stem, config, root)
    if path.exists():
        return load(path, config)
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    save(path, config, arrays)
    return arrays
