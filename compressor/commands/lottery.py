"""`compressor lottery`: find lottery tickets by iterative magnitude pruning with rewinding.

Runs are resumable (rerun the same command after an interruption) and idempotent (a finished run
only reports again). Under torchrun the training is data-parallel:
    torchrun --nproc_per_node 2 -m compressor.cli lottery --dataset mnist1d
"""

from pathlib import Path

import torch

from compressor.lottery import LotteryConfig, run_lottery
from compressor.lottery import distributed as dist
from compressor.lottery.config import CONTROLS
from compressor.lottery.report import write_report
from compressor.models import MODELS


def _rate_or_none(text: str):
    return None if text.lower() == "none" else float(text)


def add_arguments(parser):
    d = LotteryConfig()
    parser.add_argument("--dataset", default=d.dataset, help="digits, mnist1d or an .npz path")
    parser.add_argument("--model", default=d.model, choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=d.rounds, help="pruning rounds")
    parser.add_argument("--rate", type=float, default=d.rate,
                        help="fraction of surviving weights pruned per round")
    parser.add_argument("--output-rate", type=_rate_or_none, default=d.output_rate,
                        help="the output layer's rate ('none': same as --rate)")
    parser.add_argument("--strategy", default=d.strategy, choices=["layerwise", "global"])
    parser.add_argument("--rewind-step", type=int, default=d.rewind_step,
                        help="rewind survivors to their value at this step (0: the init θ0)")
    parser.add_argument("--steps", type=int, default=d.steps, help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--optimizer", default=d.optimizer, choices=["adam", "sgd"])
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--momentum", type=float, default=d.momentum, help="SGD only")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--seeds", type=int, nargs="+", default=[d.seed])
    parser.add_argument("--eval-every", type=int, default=d.eval_every)
    parser.add_argument("--controls", nargs="*", default=list(d.controls), choices=CONTROLS)
    parser.add_argument("--exclude", nargs="*", default=[],
                        help="fnmatch patterns of weights never pruned, e.g. '0.weight'")
    parser.add_argument("--num-samples", type=int, default=d.num_samples, help="MNIST-1D size")
    parser.add_argument("--root", default="runs/lottery", help="run directories go here")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between mid-round checkpoints (default: --eval-every)")
    parser.add_argument("--report", default=None,
                        help="report directory (default: <root>/report-<first run name>)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _config(args, seed: int) -> LotteryConfig:
    return LotteryConfig(
        dataset=args.dataset, model=args.model, rounds=args.rounds, rate=args.rate,
        output_rate=args.output_rate, strategy=args.strategy, rewind_step=args.rewind_step,
        steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, seed=seed,
        eval_every=args.eval_every, controls=tuple(args.controls), exclude=tuple(args.exclude),
        num_samples=args.num_samples)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [_config(args, seed) for seed in args.seeds]  # validate all before any training
    run_dirs = []
    for cfg in configs:
        if dist.is_main():
            print(f"seed {cfg.seed}: {Path(args.root) / cfg.run_name()}")
        run_lottery(cfg, root=args.root, checkpoint_every=args.checkpoint_every)
        run_dirs.append(Path(args.root) / cfg.run_name())
    if dist.is_main():
        out = Path(args.report or Path(args.root) / f"report-{configs[0].run_name()}")
        title = (f"{args.model} on {args.dataset}, {args.strategy} {args.rate:g}/round, "
                 f"rewind to step {args.rewind_step}")
        path = write_report(run_dirs, out, title=title)
        print(path.read_text())
        print(f"report: {path}")
    dist.teardown()
    return 0
