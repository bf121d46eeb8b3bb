"""Which layers the converter may swap, and what each swapped layer absorbs.

From the fx patterns (compressor.graph): a conv's BatchNorm is folded into the sparse weights and
bias, its activation (when only it calls that module) and, inside a residual block, the
shortcut add and the block's activation run in the sparse conv's epilogue. A residual block with
any sparse layer is replaced by one compressor.nn.fused.ResidualBlock (its dense layers become
ConvAct, BN folded); elsewhere the sparse layer takes the conv's place and the BN / activation
modules it absorbed become nn.Identity. Everything is a module swap, so the model's own forward
and class stay.
"""

import copy
import warnings
from dataclasses import dataclass, field

from torch import nn

from compressor.graph import Residual, TraceError, find_patterns, replace_module
from compressor.nn.fused import ConvAct, FastMaxPool2d, ResidualBlock
from compressor.nn.sparse import SparseConv1d, SparseConv2d, SparseLinear


@dataclass
class Slot:
    name: str                 # the Conv2d / Linear's path in the model
    bn: str | None = None     # BatchNorm folded in
    act: str = "none"         # activation run in the epilogue
    residual: bool = False    # adds the block's shortcut in the epilogue
    block: str | None = None  # the residual block it belongs to
    index: int | None = None  # its place in block.main; None for the shortcut
    removals: list[str] = field(default_factory=list)  # become nn.Identity when sparse

    def fused(self) -> str:
        parts = (["bn"] if self.bn else []) + (["add"] if self.residual else [])
        return "+".join(parts + ([self.act] if self.act != "none" else []))


@dataclass
class Plan:
    slots: list[Slot]
    blocks: dict[str, Residual]


def make_plan(model: nn.Module, layers: list[str]) -> Plan:
    """Slots for `layers` (paths of Conv2d / Linear to consider), fused where the trace allows."""
    try:
        patterns = find_patterns(model)
    except TraceError as exc:
        warnings.warn(f"sparse.convert: {exc}; converting layers one by one without fusing "
                      "BatchNorm, activations or residual adds", stacklevel=3)
        return Plan([Slot(name) for name in layers], {})
    wanted, slots, blocks = set(layers), {}, {}
    for r in patterns.residuals:
        units = r.main + ([r.shortcut] if r.shortcut else [])
        if not all(u.conv in wanted for u in units):
            continue
        blocks[r.block] = r
        for i, u in enumerate(r.main):
            last = i == len(r.main) - 1
            slots[u.conv] = Slot(u.conv, u.bn, (r.act if last else u.act) or "none", last,
                                 r.block, i)
        if r.shortcut:
            s = r.shortcut
            slots[s.conv] = Slot(s.conv, s.bn, s.act or "none", block=r.block)
    for u in patterns.units:
        if u.conv in wanted and u.conv not in slots and isinstance(model.get_submodule(u.conv),
                                                                   nn.Conv2d):
            act = u.act if u.act_module else None
            slots[u.conv] = Slot(u.conv, u.bn, act or "none",
                                 removals=[p for p in (u.bn, act and u.act_module) if p])
    return Plan([slots.get(name) or Slot(name) for name in layers], blocks)


def sparse_module(model: nn.Module, slot: Slot) -> nn.Module:
    layer = model.get_submodule(slot.name)
    if isinstance(layer, nn.Linear):
        return SparseLinear.from_dense(layer)
    bn = model.get_submodule(slot.bn) if slot.bn else None
    if isinstance(layer, nn.Conv1d):  # never fused (patterns fuse Conv2d units only)
        return SparseConv1d.from_dense(layer, bn, slot.act, slot.residual)
    return SparseConv2d.from_dense(layer, bn, slot.act, slot.residual)


def dense_module(model: nn.Module, slot: Slot) -> nn.Module:
    """What the slot runs as when it stays dense inside a replaced block (BN folded)."""
    bn = model.get_submodule(slot.bn) if slot.bn else None
    return ConvAct.from_dense(model.get_submodule(slot.name), bn, slot.act, slot.residual)


def apply(model: nn.Module, plan: Plan, sparse: set[str], pools: set[str] = frozenset()
          ) -> nn.Module:
    """A copy of `model` with the slots named in `sparse` swapped (fused) as the plan says, and
    the max-pools named in `pools` swapped for FastMaxPool2d."""
    work = copy.deepcopy(model)

    def swap(path: str, new: nn.Module) -> None:
        # built in training mode, a new module takes the mode of the one it replaces (a traced
        # stage runs its modules while any of them is training)
        replace_module(work, path, new.train(model.get_submodule(path).training))

    for path in pools:
        swap(path, FastMaxPool2d.from_pool(model.get_submodule(path)))
    for slot in plan.slots:
        if slot.block is None and slot.name in sparse:
            swap(slot.name, sparse_module(model, slot).to(_device(model, slot)))
            for path in slot.removals:
                swap(path, nn.Identity())
    for path in plan.blocks:
        inside = [s for s in plan.slots if s.block == path]
        if not any(s.name in sparse for s in inside):
            continue
        pick = {s.name: (sparse_module if s.name in sparse else dense_module)(model, s)
                .to(_device(model, s)) for s in inside}
        main = [pick[s.name] for s in sorted((s for s in inside if s.index is not None),
                                             key=lambda s: s.index)]
        short = [pick[s.name] for s in inside if s.index is None]
        swap(path, ResidualBlock(main, short[0] if short else None))
    return work


def _device(model: nn.Module, slot: Slot):
    return model.get_submodule(slot.name).weight.device
