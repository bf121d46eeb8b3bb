"""`compressor verify m.onnx s.pt`: run the ONNX file in onnxruntime on the model's test data and
compare with PyTorch; exit 1 when they disagree beyond the tolerance."""

import json
import math

from compressor.commands.common import (
    add_threads,
    check_batch_size,
    check_exists,
    read_input,
    set_threads,
)
from compressor.errors import CompressorError
from compressor.pipeline.stages import verify_onnx


def add_arguments(parser):
    parser.add_argument("onnx", metavar="ONNX", help="the exported .onnx file")
    parser.add_argument("input", metavar="IN", help="the model file it was exported from")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--json", action="store_true")
    add_threads(parser)


def run(args) -> int:
    for name in ("rtol", "atol"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise CompressorError(f"--{name} must be a finite number >= 0, got {value}")
    check_batch_size(args)
    if not str(args.onnx).endswith(".onnx"):
        raise CompressorError(f"ONNX must be an .onnx file, got {args.onnx!r}")
    check_exists(args.onnx, "ONNX file")
    threads = set_threads(args)
    model, _, data, _ = read_input(args)
    try:
        result = verify_onnx(args.onnx, model, data, args.batch_size, args.rtol, args.atol,
                             threads)
    except CompressorError:
        raise
    except Exception as exc:  # onnxruntime's own errors for a file that is not a model
        raise CompressorError(f"onnxruntime cannot run {args.onnx}: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    verdict = "OK" if result["ok"] else "MISMATCH"
    print(f"{verdict}: {args.onnx} vs {args.input} on {result['batch']} test inputs: max error "
          f"{result['max_error']:.3g} (tolerance {result['tolerance']:.3g}), top-1 agreement "
          f"{result['top1_agreement']:.3f}")
    return 0 if result["ok"] else 1
