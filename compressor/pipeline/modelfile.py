"""The one model file every command reads and writes.

Content (a checksummed torch file, see compressor.io, loadable with weights_only=True):
- architecture: {"factory": a compressor.models name or "package.module:function", "kwargs"}
- replaced: the modules that differ from a fresh build of the architecture (a sparse or
  power-of-two layer, a channel-pruned conv, a masked layer), each described structurally:
  class path, plain attributes, parameter and buffer names, children;
- state_dict (masks and packed codes included) and metadata (the transforms' history, the data
  the model was trained on, ...).

Loading builds the architecture, rebuilds the replaced modules from their descriptions, then
loads the state_dict strictly, so nothing is re-derived: a stage's decisions come back as they
were saved. Only classes from torch.nn, compressor and the architecture's own package are ever
rebuilt from a file.
"""

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.graph import replace_module
from compressor.history import HISTORY_ATTRIBUTE, history, set_history
from compressor.io import load_checked, save_checked
from compressor.models import MODELS, build_model
from compressor.pruning.masks import MASK_SUFFIX

VERSION = 1
_MODULE_INTERNALS = set(vars(nn.Module())) | {HISTORY_ATTRIBUTE}
_PLAIN = (int, float, bool, str, type(None))


@dataclass
class ModelFile:
    """What a model file holds besides the module itself."""

    factory: str
    kwargs: dict
    metadata: dict = field(default_factory=dict)
    path: str | None = None

    def architecture(self) -> dict:
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}


