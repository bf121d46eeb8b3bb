"""Sparse linear vs dense F.linear and vs torch's CSR path (weight.to_sparse_csr() + mv / matmul).

python -m benchmarks.sparse_linear [--quick] [--plot]
"""

import argparse
from pathlib import Path

import torch

from benchmarks.common import markdown_table, median_seconds, write_json
from compressor.nn import SparseLinear


def measure(n_out, k, sparsity, batch, device, threads) -> dict:
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
    return {"shape": f"{n_out}x{k}", "sparsity": sparsity, "batch": batch, "device": device,
            "threads": threads, "dense_ms": dense_s * 1e3, "torch_csr_ms": csr_s * 1e3,
            "ours_ms": ours_s * 1e3, "vs_dense": dense_s / ours_s, "vs_torch_csr": csr_s / ours_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (1024, 4096), (4096, 1024)]
    sparsities = [0.9] if args.quick else [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
    batches = [1] if args.quick else [1, 8, 64]
    configs = [("cpu", t) for t in ((2,) if args.quick else (1, 2))]
    if torch.cuda.is_available():
        configs.append(("cuda", torch.get_num_threads()))
    rows = []
    for device, threads in configs:
        torch.set_num_threads(threads)
        for n_out, k in shapes:
            for batch in batches:
                for sparsity in sparsities:
                    rows.append(measure(n_out, k, sparsity, batch, device, threads))
                    print(rows[-1], flush=True)
    path = write_json("sparse_linear", {"rows": rows})
    print(markdown_table(rows, ["shape", "device", "threads", "batch", "sparsity", "dense_ms",
                                "torch_csr_ms", "ours_ms", "vs_dense", "vs_torch_csr"]))
    print(f"wrote {path}")
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        for key in sorted({(r["shape"], r["batch"], r["device"], r["threads"]) for r in rows}):
            pts = [r for r in rows if (r["shape"], r["batch"], r["device"], r["threads"]) == key]
            ax.plot([r["sparsity"] for r in pts], [r["vs_dense"] for r in pts], marker="o",
                    label=" ".join(map(str, key)))
        ax.set(xlabel="sparsity", ylabel="speedup vs dense")
        ax.legend(fontsize=6)
        Path("docs/img").mkdir(parents=True, exist_ok=True)
        fig.savefig("docs/img/sparse_linear.png", dpi=150, bbox_inches="tight")


if __name__ == "__main__":
    main()
