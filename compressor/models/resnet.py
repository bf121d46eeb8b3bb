"""ResNet-18/50 with torchvision's module names and shapes (a torchvision state_dict loads with
strict=True), and `resnet_small`, the demo's CNN for 16x16 / 32x32 images."""

import torch
from torch import nn

from compressor.models._checks import image_shape, positive


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    trace_safe = True  # compressor.nn.traced: Python decides on attributes only
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv."""
    trace_safe = True  # compressor.nn.traced: Python decides on attributes only
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """Stem (conv1/bn1/relu/maxpool), stages layer1..layerN, avgpool, fc.

    `stem` "imagenet" is torchvision's 7x7/2 conv + 3x3/2 max-pool; "cifar" a 3x3/1 conv and no
    pooling (maxpool is nn.Identity), for small images.
    """

    def __init__(self, block, blocks, widths, num_classes: int, in_channels: int = 3,
                 stem: str = "imagenet"):
        super().__init__()
        first = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, first, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, first, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(first)
        self.relu = nn.ReLU(inplace=True)
        cin = first
        for index, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(count):
                stage.append(block(cin, width, stride if b == 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resnet(name, block, blocks, num_classes, feature_shape, width, stem="imagenet"):
    channels, _, _ = image_shape(name, feature_shape)
    positive(name, num_classes=num_classes, width=width)
    widths = [width * 2**i for i in range(len(blocks))]
    return ResNet(block, blocks, widths, num_classes, channels, stem)


def resnet18(*, num_classes: int = 1000, feature_shape=(3, 224, 224), width: int = 64,
             blocks=(2, 2, 2, 2)) -> ResNet:
    """torchvision's resnet18 at width 64 (other widths scale every stage)."""
    return _resnet("resnet18", BasicBlock, tuple(blocks), num_classes, feature_shape, width)


def resnet50(*, num_classes: int = 1000, feature_shape=(3, 224, 224), width: int = 64,
             blocks=(3, 4, 6, 3)) -> ResNet:
    """torchvision's resnet50 at width 64 (other widths scale every stage)."""
    return _resnet("resnet50", Bottleneck, tuple(blocks), num_classes, feature_shape, width)


def resnet_small(*, num_classes: int = 10, feature_shape=(3, 32, 32), width: int = 64,
                 blocks=(1, 1, 1)) -> ResNet:
    """The demo CNN: 3x3 stem, then stages of BasicBlocks at width, 2*width, 4*width channels
    (64/128/256 by default), global pooling and fc."""
    return _resnet("resnet_small", BasicBlock, tuple(blocks), num_classes, feature_shape, width,
                   stem="cifar")
