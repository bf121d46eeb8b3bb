"""VGG-16 and VGG-16-BN with torchvision's layout: features.N, avgpool, classifier.N."""

import torch
from torch import nn

from compressor.models._checks import image_shape, positive

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, last_channels: int, num_classes: int,
                 hidden: int, pool: int, dropout: float):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * pool * pool, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _features(in_channels: int, width: int, batch_norm: bool) -> tuple[nn.Sequential, int]:
    layers, cin = [], in_channels
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        cout = item * width // 64
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(True))
        cin = cout
    return nn.Sequential(*layers), cin


def _vgg(name, batch_norm, num_classes, feature_shape, width, hidden, pool, dropout):
    channels, _, _ = image_shape(name, feature_shape)
    positive(name, num_classes=num_classes, width=width, hidden=hidden, pool=pool)
    features, last = _features(channels, width, batch_norm)
    return VGG(features, last, num_classes, hidden, pool, float(dropout))


def vgg16(*, num_classes: int = 1000, feature_shape=(3, 224, 224), width: int = 64,
          hidden: int = 4096, pool: int = 7, dropout: float = 0.5) -> VGG:
    """torchvision's vgg16 at width 64, hidden 4096, pool 7; smaller values scale it down."""
    return _vgg("vgg16", False, num_classes, feature_shape, width, hidden, pool, dropout)


def vgg16_bn(*, num_classes: int = 1000, feature_shape=(3, 224, 224), width: int = 64,
             hidden: int = 4096, pool: int = 7, dropout: float = 0.5) -> VGG:
    """torchvision's vgg16_bn (BatchNorm after every conv)."""
    return _vgg("vgg16_bn", True, num_classes, feature_shape, width, hidden, pool, dropout)