def resolve_factory(name: str):
    """A compressor.models name, or 'package.module:function' for the user's own model."""
    if name in MODELS:
        return lambda **kw: build_model(name, **kw)
    if ":" not in name:
        raise CompressorError(f"unknown model {name!r}: use one of {sorted(MODELS)} or "
                              "package.module:function")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any import error is theirs to fix
        raise CompressorError(f"model {name!r}: cannot import {module_name} "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CompressorError(f"model {name!r}: {module_name} has no function {attr!r}")
    return factory


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def build(factory: str, kwargs: dict) -> nn.Module:
    """Call the factory; whatever it raises becomes a one-line error naming it."""
    fn = resolve_factory(factory)
    # JSON and TOML give lists; shapes are tuples to the factories
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        model = fn(**kwargs)
    except CompressorError:
        raise
    except Exception as exc:
        raise CompressorError(f"model factory {factory!r} failed with {kwargs}: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise CompressorError(f"model factory {factory!r} returned {type(model).__name__}, "
                              "not a torch.nn.Module")
    return model


# ---- structural descriptions of modules --------------------------------------------------

def _plain(value) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _attributes(module: nn.Module) -> dict:
    return {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS}


def _class_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(module: nn.Module, where: str) -> dict:
    """{class, attrs, params, buffers, children} of a module tree; raises on attributes that
    cannot be stored as plain values (a function, a tensor outside the buffers)."""
    attrs, caches = {}, []
    for key, value in _attributes(module).items():
        if key.startswith("_") and type(value) in (dict, list, set, tuple) and not _plain(value):
            caches.append([key, type(value).__name__])  # a private cache: rebuilt empty
            continue
        if not _plain(value):
            raise CompressorError(
                f"cannot save module {where or '<model>'} ({type(module).__name__}): attribute "
                f"{key!r} holds a {type(value).__name__}, not a plain value")
        attrs[key] = value
    return {"class": _class_path(module), "attrs": attrs, "caches": caches,
            # None entries (a Conv2d without bias) are kept: forward reads them as attributes
            "params": {n: None if p is None else p.requires_grad
                       for n, p in module._parameters.items()},
            "buffers": {n: None if b is None else n not in module._non_persistent_buffers_set
                        for n, b in module._buffers.items()},
            "children": {n: describe(c, f"{where}.{n}".strip("."))
                         for n, c in module._modules.items() if c is not None}}


def _allowed(class_path: str, factory: str) -> bool:
    roots = ["torch.nn.", "compressor."]
    if ":" in factory:
        roots.append(factory.partition(":")[0].split(".")[0] + ".")
    return any(class_path.startswith(r) for r in roots)


def _import_class(class_path: str, factory: str):
    if not _allowed(class_path, factory):
        raise CompressorError(f"model file names class {class_path}, outside torch.nn, "
                              "compressor and the model's own package; refusing to load it")
    module_name, _, name = class_path.rpartition(".")
    obj = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CompressorError(f"model file names class {class_path}, which does not exist here")
    return obj


def rebuild(desc: dict, state: dict, prefix: str, factory: str) -> nn.Module:
    """A module from its description; tensors get their saved shapes (values come from load)."""
    cls = _import_class(desc["class"], factory)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__dict__.update(desc["attrs"])
    for key, kind in desc["caches"]:
        module.__dict__[key] = {"dict": dict, "list": list, "set": set, "tuple": tuple}[kind]()
    for name, requires_grad in desc["params"].items():
        if requires_grad is None:
            module.register_parameter(name, None)
            continue
        like = state.get(prefix + name)
        if like is None:
            raise CompressorError(f"model file lacks tensor {prefix + name}")
        module.register_parameter(name, nn.Parameter(torch.empty_like(like),
                                                     requires_grad=requires_grad))
    for name, persistent in desc["buffers"].items():
        if persistent is None:
            module.register_buffer(name, None)
            continue
        like = state.get(prefix + name)
        module.register_buffer(name, None if like is None else torch.empty_like(like),
                               persistent=persistent)
    for name, child in desc["children"].items():
        module.add_module(name, rebuild(child, state, f"{prefix}{name}.", factory))
    return module


def _signature(module: nn.Module) -> tuple:
    """What must match between a saved module and a fresh one for no description to be needed."""
    attrs = {k: v for k, v in _attributes(module).items() if _plain(v)}
    return (type(module), tuple(sorted(attrs.items(), key=lambda kv: kv[0])),
            tuple((n, tuple(p.shape), p.dtype) for n, p in module._parameters.items()
                  if p is not None),
            tuple((n, tuple(b.shape), b.dtype, n in module._non_persistent_buffers_set)
                  for n, b in module._buffers.items() if b is not None),
            tuple(module._modules))


def _replaced(model: nn.Module, fresh: nn.Module) -> dict:
    fresh_modules = dict(fresh.named_modules())
    out = {}
    for name, module in model.named_modules():
        if any(name.startswith(done + ".") for done in out) or (name == "" and "" in out):
            continue
        twin = fresh_modules.get(name)
        if twin is None or _signature(module) != _signature(twin):
            out[name] = describe(module, name)
    return out


# ---- save / load ------------------------------------------------------------------------

def save_model(path: str | os.PathLike, model: nn.Module, info: ModelFile) -> Path:
    """Write the model file atomically (checksummed)."""
    fresh = build(info.factory, info.kwargs)
    state, mask_dtypes = {}, {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key.endswith(MASK_SUFFIX) and value.is_floating_point():
            mask_dtypes[key] = str(value.dtype).removeprefix("torch.")
            value = value != 0  # 0/1 masks stored as bool: a byte, not four, per weight
        state[key] = value
    payload = {"version": VERSION, "architecture": info.architecture(),
               "replaced": _replaced(model, fresh), "state_dict": state,
               "mask_dtypes": mask_dtypes,
               "training": model.training,
               "metadata": {**info.metadata, "history": list(history(model))}}
    return save_checked(path, payload)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    if name == "":
        return module
    replace_module(model, name, module)
    return model


def load_model(path: str | os.PathLike, what: str = "model file") -> tuple[nn.Module, ModelFile]:
    """(model, its ModelFile); any problem is a one-line error naming the file."""
    payload = load_checked(path, what, "regenerate it with the command that wrote it")
    version = payload.get("version") if isinstance(payload, dict) else None
    if version != VERSION:
        raise CompressorError(f"{what} {path} is not a compressor model file of version "
                              f"{VERSION} (found {version!r})")
    arch, state = payload["architecture"], dict(payload["state_dict"])
    for key, dtype in payload.get("mask_dtypes", {}).items():
        state[key] = state[key].to(getattr(torch, dtype))
    model = build(arch["factory"], arch["kwargs"])
    for name, desc in sorted(payload["replaced"].items(), key=lambda kv: kv[0].count(".")):
        prefix = f"{name}." if name else ""
        model = _set_submodule(model, name, rebuild(desc, state, prefix, arch["factory"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CompressorError(f"{what} {path} does not fit its architecture "
                              f"{arch['factory']}: {_first_line(exc)}") from None
    model.train(bool(payload.get("training", False)))
    for module in model.modules():
        hook = getattr(module, "after_model_load", None)
        if callable(hook):  # e.g. decode caches that are not stored (non-persistent buffers)
            hook()
    metadata = dict(payload.get("metadata") or {})
    set_history(model, metadata.pop("history", []))
    return model, ModelFile(arch["factory"], dict(arch["kwargs"]), metadata, str(path))
