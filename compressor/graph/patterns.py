"""Find conv -> BatchNorm -> activation (-> add) patterns in a model's torch.fx trace.

A *unit* is a Conv1d/2d/3d or Linear called once, optionally followed by the BatchNorm it alone
feeds (called once, with running statistics), optionally followed, for a Conv2d, by an
activation (relu, relu6, silu; a module, a function or a method).

A *residual block* is a submodule whose whole forward is act?(main(x) + shortcut(x)): main a
chain of units from the block's one input, the last without an activation of its own; shortcut
the input itself or one unit applied to it (torchvision's BasicBlock / Bottleneck with or
without downsample, MobileNetV2's inverted residual). The trace says which module's forward each
node came from (nn_module_stack), so a residual add written in forward is found whatever the
attribute names.
"""

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.nn.attention import MultiheadAttention

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ACT_FUNCTIONS = {torch.relu: "relu", F.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
                  F.silu: "silu"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}


class TraceError(CompressorError):
    """torch.fx could not trace the model (data-dependent control flow, unsupported calls)."""


@dataclass
class Unit:
    conv: str                 # module path of the Conv1d/2d/3d / Linear
    bn: str | None = None     # the BatchNorm folded into it
    act: str | None = None    # "relu" | "relu6" | "silu" after it (after the BN)
    act_module: str | None = None  # the activation's module when only this unit calls it
    nodes: list = field(default_factory=list, repr=False)

    @property
    def output(self) -> fx.Node:
        return self.nodes[-1]


@dataclass
class Residual:
    block: str                # module path of the block, replaced as a whole
    main: list[Unit]          # chain from the block input; main[-1] adds the shortcut
    shortcut: Unit | None     # None: the block input itself
    act: str | None           # activation after the add


@dataclass
class Patterns:
    units: list[Unit]
    residuals: list[Residual]


class _Tracer(fx.Tracer):
    """fx's tracer with attention as one leaf: its forward branches on masks and shapes, and
    nothing inside it is a conv -> BN -> act pattern (its projections still convert one by
    one)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, MultiheadAttention) or super().is_leaf_module(
            m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as exc:  # fx raises many kinds; all mean "not traceable"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: "
                         f"{type(exc).__name__}: {first}") from None


def _activation(node: fx.Node, modules: dict) -> str | None:
    if node.op == "call_module":
        mod = modules.get(node.target)
        if isinstance(mod, nn.ReLU6) or (isinstance(mod, nn.Hardtanh) and
                                         (mod.min_val, mod.max_val) == (0.0, 6.0)):
            return "relu6"
        return {nn.ReLU: "relu", nn.SiLU: "silu"}.get(type(mod))
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        return _ACT_FUNCTIONS[node.target]
    if node.op == "call_method" and node.target in _ACT_METHODS:
        return _ACT_METHODS[node.target]
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].args[:1] == (node,) else None


# layer type -> the BatchNorm that can follow it
_NORM_OF = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
            nn.Linear: nn.BatchNorm1d}


def _foldable_bn(node: fx.Node | None, layer: nn.Module, modules: dict, calls: dict) -> bool:
    if node is None or node.op != "call_module" or calls[node.target] != 1:
        return False
    bn = modules[node.target]
    return (type(bn) is _NORM_OF[type(layer)] and bn.track_running_stats
            and bn.running_mean is not None and bn.num_features == layer.weight.shape[0]
            and len(node.args) == 1)


def _unit(node: fx.Node, modules: dict, calls: dict) -> Unit | None:
    layer = modules.get(node.target) if node.op == "call_module" else None
    if type(layer) not in _NORM_OF or calls[node.target] != 1:
        return None
    unit, cur = Unit(node.target, nodes=[node]), node
    nxt = _only_user(cur)
    if _foldable_bn(nxt, layer, modules, calls):
        unit.bn, cur = nxt.target, nxt
        unit.nodes.append(nxt)
        nxt = _only_user(cur)
    kind = _activation(nxt, modules) if nxt is not None else None
    if kind is not None and isinstance(layer, nn.Conv2d):
        unit.act = kind
        if nxt.op == "call_module" and calls[nxt.target] == 1:
            unit.act_module = nxt.target
        unit.nodes.append(nxt)
    return unit


def _stack(node: fx.Node) -> list[str]:
    return [key.split("@")[0] for key in node.meta.get("nn_module_stack", {})]


def find_patterns(model: nn.Module) -> Patterns:
    """Units and residual blocks of `model`; raises TraceError when fx cannot trace it."""
    gm = trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    units = [u for node in gm.graph.nodes if (u := _unit(node, modules, calls)) is not None]
    by_output = {u.output: u for u in units}
    residuals = []
    for node in gm.graph.nodes:
        found = _residual(node, gm, by_output, modules, calls)
        if found is not None:
            residuals.append(found)
    return Patterns(units, residuals)


def _is_add(node: fx.Node) -> bool:
    plain = len(node.args) == 2 and not node.kwargs and all(
        isinstance(a, fx.Node) for a in node.args)
    return plain and ((node.op == "call_function" and node.target in _ADD_FUNCTIONS) or
                      (node.op == "call_method" and node.target in ("add", "add_")))


def _residual(add, gm, by_output, modules, calls) -> Residual | None:
    if not _is_add(add) or not _stack(add):
        return None
    block = _stack(add)[-1]
    region = [n for n in gm.graph.nodes if block in _stack(n)]
    inside = set(region)
    inputs = {a for n in region for a in n.all_input_nodes if a not in inside}
    post = _only_user(add)
    post_act = _activation(post, modules) if post is not None else None
    end = post if post_act is not None else add
    leaving = {n for n in region if any(u not in inside for u in n.users)}
    if len(inputs) != 1 or leaving != {end}:
        return None
    x = next(iter(inputs))
    for main_out, other in (add.args, add.args[::-1]):
        last = by_output.get(main_out)
        if last is None or last.act is not None or len(main_out.users) != 1:
            continue
        chain = _chain_back(last, x, by_output)
        shortcut = None if other is x else by_output.get(other)
        if chain is None or (other is not x and (shortcut is None or shortcut.nodes[0].args[0]
                                                 is not x)):
            continue
        covered = {n for u in chain + [shortcut] if u for n in u.nodes} | {add, end}
        owned = all(n.target.startswith(block + ".") and calls[n.target] ==
                    sum(m.target == n.target for m in region if m.op == "call_module")
                    for n in region if n.op == "call_module")
        convs_only = all(type(modules[u.conv]) is nn.Conv2d for u in chain + [shortcut] if u)
        if covered == inside and owned and convs_only:
            return Residual(block, chain, shortcut, post_act)
    return None


def _chain_back(last: Unit, x: fx.Node, by_output: dict) -> list[Unit] | None:
    chain = [last]
    while chain[0].nodes[0].args[0] is not x:
        prev = by_output.get(chain[0].nodes[0].args[0])
        if prev is None or len(prev.output.users) != 1 or prev in chain:
            return None
        chain.insert(0, prev)
    return chain


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` where the submodule at `path` ("a.b.0") is."""
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
