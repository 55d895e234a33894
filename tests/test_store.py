"""The metric store and `python -m pnpbook precompute` (issue 3 part 5): config hashing, refusal to
mix configs, clear errors for damaged or foreign files, M at the right point (spec 13.3, checked
against finite differences without pnpbook.scaling or jacfwd), resume after kills, worker processes,
torchrun sharding, and the arithmetic of --estimate."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from finite_differences import jacobian_fd

from pnpbook import data, jtfs, store
from pnpbook.metric import jacobian, metric, pnp_forward
from pnpbook.synth import SYNTHS

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, threads=1, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pnpbook", "precompute", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def amchirp_store(tmp_path_factory):
    """5 val items of the tiny AM chirp in float64, chunks of 2 (the last one short), in process."""
    req = store.Request("amchirp", "tiny", fold="val", n=5, dtype="float64", chunk=2)
    path = store.precompute(req, tmp_path_factory.mktemp("s") / "m.h5", workers=1, progress=False)
    return req, path


def test_store_layout_and_contents(amchirp_store):
    req, path = amchirp_store
    s = store.read(path)
    items = data.fold("amchirp", "val", "tiny", n=5)
    assert list(s.ids) == list(items.ids) and s.fold == "val"
    np.testing.assert_array_equal(s.theta, items.theta)
    assert s.M.shape == (5, 3, 3) and s.spectrum.shape == (5, 3) and s.noise_floor.shape == (5,)
    np.testing.assert_allclose(s.M, s.M.transpose(0, 2, 1))
    assert (np.diff(s.spectrum, axis=1) <= 0).all()
    np.testing.assert_allclose(np.linalg.eigvalsh(s.M)[:, ::-1], s.spectrum, rtol=1e-9)
    assert s.J is None and not (path.parent / (path.name + ".parts")).exists()
    assert s.config == store.store_config(req) and s.hash == store.config_hash(s.config)
    assert s.provenance["started"]["pnpbook"] and "commit" in s.provenance
    assert oct(path.stat().st_mode & 0o777) != "0o600"  # not the private mode of a temporary file


@pytest.mark.parametrize("k", [3])
def test_stored_M_is_at_the_right_point(amchirp_store, k):
    """Spec 13.3: the authors' stored M was not evaluated at its sample.  Ours, for item k (inside the
    second chunk), equals J_nu^T J_nu with J_nu = J_theta diag((theta_max - theta_min) / 2), J_theta from
    float64 central differences of Phi(g(theta)) at the fold's theta_k: no pnpbook.scaling, no jacfwd."""
    req, path = amchirp_store
    s = store.read(path)
    synth = SYNTHS["amchirp"].at("tiny")
    op, c = jtfs.operator(synth), s.config["c"]
    theta_k = torch.from_numpy(data.fold(synth, "val", n=5).theta[k].copy())
    J_theta = jacobian_fd(lambda th: jtfs.phi(op(synth(th)), c), theta_k, h0=1e-3)
    low, high = np.array(s.config["scaler"]["low"]), np.array(s.config["scaler"]["high"])
    J_nu = J_theta.numpy() * (high - low) / 2
    expected = J_nu.T @ J_nu
    assert np.linalg.norm(s.M[k] - expected) / np.linalg.norm(expected) < 1e-4
    # and it is not its neighbours' M (what a shifted index would give)
    for other in (k - 1, k + 1):
        assert np.linalg.norm(s.M[other] - expected) / np.linalg.norm(expected) > 1e-2


def test_config_hash_covers_what_changes_the_numbers(monkeypatch):
    base = store.Request("ftm", "tiny")
    h = store.config_hash(store.store_config(base))
    variants = [store.Request("ftm", "tiny", c=1e3), store.Request("ftm", "tiny", dtype="float64"),
                store.Request("ftm", "tiny", keep_log=False), store.Request("amchirp", "tiny"),
                store.Request("ftm", "small", c=1e3)]
    hashes = {store.config_hash(store.store_config(v)) for v in variants}
    assert h not in hashes and len(hashes) == len(variants)
    # which samples and how they are chunked are not part of the config
    for same in (store.Request("ftm", "tiny", fold="val", n=3, chunk=5),):
        assert store.config_hash(store.store_config(same)) == h
    monkeypatch.setattr(store, "METRIC_VERSION", store.METRIC_VERSION + 1)
    assert store.config_hash(store.store_config(base)) != h
    cfg = store.store_config(base)
    assert cfg["scaler"]["low"] == list(data.train_scaler("ftm", "tiny").low)
    assert cfg["jtfs"]["N"] == 8192 and cfg["c"] == jtfs.preset_c(SYNTHS["ftm"].at("tiny"))


def test_store_never_mixes_configs(amchirp_store, tmp_path):
    req, path = amchirp_store
    other = store.Request("amchirp", "tiny", fold="val", n=5, dtype="float64", chunk=2, c=1e3)
    with pytest.raises(ValueError, match=r"another config .*c: [\d.]+ != 1000\.0"):
        store.plan(other, path)
    with pytest.raises(ValueError, match="computed with another config"):
        store.read(path, expect=store.store_config(other))
    with pytest.raises(ValueError, match="4 of 'val'"):
        store.plan(store.Request("amchirp", "tiny", fold="val", n=4, dtype="float64"), path)
    # a store in progress with another config is refused too
    work = tmp_path / "w.h5"
    p = store.plan(other, work)
    store._start(other, work, p)
    with pytest.raises(ValueError, match="in progress with another config"):
        store.plan(req, work)
    assert store.plan(other, work)["todo"] == [0, 1, 2]


