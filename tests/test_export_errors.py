"""User mistakes around export give one-line errors that say what to do."""

import pytest
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.export import ExportConfig, to_onnx
from compressor.ops import cumax
from tests.conftest import require_kernel

FAST = ExportConfig(measure_latency=False, random_inputs=0)


def linear():
    return nn.Sequential(nn.Linear(4, 2))


@pytest.mark.parametrize("name,match", [("m.txt", "must end in .onnx"),
                                        ("missing/m.onnx", "does not exist")])
def test_bad_path(tmp_path, name, match):
    with pytest.raises(CompressorError, match=match):
        to_onnx(linear(), torch.randn(1, 4), tmp_path / name, FAST)


def test_path_is_a_directory(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(CompressorError, match="is a directory"):
        to_onnx(linear(), torch.randn(1, 4), tmp_path / "d.onnx", FAST)


@pytest.mark.parametrize("inputs,match", [
    ("x", "must be a tensor or a non-empty tuple of tensors"),
    ((), "must be a tensor or a non-empty tuple of tensors"),
    (torch.randn(1, 5), "the model fails on example_inputs"),
])
def test_bad_example_inputs(tmp_path, inputs, match):
    with pytest.raises(CompressorError, match=match):
        to_onnx(linear(), inputs, tmp_path / "m.onnx", FAST)


def test_not_a_module(tmp_path):
    with pytest.raises(CompressorError, match="model must be a torch.nn.Module"):
        to_onnx(lambda x: x, torch.randn(1, 4), tmp_path / "m.onnx", FAST)


class UsesCumax(nn.Module):
    def forward(self, x):
        return cumax(x)


def test_module_calling_a_compressor_kernel_is_named(tmp_path):
    require_kernel("cumax", "cpu")
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(UsesCumax()))
    with pytest.raises(CompressorError, match=r"module 1\.0 \(UsesCumax\) calls compressor\.cumax"):
        to_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx", FAST)


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_exporter_failure_names_the_model_and_a_fix(tmp_path):
    with pytest.raises(CompressorError, match="exporting DataDependent with the dynamo exporter "
                       "failed.*try exporter='torchscript'"):
        to_onnx(DataDependent(), torch.randn(2, 4), tmp_path / "m.onnx", FAST)


def test_exporter_failure_names_the_failing_submodule(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), DataDependent()))
    with pytest.raises(CompressorError, match=r"exporting Sequential with the dynamo exporter "
                       r"failed in module 1\.1 \(DataDependent\)"):
        to_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx", FAST)


@pytest.mark.parametrize("kwargs,match", [({"opset": 16}, r"opset must be in 17\.\."),
                                          ({"exporter": "x"}, "exporter must be one of"),
                                          ({"encodings": ("zip",)}, "encodings must be one of")])
def test_config_errors(kwargs, match):
    with pytest.raises(CompressorError, match=match):
        ExportConfig(**kwargs)


def test_failed_verification_leaves_no_file(tmp_path, monkeypatch):
    from compressor.export import verify

    monkeypatch.setattr(verify, "max_error", lambda ref, got: (1.0, 1.0))
    with pytest.raises(CompressorError, match="onnxruntime output differs from PyTorch by 1"):
        to_onnx(linear(), torch.randn(1, 4), tmp_path / "m.onnx", FAST)
    assert list(tmp_path.iterdir()) == []
