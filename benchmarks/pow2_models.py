"""Shipped models packed as power-of-two codes vs the float model they came from (issue 15:
"never slower than float").

    python -m benchmarks.pow2_models [--quick] [--threads 2] [--batches 1 16] [--plot]

Models (compressor.models, random init): ResNet-18, ResNet-50, MobileNetV2 and VGG-16-BN on
224 x 224 images, packed to 5-bit codes; an LSTM LM and an ON-LSTM LM (2 layers of 1024, 64
tokens, vocabulary 2000), packed to 4-bit codes (embedding, recurrent and output weights). Per
model and batch size:
  float     the model as built
  pow2      convert_to_pow2(model, bits, example_inputs=x): every layer in the mode measured
            fastest on its own input ("decoded" = the dense kernel on weights decoded once at
            conversion, "codes" = the pow2 kernel on the codes)
  all_codes every layer forced to "codes", batch 1 only (what Pow2Conv2d did before the modes)
All timed interleaved in one run (compressor.timing.paired_medians), medians after warm-up.
"""

import argparse
import copy

import torch

from benchmarks.common import markdown_table, write_json
from compressor.models import build_model
from compressor.quantization import convert_to_pow2
from compressor.quantization.convert import mode_candidates, pow2_layers, pow2_modes, set_pow2_modes
from compressor.timing import paired_medians

IMAGE = {"feature_shape": (3, 224, 224), "num_classes": 1000}
TOKENS = {"feature_shape": (64,), "num_classes": 2000, "embedding": 512, "hidden": 1024}
MODELS = {  # name: (factory, kwargs, bits)
    "resnet18": ("resnet18", IMAGE, 5), "resnet50": ("resnet50", IMAGE, 5),
    "mobilenet_v2": ("mobilenet_v2", IMAGE, 5), "vgg16_bn": ("vgg16_bn", IMAGE, 5),
    "lstm_lm": ("lstm_lm", {**TOKENS, "dropout": 0.0}, 4),
    "onlstm_lm": ("onlstm_lm", {**TOKENS, "dropout": 0.0}, 4),
}
QUICK = ("resnet18", "mobilenet_v2", "lstm_lm")


def _example(name: str, batch: int) -> torch.Tensor:
    factory, kwargs, _ = MODELS[name]
    if "embedding" in kwargs:
        return torch.randint(0, kwargs["num_classes"], (batch, *kwargs["feature_shape"]))
    return torch.randn(batch, *kwargs["feature_shape"])


def _all_codes(model) -> dict[str, str]:
    return {n: "codes" for n, m in pow2_layers(model) if "codes" in mode_candidates(m, False)}


def measure(name: str, batch: int, threads: int, repeat: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    factory, kwargs, bits = MODELS[name]
    model = build_model(factory, **kwargs).eval()
    x = _example(name, batch)
    with torch.inference_mode():
        packed = convert_to_pow2(copy.deepcopy(model), bits, example_inputs=x)
        fns = [lambda: model(x), lambda: packed(x)]
        if batch == 1:
            codes = convert_to_pow2(copy.deepcopy(model), bits)
            set_pow2_modes(codes, _all_codes(codes))
            fns.append(lambda: codes(x))
        paired = paired_medians(fns, repeat=repeat)
    ms = [t * 1e3 for t in paired.medians]
    chosen = list(pow2_modes(packed).values())
    row = {"model": name, "bits": bits, "batch": batch, "threads": threads, "float_ms": ms[0],
           "pow2_ms": ms[1], "pow2_vs_float": ms[0] / ms[1],
           "layers_codes": sum(m != "decoded" for m in chosen),
           "layers_decoded": chosen.count("decoded")}
    if batch == 1:
        row.update(all_codes_ms=ms[2], all_codes_vs_float=ms[0] / ms[2])
    print(row, flush=True)
    return row


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nb{r['batch']} t{r['threads']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows)), 3.2))
    ax.bar(range(len(rows)), [r["pow2_vs_float"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_ylabel("float ms / pow2 ms (> 1: faster)")
    ax.set_title("power-of-two models vs their float model (same run)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"batch 1, {', '.join(QUICK)}")
    parser.add_argument("--plot", default=None, metavar="PNG", help="bar chart of the ratios")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--models", nargs="+", choices=list(MODELS))
    args = parser.parse_args(argv)
    batches = args.batches or ([1] if args.quick else [1, 16])
    models = args.models or (list(QUICK) if args.quick else list(MODELS))
    rows = [measure(m, b, t, 3 if args.quick else 5) for t in args.threads for m in models
            for b in batches]
    print(markdown_table(rows, ["model", "bits", "threads", "batch", "float_ms", "pow2_ms",
                                "pow2_vs_float", "all_codes_ms", "all_codes_vs_float",
                                "layers_codes", "layers_decoded"]))
    print(f"wrote {write_json('pow2_models', {'rows': rows})}")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
