"""Builds compressor._C: C++ kernels always, CUDA kernels when torch has CUDA and nvcc exists.

Environment switches (see README):
  COMPRESSOR_NO_EXTENSION=1  build no extension at all (ops run on their PyTorch twins)
  COMPRESSOR_NO_CUDA=1       skip the CUDA kernels even when torch and nvcc could build them
  COMPRESSOR_PORTABLE=1      do not tune the C++ kernels for this machine's CPU (-march=native)
"""

import glob
import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
BUILD_INFO = ROOT / "compressor" / "_build_info.py"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def cuda_build_status() -> tuple[bool, str]:
    """Whether to build the CUDA kernels, and the reason in words for `compressor info`."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if env_flag("COMPRESSOR_NO_CUDA"):
        return False, "skipped: COMPRESSOR_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, f"skipped: torch {torch.__version__} is a CPU-only build"
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    if not nvcc or not os.path.exists(nvcc):
        return False, "skipped: nvcc not found (set CUDA_HOME)"
    return True, f"built with CUDA {torch.version.cuda} ({nvcc})"


def write_build_info(**facts) -> None:
    lines = ['"""Written by setup.py at build time; not tracked by git."""\n']
    lines += [f"{key} = {value!r}\n" for key, value in facts.items()]
    BUILD_INFO.write_text("".join(lines))


def extensions():
    if env_flag("COMPRESSOR_NO_EXTENSION"):
        write_build_info(extension="skipped: COMPRESSOR_NO_EXTENSION is set", cxx_flags=[],
                         cuda="skipped: no extension", nvcc_flags=[])
        return [], {}

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # No -std here: torch's cpp_extension adds the standard its own headers were built with
    # (c++17 for torch 2.11, c++20 for 2.13); forcing c++20 on 2.11 broke ArrayRef comparisons.
    cxx = ["-O3", "-fopenmp"]
    if not env_flag("COMPRESSOR_PORTABLE"):
        cxx.append("-march=native")
    nvcc = ["-O3", "--expt-relaxed-constexpr"]
    with_cuda, cuda_status = cuda_build_status()

    sources = ["csrc/ops.cpp", "csrc/module.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    common = dict(
        name="compressor._C",
        include_dirs=[str(ROOT / "csrc" / "include")],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                            **common)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)
    write_build_info(extension="built", cxx_flags=cxx, cuda=cuda_status,
                     nvcc_flags=nvcc if with_cuda else [])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()

setup(
    name="compressor",
    version="0.1.0",
    description="PyTorch model compression with real speedups: lottery tickets, sparse kernels, "
    "power-of-two quantization, ON-LSTM, ONNX export",
    packages=find_packages(include=["compressor", "compressor.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "numpy",
        "scikit-learn",
        "mnist1d",
        "matplotlib",
        "tqdm",
        "onnx",
        "onnxruntime",
    ],
    extras_require={"dev": ["pytest", "hypothesis", "ruff", "onnxscript"]},
    entry_points={"console_scripts": ["compressor=compressor.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
