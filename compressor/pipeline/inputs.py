"""What every command starts from: the data (a built-in dataset or the user's .npz) and the
architecture (a compressor.models name or the user's package.module:function)."""

import inspect
import json
from dataclasses import dataclass, field

import torch

from compressor.config import Config
from compressor.data import DATASETS, Dataset, load_dataset
from compressor.errors import CompressorError
from compressor.pipeline.modelfile import ModelFile, build, resolve_factory


@dataclass
class DataConfig(Config):
    """dataset: a built-in name (digits, mnist1d, ...) or an .npz path; data: an .npz path (the
    user's own data: arrays X (N, ...) and y (N,) integer labels), which wins over dataset."""

    dataset: str = field(default="digits", metadata={"help": "built-in dataset or .npz path"})
    data: str | None = field(default=None, metadata={"help": "your own .npz (arrays X, y)"})

    def validate(self) -> None:
        if self.data is not None and not self.data.endswith(".npz"):
            raise CompressorError(f"--data must be an .npz file (arrays X and y), got "
                                  f"{self.data!r}")
        if self.dataset not in DATASETS and not self.dataset.endswith(".npz"):
            raise CompressorError(f"--dataset must be one of {sorted(DATASETS)} or an .npz "
                                  f"path, got {self.dataset!r}")

    def source(self) -> str:
        return self.data or self.dataset


def load_data(cfg: DataConfig) -> Dataset:
    return load_dataset(cfg.source())


@dataclass
class ModelConfig(Config):
    """model: a compressor.models name or package.module:function; model_args: JSON object of
    keyword arguments for it (num_classes and feature_shape come from the data)."""

    model: str = field(default="lenet", metadata={"help": "architecture name or pkg.mod:fn"})
    model_args: str = field(default="{}", metadata={"help": "JSON keyword arguments"})

    def kwargs(self) -> dict:
        try:
            value = json.loads(self.model_args)
        except json.JSONDecodeError as exc:
            raise CompressorError(f"--model-args is not JSON ({exc.msg}): {self.model_args!r}"
                                  ) from None
        if not isinstance(value, dict):
            raise CompressorError(f"--model-args must be a JSON object, got {self.model_args!r}")
        return value


def factory_kwargs(cfg: ModelConfig, data: Dataset) -> dict:
    """The factory's keyword arguments: the data's num_classes / feature_shape where the factory
    takes them, then --model-args."""
    fn = resolve_factory(cfg.model)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {}
    if cfg.model.count(":") == 0 or takes_any or "num_classes" in params:
        kwargs["num_classes"] = data.num_classes
    if cfg.model.count(":") == 0 or takes_any or "feature_shape" in params:
        kwargs["feature_shape"] = list(data.feature_shape)
    return {**kwargs, **cfg.kwargs()}


def new_model(cfg: ModelConfig, data: Dataset, data_cfg: DataConfig, seed: int = 0):
    """(fresh model, its ModelFile) for the data; seeded so runs repeat."""
    kwargs = factory_kwargs(cfg, data)
    torch.manual_seed(seed)
    model = build(cfg.model, kwargs)
    check_fits(model, data, cfg.model)
    info = ModelFile(cfg.model, kwargs, {"data": data_cfg.to_dict()})
    return model, info


def check_fits(model: torch.nn.Module, data: Dataset, name: str) -> None:
    """One forward pass on two examples, so a model that does not fit the data fails now
    (the model's train/eval mode is left as it was)."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(data.x_train[:2])
    except Exception as exc:  # the user's model: any error means it does not fit
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CompressorError(f"model {name!r} fails on the data's inputs of shape "
                              f"{tuple(data.x_train.shape[1:])}: {type(exc).__name__}: {first}"
                              ) from None
    finally:
        model.train(was_training)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, torch.Tensor) or logits.shape[-1] < data.num_classes:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise CompressorError(f"model {name!r} outputs {shape}, but the data has "
                              f"{data.num_classes} classes (last dim must be >= that)")


def data_of(info: ModelFile, override: DataConfig | None = None) -> tuple[Dataset, DataConfig]:
    """The data a model file was made with (or `override` when the user gives one)."""
    if override is not None:
        return load_data(override), override
    saved = info.metadata.get("data")
    if not saved:
        raise CompressorError(f"model file {info.path} does not say which data it was trained "
                              "on; pass --dataset or --data")
    cfg = DataConfig.from_dict(saved, where=f"{info.path} data settings")
    return load_data(cfg), cfg


def example_input(data: Dataset, batch: int = 1) -> torch.Tensor:
    if batch < 1:
        raise CompressorError(f"--batch-size must be >= 1, got {batch}")
    return data.x_test[:batch].contiguous()
