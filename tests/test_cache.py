"""The generic on-disk array cache (issue 4 part 1): config-hashed names, the config stored inside,
atomic writes, and a clear error naming the file for corrupt, truncated and foreign files."""
import json
import os

import numpy as np
import pytest

from pnpbook import cache

CFG = {"synth": "ftm", "scale": "tiny", "sr": 8192.0, "bins": (1, 2), "c": 0.5}


def counting(arrays):
    """A compute function that records how often it ran."""
    calls = []

    def compute():
        calls.append(1)
        return arrays

    return compute, calls


def test_computes_once_then_reads_the_same_arrays(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.array(["00001", "00002"])}
    compute, calls = counting(arrays)
    first = cache.cached("x/stem", CFG, compute, root=tmp_path)
    second = cache.cached("x/stem", CFG, compute, root=tmp_path)
    assert len(calls) == 1
    for got in (first, second):
        assert set(got) == {"a", "ids"}
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
            np.testing.assert_array_equal(got[k], v)
    path = cache.cache_path("x/stem", CFG, tmp_path)
    assert path.parent == tmp_path / "x" and path.name.startswith("stem-") and path.suffix == ".npz"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as z:  # the config is stored inside, as normalised JSON
        assert json.loads(str(z["__config__"])) == {**CFG, "bins": [1, 2]}


def test_hash_is_of_the_normalised_config():
    assert cache.config_hash(CFG) == cache.config_hash({**CFG, "bins": [1, 2]})  # tuple == list in JSON
    assert cache.config_hash(CFG) == cache.config_hash(dict(reversed(list(CFG.items()))))  # key order
    assert cache.config_hash(CFG) != cache.config_hash({**CFG, "c": 0.5000001})
    with pytest.raises(TypeError, match="plain JSON"):
        cache.config_hash({"a": np.zeros(2)})


def test_a_different_config_never_reads_the_other_file(tmp_path):
    a = cache.cached("s", CFG, lambda: {"v": np.zeros(3)}, root=tmp_path)
    b = cache.cached("s", {**CFG, "c": 0.25}, lambda: {"v": np.ones(3)}, root=tmp_path)
    assert a["v"].sum() == 0 and b["v"].sum() == 3
    assert len(list(tmp_path.iterdir())) == 2


def test_root_from_argument_environment_and_default(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    assert cache.cache_root() == cache.DEFAULT_ROOT == cache.Path("data") / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "env"))
    assert cache.cache_root() == tmp_path / "env"
    assert cache.cache_root(tmp_path / "arg") == tmp_path / "arg"
    cache.cached("s", CFG, lambda: {"v": np.zeros(1)})
    assert len(list((tmp_path / "env").glob("s-*.npz"))) == 1
    with pytest.raises(ValueError, match="relative path"):
        cache.cache_path("../outside", CFG)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "empty"])
def test_damaged_file_gives_a_clear_error(tmp_path, damage):
    compute, calls = counting({"v": np.linspace(0, 1, 4000)})
    cache.cached("s", CFG, compute, root=tmp_path)
    path = cache.cache_path("s", CFG, tmp_path)
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an npz file at all" * 10)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped":  # one byte in the middle of the array data: the zip CRC catches it
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1:])
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        cache.cached("s", CFG, compute, root=tmp_path)
    assert str(path) in str(e.value) and "delete" in str(e.value)
    assert len(calls) == 1  # never silently recomputed over the damaged file


def test_foreign_and_mismatched_files_give_a_clear_error(tmp_path):
    path = cache.cache_path("s", CFG, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, v=np.zeros(3))  # a valid npz, but not ours
    with pytest.raises(ValueError, match="not a pnpbook cache file") as e:
        cache.cached("s", CFG, lambda: {"v": np.ones(3)}, root=tmp_path)
    assert str(path) in str(e.value) and "delete" in str(e.value)
    # an entry of another config under this config's name (a renamed file, or a hash collision)
    other = {**CFG, "c": 2.0}
    cache.save(path, other, {"v": np.ones(3)})
    with pytest.raises(ValueError, match="another config") as e:
        cache.cached("s", CFG, lambda: {"v": np.ones(3)}, root=tmp_path)
    assert "c: stored 2.0 != asked 0.5" in str(e.value) and str(path) in str(e.value)


def test_bad_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dtype object"):
        cache.cached("s", CFG, lambda: {"v": np.array([{}, 1], dtype=object)}, root=tmp_path)
    with pytest.raises(ValueError, match="not starting with '__'"):
        cache.cached("s", CFG, lambda: {"__config__": np.zeros(1)}, root=tmp_path)
    assert not os.listdir(tmp_path) or not list(tmp_path.glob("*.npz"))
