"""Sparse linear (CSR SpMV / SpMM) at transformer shapes vs dense fp32 F.linear, torch's int8
dynamic Linear and torch's own CSR path (weight.to_sparse_csr() @ x).

python -m benchmarks.sparse_linear [--quick] [--plot] [--threads 2 1] [--only 768->3072]
                                  [--append] [--replot]

Shapes (in_features -> out_features) of BERT-base / GPT-2-small Linears: 768->768, 768->3072,
3072->768; 1, 8, 32, 128, 512 tokens; unstructured sparsity 70 / 90 / 95%. All candidates are
timed interleaved (compressor.timing.paired_medians) in the same run. Target (issue 15): 90%,
768x3072, 128 tokens, 2 threads: >= 2x dense fp32.
"""

import warnings

import torch

from benchmarks.common import (
    cpu_configs,
    markdown_table,
    plot_lines,
    run_sweep,
    save_rows,
    sweep_parser,
)
from compressor.nn import SparseLinear
from compressor.timing import paired_medians

SHAPES = [(768, 768), (768, 3072), (3072, 768)]  # (in_features, out_features)
TOKENS = [1, 8, 32, 128, 512]
SPARSITIES = [0.7, 0.9, 0.95]


def _int8_dynamic(linear):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear),
                                                      {torch.nn.Linear}, dtype=torch.qint8)


def measure(k, n_out, sparsity, tokens, device, threads) -> list[dict]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n_out).to(device).eval()
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) >= sparsity)
    sparse = SparseLinear.from_dense(lin).to(device)
    csr, bias = lin.weight.detach().to_sparse_csr(), lin.bias.detach()
    x = torch.randn(tokens, k, device=device)
    fns = {"dense": lambda: lin(x), "ours": lambda: sparse(x),
           "torch_csr": (lambda: torch.mv(csr, x[0]) + bias) if tokens == 1
           else (lambda: torch.matmul(csr, x.t()).t() + bias)}
    if device == "cpu":
        q8 = _int8_dynamic(lin)
        fns["int8_dynamic"] = lambda: q8(x)
    with torch.inference_mode():
        paired = paired_medians(list(fns.values()), device, repeat=7, min_seconds=0.02)
    t = dict(zip(fns, paired.medians, strict=True))
    row = {"shape": f"{k}->{n_out}", "sparsity": sparsity, "tokens": tokens, "device": device,
           "threads": threads, **{f"{name}_ms": s * 1e3 for name, s in t.items()},
           "vs_dense": t["dense"] / t["ours"], "vs_torch_csr": t["torch_csr"] / t["ours"]}
    if "int8_dynamic" in t:
        row["vs_int8_dynamic"] = t["int8_dynamic"] / t["ours"]
    return [row]


def main() -> None:
    args = sweep_parser(__doc__, "shapes (in->out prefixes)").parse_args()
    shapes = [(768, 3072)] if args.quick else SHAPES
    if args.only:
        shapes = [s for s in shapes if f"{s[0]}->{s[1]}".startswith(tuple(args.only))]
    sparsities = [0.9] if args.quick else SPARSITIES
    tokens = [1, 128] if args.quick else TOKENS
    cases = [(k, n, sp, t) for k, n in shapes for t in tokens for sp in sparsities]
    rows = [] if args.replot else run_sweep(cpu_configs(args), cases, measure)
    path, rows = save_rows("sparse_linear", rows, ("shape", "sparsity", "tokens", "device",
                                                   "threads"), args.append or args.replot)
    print(markdown_table(rows, ["shape", "device", "threads", "tokens", "sparsity", "dense_ms",
                                "int8_dynamic_ms", "torch_csr_ms", "ours_ms", "vs_dense",
                                "vs_int8_dynamic", "vs_torch_csr"]))
    print(f"wrote {path}")
    if args.plot:
        plot_lines(rows, ("shape", "tokens", "device", "threads"), "vs_dense",
                   "docs/img/sparse_linear.png", "speedup vs dense F.linear", log=True)


if __name__ == "__main__":
    main()
