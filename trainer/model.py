"""Encoder: any torchvision ResNet (the CIFAR stem for small images) or the small `airnet` for CPU budgets,
a linear head to d, L2-normalised."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .preprocess import is_small


def init_like_torchvision(module: nn.Module) -> nn.Module:
    """torchvision's ResNet init for layers built after its constructor: Kaiming convs, unit BN."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def cifar_stem(backbone: nn.Module) -> nn.Module:
    """Replace the ImageNet stem (7x7 stride 2 + max-pool) by a 3x3 stride-1 conv and no pool."""
    out_channels = backbone.conv1.out_channels
    backbone.conv1 = init_like_torchvision(nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1,
                                                     bias=False))
    backbone.maxpool = nn.Identity()
    return backbone


def resnet(arch: str, width: int = 64) -> nn.Module:
    """A torchvision ResNet with random init; `width` scales every stage (64 = torchvision's)."""
    if not arch.startswith("resnet") or not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown backbone {arch!r}: use a torchvision ResNet (resnet18, resnet50, ...) or airnet")
    net = getattr(torchvision.models, arch)(weights=None)
    if width != 64:  # rebuild with narrower stages, same block type and depth
        block = type(net.layer1[0])
        layers = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
        net = _ScaledResNet(block, layers, width)
    return net


class _ScaledResNet(torchvision.models.ResNet):
    def __init__(self, block, layers, width):
        super().__init__(block, layers)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.fc = nn.Linear(width * 8 * block.expansion, 1000)
        init_like_torchvision(self)


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


Backbone = Literal["airnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


class AirNet(nn.Module):
    """A small, fast backbone for CPU budgets, after KellerJordan/cifar10-airbench (airbench94's net).

    stem conv, then three groups of conv -> 2x2 max-pool -> conv (BN + GELU after each conv), channels
    (w, 2w, 4w), global max-pool. Seven 3x3 convs, most of them at 1/4 or less of the input's pixels:
    at 32 px and width 32 it costs about 1/3 of the multiply-adds of the width-16 ResNet-18 with the CIFAR
    stem, and far fewer, larger kernels (docs/cpu-recipe.md). Not in the paper, which uses ResNets.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        layers = conv_bn(3, w1 // 2)
        for c_in, c_out in ((w1 // 2, w1), (w1, w2), (w2, w3)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
                       nn.GELU(), *conv_bn(c_out, c_out)]
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(w3, 1000)  # replaced by the Encoder's head, as in a torchvision ResNet
        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # B x 3 x S x S -> B x 4w (fc is Identity inside an Encoder)


class Encoder(nn.Module):
    """backbone -> features -> linear head -> L2-normalised d-dim embedding (fp32)."""

    def __init__(self, backbone: nn.Module, dim: int = 128):
        super().__init__()
        feat_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)  # B x F
        return F.normalize(self.head(h).float(), dim=1)  # B x D, fp32 even under autocast


def build_encoder(arch: str, dim: int, image_size: int, width: int = 64, stem: str = "auto") -> Encoder:
    """stem: cifar | imagenet | auto (cifar for small images, trainer/preprocess.py); ResNets only."""
    if arch == "airnet":
        return Encoder(AirNet(width), dim)
    net = resnet(arch, width)
    if stem == "cifar" or (stem == "auto" and is_small(image_size)):
        net = cifar_stem(net)
    return Encoder(net, dim)
