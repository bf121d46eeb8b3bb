"""Incremental Network Quantization (Zhou et al., ICLR 2017): partition -> quantize -> retrain.

Each stage quantizes (to the INQ power-of-two levels, n1 fixed from the pre-trained layer) the
largest-magnitude weights not yet quantized, until the accumulated portion of the stage is reached,
then retrains the rest with the quantized ones frozen. Optionally (`final_steps`, not in the
paper) the last stage is followed by retraining what INQ leaves in float (biases, norms) with every
weight frozen: at 3 bits and below the last stage zeroes many weights at once, and this recovers
most of the loss (docs/quantization.md). Freezing is exact: their gradient is masked
and, after every optimizer step, their values are written back, so momentum and weight decay
cannot move them (bit-identical across stages). Weights that are exactly zero at the start
(pruned) stay zero when `keep_pruned_zeros` is on. A checkpoint is written atomically after each
stage; rerunning with the same checkpoint resumes after the last finished stage.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.config import Config
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.formats.pow2_levels import check_bits, pow2_exponents, quantize_to_levels
from compressor.io import content_digest, load_checked, save_checked
from compressor.pruning.selection import compressible_, is_connection_weight
from compressor.train import Callback, TrainConfig, evaluate, fit

# Modules whose connection weights INQ quantizes by default, by class name (a subclass matches
# its base: torch's NonDynamicallyQuantizableLinear out_proj is a Linear). Recurrent and
# embedding weights are weights like any other; nn.MultiheadAttention's in_proj_weight is
# quantized in place too (INQ converts torch's attention first, see compressible_).
SUPPORTED_MODULES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ONLSTM", "LSTM", "GRU", "RNN",
                     "Embedding", "MultiheadAttention")

# The paper's accumulated portions: 5-bit default; 4-bit, 3-bit and ternary schedules of Sec. 4.
PRESETS = {
    "paper-5bit": (5, (0.5, 0.75, 0.875, 1.0)),
    "paper-4bit": (4, (0.3, 0.6, 0.8, 1.0)),
    "paper-3bit": (3, (0.2, 0.4, 0.6, 0.8, 1.0)),
    "paper-ternary": (2, (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)),
}


@dataclass
class INQConfig(Config):
    """One INQ run. `portions` are accumulated fractions of each layer's weights, ending at 1."""

    bits: int = field(default=5, metadata={"help": "INQ weight bits, 2..5 (2 = ternary)"})
    portions: tuple[float, ...] = field(default=(0.5, 0.75, 0.875, 1.0), metadata={
        "help": "accumulated portions quantized per stage, comma-separated, ending at 1"})
    steps_per_stage: int = field(default=300, metadata={"help": "retraining steps per stage"})
    final_steps: int = field(default=0, metadata={
        "help": "after the last stage, retrain biases with every weight frozen (0: the paper)"})
    optimizer: str = field(default="sgd", metadata={"choices": ("sgd", "adam")})
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 60
    seed: int = 0
    keep_pruned_zeros: bool = True
    param_names: tuple[str, ...] | None = field(default=None, metadata={"flag": False})
    module_types: tuple[str, ...] = field(default=SUPPORTED_MODULES, metadata={"flag": False})
    # {fnmatch pattern on the module name: bits}, winning over `bits` for the layers it matches:
    # per-layer widths such as robustness.budgets(result, "bits") returns
    layer_bits: dict[str, int] = field(default_factory=dict, metadata={"flag": False})

    def validate(self) -> None:
        check_bits(self.bits)
        for pattern, width in self.layer_bits.items():
            try:
                check_bits(width)
            except CompressorError as err:
                raise CompressorError(f"INQConfig.layer_bits[{pattern!r}]: {err}") from None
        p = self.portions
        increasing = all(a < b for a, b in zip(p, p[1:], strict=False))
        if not p or any(not 0 < a <= 1 for a in p) or not increasing:
            raise CompressorError(f"INQConfig.portions must increase strictly within (0, 1], "
                                  f"got {p}")
        if p[-1] != 1.0:
            raise CompressorError(f"INQConfig.portions must end at 1.0 so every weight is "
                                  f"quantized, got {p}")
        self.require(self.steps_per_stage >= 0, "steps_per_stage", "must be >= 0")
        self.require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(self.final_steps >= 0, "final_steps", "must be >= 0")

    @classmethod
    def preset(cls, name: str, **overrides) -> "INQConfig":
        """The paper's schedule for a bit width: paper-5bit, -4bit, -3bit or -ternary."""
        if name not in PRESETS:
            raise CompressorError(f"unknown INQ preset {name!r}: use one of {sorted(PRESETS)}")
        bits, portions = PRESETS[name]
        return cls(**{"bits": bits, "portions": portions, **overrides})


