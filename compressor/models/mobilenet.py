"""MobileNetV2 with torchvision's layout: features.N (Conv2dNormActivation as a Sequential of
conv/bn/ReLU6; InvertedResidual with .conv.N), classifier.1."""

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.models._checks import image_shape, positive

# (expansion t, channels c, repeats n, first stride s) from the paper's table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's rounding of scaled channel counts (never more than 10% below value)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    trace_safe = True  # compressor.nn.traced: Python decides on attributes only

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(cin * expand_ratio)
        # decided once from the dense shapes: pruning keeps the residual's channels coupled
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand_ratio == 1 else [conv_bn_relu(cin, hidden, 1)]
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, dropout: float):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers = [conv_bn_relu(in_channels, cin, 3, 2)]
        for t, c, n, s in SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(*, num_classes: int = 1000, feature_shape=(3, 224, 224),
                 width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    """torchvision's mobilenet_v2; width_mult scales every layer (rounded to multiples of 8)."""
    channels, _, _ = image_shape("mobilenet_v2", feature_shape)
    positive("mobilenet_v2", num_classes=num_classes)
    if not float(width_mult) > 0:
        raise CompressorError(f"mobilenet_v2: width_mult must be > 0, got {width_mult!r}")
    return MobileNetV2(num_classes, channels, float(width_mult), float(dropout))
