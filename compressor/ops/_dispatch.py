"""Chooses between a compiled kernel and its PyTorch twin for one call."""

import functools

import torch

from compressor import _extension


@functools.cache
def _has_kernel(op_name: str, device_type: str) -> bool:
    if not _extension.load():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"compressor::{op_name}", key)


# Registrations never change after import, so torch.compile may treat the answer as a constant.
@torch.compiler.assume_constant_result
def has_kernel(op_name: str, device: torch.device | str) -> bool:
    """True when compressor::<op_name> has a compiled kernel for this device type.

    Looks at the dispatcher only, so it never initialises CUDA.
    """
    return _has_kernel(op_name, torch.device(device).type)


def kernel_table(op_names: list[str]) -> dict[str, dict[str, bool]]:
    """{op: {"cpu": bool, "cuda": bool}} for `compressor info`."""
    return {name: {dev: has_kernel(name, dev) for dev in ("cpu", "cuda")} for name in op_names}
