"""`prune_channels_`: structured (channel, head, hidden-unit) pruning that physically shrinks the
model, one-shot or iterative (prune, fine-tune, repeat: Molchanov et al. 2017)."""

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.config import Config
from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.history import adopt_, history, record
from compressor.structured.attention import PrunableMultiheadAttention
from compressor.structured.criteria import CRITERIA, class_scores, taylor
from compressor.structured.plan import apply, build_plan, ratio_for, select, verify
from compressor.structured.trace import analyse, trace
from compressor.train import TrainConfig, fit

SCOPES = ("layerwise", "global")
STAGE = "structured"


@dataclass
class StructuredConfig(Config):
    """ratio: fraction of each group's channels removed (layerwise) or of all prunable
    channels (global, where no group loses more than max_ratio of its own); ratios: fnmatch
    pattern over group/layer names -> its own ratio (layerwise); round_to: kept channel
    counts rounded to a multiple (SIMD widths);
    iterations: prune steps to reach the ratio, each followed by finetune_steps of training
    (needs data); taylor_batches x batch_size examples score the Taylor criterion;
    leaf_modules: submodules kept as black boxes (their channels are left as they are);
    strict: a layer with no rule is an error instead of being reported and left alone."""

    ratio: float = field(default=0.5, metadata={"help": "fraction of channels removed"})
    criterion: str = field(default="l1", metadata={"choices": CRITERIA})
    scope: str = field(default="layerwise", metadata={"choices": SCOPES})
    ratios: dict[str, float] = field(default_factory=dict, metadata={"flag": False})
    max_ratio: float = field(default=0.9, metadata={"help": "global: most a group may lose"})
    round_to: int = field(default=1, metadata={"help": "kept channels rounded to a multiple"})
    iterations: int = field(default=1, metadata={"help": "prune/fine-tune rounds"})
    finetune_steps: int = field(default=0, metadata={"help": "training steps after each round"})
    lr: float = field(default=1e-3, metadata={"help": "fine-tuning learning rate"})
    batch_size: int = field(default=32, metadata={"help": "fine-tuning and Taylor batch"})
    taylor_batches: int = field(default=4, metadata={"help": "batches scoring Taylor"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise scores per layer"})
    leaf_modules: tuple[str, ...] = field(default=(), metadata={"flag": False})
    strict: bool = False
    seed: int = field(default=0, metadata={"help": "random seed"})

    def validate(self) -> None:
        self.require(0 <= self.ratio < 1, "ratio", "must be in [0, 1)")
        for key, value in self.ratios.items():
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise CompressorError(f"StructuredConfig.ratios[{key!r}] must be in [0, 1), "
                                      f"got {value!r}")
        self.require(not (self.ratios and self.scope == "global"), "ratios",
                     "needs scope='layerwise'")
        self.require(0 <= self.max_ratio < 1, "max_ratio", "must be in [0, 1)")
        self.require(self.round_to >= 1, "round_to", "must be >= 1")
        self.require(self.iterations >= 1, "iterations", "must be >= 1")
        self.require(self.finetune_steps >= 0, "finetune_steps", "must be >= 0")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self.require(self.taylor_batches >= 1, "taylor_batches", "must be >= 1")


def _inputs(example_inputs) -> tuple:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)) or not inputs or not all(
            isinstance(t, torch.Tensor) for t in inputs):
        raise CompressorError("prune_channels_: example_inputs must be a tensor or a tuple of "
                              "tensors")
    return tuple(inputs)


def convert_attention_(model: nn.Module, leaves=()) -> list[str]:
    """Swap every nn.MultiheadAttention the traced graph calls for the equivalent
    PrunableMultiheadAttention (same function, same state_dict names); returns their names."""
    gm = trace(model, leaves)
    done = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = model.get_submodule(node.target)
        if type(m) is nn.MultiheadAttention and m._qkv_same_embed_dim and m.bias_k is None \
                and not m.add_zero_attn:
            parent, _, child = node.target.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    PrunableMultiheadAttention.from_torch(m))
            done.append(node.target)
    return done


def _targets(plan, cfg: StructuredConfig, originals: dict, fraction: float) -> dict:
    """Classes each group keeps after this round (of its size before the first round)."""
    out = {}
    for grp in plan.groups:
        n0 = originals.setdefault(grp.name, len(grp.classes))
        r = ratio_for(grp, plan, cfg.ratio, cfg.ratios) if cfg.scope == "layerwise" else cfg.ratio
        keep = n0 - int(round(r * fraction * n0))
        out[grp.name] = min(len(grp.classes), keep)
    return out


def _check_strict(plan, cfg: StructuredConfig) -> None:
    if cfg.strict and plan.analysis.cg.skipped:
        what, why = next(iter(plan.analysis.cg.skipped.items()))
        raise CompressorError(f"structured pruning (strict): {what}: {why}")


