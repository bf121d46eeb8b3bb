"""Layer robustness (Zhang, Bengio, Singer, "Are All Layers Created Equal?").

For a trained network theta_T with checkpoints theta_0..theta_T: a layer's re-initialisation
robustness at step t is the test error after setting that layer alone back to theta_t (the
rest stays trained); its re-randomisation robustness is the error after drawing that layer
fresh from the initial distribution. Layers whose reset barely changes the error are robust.
"""

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from compressor.config import Config
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.train import Callback, TrainConfig, evaluate, fit

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass
class RobustnessConfig(Config):
    """checkpoints: training steps whose weights a layer is reset to (0 = initialisation);
    trials: fresh random draws per layer for re-randomisation (errors averaged)."""

    checkpoints: tuple[int, ...] = field(default=(0, 1, 10, 100),
                                         metadata={"help": "steps to re-initialise to"})
    trials: int = field(default=1, metadata={"help": "re-randomisation draws per layer"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def validate(self) -> None:
        self.require(len(self.checkpoints) > 0 and min(self.checkpoints) >= 0, "checkpoints",
                     "must be one or more steps >= 0")
        self.require(self.trials >= 1, "trials", "must be >= 1")


@dataclass
class RobustnessResult:
    layers: list[str]
    steps: list[int]
    base_error: float
    reinit: list[list[float]]  # [layer][checkpoint]: test error with the layer at theta_t
    rerandom: list[float]  # [layer]: mean test error with the layer drawn afresh
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self, layer: str) -> dict:
        k = self.layers.index(layer)
        return {"reinit": dict(zip(self.steps, self.reinit[k], strict=True)),
                "rerandom": self.rerandom[k]}


class _Snapshots(Callback):
    def __init__(self, model: nn.Module, steps, store: dict):
        self.model, self.steps, self.store = model, set(steps), store

    def after_step(self, step: int) -> None:
        if step in self.steps:
            self.store[step] = copy.deepcopy(self.model.state_dict())


def train_with_checkpoints(model: nn.Module, data: Dataset, cfg: TrainConfig,
                           steps) -> dict[int, dict]:
    """Train `model` in place by compressor.train.fit; returns {step: state_dict} for the
    requested steps (0: before training) plus the final step."""
    store = {0: copy.deepcopy(model.state_dict())} if 0 in steps else {}
    fit(model, data, cfg, callbacks=[_Snapshots(model, steps, store)])
    store[cfg.steps] = copy.deepcopy(model.state_dict())
    return store


def default_layers(model: nn.Module) -> list[str]:
    """Modules owning weights (conv, linear, embedding, recurrent, attention); norms follow
    their layer and are not reset on their own, as in the paper; parameters held by the root
    module itself (a class token) are not a layer."""
    out = []
    for name, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False)]
        if name and own and not isinstance(m, NORMS) and not any(
                name.startswith(done + ".") for done in out):
            out.append(name)
    return out


def _error(model, data) -> float:
    return 1.0 - evaluate(model, data.x_test, data.y_test)


@torch.no_grad()
def _set_layer(model: nn.Module, layer: str, state: dict) -> None:
    target = model.get_submodule(layer)
    for name, tensor in target.state_dict().items():
        tensor.copy_(state[f"{layer}.{name}" if layer else name])


def _fresh(model: nn.Module, layer: str, init_fn, seed: int) -> dict:
    """A state_dict whose `layer` entries are drawn from the initial distribution: from a new
    model of init_fn(seed) when given, else by the layer's own reset_parameters()."""
    if init_fn is not None:
        return init_fn(seed).state_dict()
    module = copy.deepcopy(model.get_submodule(layer))
    resets = [m for m in module.modules() if hasattr(m, "reset_parameters")]
    if not resets:
        raise CompressorError(f"layer_robustness: layer {layer!r} ({type(module).__name__}) "
                              "has no reset_parameters(); pass init_fn")
    torch.manual_seed(seed)
    for m in resets:
        m.reset_parameters()
    return {f"{layer}.{k}" if layer else k: v for k, v in module.state_dict().items()}


def layer_robustness(model: nn.Module, checkpoints: dict[int, dict], data: Dataset,
                     config: RobustnessConfig | None = None, layers=None,
                     init_fn: Callable[[int], nn.Module] | None = None) -> RobustnessResult:
    """Per layer: test error after resetting it to each checkpoint in config.checkpoints, and
    after re-randomising it (config.trials draws). `model` holds theta_T and is restored."""
    cfg = config or RobustnessConfig()
    missing = [t for t in cfg.checkpoints if t not in checkpoints]
    if missing:
        raise CompressorError(f"layer_robustness: no checkpoint for step(s) {missing}; have "
                              f"{sorted(checkpoints)}")
    layers = list(layers) if layers is not None else default_layers(model)
    known = dict(model.named_modules())
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise CompressorError(f"layer_robustness: model has no layer {unknown[0]!r}")
    trained = copy.deepcopy(model.state_dict())
    base = _error(model, data)
    reinit, rerandom = [], []
    try:
        for k, layer in enumerate(layers):
            row = []
            for t in cfg.checkpoints:
                _set_layer(model, layer, checkpoints[t])
                row.append(_error(model, data))
                model.load_state_dict(trained)
            reinit.append(row)
            errors = []
            for trial in range(cfg.trials):
                _set_layer(model, layer, _fresh(model, layer, init_fn,
                                                cfg.seed + 1000 * k + trial + 1))
                errors.append(_error(model, data))
                model.load_state_dict(trained)
            rerandom.append(sum(errors) / len(errors))
    finally:
        model.load_state_dict(trained)
    return RobustnessResult(layers, list(cfg.checkpoints), base, reinit, rerandom)
