"""`compressor quantize pruned.pt --method inq --bits 5 --steps-per-stage N --out q.pt`.

inq: Incremental Network Quantization to power-of-two weights, retrained on the model's data
and packed (4-5 bits a weight); pruned zeros stay zero. int8: post-training quantization with
per-channel weights and calibrated activations (exported as QDQ)."""

from compressor.commands.common import (
    add_budgets,
    add_data_override,
    add_input,
    add_output,
    add_threads,
    check_outputs,
    read_budgets,
    read_input,
    reject_given,
    reject_momentum,
    reject_quantized,
    set_threads,
    write_output,
)
from compressor.config import add_flags, from_args
from compressor.pipeline.stages import accuracy, quantize_stage
from compressor.quantization import PRESETS, INQConfig, Int8Config

METHODS = {"inq": INQConfig, "int8": Int8Config}
# The command's INQ defaults: Adam retraining and bias retraining after the last stage, which
# docs/quantization.md measured better than the paper's SGD schedule on the built-in data.
INQ_DEFAULTS = {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "steps_per_stage": 200,
                "final_steps": 200}


def add_arguments(parser):
    add_input(parser)
    parser.add_argument("--method", default="inq", choices=sorted(METHODS))
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="the paper's INQ schedule for a bit width (sets bits and portions)")
    add_flags(parser, INQConfig, group="INQ (--method inq)", defaults=INQ_DEFAULTS)
    add_flags(parser, Int8Config, group="int8 (--method int8)")
    parser.add_argument("--checkpoint", default=None, help="INQ checkpoint file (resumes)")
    add_budgets(parser, "weight bits (--method inq)")
    add_data_override(parser)
    add_output(parser)
    add_threads(parser)


def _config(args) -> INQConfig | Int8Config:
    other = Int8Config if args.method == "inq" else INQConfig
    own = set(METHODS[args.method].field_names())
    reject_given(args, [n for n in other.field_names() if n not in own],
                 f"with --method {args.method}")
    if args.method == "int8":
        reject_given(args, ["preset", "checkpoint", "budgets"], "with --method int8 (INQ only)")
        config = from_args(Int8Config, args)
        if config.observer != "percentile":
            reject_given(args, ["percentile"], f"with --observer {config.observer}")
        return config
    base = dict(INQ_DEFAULTS)
    if args.preset:
        reject_given(args, ["bits", "portions"], f"with --preset {args.preset} (it sets them)")
        base["bits"], base["portions"] = PRESETS[args.preset]
    config = from_args(INQConfig, args, base=base)
    reject_momentum(args, config.optimizer)
    budgets = read_budgets(args, "bits")
    return config.replace(layer_bits=budgets) if budgets else config


def run(args) -> int:
    config = _config(args)
    check_outputs(args, {"--out": ".pt", "--checkpoint": None})
    set_threads(args)
    model, info, data, data_cfg = read_input(args)
    reject_quantized(model, args.input, "quantize")
    before = accuracy(model, data)
    metrics = quantize_stage(model, data, config, checkpoint=args.checkpoint, progress=True)
    label = f"INQ {config.bits}-bit" if args.method == "inq" else "int8"
    print(f"{label}: test accuracy {before:.4f} -> {metrics['test_acc']:.4f}")
    write_output(args.out, model, info, data_cfg, test_acc=metrics["test_acc"],
                 stage="quantize")
    return 0
