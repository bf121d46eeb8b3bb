"""Atomic checkpoint files of a run directory and the one-line errors when they are unusable."""

import json
import os
from pathlib import Path

import torch

from compressor.errors import CompressorError


def save_atomic(obj, path: Path) -> None:
    """Write to a temporary file, fsync, then os.replace: a kill leaves the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def load_checkpoint(path: Path, what: str):
    """torch.load(weights_only=True); any failure becomes a one-line error saying what to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated/garbled file raises many different types
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CompressorError(f"checkpoint {path} is corrupt ({reason}); delete it to restart "
                              f"{what}, or delete {path.parent} to start the run over") from None