def bits_of(config: INQConfig, param_name: str) -> int:
    """The width INQ gives parameter `param_name`: the last `layer_bits` pattern matching its
    module's name, else `config.bits`."""
    module = param_name.rpartition(".")[0]
    width = config.bits
    for pattern, value in config.layer_bits.items():
        if fnmatchcase(module, pattern):
            width = value
    return width


def layer_bits_of(config: INQConfig, names) -> dict[str, int]:
    """{module name: bits} for the quantized parameters `names`; a `layer_bits` pattern that
    matches none of them is an error (a typo would silently keep the default width)."""
    modules = {n.rpartition(".")[0] for n in names}
    for pattern in config.layer_bits:
        if not any(fnmatchcase(m, pattern) for m in modules):
            raise CompressorError(f"INQConfig.layer_bits: pattern {pattern!r} matches no "
                                  f"quantized layer; they are {sorted(modules)[:12]}")
    return {n.rpartition(".")[0]: bits_of(config, n) for n in names}


def quantizable_parameters(model: nn.Module, config: INQConfig) -> dict[str, nn.Parameter]:
    """{name: parameter} INQ will quantize: config.param_names, or every weight* parameter of a
    module whose class is in config.module_types."""
    params = dict(model.named_parameters())
    if config.param_names is not None:
        unknown = [n for n in config.param_names if n not in params]
        if unknown:
            raise CompressorError(f"INQ: no parameter(s) {unknown} in the model; it has "
                                  f"{sorted(params)[:8]}...")
        return {n: params[n] for n in config.param_names}
    chosen = {}
    for mod_name, module in model.named_modules():
        if not _selected_type(module, config.module_types):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if is_connection_weight(module, p_name, p) and p.is_floating_point():
                chosen[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    if not chosen:
        raise CompressorError(f"INQ: the model has no weights of {config.module_types} to quantize")
    return chosen


def _selected_type(module: nn.Module, types: tuple[str, ...]) -> bool:
    return any(cls.__name__ in types for cls in type(module).__mro__)


def not_quantized(model: nn.Module, chosen) -> dict[str, dict]:
    """{parameter: {"action": "kept float", "reason"}} for the parameters INQ leaves alone."""
    owners = {f"{m}.{n}" if m else n: (module, n, p) for m, module in model.named_modules()
              for n, p in module.named_parameters(recurse=False)}
    out = {}
    for qual, (module, name, param) in owners.items():
        if qual in chosen:
            continue
        if not is_connection_weight(module, name, param):
            reason = "not a connection weight (bias, norm scale, embedding offset): kept float"
        else:
            reason = (f"{type(module).__name__} is not among INQConfig.module_types or "
                      "param_names")
        out[qual] = {"action": "kept float", "reason": reason}
    return out


@dataclass
class _State:
    """What a checkpoint holds besides the model: per-parameter n1 and frozen masks."""

    stage: int = 0
    n1: dict[str, int] = field(default_factory=dict)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)
    pruned: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def _config_key(config: INQConfig) -> dict:
    """The fields that must match for a checkpoint to be resumed (tuples as lists, like on disk)."""
    key = dataclasses.asdict(config)
    if not key["layer_bits"]:
        key.pop("layer_bits")  # checkpoints from before per-layer widths still resume
    return {k: list(v) if isinstance(v, tuple) else v for k, v in key.items()}


