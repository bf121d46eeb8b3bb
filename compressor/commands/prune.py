"""`compressor prune dense.pt --sparsity 0.8 --steps N --out pruned.pt`: one-shot, gradual (AGP)
or N:M pruning, then fine-tuning with the masks held (--steps are fine-tuning steps).

`--structured --ratio 0.5 --criterion taylor --iterations 3 --finetune-steps 50` removes whole
channels, heads and hidden units instead (Li et al. L1, Molchanov et al. Taylor), so the model
physically shrinks; --steps then fine-tunes the smaller model."""

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
    reject_given,
    reject_momentum,
    reject_nm_ignored,
    reject_quantized,
    set_threads,
    write_output,
)
from compressor.config import add_flags, from_args
from compressor.pipeline.stages import accuracy, prune_stage, structured_stage
from compressor.pruning import PruneConfig, prunable_parameters
from compressor.structured import StructuredConfig
from compressor.train import TrainConfig

FINETUNE_STEPS = 200
STRUCTURED_ONLY = ("ratio", "max_ratio", "round_to", "iterations", "finetune_steps",
                   "taylor_batches", "normalize", "strict")
UNSTRUCTURED_ONLY = ("sparsity", "schedule", "output_sparsity", "exclude", "nm")


def add_arguments(parser):
    add_input(parser)
    parser.add_argument("--structured", action="store_true",
                        help="remove whole channels/heads/units (the model shrinks)")
    add_flags(parser, PruneConfig, group="pruning")
    add_flags(parser, StructuredConfig, group="structured pruning (--structured)")
    add_flags(parser, TrainConfig, group="fine-tuning", defaults={"steps": FINETUNE_STEPS})
    add_budgets(parser, "channel ratios (--structured) or sparsities")
    add_data_override(parser)
    add_output(parser)
    add_threads(parser)


def _configs(args):
    if args.structured:
        reject_given(args, UNSTRUCTURED_ONLY, "with --structured")
    else:
        reject_given(args, STRUCTURED_ONLY, "without --structured")
    train = from_args(TrainConfig, args, base={"steps": FINETUNE_STEPS})
    reject_momentum(args, train.optimizer)
    if args.structured:
        cfg = from_args(StructuredConfig, args)
        budgets = read_budgets(args, "channels")
        return (cfg.replace(ratios=budgets) if budgets else cfg), train
    cfg = from_args(PruneConfig, args)
    reject_nm_ignored(args, cfg.nm)
    budgets = read_budgets(args, "sparsity")
    if budgets:
        if cfg.nm:
            reject_given(args, ["budgets"], f"with --nm {cfg.nm} (N:M has no per-layer rate)")
        cfg = cfg.replace(rates=budgets)
    return cfg, train


def run(args) -> int:
    cfg, train_cfg = _configs(args)
    check_out(args)
    set_threads(args)
    model, info, data, data_cfg = read_input(args)
    reject_quantized(model, args.input, "prune")
    before = accuracy(model, data)
    if args.structured:
        metrics = structured_stage(model, data, cfg, train_cfg, progress=True)
        print(f"structured ({cfg.criterion}, {cfg.ratio:.0%} of channels) and fine-tuned "
              f"{train_cfg.steps} steps: parameters {metrics['params_before']:,} -> "
              f"{metrics['params_after']:,}, test accuracy {before:.4f} -> "
              f"{metrics['test_acc']:.4f}")
    else:
        check_patterns(model, cfg.exclude, "--exclude", prunable_parameters(model))
        metrics = prune_stage(model, data, cfg, train_cfg, progress=True)
        what = f"N:M {cfg.nm}" if cfg.nm else f"{cfg.sparsity:.0%} {cfg.scope}"
        print(f"pruned ({what}, {cfg.schedule}) and fine-tuned {train_cfg.steps} steps: test "
              f"accuracy {before:.4f} -> {metrics['test_acc']:.4f}, sparsity "
              f"{metrics['sparsity']:.3f}")
    write_output(args.out, model, info, data_cfg, test_acc=metrics["test_acc"], stage="prune")
    return 0
