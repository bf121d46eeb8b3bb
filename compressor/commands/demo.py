"""`compressor demo`: the main pipeline on built-in data, end to end, in a few minutes.

train a CNN → fold BatchNorm → prune 90% and fine-tune → INQ 5-bit → convert layers measured
faster to sparse kernels → export a compact ONNX file verified in onnxruntime.
"""

import copy
import tempfile
import time
from pathlib import Path

import torch

from compressor.data import load_dataset
from compressor.info import format_info, info
from compressor.models import build_model
from compressor.train import TrainConfig, evaluate, train


def add_arguments(parser):
    parser.add_argument("--dataset", default="digits", help="digits, mnist1d or an .npz path")
    parser.add_argument("--model", default="digits_cnn", help="a compressor.models name")
    parser.add_argument("--steps", type=int, default=600, help="training steps for the dense model")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--out", default=None, help="ONNX path (default: a temporary file)")
    parser.add_argument("--seed", type=int, default=0)


def _step(name: str, model, data, start: float) -> float:
    acc = evaluate(model, data.x_test, data.y_test)
    print(f"[{time.perf_counter() - start:6.1f} s] {name:<34} test accuracy {acc:.4f}")
    return acc


def run(args) -> int:
    from compressor.export import to_onnx
    from compressor.pruning import PruneConfig, fold_masks, mask_optimizer, prune
    from compressor.quantization import INQConfig, fold_batchnorm, inq_
    from compressor.sparse import convert, report

    torch.manual_seed(args.seed)
    print(format_info(info()), "\n")
    data = load_dataset(args.dataset)
    start = time.perf_counter()
    model = build_model(args.model, feature_shape=data.feature_shape,
                        num_classes=data.num_classes)
    train(model, data, TrainConfig(steps=args.steps, seed=args.seed), progress=True)
    _step("dense", model, data, start)

    model = fold_batchnorm(model)  # before quantization, so BN cannot undo power-of-two weights
    prune(model, PruneConfig(sparsity=args.sparsity, output_sparsity=args.sparsity / 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    handles = mask_optimizer(opt, model)
    train(model, data, TrainConfig(steps=args.steps // 2, seed=args.seed + 1), optimizer=opt)
    for handle in handles:
        handle.remove()
    fold_masks(model)
    _step(f"pruned {args.sparsity:.0%} + fine-tuned", model, data, start)

    inq_(model, data, INQConfig(bits=args.bits, optimizer="adam", lr=2e-3, steps_per_stage=100,
                                final_steps=100, seed=args.seed), progress=False)
    _step(f"INQ {args.bits}-bit (pruned zeros kept)", model, data, start)

    example = data.x_test[:1]
    fast, decisions = convert(copy.deepcopy(model), (example,))
    print("sparse conversion (measured on this machine, batch 1):\n" + report(decisions))
    _step("converted to sparse kernels", fast, data, start)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "demo.onnx"
    print(to_onnx(model, (example,), out).summary())
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
