"""Power-of-two Linear (INQ 4-bit codes) at transformer shapes vs fp32 Linear and torch's int8
dynamic-quantized Linear (fbgemm), plus a model-size table (fp32 vs packed state_dict bytes).

    python -m benchmarks.pow2_matmul [--quick] [--plot] [--threads 2 1] [--tokens 1 128]

Shapes (in_features -> out_features) of BERT-base / GPT-2-small Linears: 768->768, 768->3072,
3072->768, at 1, 8, 32, 128 and 512 tokens. Candidates, all through their nn.Modules, timed
interleaved (compressor.timing.paired_medians) in one run:
  fp32          nn.Linear (MKL)
  int8_dynamic  torch.ao.quantization.quantize_dynamic (fbgemm; int8 weights and activations)
  pow2_codes    Pow2Linear mode "codes": the fp32 kernel on the codes (exact)
  pow2_int8     Pow2Linear mode "codes_int8": int8 activations x the exact codes (VNNI)
("decoded" mode is nn.Linear's kernel on a decoded buffer: the fp32 column.) Targets (issue 15):
4-bit, 768x3072 at 128 tokens, 2 threads >= 1x int8 dynamic; batch 1 >= 1x int8 dynamic.
"""

import argparse
import io
import warnings

import torch
from torch import nn

from benchmarks.common import markdown_table, write_json
from compressor.nn import Pow2Linear
from compressor.timing import paired_medians

SHAPES = [(768, 768), (768, 3072), (3072, 768)]  # (in_features, out_features)
TOKENS = [1, 8, 32, 128, 512]
CANDIDATES = ["fp32", "int8_dynamic", "pow2_codes", "pow2_int8"]


def int8_dynamic(linear: nn.Linear) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear},
                                                      dtype=torch.qint8)


def pow2(linear: nn.Linear, bits: int, mode: str) -> Pow2Linear:
    module = Pow2Linear.from_float(linear, bits)
    module.mode = mode
    return module


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def measure(k: int, n: int, tokens: int, bits: int, threads: int, repeat: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    linear = nn.Linear(k, n).eval()
    modules = [linear, int8_dynamic(linear), pow2(linear, bits, "codes"),
               pow2(linear, bits, "codes_int8")]
    x = torch.randn(tokens, k)
    with torch.inference_mode():
        # Error from rounding the activations: int8 dynamic against the fp32 Linear, pow2_int8
        # against the exact product with the same power-of-two weights (pow2_codes).
        exact, exact_pow2 = linear(x), modules[2](x)
        errors = [0.0, _rel(modules[1](x), exact), 0.0, _rel(modules[3](x), exact_pow2)]
        paired = paired_medians([lambda m=m: m(x) for m in modules], repeat=repeat,
                                min_seconds=0.02)
    row = {"shape": f"{k}->{n}", "tokens": tokens, "bits": bits, "threads": threads}
    for name, t, err, spread in zip(CANDIDATES, paired.medians, errors, paired.spreads,
                                    strict=True):
        row[f"{name}_ms"], row[f"{name}_act_err"], row[f"{name}_spread"] = t * 1e3, err, spread
    for name in ("pow2_codes", "pow2_int8"):
        row[f"{name}_vs_fp32"] = row["fp32_ms"] / row[f"{name}_ms"]
        row[f"{name}_vs_int8"] = row["int8_dynamic_ms"] / row[f"{name}_ms"]
    print(row, flush=True)
    return row


def state_bytes(module: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def size_table(k: int = 768, n: int = 3072) -> list[dict]:
    """On-disk bytes of one k -> n Linear: fp32 vs packed codes at each bit width."""
    linear = nn.Linear(k, n)
    fp32 = state_bytes(linear)
    rows = [{"format": "fp32", "bytes": fp32, "ratio_vs_fp32": 1.0}]
    for bits in (5, 4, 3, 2):
        b = state_bytes(Pow2Linear.from_float(linear, bits))
        rows.append({"format": f"pow2 {bits}-bit", "bytes": b, "ratio_vs_fp32": fp32 / b})
    return rows


def plot(rows: list[dict], path: str = "docs/img/pow2_matmul.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = max(r["threads"] for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("pow2_int8", "pow2_codes"), strict=True):
        for shape in dict.fromkeys(r["shape"] for r in rows):
            sel = [r for r in rows if r["shape"] == shape and r["threads"] == threads]
            ax.plot([r["tokens"] for r in sel], [r[f"{name}_vs_int8"] for r in sel], "o-",
                    label=f"{shape} vs int8 dynamic")
            ax.plot([r["tokens"] for r in sel], [r[f"{name}_vs_fp32"] for r in sel], "s--",
                    label=f"{shape} vs fp32")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set(xscale="log", xlabel="tokens (rows)", title=f"{name}, {threads} threads")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("speedup (x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="768->3072 at 1 and 128 tokens")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs="+", help="rows per call (overrides --quick)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--name", default="pow2_matmul", help="results/<name>.json")
    args = parser.parse_args(argv)
    shapes, tokens = ([(768, 3072)], [1, 128]) if args.quick else (SHAPES, TOKENS)
    tokens = args.tokens or tokens
    rows = [measure(k, n, t, args.bits, th, 5 if args.quick else 9) for th in args.threads
            for k, n in shapes for t in tokens]
    cols = ["threads", "shape", "tokens", "fp32_ms", "int8_dynamic_ms", "pow2_codes_ms",
            "pow2_int8_ms", "pow2_int8_vs_int8", "pow2_int8_vs_fp32", "pow2_codes_vs_fp32",
            "pow2_int8_act_err", "int8_dynamic_act_err"]
    print(markdown_table(rows, cols))
    sizes_on_disk = size_table()
    print(markdown_table(sizes_on_disk, ["format", "bytes", "ratio_vs_fp32"]))
    path = write_json(args.name, {"bits": args.bits, "cpu": rows,
                                  "model_size_768x3072": sizes_on_disk})
    print(f"wrote {path}")
    if args.plot:
        plot(rows)


if __name__ == "__main__":
    main()
