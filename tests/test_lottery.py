"""Lottery runs: records, rewinding to θk, global vs layerwise sparsity, idempotence, resuming
after SIGKILL with identical records, DDP under torchrun, and one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.io import load_checked, save_checked
from compressor.lottery import LotteryConfig, LotteryRun, job_list, run_lottery
from compressor.lottery.trainer import JobState, run_job
from compressor.pruning import prunable_parameters, set_mask
from compressor.train import evaluate
from tests.lottery_data import tiny_data, tiny_mlp

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "lottery_child.py"
SIZES = {"0.weight": 16 * 64, "2.weight": 64 * 32, "4.weight": 32 * 4}


def tiny_cfg(**overrides) -> LotteryConfig:
    base = dict(dataset="tiny", model="mlp", rounds=2, steps=40, eval_every=20, batch_size=32,
                seed=3)
    return LotteryConfig(**(base | overrides))


def run(cfg, path, **kwargs):
    return run_lottery(cfg, run_dir=path, data=tiny_data(), model_fn=tiny_mlp, progress=False,
                       **kwargs)


def test_records_layerwise_exact_and_controls(tmp_path):
    cfg = tiny_cfg()
    records = run(cfg, tmp_path / "run")
    assert [(r["round"], r["variant"]) for r in records] == [
        (j.round, j.variant) for j in job_list(cfg)] == [
        (0, "ticket"), (1, "ticket"), (1, "reinit"), (1, "random_mask"),
        (2, "ticket"), (2, "reinit"), (2, "random_mask")]
    survivors = dict(SIZES)
    for r in range(1, 3):
        rates = {"0.weight": 0.2, "2.weight": 0.2, "4.weight": 0.1}
        survivors = {k: v - round(rates[k] * v) for k, v in survivors.items()}
        for rec in (x for x in records if x["round"] == r):  # controls share the sparsity
            for name, size in SIZES.items():
                assert round((1 - rec["sparsity"][name]) * size) == survivors[name]
    for rec in records:
        steps = [p["step"] for p in rec["curve"]]
        assert steps == [0, 20, 40]
        assert rec["best_acc"] == max(p["test_acc"] for p in rec["curve"][1:])
        assert rec["best_step"] in steps[1:] and rec["final_acc"] == rec["curve"][-1]["test_acc"]
    saved = json.loads((tmp_path / "run" / "records.json").read_text())["records"]
    assert saved == records


def test_global_strategy_exact_total(tmp_path):
    records = run(tiny_cfg(strategy="global", output_rate=None, rounds=1, controls=()),
                  tmp_path / "g")
    total = sum(SIZES.values())
    assert round(records[1]["sparsity"]["total"] * total) == round(0.2 * total)
    per_layer = {records[1]["sparsity"][k] for k in SIZES}
    assert len(per_layer) > 1  # one threshold: layers end up at different sparsities


def test_rewind_to_iteration_k(tmp_path):
    cfg = tiny_cfg(rewind_step=20, rounds=1, controls=("reinit",))
    runner = LotteryRun(cfg, run_dir=tmp_path / "k", data=tiny_data(), model_fn=tiny_mlp,
                        progress=False)
    records = runner.run()
    state = runner.state
    # θk is the dense network after exactly k steps of the same training
    torch.manual_seed(cfg.seed)
    dense = tiny_mlp()
    run_job(dense, tiny_data(), tiny_cfg(steps=20), JobState(0), lambda m, s: None, 1000)
    for key, value in dense.state_dict().items():
        torch.testing.assert_close(state["rewind"][key], value, rtol=0, atol=0)
        assert not torch.equal(value, state["init"][key])
    # round 1 trains from θk under the mask, for steps k..T
    ticket = records[1]
    assert [p["step"] for p in ticket["curve"]] == [20, 40]
    model = tiny_mlp()
    model.load_state_dict(state["rewind"])
    params = prunable_parameters(model)
    for name, mask in state["masks"]["1"].items():
        set_mask(*params[name], mask.float())
    data = tiny_data()
    assert ticket["curve"][0]["test_acc"] == evaluate(model, data.x_test, data.y_test)
    assert records[2]["curve"][0]["step"] == 20  # the reinit control runs the same span


def test_finished_run_is_noop_and_more_rounds_continue(tmp_path):
    cfg = tiny_cfg(rounds=1, controls=())
    first = run(cfg, tmp_path / "r")
    stamp = (tmp_path / "r" / "state.pt").stat().st_mtime_ns
    assert run(cfg, tmp_path / "r") == first
    assert (tmp_path / "r" / "state.pt").stat().st_mtime_ns == stamp
    longer = run(tiny_cfg(rounds=2, controls=()), tmp_path / "r")
    assert longer[:2] == first and len(longer) == 3


def test_resume_with_different_config_fails(tmp_path):
    run(tiny_cfg(rounds=0), tmp_path / "r")
    with pytest.raises(CompressorError, match=r"different config \(lr: 0.0012 in the run, "
                                              r"0.01 now\); rerun with the original"):
        run(tiny_cfg(rounds=0, lr=0.01), tmp_path / "r")


@pytest.mark.parametrize("name", ["state.pt", "inflight.pt"])
def test_corrupt_checkpoint_fails_with_advice(tmp_path, name):
    path = tmp_path / "r"
    run(tiny_cfg(rounds=0), path)
    (path / name).write_bytes(b"\x80\x02garbage")
    if name == "inflight.pt":  # an in-flight file only matters while a job is unfinished
        state = load_checked(path / "state.pt")
        state["done"] = 0
        save_checked(path / "state.pt", state)
    with pytest.raises(CompressorError, match=rf"checkpoint .*{name} is not a readable .*; delete"):
        run(tiny_cfg(rounds=0), path)


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.2])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(CompressorError, match=r"rate must be a fraction in \(0, 1\)"):
        LotteryConfig(rate=rate)


def test_nothing_to_prune(tmp_path):
    with pytest.raises(CompressorError, match="has nothing to prune"):
        run_lottery(tiny_cfg(), run_dir=tmp_path / "n", data=tiny_data(), progress=False,
                    model_fn=lambda: nn.Sequential(nn.BatchNorm1d(16), nn.Flatten()))
    with pytest.raises(CompressorError, match="has nothing to prune"):
        run(tiny_cfg(exclude=("*",)), tmp_path / "e")


def child(run_dir, *args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(CHILD), str(run_dir), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records_of(run_dir):
    return json.loads((Path(run_dir) / "records.json").read_text())["records"]


def test_sigkill_mid_round_then_resume_gives_identical_records(tmp_path):
    args = ("--rounds", "1", "--steps", "120", "--checkpoint-every", "10")
    killed = child(tmp_path / "killed", *args)
    # wait until round 1 is under way (>= 2 jobs recorded) with an in-flight checkpoint
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        inflight = tmp_path / "killed" / "inflight.pt"
        if (inflight.exists() and (tmp_path / "killed" / "records.json").exists()
                and len(records_of(tmp_path / "killed")) >= 2):
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run finished before it could be killed: " + str(
        killed.communicate()[0])
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (tmp_path / "killed" / "inflight.pt").exists()
    assert len(records_of(tmp_path / "killed")) < 4
    uninterrupted = child(tmp_path / "whole", *args)
    resumed = child(tmp_path / "killed", *args)
    for proc in (uninterrupted, resumed):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    assert records_of(tmp_path / "killed") == records_of(tmp_path / "whole")
    assert not (tmp_path / "killed" / "inflight.pt").exists()


def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(CHILD), str(tmp_path / "ddp"), "--rounds", "1", "--steps", "40"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = records_of(tmp_path / "ddp")
    assert [(r["round"], r["variant"]) for r in records] == [
        (0, "ticket"), (1, "ticket"), (1, "reinit"), (1, "random_mask")]
    assert records[1]["best_acc"] > 0.5  # 4 classes: it learned, with gradients averaged
