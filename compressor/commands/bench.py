"""`compressor bench s.pt --baseline dense.pt [--onnx m.onnx --dense-onnx d.onnx]`: latency of
a model file against its dense baseline, side by side in one run (medians after warm-up)."""


from compressor.commands.common import (
    add_threads,
    check_batch_size,
    check_exists,
    check_outputs,
    set_threads,
)
from compressor.errors import CompressorError
from compressor.io import write_json_atomic
from compressor.pipeline.bench import layer_latency, onnx_latency, torch_latency
from compressor.pipeline.inputs import check_fits, data_of, example_input
from compressor.pipeline.modelfile import load_model
from compressor.pruning import fold_masks


def add_arguments(parser):
    parser.add_argument("input", metavar="IN", help="the compressed model file")
    parser.add_argument("--baseline", required=True, help="the dense model file it came from")
    parser.add_argument("--onnx", default=None, help="IN exported to ONNX")
    parser.add_argument("--dense-onnx", default=None, help="the baseline exported to ONNX")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N")
    parser.add_argument("--layers", action="store_true", help="also time every layer")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    add_threads(parser)


def run(args) -> int:
    check_batch_size(args)
    if (args.onnx is None) != (args.dense_onnx is None):
        raise CompressorError("--onnx and --dense-onnx go together")
    for flag in ("--onnx", "--dense-onnx"):
        path = getattr(args, flag[2:].replace("-", "_"))
        if path is not None:
            check_exists(path, flag)
    check_outputs(args, {"--json": ".json"}, inputs=("input", "baseline", "onnx", "dense_onnx"))
    threads = set_threads(args)
    model, info = load_model(args.input)
    dense, _ = load_model(args.baseline, "--baseline model file")
    data, _ = data_of(info)
    check_fits(dense, data, f"--baseline {args.baseline}")
    x = example_input(data, args.batch_size)
    for m in (model, dense):
        fold_masks(m)  # masks are training machinery: time the weights as they are
    result = {"threads": threads, "batch": args.batch_size,
              "torch": torch_latency({"dense": dense, "compressed": model}, x)}
    t = result["torch"]
    speedup = t["dense"]["median_s"] / t["compressed"]["median_s"]
    print(f"PyTorch, batch {args.batch_size}, {threads} threads: dense "
          f"{t['dense']['median_s'] * 1e3:.3f} ms, compressed "
          f"{t['compressed']['median_s'] * 1e3:.3f} ms ({speedup:.2f}x)")
    if args.onnx:
        try:
            result["onnxruntime"] = o = onnx_latency(args.dense_onnx, args.onnx, x, threads)
        except Exception as exc:  # onnxruntime's own errors for a file that is not a model
            raise CompressorError(f"onnxruntime cannot run {args.onnx} / {args.dense_onnx}: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
        print(f"onnxruntime: dense {o['dense_s'] * 1e3:.3f} ms, compressed "
              f"{o['compressed_s'] * 1e3:.3f} ms ({o['speedup']:.2f}x)")
    if args.layers:
        result["layers"] = layer_latency(dense, model, x)
        for row in result["layers"]:
            dense_ms = f"{row['dense_ms']:.3f}" if "dense_ms" in row else "-"
            print(f"  {row['layer']:<32} {row['kind']:<14} dense {dense_ms} ms, "
                  f"compressed {row['compressed_ms']:.3f} ms")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


