"""CUDA pow2_linear (packed power-of-two codes) vs cuBLAS through F.linear, fp32 and bf16.

    python -m benchmarks.pow2_cuda [--quick] [--plot]

Square layers 1024^2..8192^2 at batch 1, 8 and 64. Every call is timed eagerly (what a model pays,
launch overhead included) and, where capture works, replayed from a CUDA graph (the kernel alone).
Medians after warm-up with synchronisation (benchmarks.common.median_seconds); ratios are against
fp32 F.linear timed in the same run. Each size is first checked against the PyTorch twin.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import markdown_table, median_seconds, write_json

SIZES = [1024, 2048, 4096, 8192]
BATCHES = [1, 8, 64]
COLUMNS = ["size", "batch", "fp32_us", "bf16_us", "pow2_4bit_us", "pow2_5bit_us",
           "fp32_graph_us", "pow2_4bit_graph_us", "speedup_4bit_vs_fp32",
           "speedup_4bit_graph_vs_fp32_graph", "speedup_5bit_vs_fp32", "codes_GBps_4bit"]


def require_gpu() -> None:
    if not torch.cuda.is_available():
        sys.exit("benchmarks.pow2_cuda: no CUDA device on this machine; run it on a GPU host")
    from compressor.ops._dispatch import has_kernel

    if not has_kernel("pow2_linear", "cuda"):
        from compressor import _extension

        sys.exit("benchmarks.pow2_cuda: compressor::pow2_linear has no CUDA kernel "
                 f"({_extension.error() or 'build with a CUDA torch: python setup.py build_ext'})")


def random_codes(n: int, k: int, bits: int, gen: torch.Generator):
    """Random packed codes of every nibble value (contract in csrc/ops.cpp)."""
    k_pad = (k + 7) // 8 * 8
    codes = torch.randint(0, 256, (n, k_pad // 2), generator=gen, dtype=torch.uint8)
    nonzero = (torch.randint(0, 256, (n, k_pad // 8), generator=gen, dtype=torch.uint8)
               if bits == 5 else torch.empty(0, dtype=torch.uint8))
    return codes.cuda(), nonzero.cuda()


def graph_seconds(fn) -> float | None:
    """Median time of fn replayed from a CUDA graph (no launch overhead); None if capture fails."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                fn()
    except RuntimeError as err:
        print(f"  (CUDA graph capture failed: {err}; eager timing only)")
        return None
    return median_seconds(graph.replay, device="cuda") / 10


def check_against_twin(x, codes, nonzero, bias, k, bits) -> float:
    from compressor.ops import reference

    got = torch.ops.compressor.pow2_linear(x, codes, nonzero, bias, k, bits, 0)
    want = reference.pow2_linear(x.double(), codes, nonzero, bias.double(), k, bits, 0)
    err = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    if err > 1e-4:
        sys.exit(f"benchmarks.pow2_cuda: pow2_linear disagrees with its twin at {x.shape[0]}x{k}: "
                 f"relative error {err:.2e}")
    return err


def bench_batch(size: int, batch: int, layer: dict, gen: torch.Generator) -> dict:
    x = torch.randn(batch, size, generator=gen).cuda()
    x_bf16, weight, weight_bf16 = x.bfloat16(), layer["weight"], layer["weight_bf16"]
    bias, packed = layer["bias"], layer["packed"]
    check = {bits: check_against_twin(x, *packed[bits], bias, size, bits) for bits in (4, 5)}

    def ours(bits):
        return lambda: torch.ops.compressor.pow2_linear(x, *packed[bits], bias, size, bits, 0)

    def fp32():
        return F.linear(x, weight, bias)

    t = {"fp32": median_seconds(fp32, device="cuda"),
         "bf16": median_seconds(lambda: F.linear(x_bf16, weight_bf16), device="cuda"),
         "4": median_seconds(ours(4), device="cuda"),
         "5": median_seconds(ours(5), device="cuda")}
    g32, g4 = graph_seconds(fp32), graph_seconds(ours(4))
    print(f"  {size}^2 batch {batch}: fp32 {t['fp32'] * 1e6:.1f} us, "
          f"pow2 4-bit {t['4'] * 1e6:.1f} us ({t['fp32'] / t['4']:.2f}x)", flush=True)
    return {
        "size": size, "batch": batch,
        "fp32_us": t["fp32"] * 1e6, "bf16_us": t["bf16"] * 1e6,
        "pow2_4bit_us": t["4"] * 1e6, "pow2_5bit_us": t["5"] * 1e6,
        "fp32_graph_us": None if g32 is None else g32 * 1e6,
        "pow2_4bit_graph_us": None if g4 is None else g4 * 1e6,
        "speedup_4bit_vs_fp32": t["fp32"] / t["4"],
        "speedup_4bit_graph_vs_fp32_graph": None if None in (g32, g4) else g32 / g4,
        "speedup_5bit_vs_fp32": t["fp32"] / t["5"],
        "codes_GBps_4bit": packed[4][0].numel() / (g4 if g4 is not None else t["4"]) / 1e9,
        "max_rel_err_vs_twin": max(check.values()),
    }


def bench_size(size: int, batches: list[int], gen: torch.Generator) -> list[dict]:
    weight = torch.randn(size, size, generator=gen).cuda() / size ** 0.5
    layer = {"weight": weight, "weight_bf16": weight.bfloat16(),
             "bias": torch.randn(size, generator=gen).cuda(),
             "packed": {bits: random_codes(size, size, bits, gen) for bits in (4, 5)}}
    return [bench_batch(size, batch, layer, gen) for batch in batches]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for batch in sorted({r["batch"] for r in rows}):
        sel = [r for r in rows if r["batch"] == batch]
        ax.plot([r["size"] for r in sel], [r["speedup_4bit_vs_fp32"] for r in sel], marker="o",
                label=f"batch {batch}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="layer size (N = K)", ylabel="speedup vs cuBLAS fp32",
           title=f"pow2_linear 4-bit on {torch.cuda.get_device_name()}")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"plot: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024^2 and 8192^2 at batch 1 only")
    parser.add_argument("--plot", action="store_true", help="draw docs/img/pow2_cuda.png")
    args = parser.parse_args(argv)
    require_gpu()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (torch's default too)
    sizes, batches = ([1024, 8192], [1]) if args.quick else (SIZES, BATCHES)
    gen = torch.Generator().manual_seed(0)
    print(f"pow2_linear vs F.linear on {torch.cuda.get_device_name()}")
    rows = [row for size in sizes for row in bench_size(size, batches, gen)]
    print(markdown_table(rows, COLUMNS))
    path = write_json("pow2_cuda", {"sizes": sizes, "batches": batches, "rows": rows,
                                    "timing": "median_seconds after warm-up; graph = CUDA graph "
                                              "replay of 10 calls / 10"})
    print(f"json: {path}")
    if args.plot:
        plot(rows, Path(__file__).resolve().parents[1] / "docs" / "img" / "pow2_cuda.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
