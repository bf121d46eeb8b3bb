"""`compressor train --dataset digits --model lenet --steps N --out dense.pt`."""

from compressor.commands.common import add_output, add_threads, check_out, set_threads, write_output
from compressor.config import add_flags, from_args
from compressor.pipeline.inputs import DataConfig, ModelConfig, load_data, new_model
from compressor.pipeline.stages import train_dense
from compressor.train import TrainConfig


def add_arguments(parser):
    add_flags(parser, DataConfig, group="data")
    add_flags(parser, ModelConfig, group="model")
    add_flags(parser, TrainConfig, group="training")
    add_output(parser)
    add_threads(parser)


def run(args) -> int:
    data_cfg, model_cfg = from_args(DataConfig, args), from_args(ModelConfig, args)
    train_cfg = from_args(TrainConfig, args)
    check_out(args)
    set_threads(args)
    data = load_data(data_cfg)
    model, info = new_model(model_cfg, data, data_cfg, seed=train_cfg.seed)
    metrics = train_dense(model, data, train_cfg, progress=True)
    print(f"{model_cfg.model} on {data_cfg.source()}: test accuracy {metrics['test_acc']:.4f} "
          f"after {train_cfg.steps} steps")
    write_output(args.out, model, info, data_cfg, test_acc=metrics["test_acc"], stage="train")
    return 0
