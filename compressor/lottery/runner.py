"""The lottery-ticket run: train → prune p% of survivors → rewind → retrain, with controls,
checkpointed so that a killed run resumes where it stopped and a finished run is a no-op.

Run directory (named from the config): config.json (for people), state.pt (records, θ0, θk and
every round's mask; replaced atomically after each finished job), inflight.pt (the job in
progress: weights, optimizer state, step, curve; replaced atomically every `checkpoint_every`
steps), records.json (the records so far, for people and plots).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from compressor.data import Dataset, load_dataset
from compressor.errors import CompressorError
from compressor.io import content_digest, load_checked, save_checked, write_json_atomic
from compressor.lottery import distributed as dist
from compressor.lottery.config import LotteryConfig, describe_difference
from compressor.lottery.records import job_record
from compressor.lottery.trainer import JobState, load_model_state, run_job
from compressor.models import build_model
from compressor.pruning import (
    get_masks,
    layer_rates,
    prunable_parameters,
    random_masks_like,
    set_mask,
)
from compressor.pruning.criteria import prune_global, prune_layerwise


@dataclass(frozen=True)
class Job:
    round: int
    variant: str  # 'ticket', 'reinit' or 'random_mask'


def job_list(cfg: LotteryConfig) -> list[Job]:
    jobs = [Job(0, "ticket")]
    for r in range(1, cfg.rounds + 1):
        jobs += [Job(r, "ticket")] + [Job(r, c) for c in cfg.controls]
    return jobs


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _control_seed(cfg: LotteryConfig, round_index: int, salt: int) -> int:
    return cfg.seed * 7919 + round_index * 104_729 + salt


def _clone_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _load_data(cfg: LotteryConfig) -> Dataset:
    kwargs = {"num_samples": cfg.num_samples} if cfg.dataset == "mnist1d" else {}
    return load_dataset(cfg.dataset, **kwargs)


class LotteryRun:
    """`LotteryRun(cfg).run()` -> records. `model_fn` builds any nn.Module (default: cfg.model
    from compressor.models); `data` any Dataset (default: cfg.dataset). The run directory is
    `root/<cfg.run_name()>` unless `run_dir` is given."""

    def __init__(self, cfg: LotteryConfig, root: str | Path = "runs/lottery",
                 run_dir: str | Path | None = None, data: Dataset | None = None,
                 model_fn: Callable[[], nn.Module] | None = None,
                 checkpoint_every: int | None = None, progress: bool = True):
        self.cfg = cfg
        self.dir = Path(run_dir) if run_dir is not None else Path(root) / cfg.run_name()
        self.device = dist.setup()
        data = data if data is not None else _load_data(cfg)
        self.data = Dataset(data.name, *(t.to(self.device) for t in (
            data.x_train, data.y_train, data.x_test, data.y_test)))
        self.model_fn = model_fn or (lambda: build_model(
            cfg.model, feature_shape=data.feature_shape, num_classes=data.num_classes))
        self.checkpoint_every = checkpoint_every or cfg.eval_every
        self.progress = progress and dist.is_main()
        self.state: dict = {}

    # ----- files
    def _state_path(self) -> Path:
        return self.dir / "state.pt"

    def _inflight_path(self) -> Path:
        return self.dir / "inflight.pt"

    def _save_state(self) -> None:
        if dist.is_main():
            save_checked(self._state_path(), self.state)
            self._write_records()

    def _write_records(self) -> None:
        """records.json, for people and plots: derived from the checked state, never read back
        into it."""
        write_json_atomic(self.dir / "records.json",
                          {"config": self.cfg.identity(), "records": self.state["records"]})

    def _origin(self, init: dict) -> str:
        """Digest of what the config does not name: the data's content and the architecture
        with its initial weights (a dataset path or model name can hold something else)."""
        data = [self.data.x_train, self.data.y_train, self.data.x_test, self.data.y_test]
        return content_digest({"data": data, "init": init})

    def _open(self) -> None:
        """Load or create state.pt; a different config, data or model in the directory is an
        error."""
        model = _seeded(self.cfg.seed, self.model_fn)
        origin = self._origin(_clone_state(model))
        if self._state_path().exists():
            self.state = load_checked(self._state_path(), "lottery checkpoint",
                                      f"delete {self.dir} to start the run over")
            if self.state.get("config") != self.cfg.identity():
                raise CompressorError(
                    f"run dir {self.dir} holds a run with a different config "
                    f"({describe_difference(self.state.get('config') or {}, self.cfg.identity())})"
                    f"; rerun with the original settings or choose another run dir")
            if self.state.get("origin") != origin:
                raise CompressorError(
                    f"run dir {self.dir} holds a run on other data or another architecture "
                    "(same settings, different content); delete it or choose another run dir")
            if dist.is_main():  # a damaged records.json is rebuilt from the checked state
                self._write_records()
            return
        names = list(self._rates(model))  # fails early on a model with nothing to prune
        self.state = {"config": self.cfg.identity(), "origin": origin, "records": [], "done": 0,
                      "init": _clone_state(model), "rewind": None, "masks": {}, "names": names}
        if dist.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.dir / "config.json", self.cfg.identity())
            self._save_state()
        dist.barrier()

    def _rates(self, model: nn.Module) -> dict[str, float]:
        return layer_rates(model, self.cfg.rate, self.cfg.output_rate, self.cfg.layer_rates,
                           exclude=self.cfg.exclude)

    # ----- one job
    def _masks(self, round_index: int) -> dict[str, torch.Tensor] | None:
        saved = self.state["masks"].get(str(round_index))
        return None if saved is None else {k: v.float() for k, v in saved.items()}

    def _build(self, job: Job) -> nn.Module:
        """The job's starting network: rewound (or fresh) weights under the job's mask."""
        cfg = self.cfg
        if job.variant == "reinit":
            model = _seeded(_control_seed(cfg, job.round, 1), self.model_fn)
        else:
            model = _seeded(cfg.seed, self.model_fn)
            start = self.state["init"] if job.round == 0 else (
                self.state["rewind"] or self.state["init"])
            model.load_state_dict(start)
        masks = self._masks(job.round)
        if job.variant == "random_mask":
            gen = torch.Generator().manual_seed(_control_seed(cfg, job.round, 2))
            masks = random_masks_like(masks, gen)
        params = prunable_parameters(model)
        for name, mask in (masks or {}).items():
            module, param_name = params[name]
            set_mask(module, param_name, mask)
        return model.to(self.device)

    def _start(self, job: Job, index: int, model: nn.Module) -> JobState:
        """A fresh JobState, or the in-flight one when this job was interrupted."""
        path = self._inflight_path()
        if path.exists():
            saved = load_checked(path, "lottery checkpoint",
                                 "delete it to restart the interrupted round from its start")
            if saved.get("job") == index:
                load_model_state(model, saved["model"])
                return JobState(saved["step"], saved["curve"], saved["optimizer"],
                                saved["extras"])
        start = 0 if job.round == 0 else self.cfg.rewind_step
        return JobState(start)

    def _checkpoint(self, index: int):
        def write(model: nn.Module, state: JobState) -> None:
            if dist.is_main():
                save_checked(self._inflight_path(), {
                    "job": index, "model": _clone_state(model), "step": state.step,
                    "curve": state.curve, "optimizer": state.optimizer, "extras": state.extras})
        return write

    def _capture_rewind(self, step: int, model: nn.Module, state: JobState) -> None:
        if step == self.cfg.rewind_step:
            state.extras["rewind"] = _clone_state(model)

    def _finish(self, job: Job, model: nn.Module, state: JobState) -> None:
        """Record the job; after a ticket, prune its trained weights into the next round's mask."""
        self.state["records"].append(job_record(job.round, job.variant, model, state.curve,
                                                self.state["names"]))
        if job.variant == "ticket":
            self.state["ticket"] = {"round": job.round, "model": _clone_state(model)}
            if job.round == 0 and self.cfg.rewind_step > 0:
                self.state["rewind"] = state.extras["rewind"]
            self._prune(model)
            self.state["masks"][str(job.round + 1)] = {
                k: v.detach().cpu().bool() for k, v in get_masks(model).items()}
        self.state["done"] += 1

    def _prune(self, model: nn.Module) -> None:
        rates = self._rates(model)
        if self.cfg.strategy == "global":
            prune_global(model, self.cfg.rate, list(rates))
        else:
            prune_layerwise(model, rates)

    def build_ticket(self) -> nn.Module:
        """The last finished round's ticket: its architecture, trained weights and masks."""
        saved = self.state.get("ticket")
        if saved is None:
            raise CompressorError(f"lottery run {self.dir} has no finished round yet")
        model = _seeded(self.cfg.seed, self.model_fn)
        load_model_state(model, saved["model"])
        return model

    # ----- the run
    def run(self) -> list[dict]:
        self._open()
        jobs = job_list(self.cfg)
        todo = jobs[self.state["done"]:]
        outer = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="lottery jobs",
                     disable=not self.progress)
        for index, job in enumerate(todo, start=self.state["done"]):
            model = self._build(job)
            state = self._start(job, index, model)
            outer.set_postfix_str(f"round {job.round}/{self.cfg.rounds} {job.variant}")
            with tqdm(total=self.cfg.steps, initial=state.step, leave=False,
                      desc=f"round {job.round} {job.variant}", disable=not self.progress) as bar:
                state = run_job(model, self.data, self.cfg, state, self._checkpoint(index),
                                self.checkpoint_every,
                                self._capture_rewind if job.round == 0 else None, bar)
            self._finish(job, model, state)
            self._save_state()
            dist.barrier()
            outer.update(1)
        outer.close()
        if dist.is_main() and self._inflight_path().exists():
            self._inflight_path().unlink()
        return self.state["records"]
