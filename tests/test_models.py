"""The encoders (issue 4 part 2): our EfficientNet-B0 against the published architecture (stage widths,
the exact trainable parameter count of torchvision's B0 without its 1000-class head), the paper's head,
and the small CNN for the CPU scales."""
import pytest
import torch
from torch import nn

from pnpbook import models


def n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_b0_stage_widths_and_strides():
    """Hooks on the stem, the seven stages and the head: widths 32 | 16 ... 320 | 1280, total stride 32."""
    net = models.EfficientNetB0().eval()
    shapes = []
    for m in [net.stem, *net.stages, net.head]:
        m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 96))
    assert [s[1] for s in shapes] == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert [s[2:] for s in shapes] == [(32, 48), (32, 48), (16, 24), (8, 12), (4, 6), (4, 6), (2, 3), (2, 3), (2, 3)]
    assert out.shape == (2, 1280, 2, 3)
    assert [len(stage) for stage in net.stages] == [1, 2, 2, 3, 3, 4, 1]  # 16 MBConv blocks
    kernels = [stage[0].depthwise[0].kernel_size[0] for stage in net.stages]
    assert kernels == [3, 3, 5, 3, 5, 5, 3]


def test_exact_parameter_counts():
    assert n_trainable(models.EfficientNetB0()) == 4_007_548  # torchvision's 5,288,548 less 1,281,000
    # B0 + Conv2d(1, 3, 3x3) 30 + BatchNorm2d(1) 2 + Linear(1280, 5, no bias) 6400 + BatchNorm1d(5) 10
    assert n_trainable(models.PaperEncoder(5)) == 4_013_990 == 4_007_548 + 30 + 2 + 6400 + 10
    assert n_trainable(models.PaperEncoder(3)) == 4_007_548 + 30 + 2 + 3 * 1280 + 6
    enc = models.PaperEncoder(5)
    assert enc.linear.bias is None and enc.to_rgb.padding == (0, 0) and enc.dropout.p == 0.2
    bns = [m for m in models.EfficientNetB0().modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all(m.eps == models.BN_EPS for m in bns)  # stem, 16 blocks, head


def test_squeeze_excitation_is_a_quarter_of_the_block_input():
    net = models.EfficientNetB0()
    block = net.stages[2][0]  # 24 -> 40 channels, expansion 6
    assert block.se.reduce.in_channels == 144 and block.se.reduce.out_channels == 6
    assert net.stages[0][0].se.reduce.out_channels == 8  # 32 input channels, expansion 1


@pytest.mark.parametrize("kind,d,n_bins,frames", [("effnet", 5, 84, 65), ("effnet", 3, 20, 24),
                                                  ("cnn", 5, 84, 65), ("cnn", 3, 72, 65)])
def test_outputs_in_open_interval(kind, d, n_bins, frames):
    torch.manual_seed(0)
    enc = models.build_encoder(kind, d, n_bins, frames)
    x = 3 * torch.rand(4, n_bins, frames)  # features are >= 0, of order a few units
    y = enc(x)  # training mode: batch statistics, dropout, stochastic depth
    assert y.shape == (4, d) and y.dtype == torch.float32
    assert bool((y.abs() < 1).all()) and y.std() > 0
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    with torch.no_grad():
        assert bool((enc(x).abs() < 1).all())


def test_small_cnn_has_no_batchnorm_nor_dropout():
    enc = models.SmallCNN(5, 84, 65)
    banned = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd, nn.GroupNorm, nn.LayerNorm)
    assert not [m for m in enc.modules() if isinstance(m, banned)]
    # each sample's output depends on that sample only: a batch equals its samples one by one
    x = torch.rand(3, 84, 65)
    torch.testing.assert_close(enc(x), torch.cat([enc(x[i:i + 1]) for i in range(3)]), rtol=1e-5, atol=1e-6)


def test_deterministic_forward_for_a_fixed_seed():
    x = torch.rand(2, 72, 65)
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(models.SmallCNN(3, 72, 65)(x))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    effnet = []
    for _ in range(2):
        torch.manual_seed(3)
        enc = models.PaperEncoder(3)
        effnet.append(enc(x[:, :20, :24]))  # training mode: the stochastic depth draws are seeded too
    assert torch.equal(effnet[0], effnet[1])


def test_bad_input_and_kind():
    with pytest.raises(ValueError, match=r"shape \(B, 84, 65\), got \(2, 72, 65\)"):
        models.SmallCNN(5, 84, 65)(torch.zeros(2, 72, 65))
    with pytest.raises(ValueError, match=r"got \(84, 65\)"):
        models.PaperEncoder(5)(torch.zeros(84, 65))
    with pytest.raises(ValueError, match="not one of"):
        models.build_encoder("resnet", 5, 84, 65)
