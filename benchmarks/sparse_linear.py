"""Sparse linear vs dense F.linear and vs torch's CSR path (weight.to_sparse_csr() + mv / matmul).

python -m benchmarks.sparse_linear [--quick] [--plot] [--threads 1 2] [--only 4096x4096] [--append]
                                  [--replot]
"""

import torch

from benchmarks.common import (
    cpu_configs,
    markdown_table,
    median_seconds,
    plot_lines,
    run_sweep,
    save_rows,
    sweep_parser,
)
from compressor.nn import SparseLinear


def measure(n_out, k, sparsity, batch, device, threads) -> list[dict]:
    lin = torch.nn.Linear(k, n_out).to(device).eval()
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) >= sparsity)
    sparse = SparseLinear.from_dense(lin).to(device)
    csr = lin.weight.detach().to_sparse_csr()
    x = torch.randn(batch, k, device=device)
    with torch.no_grad():
        dense_s = median_seconds(lambda: lin(x), device, repeat=9)
        ours_s = median_seconds(lambda: sparse(x), device, repeat=9)
        if batch == 1:
            v = x[0]
            csr_s = median_seconds(lambda: torch.mv(csr, v) + lin.bias, device, repeat=9)
        else:
            csr_s = median_seconds(lambda: torch.matmul(csr, x.t()).t() + lin.bias, device,
                                   repeat=9)
    return [{"shape": f"{n_out}x{k}", "sparsity": sparsity, "batch": batch, "device": device,
             "threads": threads, "dense_ms": dense_s * 1e3, "torch_csr_ms": csr_s * 1e3,
             "ours_ms": ours_s * 1e3, "vs_dense": dense_s / ours_s,
             "vs_torch_csr": csr_s / ours_s}]


def main() -> None:
    args = sweep_parser(__doc__, "shapes (NxK prefixes)").parse_args()
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (1024, 4096), (4096, 1024)]
    if args.only:
        shapes = [s for s in shapes if f"{s[0]}x{s[1]}".startswith(tuple(args.only))]
    sparsities = [0.9] if args.quick else [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    batches = [1] if args.quick else [1, 8, 64]
    cases = [(n, k, sp, b) for n, k in shapes for b in batches for sp in sparsities]
    rows = [] if args.replot else run_sweep(cpu_configs(args), cases, measure)
    path, rows = save_rows("sparse_linear", rows, ("shape", "sparsity", "batch", "device",
                                                   "threads"), args.append or args.replot)
    print(markdown_table(rows, ["shape", "device", "threads", "batch", "sparsity", "dense_ms",
                                "torch_csr_ms", "ours_ms", "vs_dense", "vs_torch_csr"]))
    print(f"wrote {path}")
    if args.plot:
        plot_lines(rows, ("shape", "batch", "device", "threads"), "vs_dense",
                   "docs/img/sparse_linear.png", "speedup vs dense F.linear")


if __name__ == "__main__":
    main()
