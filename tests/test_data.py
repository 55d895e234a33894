"""Grids and folds (spec sections 2 and 3.4): sizes, disjointness, stable IDs, interior/exterior."""
import hashlib

import numpy as np
import pytest
import torch

from pnpbook import config, data
from pnpbook.synth import SYNTHS

SIZES = {"amchirp": {"train": 21556, "val": 2744, "test": 2700},
         "ftm": {"train": 82224, "val": 7776, "test": 10000}}


def full_folds(name, scale="paper"):
    return {f: data.fold(name, f, scale, n=SIZES[name][f]) for f in data.FOLDS}


@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("scale", ["tiny", "paper"])
def test_fold_sizes(name, scale):
    folds = full_folds(name, scale)
    assert {f: len(v) for f, v in folds.items()} == SIZES[name]
    assert len(data.grid(name, scale)) == data.GRIDS[name].bins ** SYNTHS[name].d


@pytest.mark.parametrize("name", SIZES)
def test_folds_disjoint(name):
    folds = full_folds(name)
    sets = {f: set(v.ids) for f, v in folds.items()}
    assert all(len(sets[f]) == len(folds[f]) for f in sets)  # no repeated id within a fold
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert set().union(*sets.values()) == set(data.grid(name, "paper").ids)


@pytest.mark.parametrize("name", SIZES)
def test_val_interior_test_exterior(name):
    spec, folds = data.GRIDS[name], full_folds(name)
    inside = lambda c: np.all((c >= spec.margin) & (c < spec.bins - spec.margin), axis=1)
    assert inside(folds["val"].cells).all()
    assert not inside(folds["test"].cells).any()
    assert not inside(folds["train"].cells).any()


@pytest.mark.parametrize("name", SIZES)
def test_ids_fixed_width_and_encode_cells(name):
    g = data.grid(name, "paper")
    bins, d = data.GRIDS[name].bins, SYNTHS[name].d
    assert {len(i) for i in g.ids} == {data.ID_WIDTH}
    radix = bins ** np.arange(d - 1, -1, -1)
    assert np.array_equal(g.ids.astype(int), g.cells @ radix)
    if name == "ftm":  # each digit is a cell index, as in the authors' CSV; ids can start with 0
        assert all(i == "".join(map(str, c)) for i, c in zip(g.ids[:2000:7], g.cells[:2000:7]))
        assert g.ids[0] == "00000"
    else:  # the authors' 900 i0 + 30 i1 + i2
        assert np.array_equal(g.ids.astype(int), 900 * g.cells[:, 0] + 30 * g.cells[:, 1] + g.cells[:, 2])


@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
def test_theta_inside_its_cell(name, scale):
    """Each point lies in its own cell, drawn uniformly in physical units (mean fraction ~ 0.5)."""
    synth = SYNTHS[name].at(scale)
    g, bins = data.grid(synth), data.GRIDS[name].bins
    phys = synth.to_phys(torch.from_numpy(np.array(g.theta))).numpy()
    for k, p in enumerate(synth.params):
        edges = data._edges(p.low, p.high, bins, p.log)
        lo, hi = edges[g.cells[:, k]], edges[g.cells[:, k] + 1]
        tol = 1e-12 * np.abs(hi)
        assert np.all(phys[:, k] >= lo - tol) and np.all(phys[:, k] <= hi + tol), p.name
        frac = (phys[:, k] - lo) / (hi - lo)
        assert abs(frac.mean() - 0.5) < 0.02, p.name
    # every point passes the synth's own validation
    synth.check(torch.from_numpy(np.array(g.theta)), "raise")


# Pinned on first generation: a change means IDs or parameters moved, on this machine or another.
CHECKSUMS = {
    "amchirp": "0ca02d5f4d54317b30173d19739a1dbcf75f5bb50834132c9ed2765afc0f300f",
    "ftm": "6ec94caa4a77ebbec959516e64aa1fc50094bfafe78c1b2b59b750d983e3c102",
}


def checksum(name):
    h = hashlib.sha256()
    for f in data.FOLDS:
        fo = data.fold(name, f, "paper", n=SIZES[name][f])
        h.update(f.encode())
        h.update("\n".join(fo.ids).encode())
        h.update(np.round(fo.theta, 12).astype("<f8").tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", SIZES)
def test_ids_and_theta_checksum(name):
    """Fold membership, fold order, IDs and theta (rounded to 1e-12) are stable across runs and machines."""
    assert checksum(name) == CHECKSUMS[name]


def test_fold_head_and_scale_sizes():
    tiny = data.fold("amchirp", "train", "tiny")
    assert len(tiny) == config.preset("amchirp", "tiny")["folds"]["train"] == 128
    assert list(data.fold("amchirp", "train", "tiny", n=10).ids) == list(tiny.ids[:10])
    with pytest.raises(ValueError, match="outside"):
        data.fold("amchirp", "val", "tiny", n=10**6)
    with pytest.raises(ValueError, match="fold 'dev'"):
        data.fold("amchirp", "dev")
    with pytest.raises(ValueError, match="synth 'fm'"):
        data.fold("fm", "train")


def test_fold_subsets_spread_over_the_grid():
    """The first n items of a fold are a pseudo-random subset, not the lowest IDs."""
    head = data.fold("ftm", "train", "tiny", n=256)
    assert len(set(head.cells[:, 0])) == data.GRIDS["ftm"].bins  # every omega bin appears


def test_dataset_renders_items():
    ds = data.SynthDataset("ftm", "val", "tiny", n=3)
    item = ds[1]
    synth = SYNTHS["ftm"].at("tiny")
    assert len(ds) == 3 and item["id"] == ds.fold.ids[1]
    assert item["x"].shape == (synth.n_samples,) and item["x"].dtype == torch.float32
    torch.testing.assert_close(item["x"], synth(torch.tensor(ds.fold.theta[1], dtype=torch.float32)))
    torch.testing.assert_close(ds.scaler.inverse(item["nu"].double()), item["theta"].double(),
                               rtol=1e-6, atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["x"].shape == (3, synth.n_samples) and list(batch["id"]) == list(ds.fold.ids)
