"""What the transforms did to a model, carried by the model itself.

Each transform (`prune_`, `quantize_`, `sparsify_`, structured pruning, ...) appends one record:
{"stage": name, "config": config.to_dict(), "layers": {fqn: {"action": ..., "reason": ...}},
 ...}. The record travels with deepcopies and in the model file, so a later stage or the report
never has to re-derive what an earlier stage decided.
"""

from torch import nn

_ATTR = "_compressor_history"


def history(model: nn.Module) -> list[dict]:
    """The records of every transform applied to `model`, oldest first (a live list)."""
    return model.__dict__.setdefault(_ATTR, [])


def record(model: nn.Module, stage: str, config=None, layers: dict | None = None,
           **facts) -> dict:
    entry = {"stage": stage,
             "config": config.to_dict() if hasattr(config, "to_dict") else config,
             "layers": layers or {}, **facts}
    history(model).append(entry)
    return entry


def set_history(model: nn.Module, records: list[dict]) -> None:
    model.__dict__[_ATTR] = list(records)


def adopt_(model: nn.Module, other: nn.Module) -> nn.Module:
    """Make the caller's object `model` the module `other` in place: other's class and state,
    model's own transform records. How a transform that works on a copy (BatchNorm folding,
    conversion of a torch layer at the root, channel removal) still changes the object it was
    given."""
    kept = history(model)
    model.__class__ = type(other)
    model.__dict__ = {**other.__dict__, _ATTR: kept}
    return model


HISTORY_ATTRIBUTE = _ATTR
