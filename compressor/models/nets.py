"""LeNet-300-100 and Conv-2/4/6-style nets (Frankle & Carbin) scaled to digits and MNIST-1D."""

import math

import torch
from torch import nn

from compressor.errors import CompressorError


def lenet_300_100(in_features: int = 40, num_classes: int = 10) -> nn.Sequential:
    """The fully connected LeNet-300-100; its last Linear is the output layer."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


class ConvNet1d(nn.Module):
    """Conv-2/4/6 shape for 1-D signals (N, C, L): `depth` 3-wide convs in pairs, each pair followed
    by a max-pool, then two hidden Linear layers and the output layer."""

    def __init__(self, depth: int = 2, in_channels: int = 1, length: int = 40,
                 num_classes: int = 10, width: int = 32):
        super().__init__()
        if depth not in (2, 4, 6):
            raise CompressorError(f"ConvNet1d: depth must be 2, 4 or 6, got {depth}")
        layers, channels = [], in_channels
        for pair in range(depth // 2):
            out = width * 2**pair
            layers += [nn.Conv1d(channels, out, 3, padding=1), nn.ReLU(),
                       nn.Conv1d(out, out, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2)]
            channels, length = out, length // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * length, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """A small Conv2d net for 8x8 digits (N, 1, 8, 8), with BatchNorm to exercise folding."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _needs_channel(name: str, feature_shape) -> tuple[int, int]:
    shape = tuple(int(v) for v in feature_shape)
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape
    raise CompressorError(f"{name}: feature_shape must be (C, L) or (L,), got {shape}")


def mlp(*, num_classes: int = 10, feature_shape=(40,), hidden=(256, 256, 256)) -> nn.Sequential:
    """A ReLU MLP on the flattened input (the layer-robustness paper's FCN: 3 x 256)."""
    layers, width = [nn.Flatten()], math.prod(int(v) for v in feature_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


def lenet(*, num_classes: int = 10, feature_shape=(40,)) -> nn.Sequential:
    """LeNet-300-100 on the flattened input."""
    return lenet_300_100(math.prod(int(v) for v in feature_shape), num_classes)


def _conv_net(depth: int, num_classes: int, feature_shape, width: int) -> nn.Sequential:
    channels, length = _needs_channel(f"conv{depth}", feature_shape)
    unflatten = (nn.Unflatten(1, (channels, length)) if len(tuple(feature_shape)) == 1
                 else nn.Identity())
    return nn.Sequential(unflatten, ConvNet1d(depth, channels, length, num_classes, width))


def conv2(*, num_classes: int = 10, feature_shape=(40,), width: int = 32) -> nn.Sequential:
    """Conv-2 for 1-D signals (L,) or (C, L)."""
    return _conv_net(2, num_classes, feature_shape, width)


def conv4(*, num_classes: int = 10, feature_shape=(40,), width: int = 32) -> nn.Sequential:
    """Conv-4 for 1-D signals (L,) or (C, L)."""
    return _conv_net(4, num_classes, feature_shape, width)


def conv6(*, num_classes: int = 10, feature_shape=(40,), width: int = 32) -> nn.Sequential:
    """Conv-6 for 1-D signals (L,) or (C, L)."""
    return _conv_net(6, num_classes, feature_shape, width)


def digits_cnn(*, num_classes: int = 10, feature_shape=(1, 8, 8),
               width: int = 32) -> nn.Sequential:
    """DigitsCNN for 8x8 digits, (1, 8, 8) or flattened (64,)."""
    shape = tuple(int(v) for v in feature_shape)
    if shape not in ((1, 8, 8), (64,)):
        raise CompressorError(f"digits_cnn: feature_shape must be (1, 8, 8) or (64,), got {shape}")
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)) if shape == (64,) else nn.Identity(),
                         DigitsCNN(num_classes, width))
