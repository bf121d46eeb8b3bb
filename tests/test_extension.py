"""The build and import contract: the extension loads, falls back cleanly, never touches CUDA."""

import json
import os
import subprocess
import sys

import torch

from compressor import _extension
from compressor.ops import OP_NAMES
from tests.conftest import IN_CI


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_every_listed_op_is_registered_with_a_cpu_kernel():
    if not _extension.load():
        assert not IN_CI, "the extension must build in CI"
        return
    for name in OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"compressor::{name}", "CPU"), name


def test_import_does_not_initialise_cuda():
    out = run_python("import compressor, torch; print(torch.cuda.is_initialized())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_import_without_extension_warns_once_and_ops_fall_back():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import compressor\n"
        "    from compressor.ops import cumax, reference\n"
        "    x = torch.randn(3, 5)\n"
        "    assert torch.equal(cumax(x), reference.cumax(x))\n"
        "print(sum('extension not available' in str(m.message) for m in w))\n"
    )
    out = run_python(code, COMPRESSOR_DISABLE_EXTENSION="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_info_without_extension_says_why():
    out = run_python("from compressor.cli import main; main(['info', '--json'])",
                     COMPRESSOR_DISABLE_EXTENSION="1")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["extension_loaded"] is False
    assert "COMPRESSOR_DISABLE_EXTENSION" in facts["extension_error"]
    assert all(not dev["cpu"] for dev in facts["kernels"].values())


def test_info_lists_kernels():
    from compressor import info

    facts = info()
    assert set(facts["kernels"]) == set(OP_NAMES)
    assert facts["kernels"]["cumax"]["cpu"] == _extension.load()
    if torch.cuda.is_available() and facts["torch_cuda"]:
        assert facts["kernels"]["cumax"]["cuda"], facts["build"]
