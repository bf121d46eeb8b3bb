"""Resumable dense training: `fit` with a checkpoint written (atomically, checksummed) every N
steps, so a killed `compressor train --checkpoint PATH` continues where it stopped and ends with
the weights an uninterrupted run would have (batches come from (seed, step); the RNG state is
saved for dropout).

A checkpoint names what its result depends on: the training settings, a digest of the data, the
architecture and a digest of the starting weights (which also covers the seed). Resuming under
anything else is an error naming what differs, never a silent mix of two runs.
"""

import os
from pathlib import Path

import torch
from torch import nn

from compressor.data import Dataset
from compressor.errors import CompressorError
from compressor.io import content_digest, load_checked, save_checked
from compressor.train import Callback, FitResult, TrainConfig, fit, make_optimizer

FIX = "delete it to train from the start"
WHAT = {"train": "training settings", "data": "data", "architecture": "architecture",
        "start": "starting weights (seed)"}


def data_digest(data: Dataset) -> str:
    return content_digest([data.x_train, data.y_train, data.x_test, data.y_test])


def training_key(model: nn.Module, data: Dataset, cfg: TrainConfig, architecture: dict) -> dict:
    """What a dense training's result depends on (the model as it is before training)."""
    return {"train": cfg.to_dict(), "data": data_digest(data), "architecture": architecture,
            "start": content_digest(model.state_dict())}


class _Writer(Callback):
    def __init__(self, path: Path, key: dict, model: nn.Module, opt, curve: list, every: int,
                 total: int):
        self.path, self.key, self.model, self.opt = path, key, model, opt
        self.curve, self.every, self.total = curve, every, total

    def on_step_end(self, step: int) -> None:
        # after the step's evaluation, so the resumed curve is the uninterrupted one
        if step % self.every == 0 or step == self.total:
            save_checked(self.path, {"key": self.key, "step": step, "curve": list(self.curve),
                                     "model": self.model.state_dict(),
                                     "optimizer": self.opt.state_dict(),
                                     "rng": torch.get_rng_state()})


def _resume(path: Path, key: dict, model: nn.Module, opt) -> tuple[int, list]:
    saved = load_checked(path, "training checkpoint", FIX)
    if not isinstance(saved, dict) or "key" not in saved:
        raise CompressorError(f"training checkpoint {path} is not a training checkpoint; {FIX}")
    differs = [WHAT[name] for name in key if saved["key"].get(name) != key[name]]
    if differs:
        raise CompressorError(f"training checkpoint {path} was made with other {', '.join(differs)}"
                              f" (a checkpoint resumes only the run that wrote it); {FIX} or "
                              "give another --checkpoint")
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return int(saved["step"]), list(saved["curve"])


def resumable_fit(model: nn.Module, data: Dataset, cfg: TrainConfig,
                  checkpoint: str | os.PathLike, architecture: dict, every: int = 100,
                  progress: bool = False, desc: str = "train") -> tuple[FitResult, int]:
    """fit() that resumes from and writes `checkpoint`; returns (result, the step it started
    from)."""
    if every < 1:
        raise CompressorError(f"--checkpoint-every must be >= 1, got {every}")
    path = Path(checkpoint)
    key = training_key(model, data, cfg, architecture)
    opt = make_optimizer(model.parameters(), cfg)
    start, curve = _resume(path, key, model, opt) if path.exists() else (0, [])
    writer = _Writer(path, key, model, opt, curve, every, cfg.steps)
    result = fit(model, data, cfg, optimizer=opt, callbacks=[writer], start_step=start,
                 curve=curve, progress=progress, desc=desc)
    return result, start
