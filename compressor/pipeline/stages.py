"""The stages of the pipeline as functions on (model, data): each command runs one of them, and
`compressor run` runs them in order. Every stage returns the metrics it measured."""

import copy
import os
from pathlib import Path

import torch
from torch import nn

from compressor.data import Dataset
from compressor.export import ExportConfig, to_onnx
from compressor.export import verify as onnx_verify
from compressor.history import history, record
from compressor.lottery import LotteryConfig, LotteryRun
from compressor.pipeline.modelfile import ModelFile, build
from compressor.pruning import PruneConfig, fold_masks, has_masks, prune_and_finetune_
from compressor.quantization import INQConfig, Int8Config, quantize_
from compressor.sparse import SparsifyConfig, sparsify_
from compressor.structured import StructuredConfig, prune_channels_
from compressor.train import TrainConfig, evaluate, fit


def accuracy(model: nn.Module, data: Dataset) -> float:
    return evaluate(model, data.x_test, data.y_test)


def train_dense(model: nn.Module, data: Dataset, cfg: TrainConfig, progress: bool = False
                ) -> dict:
    result = fit(model, data, cfg, progress=progress, desc="dense training")
    record(model, "train", cfg)
    return {"test_acc": accuracy(model, data), "curve": result.curve}


def prune_stage(model: nn.Module, data: Dataset, cfg: PruneConfig, train: TrainConfig,
                progress: bool = False) -> dict:
    prune_and_finetune_(model, data, cfg, train, progress=progress)
    return {"test_acc": accuracy(model, data),
            "sparsity": history(model)[-1].get("total_sparsity")}


def structured_stage(model: nn.Module, data: Dataset, cfg: StructuredConfig,
                     train: TrainConfig, progress: bool = False) -> dict:
    """Channel pruning (the model physically shrinks), then `train.steps` of fine-tuning."""
    params = sum(p.numel() for p in model.parameters())
    prune_channels_(model, cfg, (data.x_train[:2],), data=data)
    if train.steps:
        fit(model, data, train, progress=progress, desc="fine-tune")
    return {"test_acc": accuracy(model, data), "params_before": params,
            "params_after": sum(p.numel() for p in model.parameters())}


def lottery_stage(info: ModelFile, data: Dataset, cfg: LotteryConfig, run_dir: Path,
                  progress: bool = False) -> tuple[nn.Module, dict]:
    """Iterative magnitude pruning with rewinding; returns the last round's ticket, retrained."""
    def model_fn():
        return build(info.factory, info.kwargs)

    run = LotteryRun(cfg, run_dir=run_dir, data=data, model_fn=model_fn, progress=progress)
    records = run.run()
    ticket = run.build_ticket()
    final = [r for r in records if r["variant"] == "ticket"][-1]
    record(ticket, "lottery", cfg, rounds=cfg.rounds, run_dir=str(run_dir))
    return ticket, {"test_acc": accuracy(ticket, data), "records": records,
                    "sparsity": final.get("sparsity", {}).get("total")}


def quantize_stage(model: nn.Module, data: Dataset, cfg: INQConfig | Int8Config,
                   checkpoint: str | os.PathLike | None = None, progress: bool = False) -> dict:
    if has_masks(model):
        fold_masks(model)  # pruned zeros are kept by INQ (keep_pruned_zeros) and int8 alike
    quantize_(model, cfg, data, checkpoint=checkpoint, progress=progress)
    return {"test_acc": accuracy(model, data)}


def sparsify_stage(model: nn.Module, data: Dataset, cfg: SparsifyConfig, batch: int = 1
                   ) -> dict:
    if has_masks(model):
        fold_masks(model)
    sparsify_(model, cfg, (data.x_test[:batch].contiguous(),))
    done = history(model)[-1]
    layers = done["layers"]
    return {"test_acc": accuracy(model, data),
            "sparse_layers": sum(v["action"] == "sparse" for v in layers.values()),
            "layers": layers, "whole_model": done.get("whole_model", {})}


def export_stage(model: nn.Module, data: Dataset, cfg: ExportConfig, out: str | os.PathLike,
                 dense_out: str | os.PathLike | None = None, batch: int = 1) -> dict:
    """Export the model as it is (no copy made elsewhere: what was evaluated is exported)."""
    report = to_onnx(model, data.x_test[:batch].contiguous(), out, cfg, dense_path=dense_out)
    return report.to_dict()


def verify_onnx(onnx_path: str | os.PathLike, model: nn.Module, data: Dataset,
                batch: int = 16, rtol: float = 1e-4, atol: float = 1e-5,
                threads: int = 1) -> dict:
    """onnxruntime against PyTorch on test inputs; `ok` says whether within atol + rtol·max."""
    session = onnx_verify.session(str(onnx_path), threads)
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int):  # a file exported for one batch size runs only that one
        batch = fixed
    x = data.x_test[:batch].contiguous()
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        want = onnx_verify.flatten_outputs(model(x))
    got = session.run(None, onnx_verify.feeds(session, (x,)))
    error, scale = onnx_verify.max_error(want, got)
    tolerance = atol + rtol * scale
    agree = float((torch.as_tensor(got[0]).argmax(-1) == want[0].argmax(-1)).float().mean())
    return {"max_error": error, "tolerance": tolerance, "ok": bool(error <= tolerance),
            "top1_agreement": agree, "batch": int(x.shape[0])}
