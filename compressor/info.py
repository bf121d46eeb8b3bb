"""`compressor info`: versions, which kernels were built for which device, and why not."""

import platform

import torch

from compressor import _extension


def _build_info() -> dict:
    try:
        from compressor import _build_info as b
    except ImportError:
        return {"extension": "not built (no compressor/_build_info.py: run pip install -e .)"}
    return {k: getattr(b, k) for k in ("extension", "cxx_flags", "cuda", "nvcc_flags")}


def info() -> dict:
    """Facts about this installation, as a dict (also printed by `compressor info`)."""
    from compressor.ops import OP_NAMES
    from compressor.ops._dispatch import kernel_table

    loaded = _extension.load()
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "extension_loaded": loaded,
        "extension_error": _extension.error(),
        "build": _build_info(),
        "kernels": kernel_table(OP_NAMES),
    }
    for name in ("onnx", "onnxruntime"):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            facts[name] = None
    return facts


def format_info(facts: dict) -> str:
    build = facts["build"]
    lines = [
        f"python {facts['python']}, torch {facts['torch']} (CUDA {facts['torch_cuda']}), "
        f"onnx {facts['onnx']}, onnxruntime {facts['onnxruntime']}, {facts['threads']} threads",
        "extension: "
        + ("loaded" if facts["extension_loaded"] else f"NOT loaded: {facts['extension_error']}"),
        f"build: {build.get('extension')}; C++ flags {' '.join(build.get('cxx_flags', []))}",
        f"CUDA kernels: {build.get('cuda', 'unknown')}",
        "kernels (op: cpu cuda):",
    ]
    for op, devices in facts["kernels"].items():
        marks = " ".join(f"{dev}={'yes' if ok else 'no'}" for dev, ok in devices.items())
        lines.append(f"  {op:<28} {marks}")
    return "\n".join(lines)
