"""The lottery-ticket experiment of issue 3 as one command.

MNIST-1D (10,000 generated samples), LeNet-300-100, Adam 1.2e-3, batch 60, layerwise pruning of
20% per round (output layer 10%), rewind to θ0, reinit and random-mask controls, 3 seeds run in
parallel (one thread each). Resumable: rerunning continues or, when finished, only re-reports.

    python -m benchmarks.lottery_mnist1d [--quick] [--plot]

Checks the issue's targets at the first round with <= 21% of weights remaining: the ticket's mean
early-stop accuracy within 0.5 pt of dense, and the reinit control >= 3 pt below the ticket.
"""

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch

from benchmarks.common import write_json
from compressor.lottery import LotteryConfig, run_lottery
from compressor.lottery.report import aggregate, load_records, markdown, plot

ROOT = Path(__file__).resolve().parents[1]


def _run_seed(cfg: LotteryConfig, root: str) -> str:
    torch.set_num_threads(1)
    run_lottery(cfg, root=root, progress=False)
    return str(Path(root) / cfg.run_name())


def targets(rows: list[dict], threshold: float = 0.21) -> dict:
    """Compare at the densest round at or below `threshold` weights remaining."""
    dense = next(r for r in rows if r["round"] == 0)
    sparse = [r for r in rows if r["variant"] == "ticket" and r["weights_remaining"] <= threshold]
    if not sparse:
        return {"reached": False}
    ticket = max(sparse, key=lambda r: r["weights_remaining"])
    reinit = next((r for r in rows if r["variant"] == "reinit"
                   and r["round"] == ticket["round"]), None)
    out = {"round": ticket["round"], "weights_remaining": ticket["weights_remaining"],
           "dense_acc": dense["best_acc"], "ticket_acc": ticket["best_acc"],
           "ticket_minus_dense_pt": 100 * (ticket["best_acc"] - dense["best_acc"])}
    out["ticket_within_0.5pt"] = out["ticket_minus_dense_pt"] >= -0.5
    if reinit is not None:
        out["reinit_acc"] = reinit["best_acc"]
        out["ticket_minus_reinit_pt"] = 100 * (ticket["best_acc"] - reinit["best_acc"])
        out["reinit_3pt_lower"] = out["ticket_minus_reinit_pt"] >= 3.0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 300 steps (a smoke run)")
    parser.add_argument("--plot", action="store_true", help="write docs/img/lottery_mnist1d_*.png")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--root", default=str(ROOT / "runs" / "lottery_mnist1d"))
    args = parser.parse_args(argv)
    steps, rounds = (300, 3) if args.quick else (args.steps, args.rounds)
    configs = [LotteryConfig(dataset="mnist1d", model="lenet", rounds=rounds, rate=0.2,
                             output_rate=0.1, rewind_step=0, steps=steps, batch_size=60,
                             lr=1.2e-3, seed=seed, eval_every=100) for seed in args.seeds]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(len(configs)) as pool:
        run_dirs = pool.starmap(_run_seed, [(cfg, args.root) for cfg in configs])
    seconds = time.perf_counter() - start
    rows = aggregate([load_records(d) for d in run_dirs])
    result = targets(rows)
    print(markdown(rows))
    print(f"\ntargets: {result}\nwall time {seconds:.0f} s for {len(configs)} seeds "
          f"({len(configs)} processes, 1 thread each)")
    write_json("lottery_mnist1d" + ("_quick" if args.quick else ""),
               {"configs": [c.identity() | {"rounds": c.rounds} for c in configs],
                "rows": rows, "targets": result, "wall_seconds": seconds,
                "run_dirs": run_dirs})
    if args.plot:
        for path in plot(rows, ROOT / "docs" / "img" / "lottery_mnist1d",
                         "LeNet-300-100 on MNIST-1D, rewind to θ0"):
            print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