def test_damaged_and_foreign_files_get_clear_errors(amchirp_store, tmp_path):
    req, path = amchirp_store
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        store.read(garbage)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="readable HDF5|damaged"):
        store.read(truncated)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("M", data=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="not a pnpbook metric store"):
        store.read(foreign)
    edited = tmp_path / "edited.h5"
    edited.write_bytes(path.read_bytes())
    with h5py.File(edited, "a") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["c"] = 1.0
        f.attrs["config"] = json.dumps(cfg)
    with pytest.raises(ValueError, match="does not match its stored hash"):
        store.read(edited)
    with pytest.raises(FileNotFoundError):
        store.read(tmp_path / "absent.h5")
    # a damaged chunk file in a store in progress
    work = tmp_path / "w.h5"
    p = store.plan(req, work)
    store._start(req, work, p)
    parts = store._Parts(work)
    parts.chunk_path(0).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"chunk file .*chunk000000\.npz is corrupt"):
        parts.load(0, 2, 3, False)


def test_estimate_arithmetic_with_an_injected_timer(amchirp_store, tmp_path):
    """Start-up, per-sample time and totals from a scripted clock; the disk figure equals, byte for byte,
    the data a written store holds."""
    req, path = amchirp_store
    clock = iter([100.0, 103.5, 107.5])  # start, after start-up, after 2 timed samples
    e = store.estimate(req, n_timed=2, workers=2, timer=lambda: next(clock))
    assert e["n"] == 5 and e["startup_s"] == 3.5 and e["per_sample_s"] == 2.0
    assert e["total_s"] == 3.5 + 5 * 2.0 / 2
    with h5py.File(path) as f:
        stored = sum(f[k].id.get_storage_size() for k in f)
        assert f["ids"].dtype.itemsize == data.ID_WIDTH
    assert e["total_bytes"] == 5 * e["per_sample_bytes"] == stored
    assert path.stat().st_size - stored < 16384  # HDF5 metadata and attributes
    with_J = store.per_sample_bytes({**store.store_config(req), "save_J": True}, P=1544)
    assert with_J == e["per_sample_bytes"] + 1544 * 3 * 8


def test_save_J(tmp_path):
    req = store.Request("ftm", "tiny", fold="test", n=2, chunk=2, save_J=True)
    s = store.read(store.precompute(req, tmp_path / "j.h5", progress=False))
    synth = SYNTHS["ftm"].at("tiny")
    scaler = data.train_scaler(synth)
    J = jacobian(pnp_forward(synth, jtfs.operator(synth), scaler, jtfs.preset_c(synth)),
                 torch.from_numpy(s.nu).float())
    assert s.J.shape == (2, 1544, 5) and s.J.dtype == np.float32
    np.testing.assert_allclose(s.J, J.numpy(), rtol=1e-5, atol=1e-6 * np.abs(s.J).max())
    np.testing.assert_allclose(s.M, metric(torch.from_numpy(s.J)).numpy())


def test_killed_ten_times_then_resumed_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL at ten random moments (start-up, computing, writing, merging), restart each time; the final
    store equals one written in one go by two worker processes, array for array."""
    args = ["--synth", "amchirp", "--scale", "tiny", "--fold", "test", "--n", "40", "--chunk", "1"]
    reference = tmp_path / "ref.h5"
    done = run_cli(*args, "--workers", "2", "--out", str(reference), threads=2)
    assert done.returncode == 0, done.stderr
    assert "chunk" in done.stderr  # the progress bar
    target = tmp_path / "killed.h5"
    rng = np.random.default_rng(20261126)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    kills = 0
    for _ in range(30):  # until ten runs were killed before they finished
        proc = subprocess.Popen([sys.executable, "-m", "pnpbook", "precompute", *args, "--workers", "1",
                                 "--out", str(target)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if kills == 10 or target.exists():
            break
    assert kills == 10 and not target.exists()  # the store was not finished by a lucky run
    final = run_cli(*args, "--workers", "1", "--out", str(target))
    assert final.returncode == 0, final.stderr
    a, b = store.read(reference), store.read(target)
    assert a.hash == b.hash and list(a.ids) == list(b.ids)
    for k in store.PER_SAMPLE:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert not list(tmp_path.glob("*.parts"))


def test_torchrun_shards_over_two_gloo_processes(tmp_path, amchirp_store):
    """Two ranks split the chunks (rank r takes chunks r, r + 2, ...), rank 0 merges: the store equals
    the single-process one."""
    req, single = amchirp_store
    out = tmp_path / "ddp.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "pnpbook", "precompute", "--synth", "amchirp", "--scale", "tiny", "--fold", "val",
                          "--n-items", "5", "--dtype", "float64", "--chunk", "2", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = store.read(single), store.read(out)
    assert a.hash == b.hash and b.provenance["world_size"] == 2
    np.testing.assert_allclose(b.M, a.M, rtol=1e-10)
    assert run.stdout.count("M for 5 val samples") == 1  # one report, from rank 0
