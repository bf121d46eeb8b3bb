"""`compressor train --dataset digits --model lenet --steps N --out dense.pt [--checkpoint
ck.pt]`: with --checkpoint, the training writes a checkpoint every --checkpoint-every steps and
a rerun of the same command resumes from it (another configuration is an error)."""

from compressor.commands.common import (
    add_output,
    add_threads,
    check_outputs,
    reject_momentum,
    set_threads,
    write_output,
)
from compressor.config import add_flags, from_args
from compressor.errors import CompressorError
from compressor.history import record
from compressor.pipeline.checkpoint import resumable_fit
from compressor.pipeline.inputs import DataConfig, ModelConfig, load_data, new_model
from compressor.pipeline.stages import accuracy, train_dense
from compressor.train import TrainConfig


def add_arguments(parser):
    add_flags(parser, DataConfig, group="data")
    add_flags(parser, ModelConfig, group="model")
    add_flags(parser, TrainConfig, group="training")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="resumable training: write a checkpoint here and resume from it")
    parser.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                        help="steps between checkpoints (default: 100)")
    add_output(parser)
    add_threads(parser)


def run(args) -> int:
    data_cfg, model_cfg = from_args(DataConfig, args), from_args(ModelConfig, args)
    train_cfg = from_args(TrainConfig, args)
    model_cfg.kwargs()  # --model-args parse errors before any work
    reject_momentum(args, train_cfg.optimizer)
    if args.checkpoint is None and args.checkpoint_every is not None:
        raise CompressorError("--checkpoint-every has no effect without --checkpoint")
    every = 100 if args.checkpoint_every is None else args.checkpoint_every
    if every < 1:
        raise CompressorError(f"--checkpoint-every must be >= 1, got {every}")
    check_outputs(args, {"--out": ".pt", "--checkpoint": None})
    set_threads(args)
    data = load_data(data_cfg)
    model, info = new_model(model_cfg, data, data_cfg, seed=train_cfg.seed)
    if args.checkpoint is None:
        metrics = train_dense(model, data, train_cfg, progress=True)
    else:
        _, start = resumable_fit(model, data, train_cfg, args.checkpoint, info.architecture(),
                                 every, progress=True, desc="dense training")
        if start:
            print(f"resumed from {args.checkpoint} at step {start}")
        record(model, "train", train_cfg)
        metrics = {"test_acc": accuracy(model, data)}
    print(f"{model_cfg.model} on {data_cfg.source()}: test accuracy {metrics['test_acc']:.4f} "
          f"after {train_cfg.steps} steps")
    write_output(args.out, model, info, data_cfg, test_acc=metrics["test_acc"], stage="train")
    return 0
