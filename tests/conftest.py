"""Shared fixtures: devices to run on, one thread for tiny models, and the rule that CI never
passes on a missing kernel."""

import contextlib
import os

import pytest
import torch

from compressor import _extension
from compressor.ops._dispatch import has_kernel

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_sessionstart(session):
    # A broken build must never pass as "fallback" in CI.
    if IN_CI and not _extension.load():
        pytest.exit(f"CI: compressor._C did not load: {_extension.error()}", returncode=1)


def require_kernel(op_name: str, device: str) -> None:
    """Skip (locally) or fail (in CI, for CPU) when compressor::<op_name> has no kernel here."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    if not has_kernel(op_name, device):
        why = _extension.error() or "not built"
        reason = f"compressor::{op_name} has no {device} kernel ({why})"
        if IN_CI and device == "cpu":
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op thread count set to `threads` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return request.param


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the structured-pruning and robustness models are tiny,
    and on a busy 2-core machine two OpenMP threads wait on each other for longer than a small
    conv takes (measured 25-80 ms vs 0.05 ms per conv). Use with pytest.mark.usefixtures."""
    with torch_threads(1):
        yield
