"""CNNs packed as 5-bit power-of-two codes vs the float model they came from (issue 15: "never
slower than float").

    python -m benchmarks.pow2_models [--quick] [--threads 2] [--batches 1 16]

Models (defined here, random init, ImageNet-sized 224 x 224 input): ResNet-18 (basic blocks) and
MobileNetV2 (inverted residuals, depthwise 3 x 3). For each batch size:
  float     the model as built
  pow2      convert_to_pow2(model, 5, example_inputs=x): every layer in the mode measured fastest
            on its own input ("decoded" = the dense kernel on weights decoded once at conversion,
            or "codes" = the pow2 kernel on the codes)
  all_codes every layer forced to "codes" (what Pow2Conv2d did before the modes: unfold + the
            pow2 kernel; grouped convs decode per call), batch 1 only
All timed interleaved in one run (compressor.timing.paired_medians).
"""

import argparse
import copy

import torch
from torch import nn

from benchmarks.common import markdown_table, write_json
from compressor.quantization import convert_to_pow2
from compressor.quantization.convert import pow2_modes, set_pow2_modes
from compressor.timing import paired_medians


def _conv_bn(cin, cout, k, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride),
                                  _conv_bn(cout, cout, 3, act=False))
        self.skip = (_conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout
                     else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet18(num_classes: int = 1000) -> nn.Module:
    layers, cin = [_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, num_classes))


class _Inverted(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        pre = [_conv_bn(cin, mid, 1)] if expand != 1 else []
        self.body = nn.Sequential(*pre, _conv_bn(mid, mid, 3, stride, groups=mid),
                                  _conv_bn(mid, cout, 1, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    layers, cin = [_conv_bn(3, 32, 3, 2)], 32
    for expand, cout, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                          (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                          (6, 320, 1, 1)):
        for i in range(repeats):
            layers.append(_Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(*layers, _conv_bn(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1280, num_classes))


MODELS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}


def measure(name: str, batch: int, threads: int, repeat: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(batch, 3, 224, 224)
    packed = convert_to_pow2(copy.deepcopy(model), 5, example_inputs=x)
    fns = [lambda: model(x), lambda: packed(x)]
    if batch == 1:
        codes = convert_to_pow2(copy.deepcopy(model), 5)
        set_pow2_modes(codes, {n: "codes" for n in pow2_modes(codes)})
        fns.append(lambda: codes(x))
    with torch.inference_mode():
        paired = paired_medians(fns, repeat=repeat)
    ms = [t * 1e3 for t in paired.medians]
    chosen = list(pow2_modes(packed).values())
    row = {"model": name, "batch": batch, "threads": threads, "float_ms": ms[0],
           "pow2_ms": ms[1], "pow2_vs_float": ms[0] / ms[1],
           "layers_codes": chosen.count("codes"), "layers_decoded": chosen.count("decoded")}
    if batch == 1:
        row.update(all_codes_ms=ms[2], all_codes_vs_float=ms[0] / ms[2])
    print(row, flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only")
    parser.add_argument("--plot", action="store_true", help="(no plot: a table)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    batches = args.batches or ([1] if args.quick else [1, 16])
    rows = [measure(m, b, t, 3 if args.quick else 5) for t in args.threads for m in args.models
            for b in batches]
    print(markdown_table(rows, ["model", "threads", "batch", "float_ms", "pow2_ms",
                                "pow2_vs_float", "all_codes_ms", "all_codes_vs_float",
                                "layers_codes", "layers_decoded"]))
    print(f"wrote {write_json('pow2_models', {'rows': rows})}")


if __name__ == "__main__":
    main()
