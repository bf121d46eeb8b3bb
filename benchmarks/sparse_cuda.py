"""GPU micro-benchmark: CUDA direct sparse conv2d / sparse linear vs cuDNN / cuBLAS / torch CSR.

    python -m benchmarks.sparse_cuda [--quick] [--plot]

Times the raw ops (torch.ops.compressor.*, no Python wrapper) against F.conv2d with PyTorch's
default cuDNN settings (TF32 allowed, benchmark mode off) and F.linear / torch CSR, for the 3x3
layers of ResNet-50 and VGG-16 at 50-98% unstructured sparsity, batch 1 and 16. Medians after
warm-up, each sample synchronised (benchmarks.common.median_seconds). Writes
benchmarks/results/sparse_cuda.json; about 1-2 minutes on an H100.
"""

import argparse
import sys
from functools import partial

import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table, median_seconds, write_json

# (network, layer, channels, spatial size): 3x3, stride 1, padding 1, Cin == Cout
CONV_LAYERS = [
    ("resnet50", "layer1", 64, 56),
    ("resnet50", "layer2", 128, 28),
    ("resnet50", "layer3", 256, 14),
    ("resnet50", "layer4", 512, 7),
    ("vgg16", "conv3", 256, 56),
    ("vgg16", "conv4", 512, 28),
    ("vgg16", "conv5", 512, 14),
]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
BATCHES = [1, 16]
LINEAR = (4096, 4096)


def timed(fn) -> float:
    return median_seconds(fn, "cuda", warmup=5, repeat=11, min_seconds=0.04)


def pruned(shape, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    weight = torch.randn(shape, generator=gen, device="cuda")
    return weight * (torch.rand(shape, generator=gen, device="cuda") >= sparsity)


def conv_rows(net, layer, channels, size, batch, sparsities, gen) -> list[dict]:
    from compressor.formats.csr import csr_from_dense

    x = torch.randn(batch, channels, size, size, device="cuda", generator=gen)
    dense_w = torch.randn(channels, channels, 3, 3, device="cuda", generator=gen)
    dense_s = timed(lambda: F.conv2d(x, dense_w, None, 1, 1))
    rows = []
    for sparsity in sparsities:
        weight = pruned(dense_w.shape, sparsity, gen)
        values, col, row_ptr = csr_from_dense(weight)
        args = (x, values, col, row_ptr, None, (3, 3), (1, 1), (1, 1), (1, 1), 1)
        sparse_s = timed(partial(torch.ops.compressor.sparse_conv2d, *args))
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            err = (torch.ops.compressor.sparse_conv2d(*args) - F.conv2d(x, weight, None, 1, 1))
        rows.append(dict(op="conv3x3", net=net, layer=layer, shape=f"{channels}x{size}x{size}",
                         batch=batch, sparsity=sparsity, dense_us=dense_s * 1e6,
                         sparse_us=sparse_s * 1e6, speedup=dense_s / sparse_s,
                         max_abs_err=err.abs().max().item()))
    return rows


def linear_rows(batch, sparsities, gen) -> list[dict]:
    from compressor.formats.csr import csr_from_dense

    out_f, in_f = LINEAR
    x = torch.randn(batch, in_f, device="cuda", generator=gen)
    dense_w = torch.randn(out_f, in_f, device="cuda", generator=gen)
    dense_s = timed(lambda: F.linear(x, dense_w))
    rows = []
    for sparsity in sparsities:
        weight = pruned(dense_w.shape, sparsity, gen)
        values, col, row_ptr = csr_from_dense(weight)
        csr = weight.to_sparse_csr()
        baseline = partial(torch.mv, csr, x[0]) if batch == 1 else partial(torch.mm, csr, x.t())
        torch_csr_s = timed(baseline)
        sparse_s = timed(partial(torch.ops.compressor.sparse_linear, x, values, col, row_ptr, None))
        rows.append(dict(op="linear", net="-", layer="fc", shape=f"{out_f}x{in_f}", batch=batch,
                         sparsity=sparsity, dense_us=dense_s * 1e6, sparse_us=sparse_s * 1e6,
                         torch_csr_us=torch_csr_s * 1e6, speedup=dense_s / sparse_s,
                         speedup_vs_torch_csr=torch_csr_s / sparse_s))
    return rows


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import RESULTS

    fig, axes = plt.subplots(1, len(BATCHES), figsize=(6 * len(BATCHES), 4), squeeze=False)
    layers = sorted({(r["net"], r["layer"], r["shape"]) for r in rows if r["op"] != "linear"})
    for ax, batch in zip(axes[0], BATCHES, strict=True):
        for key in layers:
            pts = [r for r in rows if (r["net"], r["layer"], r["shape"]) == key
                   and r["batch"] == batch]
            ax.plot([r["sparsity"] for r in pts], [r["speedup"] for r in pts], "o-",
                    label=" ".join(key))
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(title=f"{torch.cuda.get_device_name()}, batch {batch}", xlabel="sparsity",
               ylabel="speedup vs cuDNN", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS.parent.parent / "docs" / "img" / "sparse_cuda.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 layers, 3 sparsities")
    parser.add_argument("--plot", action="store_true", help="write docs/img/sparse_cuda.png")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.sparse_cuda: needs a CUDA device, and none is available here",
              file=sys.stderr)
        return 1
    from compressor.ops._dispatch import has_kernel

    missing = [op for op in ("sparse_conv2d", "sparse_linear") if not has_kernel(op, "cuda")]
    if missing:
        print(f"benchmarks.sparse_cuda: no CUDA kernel for {missing}; build the extension with a "
              "CUDA torch (python setup.py build_ext --inplace)", file=sys.stderr)
        return 1
    layers = CONV_LAYERS[2:5] if args.quick else CONV_LAYERS
    sparsities = [0.5, 0.9, 0.95] if args.quick else SPARSITIES
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for batch in BATCHES:
        for layer in layers:
            rows += conv_rows(*layer, batch, sparsities, gen)
        rows += linear_rows(batch, sparsities, gen)
    columns = ["op", "net", "layer", "shape", "batch", "sparsity", "dense_us", "sparse_us",
               "speedup", "torch_csr_us", "speedup_vs_torch_csr"]
    print(markdown_table(rows, columns))
    settings = dict(cudnn_benchmark=torch.backends.cudnn.benchmark,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    path = write_json("sparse_cuda", {"torch_defaults": settings, "rows": rows})
    print(f"results: {path}")
    if args.plot:
        plot(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
