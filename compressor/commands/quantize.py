"""`compressor quantize`: quantize a model trained on built-in data (or loaded) and save it packed.

Methods live in METHODS (name -> function(args, model, data) -> (packed model, metadata)); INQ is
here, int8 post-training quantization registers itself beside it.
"""

import io
import os
import time
from pathlib import Path

import torch

from compressor.data import load_dataset
from compressor.errors import CompressorError
from compressor.models import MODELS, build_model
from compressor.train import TrainConfig, evaluate, train


def add_arguments(parser):
    parser.add_argument("--method", default="inq", help=f"one of {sorted(METHODS)}")
    parser.add_argument("--bits", type=int, default=5, help="INQ weight bits, 2..5 (2 = ternary)")
    parser.add_argument("--preset", default=None,
                        help="INQ schedule: paper-5bit, paper-4bit, paper-3bit, paper-ternary")
    parser.add_argument("--portions", default=None,
                        help="accumulated portions, comma separated (default 0.5,0.75,0.875,1)")
    parser.add_argument("--dataset", default="digits", help="digits, mnist1d or an .npz path")
    parser.add_argument("--model", default="lenet", help=f"one of {sorted(MODELS)}")
    parser.add_argument("--load", default=None, help="a dense state_dict (.pt) for --model")
    parser.add_argument("--steps", type=int, default=1000, help="dense training steps (no --load)")
    parser.add_argument("--steps-per-stage", type=int, default=200, help="INQ retraining steps")
    parser.add_argument("--final-steps", type=int, default=200,
                        help="after the last INQ stage, retrain biases with every weight frozen "
                             "(0 = the paper's procedure)")
    parser.add_argument("--optimizer", default="adam", help="INQ retraining optimizer: sgd or adam")
    parser.add_argument("--lr", type=float, default=2e-3, help="INQ retraining learning rate")
    parser.add_argument("--checkpoint", default=None, help="INQ checkpoint path (resumes)")
    parser.add_argument("--out", default="quantized.pt", help="where to save the packed model")
    parser.add_argument("--seed", type=int, default=0)


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of torch.save(state_dict): what the model costs on disk."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def dense_model(args, data):
    torch.manual_seed(args.seed)
    model = build_model(args.model, feature_shape=data.feature_shape,
                        num_classes=data.num_classes)
    if args.load:
        if not Path(args.load).exists():
            raise CompressorError(f"--load {args.load} does not exist")
        model.load_state_dict(torch.load(args.load, weights_only=True, map_location="cpu"))
    else:
        print(f"training a dense {args.model} on {args.dataset} for {args.steps} steps")
        train(model, data, TrainConfig(steps=args.steps, seed=args.seed), progress=True)
    return model


def inq_method(args, model, data):
    from compressor.quantization import INQConfig, convert_to_pow2, inq_

    overrides = dict(steps_per_stage=args.steps_per_stage, final_steps=args.final_steps,
                     seed=args.seed, lr=args.lr,
                     optimizer=args.optimizer, weight_decay=0.0 if args.optimizer == "adam"
                     else 5e-4)
    if args.preset:
        config = INQConfig.preset(args.preset, **overrides)
    else:
        if args.portions:
            overrides["portions"] = tuple(float(p) for p in args.portions.split(","))
        config = INQConfig(bits=args.bits, **overrides)
    history = inq_(model, data, config, checkpoint=args.checkpoint, progress=True)
    inq_acc = evaluate(model, data.x_test, data.y_test)
    packed = convert_to_pow2(model, config.bits)
    return packed, {"bits": config.bits, "portions": list(config.portions),
                    "history": history, "inq_test_acc": inq_acc}


def int8_method(args, model, data):
    """Post-training int8: per-channel symmetric weights, activation ranges from a few batches."""
    from compressor.quantization import Int8Config, quantize_int8
    from compressor.train import batches

    config = Int8Config()
    quantized = quantize_int8(model, batches(data, 256, args.seed), config)
    return quantized, {"calibration_batches": config.calibration_batches,
                       "observer": config.observer, "reduce_range": config.reduce_range}


# name -> method(args, dense model, data) -> (quantized model, metadata dict)
METHODS = {"inq": inq_method, "int8": int8_method}


def save_model(model, path, meta) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": "compressor-quantized", **meta, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def run(args) -> int:
    if args.method not in METHODS:
        raise CompressorError(f"unknown --method {args.method!r}: use one of {sorted(METHODS)}")
    data = load_dataset(args.dataset)
    model = dense_model(args, data)
    dense_acc, dense_bytes = evaluate(model, data.x_test, data.y_test), state_bytes(model)
    print(f"dense test accuracy {dense_acc:.4f}, state_dict {dense_bytes / 1024:.1f} KiB")
    start = time.perf_counter()
    quantized, meta = METHODS[args.method](args, model, data)
    acc = evaluate(quantized, data.x_test, data.y_test)
    meta = {"method": args.method, "model": args.model, "dataset": args.dataset,
            "feature_shape": list(data.feature_shape), "num_classes": data.num_classes,
            "dense_test_acc": dense_acc, "test_acc": acc, **meta}
    size = save_model(quantized, args.out, meta)
    q_bytes = state_bytes(quantized)
    print(f"{args.method}: test accuracy {acc:.4f} (dense {dense_acc:.4f}), state_dict "
          f"{q_bytes / 1024:.1f} KiB vs {dense_bytes / 1024:.1f} KiB fp32 "
          f"({dense_bytes / q_bytes:.1f}x smaller), saved {args.out} ({size / 1024:.1f} KiB) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
