"""`compressor export`: a built-in model (optionally its weights, optionally int8-quantized) to a
compact ONNX file, verified in onnxruntime; prints the report."""

import json
from pathlib import Path

import torch

from compressor.data import load_dataset
from compressor.errors import CompressorError
from compressor.export import ExportConfig, to_onnx
from compressor.export.api import ENCODINGS, EXPORTERS
from compressor.models import MODELS, build_model
from compressor.quantization import Int8Config, fold_batchnorm, quantize_int8
from compressor.train import batches


def add_arguments(parser):
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="architecture")
    parser.add_argument("--dataset", default="digits", help="digits, mnist1d or an .npz path")
    parser.add_argument("--weights", help="state_dict file (torch.save); pruning masks in it "
                        "(<param>_mask, torch prune's <param>_orig) are folded")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--dense-out", help="also keep the dense fp32 ONNX baseline here")
    parser.add_argument("--batch-size", type=int, default=1, help="rows of the example input")
    parser.add_argument("--int8", action="store_true",
                        help="int8 post-training quantization (QDQ), calibrated on training data")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--observer", default="minmax", choices=["minmax", "percentile"])
    parser.add_argument("--full-range", action="store_true",
                        help="int8 weights in [-127, 127] (ARM/VNNI targets; see docs/export.md)")
    parser.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers")
    parser.add_argument("--exporter", default="dynamo", choices=EXPORTERS)
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--encodings", default=",".join(ENCODINGS),
                        help=f"compact encodings allowed, comma-separated ({','.join(ENCODINGS)}; "
                        "empty for none)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for timing")
    parser.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dim")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a state_dict, folding pruning masks saved beside their parameters."""
    if not Path(path).is_file():
        raise CompressorError(f"--weights: no file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a file that is not a state_dict
        raise CompressorError(f"--weights: {path!r} is not a weights-only torch file "
                              f"({type(exc).__name__})") from exc
    for key in ("state_dict", "model_state", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CompressorError(f"--weights: {path!r} holds no state_dict")
    state = fold_state_masks(state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CompressorError(f"--weights: {path!r} does not fit the model: "
                              f"{str(exc).splitlines()[0]} (check --model/--dataset)") from exc


def fold_state_masks(state: dict) -> dict:
    state = dict(state)
    for key in [k for k in state if k.endswith("_mask")]:
        base = key[: -len("_mask")]
        mask = state.pop(key)
        if base + "_orig" in state:
            state[base] = state.pop(base + "_orig") * mask
        elif base in state:
            state[base] = state[base] * mask
    return state


def run(args) -> int:
    encodings = tuple(e for e in args.encodings.split(",") if e)
    config = ExportConfig(opset=args.opset, exporter=args.exporter, encodings=encodings,
                          threads=args.threads, dynamic_batch=args.dynamic_batch)
    if args.batch_size < 1:
        raise CompressorError(f"--batch-size must be >= 1, got {args.batch_size}")
    data = load_dataset(args.dataset)
    model = build_model(args.model, feature_shape=data.feature_shape,
                        num_classes=data.num_classes)
    if args.weights:
        load_weights(model, args.weights)
    model.eval()
    if not args.no_fold_bn:
        model = fold_batchnorm(model)
    if args.int8:
        int8 = Int8Config(calibration_batches=args.calibration_batches, observer=args.observer,
                          reduce_range=not args.full_range)
        model = quantize_int8(model, batches(data, 256, seed=0), int8)
    report = to_onnx(model, data.x_test[: args.batch_size], args.out, config,
                     dense_path=args.dense_out)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0
