"""`make bench`: every CPU benchmark in turn, JSON under benchmarks/results/, plots in docs/img/.

GPU-only scripts (sparse_cuda, pow2_cuda) run too when a CUDA device is present.
Pass --quick to run each script's small subset.
"""

import subprocess
import sys

import torch

CPU = ["sparse_conv", "sparse_linear", "pow2_matmul", "onlstm", "export_size", "inq_accuracy",
       "lottery_mnist1d"]
GPU = ["sparse_cuda", "pow2_cuda"]
NO_PLOT = {"inq_accuracy"}  # writes a table only


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    names = CPU + (GPU if torch.cuda.is_available() else [])
    failed = []
    for name in names:
        print(f"== benchmarks.{name}", flush=True)
        plot = [] if name in NO_PLOT else ["--plot"]
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *plot, *extra]
        if subprocess.run(cmd).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
