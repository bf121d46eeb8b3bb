"""pow2_linear (packed INQ codes) vs fp32 Linear and torch's int8 dynamic-quantized Linear (fbgemm),
plus a model-size table (fp32 vs packed 5/4/3/2-bit state_dict bytes).

    python -m benchmarks.pow2_matmul [--quick] [--plot] [--bits 4]
    python -m benchmarks.pow2_matmul --sizes 8192 --batches 1 --threads 2   # one case alone

CPU: sizes 1024^2..8192^2, batch 1/8/64, threads 1 and 2 (pinned with torch.set_num_threads).
CUDA (when present): pow2 vs cuBLAS fp32 at the same sizes. Ratios are against baselines timed in
the same run; each time is a median after warm-up.
"""

import argparse
import io
import warnings

import torch
from torch import nn

from benchmarks.common import markdown_table, median_seconds, write_json
from compressor.nn import Pow2Linear
from compressor.ops import pow2_linear

SIZES = [1024, 2048, 4096, 8192]
BATCHES = [1, 8, 64]


def int8_dynamic(linear: nn.Linear) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear},
                                                      dtype=torch.qint8)


def time_cpu(size: int, batch: int, bits: int, threads: int, repeat: int) -> dict:
    torch.set_num_threads(threads)
    linear = nn.Linear(size, size)
    packed = Pow2Linear.from_float(linear, bits)
    q8 = int8_dynamic(linear)
    x = torch.randn(batch, size)
    args = (packed.codes, packed.nonzero, packed.bias, size, bits, packed.n1)
    with torch.inference_mode():
        t_fp32 = median_seconds(lambda: linear(x), repeat=repeat)
        t_int8 = median_seconds(lambda: q8(x), repeat=repeat)
        t_pow2 = median_seconds(lambda: pow2_linear(x, *args), repeat=repeat)
    return {"device": "cpu", "size": size, "batch": batch, "bits": bits, "threads": threads,
            "fp32_ms": t_fp32 * 1e3, "int8_dynamic_ms": t_int8 * 1e3, "pow2_ms": t_pow2 * 1e3,
            "speedup_vs_fp32": t_fp32 / t_pow2, "speedup_vs_int8": t_int8 / t_pow2}


def time_cuda(size: int, batch: int, bits: int, repeat: int) -> dict:
    linear = nn.Linear(size, size).cuda()
    packed = Pow2Linear.from_float(linear, bits)
    x = torch.randn(batch, size, device="cuda")
    args = (packed.codes, packed.nonzero, packed.bias, size, bits, packed.n1)
    with torch.inference_mode():
        t_fp32 = median_seconds(lambda: linear(x), "cuda", repeat=repeat)
        t_pow2 = median_seconds(lambda: pow2_linear(x, *args), "cuda", repeat=repeat)
    return {"device": torch.cuda.get_device_name(), "size": size, "batch": batch, "bits": bits,
            "cublas_fp32_ms": t_fp32 * 1e3, "pow2_ms": t_pow2 * 1e3,
            "speedup_vs_fp32": t_fp32 / t_pow2}


def state_bytes(module: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def size_table(size: int = 4096) -> list[dict]:
    """On-disk bytes of one size x size Linear: fp32 vs packed codes at each bit width."""
    linear = nn.Linear(size, size)
    fp32 = state_bytes(linear)
    rows = [{"format": "fp32", "bytes": fp32, "ratio_vs_fp32": 1.0}]
    for bits in (5, 4, 3, 2):
        b = state_bytes(Pow2Linear.from_float(linear, bits))
        rows.append({"format": f"pow2 {bits}-bit", "bytes": b, "ratio_vs_fp32": fp32 / b})
    return rows


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for threads in sorted({r["threads"] for r in rows}):
        sel = [r for r in rows if r["threads"] == threads and r["batch"] == 1]
        ax.plot([r["size"] for r in sel], [r["speedup_vs_int8"] for r in sel], "o-",
                label=f"pow2 vs int8-dynamic, batch 1, {threads} thr")
        ax.plot([r["size"] for r in sel], [r["speedup_vs_fp32"] for r in sel], "s--",
                label=f"pow2 vs fp32, batch 1, {threads} thr")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N = K")
    ax.set_ylabel("speedup (x)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig("docs/img/pow2_matmul.png", dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024 and 4096, batch 1 and 8")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", help="N = K values (overrides --quick)")
    parser.add_argument("--batches", type=int, nargs="+", help="batch rows (overrides --quick)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--name", default="pow2_matmul", help="results/<name>.json")
    args = parser.parse_args(argv)
    sizes, batches = ([1024, 4096], [1, 8]) if args.quick else (SIZES, BATCHES)
    sizes, batches = args.sizes or sizes, args.batches or batches
    repeat = 5 if args.quick else 11
    rows = [time_cpu(s, b, args.bits, t, repeat) for t in args.threads for s in sizes
            for b in batches]
    cols = ["threads", "size", "batch", "fp32_ms", "int8_dynamic_ms", "pow2_ms",
            "speedup_vs_fp32", "speedup_vs_int8"]
    print(markdown_table(rows, cols))
    gpu = []
    if torch.cuda.is_available():
        gpu = [time_cuda(s, b, args.bits, repeat) for s in sizes for b in batches]
        print(markdown_table(gpu, ["device", "size", "batch", "cublas_fp32_ms", "pow2_ms",
                                   "speedup_vs_fp32"]))
    sizes_on_disk = size_table()
    print(markdown_table(sizes_on_disk, ["format", "bytes", "ratio_vs_fp32"]))
    path = write_json(args.name, {"bits": args.bits, "cpu": rows, "cuda": gpu,
                                      "model_size_4096": sizes_on_disk})
    print(f"wrote {path}")
    if args.plot:
        plot(rows)


if __name__ == "__main__":
    main()
