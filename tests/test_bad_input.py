"""Bad input on the command line, every command x every class (data, paths, values, checkpoints
and model files; the table is tests/bad_input_cases.py): exit code 2, exactly one line on stderr
naming the problem, no traceback, nothing written. In process through compressor.cli.main (the
traceback check is that main raises nothing); a few cases again in subprocesses, where a
traceback would be visible."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.cli import main
from tests.bad_input_cases import CASES, IDS, PROC, data_files, model_files, npz, user_data

ROOT = Path(__file__).resolve().parents[1]


def cli(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """Model files, checkpoints and data files, made once; COMPRESSOR_CACHE points inside."""
    d = tmp_path_factory.mktemp("bad_input")
    (d / "cache").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESSOR_CACHE", str(d / "cache"))
        for name in ("user", "trdata", "inqdata", "lotdata"):
            npz(d / f"{name}.npz", **user_data())
        steps = [["train", "--steps", "3", "--out", d / "dense.pt"],
                 ["train", "--data", d / "user.npz", "--steps", "2", "--out", d / "user.pt"],
                 ["train", "--data", d / "trdata.npz", "--steps", "4", "--checkpoint",
                  d / "train_ck.pt", "--checkpoint-every", "2", "--out", d / "tr.pt"],
                 ["quantize", d / "dense.pt", "--data", d / "inqdata.npz", "--portions",
                  "0.5,1", "--steps-per-stage", "1", "--final-steps", "0", "--batch-size", "8",
                  "--checkpoint", d / "inq_ck.pt", "--out", d / "q.pt"],
                 ["lottery", d / "dense.pt", "--data", d / "lotdata.npz", "--rounds", "0",
                  "--steps", "2", "--eval-every", "1", "--controls", "", "--root", d / "lot",
                  "--out", d / "ticket.pt"],
                 ["run", "--steps", "2", "--root", d / "runs", "--name", "r", "--skip",
                  "prune,quantize,sparsify,export,verify,bench,report"]]
        for argv in steps:
            assert cli(argv) == 0, argv
        data_files(d)
        model_files(d)
        npz(d / "user.npz", X=np.load(d / "nan.npz")["X"], y=user_data()["y"])  # gone bad
        yield d


def _tree(*roots: Path) -> dict:
    """Every file with its size and mtime, every directory by name (a writability probe comes
    and goes, touching only its directory's mtime)."""
    return {p: None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, d, tmp_path, capsys,
                                                        monkeypatch):
    _, argv, expect, setup = case
    if any(PROC in a for a in argv) and not Path("/proc/self").exists():
        pytest.skip("no /proc here: the unwritable-path cases need it")
    monkeypatch.setenv("COMPRESSOR_CACHE", str(d / ("file/cache" if setup == "cache"
                                                   else "cache")))
    if callable(setup):
        setup(d, tmp_path)
    argv = [a.format(d=d, t=tmp_path) for a in argv]
    expect = expect.format(d=d, t=tmp_path)
    before = _tree(d, tmp_path)
    capsys.readouterr()
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert expect in err, err
    assert _tree(d, tmp_path) == before, "a failing command wrote or changed files"


SUBPROCESS = [("train", "--data", "{d}/nan.npz", "--out", "{t}/m.pt"),
              ("prune", "{d}/flipped.pt", "--out", "{t}/m.pt"),
              ("onlstm-lm", "--tolerance", "nan")]


def test_no_traceback_in_a_subprocess(d, tmp_path):
    """A few of the cases as a user sees them (in parallel: each pays the import once)."""
    env = {**os.environ, "COMPRESSOR_CACHE": str(d / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = [subprocess.Popen([sys.executable, "-m", "compressor.cli",
                              *(a.format(d=d, t=tmp_path) for a in argv)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for argv in SUBPROCESS]
    for argv, proc in zip(SUBPROCESS, runs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith(f"compressor {argv[0]}: error: "), err
    assert not list(tmp_path.iterdir())


def test_killed_training_resumes_bit_identical(tmp_path, monkeypatch):
    """`train --checkpoint`: a run killed after a checkpoint resumes to the weights of an
    uninterrupted run."""
    from compressor.pipeline import checkpoint
    from compressor.pipeline.modelfile import load_model

    argv = ["train", "--steps", "6", "--eval-every", "2", "--batch-size", "16"]
    assert cli([*argv, "--out", tmp_path / "whole.pt"]) == 0
    write = checkpoint._Writer.on_step_end

    def killed_after_step_4(self, step):
        write(self, step)
        if step == 4:
            raise KeyboardInterrupt

    ck = ["--checkpoint", tmp_path / "ck.pt", "--checkpoint-every", "2"]
    with monkeypatch.context() as mp:
        mp.setattr(checkpoint._Writer, "on_step_end", killed_after_step_4)
        assert cli([*argv, *ck, "--out", tmp_path / "resumed.pt"]) == 130
    assert not (tmp_path / "resumed.pt").exists()
    assert cli([*argv, *ck, "--out", tmp_path / "resumed.pt"]) == 0
    whole, _ = load_model(tmp_path / "whole.pt")
    resumed, _ = load_model(tmp_path / "resumed.pt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
