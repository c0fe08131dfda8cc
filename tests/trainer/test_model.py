"""Encoder: torchvision ResNets with the CIFAR stem for small images, unit-norm fp32 embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from trainer.model import build_encoder, cifar_stem

WIDTH, DIM = 8, 16


def layer1_size(encoder, x):
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = output.shape  # returns None: the output is left alone

    handle = encoder.backbone.layer1.register_forward_hook(hook)
    with torch.no_grad():
        out = encoder(x)
    handle.remove()
    return seen["shape"], out


@pytest.mark.parametrize("arch,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_cifar_stem_for_32px(arch, expansion):
    torch.manual_seed(0)
    enc = build_encoder(arch, DIM, image_size=32, width=WIDTH).eval()
    conv1 = enc.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.out_channels == WIDTH
    assert isinstance(enc.backbone.maxpool, nn.Identity)
    assert isinstance(enc.backbone.fc, nn.Identity)
    assert enc.head.in_features == WIDTH * 8 * expansion and enc.head.out_features == DIM
    shape, out = layer1_size(enc, torch.randn(3, 3, 32, 32))
    assert tuple(shape) == (3, WIDTH * expansion, 32, 32)  # full resolution after the stem
    check_embedding(out, 3)


@pytest.mark.parametrize("arch,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_imagenet_stem_for_96px(arch, expansion):
    torch.manual_seed(0)
    enc = build_encoder(arch, DIM, image_size=96, width=WIDTH).eval()
    conv1 = enc.backbone.conv1
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)
    assert isinstance(enc.backbone.maxpool, nn.MaxPool2d)
    assert enc.head.in_features == WIDTH * 8 * expansion
    shape, out = layer1_size(enc, torch.randn(2, 3, 96, 96))
    assert tuple(shape) == (2, WIDTH * expansion, 24, 24)  # /2 conv, /2 max-pool
    check_embedding(out, 2)


def check_embedding(out, batch):
    assert out.shape == (batch, DIM) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(batch), atol=1e-5, rtol=0)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # different inputs, different embeddings


def test_embedding_fp32_under_autocast_and_trainable():
    torch.manual_seed(0)
    enc = build_encoder("resnet18", DIM, image_size=32, width=WIDTH)
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    (out * torch.randn_like(out)).sum().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert enc.backbone.conv1.weight.grad.abs().sum() > 0


def test_full_width_is_torchvision_resnet():
    enc = build_encoder("resnet18", 128, image_size=224)
    ref = torchvision.models.resnet18(weights=None)
    n_ref = sum(p.numel() for name, p in ref.named_parameters() if not name.startswith("fc."))
    assert sum(p.numel() for p in enc.backbone.parameters()) == n_ref
    assert enc.head.in_features == 512 and enc.dim == 128


def test_cifar_stem_function_keeps_width():
    net = cifar_stem(torchvision.models.resnet18(weights=None))
    assert net.conv1.out_channels == 64 and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_encoder("vgg11", DIM, 32)
