"""`compressor lottery dense.pt --rounds 5 --out ticket.pt`: iterative magnitude pruning with
rewinding (Frankle & Carbin) on the architecture and data of a model file, with the reinit and
random-mask controls; writes the last round's ticket and a report with plots.

Runs are resumable (rerun the same command after an interruption) and idempotent (a finished run
only reports again). Under torchrun the training is data-parallel.
"""

from pathlib import Path

from compressor.commands.common import (
    add_budgets,
    add_data_override,
    add_input,
    add_output,
    add_threads,
    check_out,
    check_patterns,
    read_budgets,
    read_input,
    reject_momentum,
    set_threads,
    write_output,
)
from compressor.config import add_flags, from_args
from compressor.errors import CompressorError
from compressor.io import check_writable
from compressor.lottery import LotteryConfig, rates_for_rounds
from compressor.lottery import distributed as dist
from compressor.lottery.report import write_report
from compressor.pipeline.stages import lottery_stage
from compressor.pruning import prunable_parameters


def add_arguments(parser):
    add_input(parser, "model file whose architecture and data are used (its weights are not)")
    add_flags(parser, LotteryConfig, exclude=("dataset", "model", "num_samples"))
    parser.add_argument("--root", default="runs/lottery", help="run directories go here")
    add_budgets(parser, "final sparsities (spread over the rounds)")
    add_data_override(parser)
    add_output(parser)
    add_threads(parser)


def _config(args, **base) -> LotteryConfig:
    if args.strategy == "global" and args.output_rate is None:
        base["output_rate"] = None  # the layerwise default has no meaning for one threshold
    cfg = from_args(LotteryConfig, args, base=base)
    reject_momentum(args, cfg.optimizer)
    budgets = read_budgets(args, "sparsity")
    if budgets:
        if cfg.strategy != "layerwise" or cfg.rounds < 1:
            raise CompressorError("--budgets needs --strategy layerwise and --rounds >= 1 "
                                  "(each layer's final sparsity is spread over the rounds)")
        cfg = cfg.replace(layer_rates=rates_for_rounds(budgets, cfg.rounds))
    return cfg


def run(args) -> int:
    _config(args)  # every value checked before any work
    check_out(args)
    check_writable(args.root, "--root", directory=True)
    set_threads(args)
    model, info, data, data_cfg = read_input(args)
    cfg = _config(args, dataset=data_cfg.source(), model=info.factory)
    check_patterns(model, cfg.exclude, "--exclude", prunable_parameters(model))
    run_dir = Path(args.root) / cfg.run_name()
    if dist.is_main():
        print(f"run directory: {run_dir}")
    ticket, metrics = lottery_stage(info, data, cfg, run_dir, progress=True)
    if dist.is_main():
        title = (f"{cfg.model} on {cfg.dataset}, {cfg.strategy} {cfg.rate:g}/round, rewind to "
                 f"step {cfg.rewind_step}")
        report = write_report([run_dir], run_dir / "report", title=title)
        print(f"ticket after {cfg.rounds} rounds: test accuracy {metrics['test_acc']:.4f}; "
              f"report: {report}")
        write_output(args.out, ticket, info, data_cfg, test_acc=metrics["test_acc"],
                     stage="lottery")
    dist.teardown()
    return 0
