"""`compressor export s.pt --out m.onnx`: the model as it is, in the most compact standard ONNX
encoding (sparse, power-of-two codebooks, int8 QDQ), verified in onnxruntime."""

import json

from compressor.commands.common import (
    add_input,
    add_output,
    add_threads,
    check_batch_size,
    check_outputs,
    read_input,
    set_threads,
)
from compressor.config import add_flags, from_args
from compressor.export import ExportConfig
from compressor.pipeline.stages import export_stage


def add_arguments(parser):
    add_input(parser)
    add_flags(parser, ExportConfig, exclude=("threads",))
    parser.add_argument("--dense-out", default=None, help="also keep the dense fp32 ONNX here")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="rows of the example input")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_output(parser, ".onnx")
    add_threads(parser)


def run(args) -> int:
    threads = set_threads(args)
    cfg = from_args(ExportConfig, args, base={"threads": threads})
    check_batch_size(args)
    check_outputs(args, {"--out": ".onnx", "--dense-out": ".onnx"})
    model, _, data, _ = read_input(args)
    report = export_stage(model, data, cfg, args.out, args.dense_out, args.batch_size)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        ratio, err = report["size_ratio"], report["max_error"]
        print(f"wrote {report['path']}: {report['bytes']:,} bytes ({ratio:.2f}x smaller than "
              f"dense fp32 ONNX), onnxruntime vs PyTorch max error {err:.3g}")
    return 0
