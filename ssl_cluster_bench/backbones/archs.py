"""Architectures that neither timm nor torchvision builds, named ``sscb:<name>`` in model cards.

Entry points:
    register_arch(name)(builder)     add a builder: ``builder(**model_kwargs) -> nn.Module`` whose forward maps
                                     N x 3 x H x W to N x ``model.num_features`` pooled features
    get_arch(name) -> builder        (ValueError listing the known names)
    list_archs() -> list[str]

Registered here:

* ``simclrv2_resnet`` (``depth``, ``width``, ``sk_ratio``): the ResNet of SimCLRv2 with the module names of the
  widely used PyTorch conversion of its TensorFlow checkpoints (Separius/SimCLRv2-Pytorch, files
  ``r<depth>_<width>x_sk<0|1>.pth``), so those files load through the ordinary checkpoint loader. Written here
  because timm's SK-ResNet-D computes something else: SimCLRv2 mixes two 3x3 branches cut from one fused
  convolution, sizes the attention as max(channels/16, 32) (timm rounds to a divisor, which is wrong for the 3x
  model's third stage) and average-pools every projection shortcut through a zero-padded 2x2 window, stride 1
  included (timm uses no pooling there).
* ``simclr_wide_resnet50`` (``width``): SimCLR v1's ResNet-50 (1x/2x/4x), where the stem and every stage are
  ``width`` times wider (torchvision's and timm's wide ResNets only widen the bottleneck). Built from timm's
  ResNet and Bottleneck with the stem widened, so the state-dict keys are torchvision's (tonylins/simclr-converter
  files load as they are).
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["register_arch", "get_arch", "list_archs", "SimCLRv2ResNet"]

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    """Decorator: register ``builder`` under ``name`` (used as ``arch: sscb:<name>`` in a card)."""
    def wrap(builder):
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} is already registered")
        _ARCHS[name] = builder
        return builder
    return wrap


def get_arch(name: str) -> Callable[..., nn.Module]:
    if name not in _ARCHS:
        close = difflib.get_close_matches(name, list(_ARCHS), n=3)
        raise ValueError(f"no sscb architecture {name!r}" + (f" (close matches: {', '.join(close)})" if close else "")
                         + f"; known: {', '.join(sorted(_ARCHS))}")
    return _ARCHS[name]


def list_archs() -> list[str]:
    return sorted(_ARCHS)


# ----------------------------------------------------------------------------------------------------------
# SimCLRv2 ResNet (optionally with selective kernels)
# ----------------------------------------------------------------------------------------------------------

_BN_EPS = 1e-5  # the TensorFlow models' batch-norm epsilon


def _conv(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False)


def _bn_relu(channels: int, relu: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=_BN_EPS), nn.ReLU() if relu else nn.Identity())


class _SelectiveKernel(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, sk_ratio: float, min_dim: int = 32):
        super().__init__()
        self.main_conv = nn.Sequential(_conv(c_in, 2 * c_out, stride=stride), _bn_relu(2 * c_out))
        mid = max(int(c_out * sk_ratio), min_dim)
        self.mixing_conv = nn.Sequential(_conv(c_out, mid, 1), _bn_relu(mid), _conv(mid, 2 * c_out, 1))

    def forward(self, x):
        branches = torch.stack(torch.chunk(self.main_conv(x), 2, dim=1))  # 2 x N x C x H x W
        mix = self.mixing_conv(branches.sum(0).mean(dim=(2, 3), keepdim=True))
        weights = F.softmax(torch.stack(torch.chunk(mix, 2, dim=1)), dim=0)
        return (branches * weights).sum(0)


class _Projection(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, sk_ratio: float):
        super().__init__()
        if sk_ratio > 0:  # ResNet-D shortcut as in the TF code: pad right/bottom, 2x2 average pool, 1x1 conv
            self.shortcut = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.AvgPool2d(2, stride=stride),
                                          _conv(c_in, c_out, 1))
        else:
            self.shortcut = _conv(c_in, c_out, 1, stride)
        self.bn = _bn_relu(c_out, relu=False)

    def forward(self, x):
        return self.bn(self.shortcut(x))


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int, sk_ratio: float, projection: bool):
        super().__init__()
        self.projection = _Projection(c_in, 4 * planes, stride, sk_ratio) if projection else nn.Identity()
        ops = [_conv(c_in, planes, 1), _bn_relu(planes)]
        if sk_ratio > 0:
            ops.append(_SelectiveKernel(planes, planes, stride, sk_ratio))
        else:
            ops += [_conv(planes, planes, stride=stride), _bn_relu(planes)]
        ops += [_conv(planes, 4 * planes, 1), _bn_relu(4 * planes, relu=False)]
        self.net = nn.Sequential(*ops)

    def forward(self, x):
        return F.relu(self.projection(x) + self.net(x))


class _Blocks(nn.Module):
    def __init__(self, n: int, c_in: int, planes: int, stride: int, sk_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList([_Bottleneck(c_in, planes, stride, sk_ratio, True)]
                                    + [_Bottleneck(4 * planes, planes, 1, sk_ratio, False) for _ in range(n - 1)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class SimCLRv2ResNet(nn.Module):
    """SimCLRv2 ResNet-{50,101,152,200} x width (+SK): N x 3 x H x W -> N x (2048 * width) pooled features.

    Keys: ``net.0`` stem, ``net.1..4`` stages (``blocks.i.{projection,net}``); the checkpoints' supervised
    ``fc`` head has no counterpart (the loader drops it).
    """

    LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}

    def __init__(self, depth: int = 50, width: int = 1, sk_ratio: float = 0.0):
        super().__init__()
        if depth not in self.LAYERS:
            raise ValueError(f"simclrv2_resnet: depth must be one of {sorted(self.LAYERS)}, got {depth!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"simclrv2_resnet: width must be a positive int, got {width!r}")
        half = 64 * width // 2
        if sk_ratio > 0:  # three 3x3 convolutions in place of the 7x7 one (ResNet-D stem)
            stem = [_conv(3, half, stride=2), _bn_relu(half), _conv(half, half), _bn_relu(half), _conv(half, 2 * half)]
        else:
            stem = [_conv(3, 2 * half, kernel_size=7, stride=2)]
        stem += [_bn_relu(2 * half), nn.MaxPool2d(3, stride=2, padding=1)]
        stages, c_in = [nn.Sequential(*stem)], 64 * width
        for i, n in enumerate(self.LAYERS[depth]):
            planes = 64 * width * 2 ** i
            stages.append(_Blocks(n, c_in, planes, 1 if i == 0 else 2, sk_ratio))
            c_in = 4 * planes
        self.net = nn.Sequential(*stages)
        self.num_features = c_in

    def forward(self, x):
        return self.net(x).mean(dim=(2, 3))


@register_arch("simclrv2_resnet")
def simclrv2_resnet(depth: int = 50, width: int = 1, sk_ratio: float = 0.0, **_ignored) -> nn.Module:
    return SimCLRv2ResNet(depth=depth, width=width, sk_ratio=sk_ratio)


# ----------------------------------------------------------------------------------------------------------
# SimCLR v1 wide ResNet-50
# ----------------------------------------------------------------------------------------------------------


@register_arch("simclr_wide_resnet50")
def simclr_wide_resnet50(width: int = 1, **_ignored) -> nn.Module:
    from timm.models.resnet import Bottleneck, ResNet

    if not isinstance(width, int) or width < 1:
        raise ValueError(f"simclr_wide_resnet50: width must be a positive int, got {width!r}")
    base = 64 * width
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=0, channels=(base, 2 * base, 4 * base, 8 * base))
    if width > 1:
        # timm fixes the stem at 64 channels; SimCLR widens it too, so the stem and the first block's inputs
        # are rebuilt at 64 * width (same module names, so the keys stay torchvision's)
        model.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(base)
        first = model.layer1[0]
        first.conv1 = nn.Conv2d(base, first.conv1.out_channels, kernel_size=1, bias=False)
        first.downsample[0] = nn.Conv2d(base, first.downsample[0].out_channels, kernel_size=1, bias=False)
    return model
