"""Direct sparse conv2d vs torch dense conv2d (PyTorch defaults) over real network layers.

python -m benchmarks.sparse_conv [--quick] [--plot]
Layers: the 3x3 and 1x1 convs of ResNet-50, VGG-16 and AlexNet conv2-5; sparsity 50-98%; batch
1 and 16; CPU at 1 and 2 threads (and CUDA vs cuDNN defaults when a GPU is present).
"""

import argparse
from pathlib import Path

import torch

from benchmarks.common import markdown_table, median_seconds, write_json
from compressor.nn import SparseConv2d

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
QUICK = ["resnet50.l1.3x3", "resnet50.l3.3x3", "resnet50.l3.1x1a", "vgg16.conv4_2"]


def pruned(cin, cout, k, s, p, sparsity, device):
    conv = torch.nn.Conv2d(cin, cout, k, s, p).to(device).eval()
    with torch.no_grad():
        flat = conv.weight.abs().flatten()
        keep = max(1, round(flat.numel() * (1 - sparsity)))
        threshold = flat.kthvalue(flat.numel() - keep + 1).values
        conv.weight.mul_(conv.weight.abs() >= threshold)
    return conv


def measure(name, sparsity, batch, device, threads) -> dict:
    cin, cout, k, s, p, hw = LAYERS[name]
    conv = pruned(cin, cout, k, s, p, sparsity, device)
    sparse = SparseConv2d.from_dense(conv).to(device)
    x = torch.randn(batch, cin, hw, hw, device=device)
    with torch.no_grad():
        dense_s = median_seconds(lambda: conv(x), device, repeat=7)
        sparse_s = median_seconds(lambda: sparse(x), device, repeat=7)
    return {"layer": name, "sparsity": sparsity, "batch": batch, "device": device,
            "threads": threads, "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3,
            "speedup": dense_s / sparse_s}


def plot(rows) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted({(r["layer"], r["batch"], r["device"], r["threads"]) for r in rows}):
        pts = [r for r in rows if (r["layer"], r["batch"], r["device"], r["threads"]) == key]
        ax.plot([r["sparsity"] for r in pts], [r["speedup"] for r in pts], marker="o",
                label=f"{key[0]} b{key[1]} {key[2]} t{key[3]}", linewidth=0.8)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set(xlabel="sparsity", ylabel="speedup vs dense", yscale="log")
    ax.legend(fontsize=5, ncol=2)
    Path("docs/img").mkdir(parents=True, exist_ok=True)
    fig.savefig("docs/img/sparse_conv.png", dpi=150, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    layers = QUICK if args.quick else list(LAYERS)
    sparsities = [0.6, 0.9, 0.95] if args.quick else [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
    batches = [1] if args.quick else [1, 16]
    configs = [("cpu", t) for t in ((2,) if args.quick else (1, 2))]
    if torch.cuda.is_available():
        configs.append(("cuda", torch.get_num_threads()))
    rows = []
    for device, threads in configs:
        torch.set_num_threads(threads)
        for name in layers:
            for batch in batches:
                for sparsity in sparsities:
                    rows.append(measure(name, sparsity, batch, device, threads))
                    print(rows[-1], flush=True)
    path = write_json("sparse_conv", {"rows": rows})
    print(markdown_table(rows, ["layer", "device", "threads", "batch", "sparsity", "dense_ms",
                                "sparse_ms", "speedup"]))
    print(f"wrote {path}")
    if args.plot:
        plot(rows)


if __name__ == "__main__":
    main()