def _round(model, plan, cfg, data, originals, fraction, it) -> dict:
    _check_strict(plan, cfg)
    per_slot = None
    if cfg.criterion == "taylor":
        per_slot = taylor(plan, model, data, cfg.taylor_batches, cfg.batch_size,
                          cfg.seed + it)
    scores, used = class_scores(plan, model, cfg.criterion, cfg.normalize, cfg.seed + it,
                                per_slot)
    targets = _targets(plan, cfg, originals, fraction)
    floors = {name: max(1, n0 - int(cfg.max_ratio * n0)) for name, n0 in originals.items()}
    removed = select(plan, scores, targets, cfg.round_to, cfg.scope, floors)
    pruned, changes = apply(model, plan, removed)
    inputs = plan.analysis.inputs
    verify(plan, removed, analyse(pruned, inputs, cfg.leaf_modules))
    adopt_(model, pruned)  # in place: the caller's object becomes the pruned one
    return {"groups": {grp.name: {"before": len(grp.classes) * grp.width,
                                  "after": (len(grp.classes) - sum(
                                      r in removed for r in grp.classes)) * grp.width,
                                  "criterion": used[grp.name]} for grp in plan.groups},
            **changes}


def prune_channels_(model: nn.Module, config: StructuredConfig | None = None,
                    example_inputs=None, filter_fn=None, data: Dataset | None = None) -> nn.Module:
    """Remove channels from `model` in place and return it (a smaller dense model).

    filter_fn(module, fqn): a class of coupled channels is pruned only if it accepts every
    layer producing them. The result (groups before/after, layers left alone and why, kept
    indices per layer) is the last 'structured' record of compressor.history (see
    `structured_result`)."""
    cfg = config or StructuredConfig()
    if not isinstance(model, nn.Module):
        raise CompressorError(f"prune_channels_: model must be an nn.Module, got "
                              f"{type(model).__name__}")
    inputs = _inputs(example_inputs)
    needs_data = cfg.criterion == "taylor" or cfg.finetune_steps > 0
    if needs_data and not isinstance(data, Dataset):
        raise CompressorError(f"prune_channels_: criterion {cfg.criterion!r} with "
                              f"finetune_steps={cfg.finetune_steps} needs data= (a Dataset)")
    params_before = sum(p.numel() for p in model.parameters())
    converted = convert_attention_(model, cfg.leaf_modules)
    originals, rounds = {}, []
    for it in range(1, cfg.iterations + 1):
        run = analyse(model, inputs, cfg.leaf_modules)
        run.inputs = inputs
        plan = build_plan(run, filter_fn)
        rounds.append(_round(model, plan, cfg, data, originals, it / cfg.iterations, it))
        if cfg.finetune_steps:
            fit(model, data, TrainConfig(steps=cfg.finetune_steps, batch_size=cfg.batch_size,
                                         lr=cfg.lr, seed=cfg.seed + it, eval_every=0),
                desc=f"structured round {it}")
    last = rounds[-1]
    skipped = dict(plan.analysis.cg.skipped)
    layers = {k: {"action": "shrunk", "kept": v} for k, v in last["kept"].items()}
    layers.update({k: {"action": "kept", "reason": v} for k, v in skipped.items()})
    record(model, STAGE, cfg, layers=layers, groups=_merge_groups(rounds),
           attributes=last["attributes"], converted_attention=converted,
           params_before=params_before,
           params_after=sum(p.numel() for p in model.parameters()), rounds=len(rounds))
    return model


def _merge_groups(rounds: list[dict]) -> dict:
    """Per group: channels before the first round, after the last."""
    out = {}
    for r in rounds:
        for name, g in r["groups"].items():
            entry = out.setdefault(name, dict(g))
            entry["after"] = g["after"]
    return out


def structured_result(model: nn.Module) -> dict:
    """The last structured-pruning record on `model` (see compressor.history)."""
    for entry in reversed(history(model)):
        if entry.get("stage") == STAGE:
            return copy.deepcopy(entry)
    raise CompressorError("structured_result: the model was never channel-pruned")


def _lstm_macs(m: nn.LSTM, args, out) -> int:
    """aten.lstm has no FLOP formula: 4 gates x (input + hidden) per unit, step and sequence."""
    steps = out[0].shape[0] * out[0].shape[1] if out[0].dim() == 3 else out[0].shape[0]
    total, width = 0, m.input_size
    for _ in range(m.num_layers):
        total += 4 * m.hidden_size * (width + m.hidden_size)
        width = m.hidden_size
    return steps * total


def macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates of one forward over example_inputs (every matmul and conv,
    attention's included), from torch's FLOP counter (2 FLOPs per MAC), plus nn.LSTM's."""
    recurrent = [0]
    handles = [m.register_forward_hook(
        lambda mod, a, o: recurrent.__setitem__(0, recurrent[0] + _lstm_macs(mod, a, o)))
        for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*_inputs(example_inputs))
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops() // 2 + recurrent[0]
