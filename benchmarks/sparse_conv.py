"""Direct sparse conv2d vs torch dense conv2d (PyTorch defaults) over real network layers.

python -m benchmarks.sparse_conv [--quick] [--plot] [--threads 1 2] [--only resnet50 ...] [--append]
                                [--replot]
Layers: the 3x3 and 1x1 convs of ResNet-50, VGG-16 and AlexNet conv2-5; sparsity 50-98%; batch
1 and 16; CPU at 1 and 2 threads (and CUDA vs cuDNN defaults when a GPU is present).
Each row times its own pruned dense layer (dense conv time varies by up to 1.8x between weight
tensors of one shape here, so a shared baseline would skew whole rows), dense and sparse samples
interleaved (compressor.timing.paired_medians). Run in pieces with
--only/--threads and --append.
"""

from pathlib import Path

import torch

from benchmarks.common import (
    cpu_configs,
    markdown_table,
    run_sweep,
    save_rows,
    sweep_parser,
)
from compressor.nn import SparseConv2d
from compressor.timing import paired_medians

# name: (cin, cout, kernel, stride, padding, hw)
LAYERS = {
    "resnet50.l1.3x3": (64, 64, 3, 1, 1, 56), "resnet50.l2.3x3": (128, 128, 3, 1, 1, 28),
    "resnet50.l3.3x3": (256, 256, 3, 1, 1, 14), "resnet50.l4.3x3": (512, 512, 3, 1, 1, 7),
    "resnet50.l1.1x1a": (256, 64, 1, 1, 0, 56), "resnet50.l1.1x1b": (64, 256, 1, 1, 0, 56),
    "resnet50.l3.1x1a": (1024, 256, 1, 1, 0, 14), "resnet50.l3.1x1b": (256, 1024, 1, 1, 0, 14),
    "vgg16.conv1_2": (64, 64, 3, 1, 1, 224), "vgg16.conv2_2": (128, 128, 3, 1, 1, 112),
    "vgg16.conv3_2": (256, 256, 3, 1, 1, 56), "vgg16.conv4_2": (512, 512, 3, 1, 1, 28),
    "vgg16.conv5_2": (512, 512, 3, 1, 1, 14),
    "alexnet.conv2": (64, 192, 5, 1, 2, 27), "alexnet.conv3": (192, 384, 3, 1, 1, 13),
    "alexnet.conv4": (384, 256, 3, 1, 1, 13), "alexnet.conv5": (256, 256, 3, 1, 1, 13),
}
QUICK = ["resnet50.l1.3x3", "resnet50.l3.3x3", "resnet50.l4.3x3", "resnet50.l1.1x1a",
         "resnet50.l1.1x1b", "resnet50.l3.1x1a", "resnet50.l3.1x1b", "vgg16.conv4_2"]


def pruned(cin, cout, k, s, p, sparsity, device):
    conv = torch.nn.Conv2d(cin, cout, k, s, p).to(device).eval()
    with torch.no_grad():
        flat = conv.weight.abs().flatten()
        keep = max(1, round(flat.numel() * (1 - sparsity)))
        threshold = flat.kthvalue(flat.numel() - keep + 1).values
        conv.weight.mul_(conv.weight.abs() >= threshold)
    return conv


def measure(name, batch, sparsities, device, threads) -> list[dict]:
    cin, cout, k, s, p, hw = LAYERS[name]
    x = torch.randn(batch, cin, hw, hw, device=device)
    rows = []
    for sparsity in sparsities:
        conv = pruned(cin, cout, k, s, p, sparsity, device)
        sparse = SparseConv2d.from_dense(conv).to(device)
        with torch.no_grad():
            # interleaved samples of >= 20 ms after warm-up: a busier machine slows both alike
            timed = paired_medians([lambda: conv(x), lambda: sparse(x)], device,  # noqa: B023
                                   warmup=2, repeat=5, min_seconds=0.02)
        dense_s, sparse_s = timed.medians
        rows.append({"layer": name, "sparsity": sparsity, "batch": batch, "device": device,
                     "threads": threads, "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3,
                     "speedup": dense_s / sparse_s, "spread": max(timed.spreads)})
    return rows


def summary(rows) -> str:
    """One grid per (device, batch, threads): a row per layer, a speedup column per sparsity."""
    order = {name: i for i, name in enumerate(LAYERS)}
    sparsities = sorted({r["sparsity"] for r in rows})
    grids = []
    for cfg in sorted({(r["device"], r["batch"], r["threads"]) for r in rows}):
        picked = [r for r in rows if (r["device"], r["batch"], r["threads"]) == cfg]
        by_layer = {}
        for r in picked:
            by_layer.setdefault(r["layer"], {})[f"{r['sparsity']:.0%}"] = r["speedup"]
        table = [{"layer": layer, **speeds}
                 for layer, speeds in sorted(by_layer.items(), key=lambda kv: order[kv[0]])]
        grids.append(f"{cfg[0]}, batch {cfg[1]}, {cfg[2]} thread(s): speedup vs dense\n\n"
                     + markdown_table(table, ["layer", *(f"{sp:.0%}" for sp in sparsities)]))
    return "\n\n".join(grids)


def plot(rows) -> None:
    import matplotlib.pyplot as plt

    configs = sorted({(r["device"], r["batch"], r["threads"]) for r in rows})
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 4.5), sharey=True,
                             squeeze=False)
    for ax, cfg in zip(axes[0], configs, strict=True):
        for name in LAYERS:
            pts = sorted((r for r in rows if (r["device"], r["batch"], r["threads"]) == cfg
                          and r["layer"] == name), key=lambda r: r["sparsity"])
            if pts:
                style = "-" if name.startswith("resnet") else "--" if name.startswith("vgg") \
                    else ":"
                ax.plot([r["sparsity"] for r in pts], [r["speedup"] for r in pts], style,
                        marker="o", markersize=2, linewidth=0.8, label=name)
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set(title=f"{cfg[0]}, batch {cfg[1]}, {cfg[2]} thread(s)", xlabel="sparsity",
               yscale="log")
    axes[0][0].set_ylabel("speedup vs dense F.conv2d")
    axes[0][-1].legend(fontsize=5, ncol=1, loc="upper left")
    Path("docs/img").mkdir(parents=True, exist_ok=True)
    fig.savefig("docs/img/sparse_conv.png", dpi=150, bbox_inches="tight")


def main() -> None:
    args = sweep_parser(__doc__, "layers (name prefixes)").parse_args()
    layers = QUICK if args.quick else list(LAYERS)
    if args.only:
        layers = [n for n in layers if n.startswith(tuple(args.only))]
    sparsities = [0.6, 0.9, 0.95] if args.quick else [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
    batches = [1] if args.quick else [1, 16]
    cases = [(name, batch, sparsities) for name in layers for batch in batches]
    rows = [] if args.replot else run_sweep(cpu_configs(args), cases, measure)
    path, rows = save_rows("sparse_conv", rows, ("layer", "sparsity", "batch", "device",
                                                 "threads"), args.append or args.replot)
    print(markdown_table(rows, ["layer", "device", "threads", "batch", "sparsity", "dense_ms",
                                "sparse_ms", "speedup"]))
    print(summary(rows))
    print(f"wrote {path}")
    if args.plot:
        plot(rows)


if __name__ == "__main__":
    main()
