"""The configuration of `compressor run`: a TOML file of sections, each one workflow's config,
overridden by command-line flags.

    name = "demo"            # the run directory: <root>/<name>
    root = "runs"
    prune = "magnitude"      # magnitude | structured | lottery | none
    quantize = "inq"         # inq | int8 | none
    skip = ["lottery"]       # stages not to run
    [data]     dataset = "shapes"
    [model]    model = "resnet_small"
    [train]    steps = 300
    [prune_config]  sparsity = 0.9      (PruneConfig)
    [structured]    ratio = 0.5         (StructuredConfig)
    [finetune] steps = 150             (TrainConfig of the fine-tuning)
    [lottery]  rounds = 3               (LotteryConfig)
    [inq]      bits = 5                 (INQConfig)
    [int8]     observer = "minmax"      (Int8Config)
    [sparsify] min_speedup = 1.05
    [export]   opset = 18
"""

from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from compressor.config import Config
from compressor.errors import CompressorError
from compressor.export import ExportConfig
from compressor.lottery import LotteryConfig
from compressor.pipeline.inputs import DataConfig, ModelConfig
from compressor.pruning import PruneConfig
from compressor.quantization import INQConfig, Int8Config
from compressor.sparse import SparsifyConfig
from compressor.structured import StructuredConfig
from compressor.train import TrainConfig

STAGES = ("train", "prune", "quantize", "sparsify", "export", "verify", "bench", "report")
PRUNE_METHODS = ("magnitude", "structured", "lottery", "none")
QUANTIZE_METHODS = ("inq", "int8", "none")

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
            "prune_config": PruneConfig, "structured": StructuredConfig,
            "finetune": TrainConfig, "lottery": LotteryConfig,
            "inq": INQConfig, "int8": Int8Config, "sparsify": SparsifyConfig,
            "export": ExportConfig}


@dataclass
class RunConfig(Config):
    """The run's own settings (the workflows' settings are in its sections)."""

    name: str = field(default="run", metadata={"help": "run directory name under --root"})
    root: str = field(default="runs", metadata={"help": "where run directories go"})
    prune: str = field(default="magnitude", metadata={"choices": PRUNE_METHODS})
    quantize: str = field(default="inq", metadata={"choices": QUANTIZE_METHODS})
    skip: tuple[str, ...] = field(default=(), metadata={
        "choices": STAGES, "help": "comma-separated stages not to run"})
    only: str | None = field(default=None, metadata={
        "choices": STAGES, "help": "run this stage alone (earlier ones must be done)"})
    batch_sizes: tuple[int, ...] = field(default=(1, 16), metadata={
        "help": "batch sizes the benchmark measures"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (None: all)"})

    def validate(self) -> None:
        self.require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."),
                     "name", "must be a plain directory name")
        self.require(all(b >= 1 for b in self.batch_sizes) and bool(self.batch_sizes),
                     "batch_sizes", "must be positive integers")
        self.require(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        self.require("train" not in self.skip, "skip", "cannot contain 'train' (every later "
                     "stage starts from the dense model)")
        off = set(self.skip) | {s for s in ("prune", "quantize") if getattr(self, s) == "none"}
        self.require(self.only not in off, "only", "names a stage this run skips")


@dataclass
class Pipeline:
    run: RunConfig
    sections: dict[str, Config]

    def to_dict(self) -> dict:
        return {**self.run.to_dict(), **{k: v.to_dict() for k, v in self.sections.items()}}


def read_toml(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CompressorError(f"config file {path} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CompressorError(f"config file {path} is not valid TOML: {exc}") from None


def split(table: dict, where: str) -> tuple[dict, dict]:
    """(run settings, {section: table}); an unknown section is an error naming it."""
    run, sections = {}, {}
    for key, value in table.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise CompressorError(f"[{key}] in {where} must be a table")
            sections[key] = value
        elif isinstance(value, dict):
            raise CompressorError(f"unknown section [{key}] in {where} (known: "
                                  f"{sorted(SECTIONS)})")
        else:
            run[key] = value
    return run, sections


# Defaults of the command line where they differ from the API's (the API follows the papers):
# INQ retrains with Adam and then retrains biases with every weight frozen, which
# docs/quantization.md measured better than the paper's SGD schedule on the built-in data.
INQ_DEFAULTS = {"optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0, "steps_per_stage": 200,
                "final_steps": 200}


def build_pipeline(table: dict, overrides: dict[str, dict], where: str) -> Pipeline:
    """The run's configs: TOML `table`, then per-section flag `overrides` on top."""
    run_table, tables = split(table, where)
    run = RunConfig.from_dict({**run_table, **overrides.get("run", {})}, where=where)
    train = TrainConfig.from_dict({**tables.get("train", {}), **overrides.get("train", {})},
                                  where=f"[train] of {where}")
    # a lottery round trains as long as the dense model did, unless [lottery] says otherwise
    defaults = {"finetune": {"steps": max(1, train.steps // 2), "seed": train.seed + 1},
                "lottery": {"steps": max(1, train.steps), "rounds": 3,
                            "eval_every": max(1, min(100, train.steps))},
                "inq": dict(INQ_DEFAULTS)}
    sections = {"train": train}
    for name, cls in SECTIONS.items():
        if name == "train":
            continue
        values = {**defaults.get(name, {}), **tables.get(name, {}), **overrides.get(name, {})}
        sections[name] = cls.from_dict(values, where=f"[{name}] of {where}")
    return Pipeline(run, sections)
