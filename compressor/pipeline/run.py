"""`compressor run`: dense training -> (lottery ticket | pruning) -> (INQ | int8) -> sparsify
where measured faster -> ONNX export -> onnxruntime verification -> benchmark -> report, in one
run directory.

<root>/<name>/ holds state.json (each finished stage: the digest of its settings and of every
stage before it, its metrics and its files), one model file per stage (dense.pt, pruned.pt,
quantized.pt, sparse.pt), dense.onnx and model.onnx, metrics.json and report.md with its plots.
A rerun skips every stage whose digest and files are unchanged, so a killed run resumes at the
stage in flight (INQ and lottery also resume inside the stage) and a finished run only reports.
"""

import hashlib
import json
import time
from pathlib import Path

import torch

from compressor.errors import CompressorError
from compressor.io import check_writable, load_checked, save_checked, write_json_atomic
from compressor.pipeline import stages
from compressor.pipeline.bench import benchmark
from compressor.pipeline.checkpoint import data_digest
from compressor.pipeline.config import Pipeline
from compressor.pipeline.inputs import load_data, new_model
from compressor.pipeline.modelfile import load_model, save_model
from compressor.pipeline.report import write_report

ORDER = ("train", "prune", "quantize", "sparsify", "export", "verify", "bench", "report")
MODEL_FILES = {"train": "dense.pt", "prune": "pruned.pt", "quantize": "quantized.pt",
               "sparsify": "sparse.pt"}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    def __init__(self, pipeline: Pipeline, log=print, data=None):
        """`data`: the run's data when the caller has loaded (and checked) it already."""
        self.p, self.log = pipeline, log
        self.run_cfg, self.s = pipeline.run, pipeline.sections
        self.dir = Path(self.run_cfg.root) / self.run_cfg.name
        self.state = {"stages": {}}
        self.data, self.data_digest = data, ""
        self.digest = ""

    # ----- bookkeeping
    def _stage_settings(self, stage: str) -> dict:
        s, r = self.s, self.run_cfg
        # the data's content, not only its name: an edited .npz must not keep the old stages
        return {"train": {**{k: s[k].to_dict() for k in ("data", "model", "train")},
                          "data_digest": self.data_digest},
                "prune": {"method": r.prune, "prune": s["prune_config"].to_dict(),
                          "structured": s["structured"].to_dict(),
                          "finetune": s["finetune"].to_dict(), "lottery": s["lottery"].to_dict()},
                "quantize": {"method": r.quantize, "inq": s["inq"].to_dict(),
                             "int8": s["int8"].to_dict()},
                "sparsify": {**s["sparsify"].to_dict(), "threads": torch.get_num_threads()},
                "export": s["export"].to_dict(),
                "verify": {}, "bench": {"batch_sizes": list(r.batch_sizes),
                                        "threads": torch.get_num_threads()},
                "report": {}}[stage]

    def _planned(self) -> list[tuple[str, str, bool]]:
        """(stage, digest, runs) in order; a skipped stage passes its input through."""
        out, chain = [], ""
        for stage in ORDER:
            skipped = stage in self.run_cfg.skip or (stage == "prune" and self.run_cfg.prune ==
                                                     "none") or (
                stage == "quantize" and self.run_cfg.quantize == "none")
            chain = _digest(chain, stage, None if skipped else self._stage_settings(stage))
            out.append((stage, chain, not skipped))
        return out

    def _done(self, stage: str, digest: str) -> bool:
        entry = self.state["stages"].get(stage)
        return bool(entry and entry["digest"] == digest and all(
            (self.dir / f).exists() for f in entry["files"]))

    def _open(self) -> None:
        check_writable(self.dir, "--root/--name", directory=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "state.pt"
        if path.exists():
            self.state = load_checked(path, "run state", f"delete {self.dir} to start over")
        write_json_atomic(self.dir / "config.json", self.p.to_dict())

    def _finish(self, stage: str, digest: str, metrics: dict, files: list[str]) -> None:
        self.state["stages"][stage] = {"digest": digest, "metrics": metrics, "files": files}
        save_checked(self.dir / "state.pt", self.state)

    # ----- the run
    def run(self) -> Path:
        if self.data is None:  # before the run directory is made: bad data writes nothing
            self.data = load_data(self.s["data"])
        self._open()
        self.data_digest = data_digest(self.data)
        plan = self._planned()
        only = self.run_cfg.only
        latest = None  # the model file the next stage starts from
        for index, (stage, digest, runs) in enumerate(plan, start=1):
            if not runs:
                self.state["stages"].pop(stage, None)
                continue
            if self._done(stage, digest) and stage != only:
                self.log(f"[{index}/{len(plan)}] {stage}: done earlier, kept")
            elif only is not None and stage != only:
                raise CompressorError(f"--only {only}: stage {stage} before it has not run "
                                      "with these settings; run without --only first")
            else:
                self.log(f"[{index}/{len(plan)}] {stage} ...")
                start = time.perf_counter()
                self.digest = digest  # names in-stage checkpoints after these settings
                metrics, files = getattr(self, f"_{stage}")(latest)
                metrics["seconds"] = round(time.perf_counter() - start, 2)
                self._finish(stage, digest, metrics, files)
            if stage in MODEL_FILES:
                latest = self.dir / MODEL_FILES[stage]
            if only is not None and stage == only:
                break
        return self.dir / "report.md"

    # ----- stages: each returns (metrics, files written)
    def _save(self, stage: str, model, info, **metadata) -> str:
        info.metadata = {**info.metadata, **metadata, "stage": stage}
        save_model(self.dir / MODEL_FILES[stage], model, info)
        return MODEL_FILES[stage]

    def _train(self, _):
        s = self.s
        model, info = new_model(s["model"], self.data, s["data"], seed=s["train"].seed)
        metrics = stages.train_dense(model, self.data, s["train"], progress=True)
        return metrics, [self._save("train", model, info, test_acc=metrics["test_acc"])]

    def _prune(self, latest):
        model, info = load_model(latest)
        if self.run_cfg.prune == "lottery":
            cfg = self.s["lottery"].replace(dataset=self.s["data"].source(), model=info.factory)
            model, metrics = stages.lottery_stage(info, self.data, cfg, self.dir / "lottery",
                                                  progress=True)
        elif self.run_cfg.prune == "structured":
            metrics = stages.structured_stage(model, self.data, self.s["structured"],
                                              self.s["finetune"], progress=True)
        else:
            metrics = stages.prune_stage(model, self.data, self.s["prune_config"],
                                         self.s["finetune"], progress=True)
        metrics.pop("records", None)
        return metrics, [self._save("prune", model, info, test_acc=metrics["test_acc"])]

    def _quantize(self, latest):
        model, info = load_model(latest)
        cfg = self.s["inq"] if self.run_cfg.quantize == "inq" else self.s["int8"]
        checkpoint = self.dir / f"inq-{self.digest[:12]}.pt"  # other settings: another file
        metrics = stages.quantize_stage(model, self.data, cfg, checkpoint, progress=True)
        files = [self._save("quantize", model, info, test_acc=metrics["test_acc"])]
        checkpoint.unlink(missing_ok=True)  # the stage is done: its model file is what counts
        return metrics, files

    def _sparsify(self, latest):
        model, info = load_model(latest)
        metrics = stages.sparsify_stage(model, self.data, self.s["sparsify"])
        return metrics, [self._save("sparsify", model, info, test_acc=metrics["test_acc"])]

    def _export(self, latest):
        cfg = self.s["export"].replace(dynamic_batch=True, threads=torch.get_num_threads())
        dense, _ = load_model(self.dir / "dense.pt")
        model, _ = load_model(latest)
        report = stages.export_stage(model, self.data, cfg, self.dir / "model.onnx",
                                     self.dir / "dense.onnx")
        keep = ("bytes", "dense_bytes", "size_ratio", "max_error", "tolerance",
                "quantized_layers", "same_ort_graph_as_dense")
        del dense
        return {k: report[k] for k in keep}, ["model.onnx", "dense.onnx"]

    def _verify(self, latest):
        model, _ = load_model(latest)
        export = self.s["export"]
        metrics = stages.verify_onnx(self.dir / "model.onnx", model, self.data, batch=64,
                                     rtol=export.rtol, atol=export.atol)
        exported = self.state["stages"]["export"]["metrics"]
        if exported.get("quantized_layers"):
            # an int8 QDQ graph may round an activation one step apart from PyTorch; the export
            # stage judged it against the float model (docs/export.md): hold it to that bound
            metrics["tolerance"] = max(metrics["tolerance"], exported["tolerance"])
            metrics["ok"] = bool(metrics["max_error"] <= metrics["tolerance"])
        if not metrics["ok"]:
            raise CompressorError(f"onnxruntime disagrees with PyTorch on {self.dir}/model.onnx "
                                  f"(max error {metrics['max_error']:.3g} > tolerance "
                                  f"{metrics['tolerance']:.3g})")
        return metrics, []

    def _bench(self, latest):
        return benchmark(self.dir, latest, self.data, self.run_cfg.batch_sizes), []

    def _report(self, _):
        path = write_report(self.dir, self.state, self.p.to_dict())
        return {"path": str(path)}, [path.name]
