"""`compressor demo`: the main pipeline on built-in data, end to end, in a couple of minutes."""

import time

import torch

from compressor.data import load_dataset
from compressor.info import format_info, info
from compressor.models import build_model
from compressor.train import TrainConfig, evaluate, train


def add_arguments(parser):
    parser.add_argument("--dataset", default="digits", help="digits, mnist1d or an .npz path")
    parser.add_argument("--steps", type=int, default=600, help="training steps for the dense model")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    torch.manual_seed(args.seed)
    print(format_info(info()), "\n")
    data = load_dataset(args.dataset)
    model = build_model("lenet", data.feature_shape, data.num_classes)
    start = time.perf_counter()
    train(model, data, TrainConfig(steps=args.steps, seed=args.seed), progress=True)
    acc = evaluate(model, data.x_test, data.y_test)
    print(f"dense {args.dataset} LeNet-300-100: test accuracy {acc:.4f} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
