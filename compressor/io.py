"""The one way compressor writes and reads files it relies on.

- `atomic_write(path, write)`: write to a temporary file beside `path`, flush, fsync, then
  os.replace, so a killed process leaves the old file or the new one, never half of one.
- `save_checked(obj, path)` / `load_checked(path, what)`: torch files (loadable with
  weights_only=True) that carry a SHA-256 digest of their content; a flipped bit anywhere in a
  tensor or a value is detected on load and reported as a one-line error naming the file.
- `check_writable(path, flag)`: fail before any work when an output cannot be written.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from compressor.errors import CompressorError

FORMAT = "compressor-checked/1"


def atomic_write(path: str | os.PathLike, write: Callable[[object], None]) -> Path:
    """Call write(binary_file) on a temporary file, fsync it and move it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=1, default=str) + "\n")


def save_torch_atomic(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def _digest_into(h, obj) -> None:
    """Feed a canonical form of obj into hash h: tensors by dtype, shape and bytes."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest_into(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _digest_into(h, item)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())


def content_digest(obj) -> str:
    """SHA-256 of obj's content (nested dicts/lists of tensors and plain values)."""
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def save_checked(path: str | os.PathLike, obj) -> Path:
    """torch.save({format, sha256, content}) atomically."""
    return save_torch_atomic(path, {"format": FORMAT, "sha256": content_digest(obj),
                                    "content": obj})


def load_checked(path: str | os.PathLike, what: str = "file", fix: str | None = None):
    """The content of a file written by save_checked, verified; one-line errors otherwise.

    `what` says what the file is ("checkpoint", "model file"); `fix` what the user can do."""
    path = Path(path)
    fix = f"; {fix}" if fix else ""
    if path.is_dir():
        raise CompressorError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise CompressorError(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or garbled zip/pickle raise many different types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CompressorError(f"{what} {path} is not a readable torch file ({reason})"
                              f"{fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressorError(f"{what} {path} was not written by compressor (no checksum)"
                              f"{fix}")
    if content_digest(payload.get("content")) != payload.get("sha256"):
        raise CompressorError(f"{what} {path} is corrupted: its content does not match its "
                              f"SHA-256 checksum{fix}")
    return payload["content"]


def check_writable(path: str | os.PathLike, flag: str, directory: bool = False) -> Path:
    """Raise a one-line error naming `flag` when `path` cannot be created or written."""
    path = Path(path)
    target = path if directory else path.parent
    if not directory and path.is_dir():
        raise CompressorError(f"{flag} {path} is a directory; give a file path")
    if directory and path.exists() and not path.is_dir():
        raise CompressorError(f"{flag} {path} exists and is not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CompressorError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CompressorError(f"{flag} {path}: directory {existing} is not writable")
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise CompressorError(f"{flag} {path} is not writable")
    return path
