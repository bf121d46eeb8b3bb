"""`compressor prune dense.pt --sparsity 0.8 --steps N --out pruned.pt`: one-shot, gradual (AGP)
or N:M pruning, then fine-tuning with the masks held (--steps are fine-tuning steps)."""

from compressor.commands.common import (
    add_data_override,
    add_input,
    add_output,
    add_threads,
    check_out,
    check_patterns,
    read_input,
    reject_momentum,
    reject_nm_ignored,
    reject_quantized,
    set_threads,
    write_output,
)
from compressor.config import add_flags, from_args
from compressor.pipeline.stages import accuracy, prune_stage
from compressor.pruning import PruneConfig, prunable_parameters
from compressor.train import TrainConfig

FINETUNE_STEPS = 200


def add_arguments(parser):
    add_input(parser)
    add_flags(parser, PruneConfig, group="pruning")
    add_flags(parser, TrainConfig, group="fine-tuning", defaults={"steps": FINETUNE_STEPS})
    add_data_override(parser)
    add_output(parser)
    add_threads(parser)


def run(args) -> int:
    prune_cfg = from_args(PruneConfig, args)
    train_cfg = from_args(TrainConfig, args, base={"steps": FINETUNE_STEPS})
    reject_nm_ignored(args, prune_cfg.nm)
    reject_momentum(args, train_cfg.optimizer)
    check_out(args)
    set_threads(args)
    model, info, data, data_cfg = read_input(args)
    reject_quantized(model, args.input, "prune")
    check_patterns(model, prune_cfg.exclude, "--exclude", prunable_parameters(model))
    before = accuracy(model, data)
    metrics = prune_stage(model, data, prune_cfg, train_cfg, progress=True)
    what = f"N:M {prune_cfg.nm}" if prune_cfg.nm else f"{prune_cfg.sparsity:.0%} {prune_cfg.scope}"
    print(f"pruned ({what}, {prune_cfg.schedule}) and fine-tuned {train_cfg.steps} steps: "
          f"test accuracy {before:.4f} -> {metrics['test_acc']:.4f}, "
          f"sparsity {metrics['sparsity']:.3f}")
    write_output(args.out, model, info, data_cfg, test_acc=metrics["test_acc"], stage="prune")
    return 0
