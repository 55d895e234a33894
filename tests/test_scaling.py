"""h = minmax o r and its inverse: range, round trip, differentiability, fit on train only."""
import numpy as np
import pytest
import torch
from torch.func import jacfwd

from pnpbook import data
from pnpbook.scaling import Scaler
from pnpbook.synth import SYNTHS


@pytest.mark.parametrize("name", ["amchirp", "ftm"])
@pytest.mark.parametrize("keep_log", [True, False])
def test_round_trip_and_range(name, keep_log):
    scaler = data.train_scaler(name, "paper", keep_log=keep_log)
    train = torch.from_numpy(np.array(data.fold(name, "train", "paper").theta))
    nu = scaler(train)
    torch.testing.assert_close(nu.amin(0), -torch.ones(nu.shape[1], dtype=torch.float64))
    torch.testing.assert_close(nu.amax(0), torch.ones(nu.shape[1], dtype=torch.float64))
    torch.testing.assert_close(scaler.inverse(nu), train, rtol=0, atol=1e-12)
    val = torch.from_numpy(np.array(data.fold(name, "val", "paper").theta))
    assert bool((scaler(val).abs() < 1).all())  # val is interior


def test_no_log_is_linear_in_physical_units():
    synth = SYNTHS["amchirp"]
    scaler = data.train_scaler(synth, keep_log=False)
    phys = torch.tensor([[600.0, 5.0, 1.0], [900.0, 10.0, 3.0]], dtype=torch.float64)
    nu = scaler(synth.to_theta(phys))
    # equal steps in Hz give equal steps in nu: linear in physical units
    slope = (nu[1] - nu[0]) / (phys[1] - phys[0])
    expect = 2 / (torch.tensor(scaler.high) - torch.tensor(scaler.low))
    torch.testing.assert_close(slope, expect.double())


@pytest.mark.parametrize("keep_log", [True, False])
def test_inverse_is_differentiable(keep_log):
    scaler = data.train_scaler("ftm", "paper", keep_log=keep_log)
    nu = torch.tensor([0.1, -0.3, 0.5, 0.2, -0.7], dtype=torch.float64)
    jac = jacfwd(scaler.inverse)(nu)
    eps = 1e-6
    fd = torch.stack([(scaler.inverse(nu + eps * e) - scaler.inverse(nu - eps * e)) / (2 * eps)
                      for e in torch.eye(5, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(jac, fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(jacfwd(scaler.forward)(scaler.inverse(nu)) @ jac, torch.eye(5, dtype=torch.float64))


def test_fit_uses_only_what_it_is_given_and_round_trips_through_dict():
    synth = SYNTHS["amchirp"]
    theta = torch.tensor([[2.8, 0.7, 0.0], [2.9, 1.0, 0.5]], dtype=torch.float64)
    scaler = Scaler.fit(theta, synth)
    assert scaler.low == (2.8, 0.7, 0.0) and scaler.high == (2.9, 1.0, 0.5)
    assert Scaler.from_dict(scaler.to_dict()) == scaler
    with pytest.raises(ValueError, match="constant"):
        Scaler.fit(theta[:1], synth)
