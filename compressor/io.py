"""The one way compressor writes and reads files it relies on.

- `atomic_write(path, write)`: write to a temporary file beside `path`, flush, fsync, then
  os.replace, so a killed process leaves the old file or the new one, never half of one.
- `save_checked(obj, path)` / `load_checked(path, what)`: torch files (loadable with
  weights_only=True) that carry a SHA-256 digest of their content; a flipped bit anywhere in a
  tensor or a value is detected on load and reported as a one-line error naming the file.
- `check_writable(path, flag)`: fail before any work when an output cannot be written.
- `cache_dir()` / `check_cache_writable()`: the one cache directory (COMPRESSOR_CACHE).
"""

import hashlib
import json
import os
import pickle
import sys
import tempfile
import zipfile
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


def read_json_cache(path: str | os.PathLike, what: str = "cache file"):
    """The JSON content of a cache file, or None when it is missing or unreadable: a cache is
    derived data, so a damaged one is reported in one line and rebuilt, never trusted."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"compressor: {what} {path} is unreadable ({type(exc).__name__}); rebuilding it",
              file=sys.stderr)
        return None


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


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch.load failed, in words a user can act on."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if head != b"PK\x03\x04":
        return "not a zip archive: another kind of file"
    if not zipfile.is_zipfile(path):
        return "truncated: its zip archive has no end"
    with zipfile.ZipFile(path) as archive:
        if not any(n.endswith("data.pkl") for n in archive.namelist()):
            return "a zip archive (an .npz?) without torch's data.pkl"
    if isinstance(exc, pickle.UnpicklingError):
        return "it holds Python objects, not plain tensors and values"
    return "damaged: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


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
        raise CompressorError(f"{what} {path} is not a readable torch file "
                              f"({_unreadable(path, exc)}){fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressorError(f"{what} {path} was not written by compressor or is damaged (no "
                              f"checksum found){fix}")
    if content_digest(payload.get("content")) != payload.get("sha256"):
        raise CompressorError(f"{what} {path} is corrupted: its content does not match its "
                              f"SHA-256 checksum{fix}")
    return payload["content"]


def check_writable(path: str | os.PathLike, flag: str, directory: bool = False) -> Path:
    """Raise a one-line error naming `flag` when `path` cannot be created or written.

    Permission bits do not tell (root passes every os.access test; /proc, read-only mounts and
    full quotas refuse anyway), so a temporary file is created and removed in the nearest
    existing directory; nothing else is created."""
    path = Path(path)
    target = path if directory else path.parent
    if not directory and path.is_dir():
        raise CompressorError(f"{flag} {path} is a directory; give a file path")
    if directory and path.exists() and not path.is_dir():
        raise CompressorError(f"{flag} {path} exists and is not a directory")
    existing = target.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CompressorError(f"{flag} {path}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".compressor-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CompressorError(f"{flag} {path}: cannot write in {existing} "
                              f"({exc.strerror or exc})") from None
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise CompressorError(f"{flag} {path} is not writable")
    return path


def cache_dir() -> Path:
    """Where generated datasets and measured timings are cached: $COMPRESSOR_CACHE, or
    ~/.cache/compressor. Not created here."""
    return Path(os.environ.get("COMPRESSOR_CACHE") or Path.home() / ".cache" / "compressor")


def check_cache_writable() -> Path:
    """The cache directory, created; a one-line error naming COMPRESSOR_CACHE otherwise."""
    path = check_writable(cache_dir(), "the cache directory (COMPRESSOR_CACHE)", directory=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompressorError(f"the cache directory (COMPRESSOR_CACHE) {path} cannot be "
                              f"created ({exc.strerror or exc})") from None
    return path
