"""`compressor run [config.toml] [--flag ...]`: the whole pipeline into <root>/<name>/ with a
report (report.md, plots, metrics.json, every stage's model file and the ONNX files).

Flags override the file; the same idea has the same flag as in the single commands (--steps is
the dense training's, --finetune-steps the fine-tuning's). Rerun the same command to resume.
"""

from pathlib import Path

from compressor.commands.common import reject_given, reject_nm_ignored, set_threads
from compressor.config import add_flags
from compressor.errors import CompressorError
from compressor.io import check_cache_writable, check_writable
from compressor.pipeline.config import RunConfig, build_pipeline, read_toml
from compressor.pipeline.inputs import DataConfig, ModelConfig, load_data, new_model
from compressor.pipeline.run import Runner
from compressor.pruning import PruneConfig
from compressor.quantization import INQConfig
from compressor.train import TrainConfig

TRAIN_FLAGS = ("steps", "batch_size", "lr", "optimizer", "seed", "eval_every")
PRUNE_FLAGS = ("sparsity", "scope", "criterion", "schedule", "nm", "exclude", "output_sparsity")
INQ_FLAGS = ("bits", "portions", "steps_per_stage", "final_steps")


def add_arguments(parser):
    parser.add_argument("config", nargs="?", default=None, help="a TOML file (optional)")
    add_flags(parser, RunConfig, group="run")
    add_flags(parser, DataConfig, group="data")
    add_flags(parser, ModelConfig, group="model")
    add_flags(parser, TrainConfig, only=TRAIN_FLAGS, group="dense training")
    parser.add_argument("--finetune-steps", type=int, default=None, metavar="N",
                        help="fine-tuning steps after pruning (default: half of --steps)")
    add_flags(parser, PruneConfig, only=PRUNE_FLAGS, group="pruning")
    add_flags(parser, INQConfig, only=INQ_FLAGS, group="INQ")


def _given(args, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def overrides(args) -> dict[str, dict]:
    out = {"run": _given(args, RunConfig.field_names()),
           "data": _given(args, DataConfig.field_names()),
           "model": _given(args, ModelConfig.field_names()),
           "train": _given(args, TRAIN_FLAGS),
           "prune_config": _given(args, PRUNE_FLAGS),
           "inq": _given(args, INQ_FLAGS)}
    if args.finetune_steps is not None:
        if args.finetune_steps < 0:
            raise CompressorError(f"--finetune-steps must be >= 0, got {args.finetune_steps}")
        out["finetune"] = {"steps": args.finetune_steps}
    return out


# section -> (stage, the methods that read it); flags of a section given for another method
# (or for a skipped stage) would be ignored
SECTION_METHODS = {"prune_config": ("prune", ("magnitude",)),
                   "structured": ("prune", ("structured",)),
                   "finetune": ("prune", ("magnitude", "structured")),
                   "lottery": ("prune", ("lottery",)), "inq": ("quantize", ("inq",)),
                   "int8": ("quantize", ("int8",))}
FLAGS_OF = {"prune_config": PRUNE_FLAGS, "finetune": ("finetune_steps",), "inq": INQ_FLAGS}


def check_ignored(args, file_table: dict, pipeline) -> None:
    """Settings the run would not use are errors, not silence: a TOML section of a method not
    chosen, flags of a method not chosen or of a skipped stage."""
    r = pipeline.run
    for section, (stage, methods) in SECTION_METHODS.items():
        chosen = getattr(r, stage)
        if chosen not in methods and section in file_table:
            raise CompressorError(f"[{section}] in {args.config} has no effect with {stage} = "
                                  f"{chosen!r} (it configures {stage} = {' or '.join(methods)})")
        if section in FLAGS_OF and (chosen not in methods or stage in r.skip):
            why = f"--{stage} {chosen}" if chosen not in methods else f"--skip {stage}"
            reject_given(args, FLAGS_OF[section], f"with {why}")
    reject_nm_ignored(args, pipeline.sections["prune_config"].nm)


def run(args, defaults: dict | None = None) -> int:
    file_table = read_toml(args.config)
    table = {**(defaults or {}), **file_table}
    pipeline = build_pipeline(table, overrides(args), args.config or "the command line")
    check_ignored(args, file_table, pipeline)
    check_writable(Path(pipeline.run.root) / pipeline.run.name, "--root/--name", directory=True)
    if "sparsify" not in pipeline.run.skip:
        check_cache_writable()  # sparsify caches its measured timings there
    args.threads = pipeline.run.threads
    set_threads(args)
    data = load_data(pipeline.sections["data"])
    new_model(pipeline.sections["model"], data, pipeline.sections["data"])  # fits, before any work
    report = Runner(pipeline, data=data).run()
    print(f"report: {report}")
    return 0
