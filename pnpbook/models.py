"""Encoders from CQT features to ``nu_hat`` in (-1, 1)^d.

* :class:`PaperEncoder`: the authors' network (spec sections 5 and 9):
  ``BatchNorm2d(1)`` -> ``Conv2d(1, 3, 3x3)`` -> EfficientNet-B0 from random
  init -> global average pool -> ``Dropout(0.2)`` -> ``Linear(1280, d)``
  without bias -> ``BatchNorm1d(d)`` times ``sqrt(0.5)`` -> ``tanh``.
* :class:`EfficientNetB0`: B0 without its classifier, written here from the
  published architecture (Tan and Le, "EfficientNet: Rethinking model scaling
  for convolutional neural networks", ICML 2019, table 1), 4,007,548 trainable
  parameters.
* :class:`SmallCNN`: a few convolutions for the CPU scales, without BatchNorm
  or dropout, so a batch's loss is a mean of independent per-sample losses
  (data-parallel gradients then equal one process's on the same global batch).
"""
from __future__ import annotations

import math

import torch
from torch import nn

#: BatchNorm epsilon of the EfficientNet (PyTorch's default; the TensorFlow reference uses 1e-3).
BN_EPS = 1e-5

#: EfficientNet-B0's MBConv stages (Tan and Le 2019, table 1):
#: (expansion ratio, kernel size, stride of the first block, output channels, repeats).
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
B0_STEM = 32
B0_HEAD = 1280


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> SiLU (optional)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2,
                                         groups=groups, bias=False),
                               nn.BatchNorm2d(c_out, eps=BN_EPS)]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gating: ``x * sigmoid(W2 silu(W1 mean_hw(x)))``.

    Parameters
    ----------
    channels : int
        Channels of ``x`` (the expanded width inside an MBConv block).
    squeezed : int
        Width of the bottleneck (a quarter of the block's input channels).
    """

    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation.

    1x1 expansion (skipped for ratio 1) -> depthwise k x k (stride) -> SE ->
    1x1 projection (no activation); identity shortcut when the stride is 1
    and the width is unchanged, with stochastic depth on the residual branch.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    expansion : int
        Width multiplier of the inner layers (1 or 6 in B0).
    kernel, stride : int
        Depthwise convolution.
    drop_prob : float
        Probability of dropping the residual branch of a sample in training
        (stochastic depth; only used with the shortcut).
    """

    def __init__(self, c_in: int, c_out: int, expansion: int, kernel: int, stride: int, drop_prob: float = 0.0):
        super().__init__()
        wide = c_in * expansion
        self.expand = _conv_bn_act(c_in, wide, 1) if expansion != 1 else nn.Identity()
        self.depthwise = _conv_bn_act(wide, wide, kernel, stride, groups=wide)
        self.se = SqueezeExcite(wide, max(1, c_in // 4))
        self.project = _conv_bn_act(wide, c_out, 1, act=False)
        self.shortcut = stride == 1 and c_in == c_out
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, H, W) -> (B, c_out, H / stride, W / stride) (rounded up)."""
        y = self.project(self.se(self.depthwise(self.expand(x))))
        if not self.shortcut:
            return y
        if self.training and self.drop_prob > 0:
            keep = 1 - self.drop_prob
            mask = torch.empty(len(y), 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(keep)
            y = y * mask / keep
        return x + y


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 without its classifier: (B, 3, H, W) -> (B, 1280, H/32, W/32).

    Stem conv 3x3 stride 2 to 32 channels, the seven MBConv stages of
    :data:`B0_STAGES` (widths 16, 24, 40, 80, 112, 192, 320), then a 1x1 conv
    to 1280, each conv followed by BatchNorm (eps :data:`BN_EPS`) and SiLU.

    Parameters
    ----------
    drop_path : float
        Largest stochastic-depth probability, reached by the last block; block
        ``i`` of ``n`` (counted over all stages) uses ``drop_path * i / n``.
        0 turns stochastic depth off.

    Attributes
    ----------
    stem : Module
    stages : ModuleList
        One ``Sequential`` of MBConv blocks per stage.
    head : Module
        The final 1x1 conv, BatchNorm and SiLU.
    """

    def __init__(self, drop_path: float = 0.2):
        super().__init__()
        self.stem = _conv_bn_act(3, B0_STEM, 3, stride=2)
        n_blocks = sum(r for *_, r in B0_STAGES)
        stages, c_in, i = [], B0_STEM, 0
        for expansion, kernel, stride, c_out, repeats in B0_STAGES:
            blocks = []
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, expansion, kernel, stride if r == 0 else 1,
                                     drop_path * i / n_blocks))
                c_in, i = c_out, i + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = _conv_bn_act(c_in, B0_HEAD, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Convs: He normal in fan-out mode, zero biases; BatchNorm: weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> feature maps (B, 1280, ceil(H / 32), ceil(W / 32))."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def _check_features(x: torch.Tensor, n_bins: int | None = None, frames: int | None = None) -> None:
    """Raise a clear error unless ``x`` is float (B, n_bins, frames)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    expected = (n_bins, frames)
    if x.ndim != 3 or any(e is not None and e != got for e, got in zip(expected, x.shape[1:])):
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise ValueError(f"features must have shape (B, {want}), got {tuple(x.shape)}")


class PaperEncoder(nn.Module):
    """The authors' encoder: CQT features (B, n_bins, frames) -> nu_hat (B, d) in (-1, 1).

    ``BatchNorm2d(1)`` -> ``Conv2d(1, 3, 3x3, no padding)`` ->
    :class:`EfficientNetB0` -> global average pool -> ``Dropout(0.2)`` ->
    ``Linear(1280, d, bias=False)`` -> ``BatchNorm1d(d)`` -> times
    ``sqrt(0.5)`` -> ``tanh``.  The final BatchNorm gives the pre-activation
    unit variance over a batch, so after the factor its variance is 0.5 (the
    authors' ``bn_var``) and the tanh starts in its near-linear range.

    Parameters
    ----------
    d : int
        Number of parameters to predict.
    drop_path : float
        Stochastic depth of the B0 (see :class:`EfficientNetB0`).
    dropout : float
        Dropout before the last linear layer (the authors: 0.2).
    """

    def __init__(self, d: int, drop_path: float = 0.2, dropout: float = 0.2):
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        self.d = d
        self.input_norm = nn.BatchNorm2d(1)
        self.to_rgb = nn.Conv2d(1, 3, 3)
        self.backbone = EfficientNetB0(drop_path)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(B0_HEAD, d, bias=False)
        self.output_norm = nn.BatchNorm1d(d)
        self.output_scale = math.sqrt(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n_bins, frames), with n_bins, frames >= 3 -> nu_hat (B, d)."""
        _check_features(x)
        z = self.backbone(self.to_rgb(self.input_norm(x.unsqueeze(1))))
        z = self.linear(self.dropout(z.mean(dim=(2, 3))))
        return torch.tanh(self.output_norm(z) * self.output_scale)


class SmallCNN(nn.Module):
    """A small CNN for the CPU scales: (B, n_bins, frames) -> nu_hat (B, d) in (-1, 1).

    Four 3x3 convolutions with ReLU (16, 32, 64, 64 channels; the first three
    with stride 2), a mean over the time axis, then ``Linear`` -> ReLU ->
    ``Linear(., d)`` -> ``tanh``.  Pooling over time only keeps the frequency
    axis, so the network can tell where in the CQT the energy is (pitch),
    which a global pool over both axes of a translation-equivariant stack
    would mostly average away.  No BatchNorm and no dropout: each sample's
    output depends on that sample only and the forward is deterministic.

    Parameters
    ----------
    d : int
        Number of parameters to predict.
    n_bins, frames : int
        Shape of one input (CQT bins, frames).
    width : int
        Channels of the last convolutions.
    hidden : int
        Width of the hidden linear layer.
    """

    def __init__(self, d: int, n_bins: int, frames: int, width: int = 64, hidden: int = 128):
        super().__init__()
        if min(d, n_bins, frames) < 1:
            raise ValueError(f"d, n_bins and frames must be >= 1, got {d}, {n_bins}, {frames}")
        self.d, self.n_bins, self.frames = d, n_bins, frames
        chans = (1, width // 4, width // 2, width, width)
        strides = (2, 2, 2, 1)
        layers: list[nn.Module] = []
        for c_in, c_out, s in zip(chans[:-1], chans[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=s, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        bins_out = n_bins
        for s in strides:
            bins_out = (bins_out - 1) // s + 1
        self.mlp = nn.Sequential(nn.Linear(width * bins_out, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n_bins, frames) -> nu_hat (B, d)."""
        _check_features(x, self.n_bins, self.frames)
        z = self.convs(x.unsqueeze(1)).mean(dim=3)  # (B, width, bins_out): mean over time
        return torch.tanh(self.mlp(z.flatten(1)))


ENCODERS: tuple[str, ...] = ("cnn", "effnet")


def build_encoder(kind: str, d: int, n_bins: int, frames: int) -> nn.Module:
    """An encoder by name.

    Parameters
    ----------
    kind : {"cnn", "effnet"}
        :class:`SmallCNN` or :class:`PaperEncoder`.
    d : int
        Number of parameters to predict.
    n_bins, frames : int
        Input shape per sample (the CQT front end's ``n_bins`` and ``frames``).

    Returns
    -------
    nn.Module
        Maps (B, n_bins, frames) to (B, d) in (-1, 1).
    """
    if kind == "cnn":
        return SmallCNN(d, n_bins, frames)
    if kind == "effnet":
        return PaperEncoder(d)
    raise ValueError(f"encoder kind {kind!r} is not one of {ENCODERS}")