def _select_new(param: torch.Tensor, frozen: torch.Tensor, eligible: torch.Tensor,
                portion: float) -> torch.Tensor:
    """Mask of the largest-|w| unfrozen eligible weights that bring the frozen share up to
    `portion` of the eligible ones."""
    total = int(eligible.sum())
    target = total if portion >= 1.0 else int(round(portion * total))
    need = target - int((frozen & eligible).sum())
    new = torch.zeros_like(frozen)
    if need <= 0:
        return new
    candidates = (eligible & ~frozen).flatten()
    scores = param.detach().abs().flatten().masked_fill(~candidates, -1.0)
    top = torch.topk(scores, min(need, int(candidates.sum())), sorted=False).indices
    new.view(-1)[top] = True
    return new


class INQ:
    """Runs INQ on `model` (in place) with `data`; `run()` returns the per-stage history."""

    def __init__(self, model: nn.Module, data: Dataset, config: INQConfig,
                 checkpoint: str | os.PathLike | None = None, progress: bool = True,
                 loss_fn=None):
        self.model, self.data, self.config = model, data, config
        self.loss_fn = loss_fn
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress = progress
        # torch's attention layers hide their projections from the packing that follows INQ:
        # convert them now, so the weights INQ fixes (and their n1) are the ones packed later
        self.conversions = compressible_(model)
        self.params = quantizable_parameters(model, config)
        self.layer_bits = layer_bits_of(config, self.params)  # {module: bits}, for packing
        self.bits = {name: bits_of(config, name) for name in self.params}
        # what the result depends on besides the config: a checkpoint of other data or other
        # starting weights must not be resumed
        self.origin = content_digest({"model": model.state_dict(), "data": [
            data.x_train, data.y_train, data.x_test, data.y_test]})
        self.state = self._load() or self._fresh_state()

    def _fresh_state(self) -> _State:
        state = _State()
        for name, p in self.params.items():
            state.n1[name], _ = pow2_exponents(p, self.bits[name])
            pruned = (p.detach() == 0) if self.config.keep_pruned_zeros else torch.zeros_like(
                p, dtype=torch.bool)
            state.pruned[name] = pruned
            state.frozen[name] = pruned.clone()  # pruned zeros are already on a level: 0
        return state

    def run(self, stop_after: int | None = None) -> list[dict]:
        """Runs the remaining stages (or up to stage `stop_after`, 1-based); a finished run is a
        no-op."""
        cfg = self.config
        last = len(cfg.portions) if stop_after is None else min(stop_after, len(cfg.portions))
        stages = range(self.state.stage, last)
        widths = "/".join(str(b) for b in sorted(set(self.bits.values()), reverse=True))
        for stage in tqdm(stages, desc=f"INQ {widths}-bit", disable=not self.progress):
            portion = cfg.portions[stage]
            counts = self._quantize_stage(portion)
            record = {"stage": stage + 1, "portion": portion, "quantized": counts}
            if portion < 1.0 and cfg.steps_per_stage > 0:
                self._retrain(stage, cfg.steps_per_stage)
            elif portion == 1.0 and cfg.final_steps > 0 and self._has_float_parameters():
                # The paper stops here; the accuracy before the extra retraining is kept.
                record["test_acc_before_final"] = evaluate(self.model, self.data.x_test,
                                                           self.data.y_test)
                self._retrain(stage, cfg.final_steps)
            record["test_acc"] = acc = evaluate(self.model, self.data.x_test, self.data.y_test)
            self.state.history.append(record)
            if self.progress:
                tqdm.write(f"INQ stage {stage + 1}/{len(cfg.portions)}: {portion:.1%} quantized, "
                           f"test accuracy {acc:.4f}")
            self.state.stage = stage + 1
            self._save()
        return self.state.history

    @torch.no_grad()
    def _quantize_stage(self, portion: float) -> int:
        """Quantize and freeze the next largest weights of every layer; returns how many."""
        count = 0
        for name, p in self.params.items():
            frozen = self.state.frozen[name]
            new = _select_new(p, frozen, ~self.state.pruned[name], portion)
            q = quantize_to_levels(p, self.state.n1[name], self.bits[name])
            p.copy_(torch.where(new, q, p))
            frozen |= new
            count += int(new.sum())
        return count

    def report(self) -> dict[str, dict]:
        """{parameter: {"action", ...}}: what INQ did to each weight (bits, n1, how many were
        pruned zeros it kept) and why it left the other parameters alone."""
        out = {name: {"action": f"INQ {self.bits[name]}-bit",
                      "n1": self.state.n1[name],
                      "stage": self.state.stage, "kept_zeros": int(self.state.pruned[name].sum())}
               for name in self.params}
        out.update(not_quantized(self.model, self.params))
        return out

    def _save(self) -> None:
        if self.checkpoint is None:
            return
        s = self.state
        payload = {"config": _config_key(self.config), "origin": self.origin, "stage": s.stage,
                   "n1": s.n1, "frozen": s.frozen, "pruned": s.pruned, "history": s.history,
                   "model": self.model.state_dict()}
        save_checked(self.checkpoint, payload)  # atomic and checksummed

    def _load(self) -> "_State | None":
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        ckpt = load_checked(self.checkpoint, "INQ checkpoint",
                            "delete it to start the quantization over")
        if ckpt.get("config") != _config_key(self.config) or set(ckpt["n1"]) != set(self.params):
            raise CompressorError(f"INQ checkpoint {self.checkpoint} was made by a different "
                                  "config or model; use another checkpoint path")
        if ckpt.get("origin") != self.origin:
            raise CompressorError(f"INQ checkpoint {self.checkpoint} was made from other data or "
                                  "other starting weights; use another checkpoint path")
        self.model.load_state_dict(ckpt["model"])
        return _State(ckpt["stage"], dict(ckpt["n1"]), dict(ckpt["frozen"]),
                      dict(ckpt["pruned"]), list(ckpt["history"]))

    def _has_float_parameters(self) -> bool:
        quantized = {id(p) for p in self.params.values()}
        return any(p.requires_grad and id(p) not in quantized for p in self.model.parameters())

    def _retrain(self, stage: int, steps: int) -> None:
        cfg = self.config
        frozen = {n: self.state.frozen[n] for n in self.params}
        # Fully frozen tensors (every one after the last stage) are left out of autograd and the
        # optimizer instead of having their gradient masked and their values written back.
        partly = {n: p for n, p in self.params.items() if not bool(frozen[n].all())}
        done = [p for n, p in self.params.items() if n not in partly and p.requires_grad]
        values = {n: p.detach().clone() for n, p in partly.items()}

        class Restore(Callback):
            @torch.no_grad()
            def after_step(self, step: int) -> None:
                for n, p in partly.items():
                    p.copy_(torch.where(frozen[n], values[n], p))

        for p in done:
            p.requires_grad_(False)
        hooks = [p.register_hook(lambda g, m=frozen[n]: g.masked_fill(m, 0))
                 for n, p in partly.items()]
        try:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            if not trainable:  # nothing left to move: retraining would be a no-op
                return
            if cfg.optimizer == "sgd":
                opt = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay)
            else:
                opt = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
            tc = TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                             seed=cfg.seed * 1000 + stage, eval_every=0)
            fit(self.model, self.data, tc, optimizer=opt, callbacks=[Restore()],
                loss_fn=self.loss_fn)
        finally:
            for h in hooks:
                h.remove()
            for p in done:
                p.requires_grad_(True)


def inq_(model: nn.Module, data: Dataset, config: INQConfig,
         checkpoint: str | os.PathLike | None = None, progress: bool = True,
         loss_fn=None) -> list[dict]:
    """Quantize `model` in place with INQ; returns [{stage, portion, quantized, test_acc}].
    `loss_fn(output, target)` is the retraining loss (default: cross-entropy over the last dim)."""
    return INQ(model, data, config, checkpoint, progress, loss_fn).run()


def inq_exponents(model: nn.Module, config: INQConfig) -> dict[str, int]:
    """n1 of every quantized parameter as INQ would fix it now (before any stage)."""
    return {n: pow2_exponents(p, bits_of(config, n))[0]
            for n, p in quantizable_parameters(model, config).items()}
