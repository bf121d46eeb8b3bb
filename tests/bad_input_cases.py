"""The bad-input cases of tests/test_bad_input.py: the files they need and the table of
(id, argv, expected text, setup) over every command x every class (data, paths, values,
checkpoints and model files). {d} is the module's fixture directory, {t} the test's own."""

import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

PROC = "/proc/compressor-test/x"  # a path no one, not even root, can create


def npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def user_data(n: int = 40, features: int = 64, classes: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"X": rng.random((n, features), dtype=np.float32), "y": np.arange(n) % classes}


def flip_bit(src: Path, dst: Path) -> Path:
    """A copy of a torch file with one bit flipped inside its largest member (a tensor's bytes,
    or the pickle when there are no tensors), not in zip padding that no reader looks at."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", raw[member.header_offset + 26:
                                                   member.header_offset + 30])
    raw[member.header_offset + 30 + name_len + extra_len + member.file_size // 2] ^= 0x04
    dst.write_bytes(bytes(raw))
    return dst


def data_files(d: Path) -> None:
    good = user_data()
    x = good["X"].copy()
    x[3, 1] = np.nan
    npz(d / "nan.npz", X=x, y=good["y"])
    x = good["X"].copy()
    x[2, 0] = np.inf
    npz(d / "inf.npz", X=x, y=good["y"])
    npz(d / "bigy.npz", X=good["X"], y=np.full(40, 10**12))
    npz(d / "negy.npz", X=good["X"], y=-np.ones(40, dtype=int))
    npz(d / "ids.npz", X=good["X"], y=np.arange(40) + 100)
    npz(d / "oneclass.npz", X=good["X"], y=np.zeros(40, dtype=int))
    npz(d / "two.npz", X=good["X"][:2], y=np.array([0, 1]))
    npz(d / "obj.npz", X=np.array([{"a": 1}] * 40, dtype=object), y=good["y"])
    npz(d / "complex.npz", X=good["X"] + 1j, y=good["y"])
    npz(d / "nofeat.npz", X=np.zeros((40, 0), np.float32), y=good["y"])
    npz(d / "noy.npz", X=good["X"])
    npz(d / "floaty.npz", X=good["X"], y=good["y"].astype(float))
    npz(d / "shorty.npz", X=good["X"], y=good["y"][:30])
    npz(d / "narrow.npz", **user_data(features=5))
    (d / "empty.npz").write_bytes(b"")
    (d / "text.npz").write_text("X,y\n1,2\n")
    np.save(d / "array.npy", good["X"])
    shutil.copy(d / "array.npy", d / "renamed.npz")
    raw = (d / "nan.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    (d / "dir.npz").mkdir()


def model_files(d: Path) -> None:
    dense = d / "dense.pt"
    raw = dense.read_bytes()
    (d / "garbage.pt").write_text("not a model")
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    flip_bit(dense, d / "flipped.pt")
    torch.save({"weight": torch.ones(2)}, d / "plain.pt")
    shutil.copy(d / "nan.npz", d / "npz.pt")
    (d / "dir.pt").mkdir()
    (d / "garbage.onnx").write_text("not onnx")
    (d / "file").write_text("a file where a directory should be")


def _copy_run(d: Path, t: Path, sub: str) -> Path:
    shutil.copytree(d / sub, t / sub)
    return t / sub


def _lottery_state(d: Path, t: Path) -> None:
    (state,) = _copy_run(d, t, "lot").glob("*/state.pt")
    flip_bit(state, state)


def _run_state(d: Path, t: Path) -> None:
    path = _copy_run(d, t, "runs") / "r" / "state.pt"
    flip_bit(path, path)


def _changed(name: str):
    def setup(d: Path, t: Path) -> None:
        npz(d / name, **user_data(seed=7))
    return setup


def _toml(text: str):
    def setup(d: Path, t: Path) -> None:
        (t / "c.toml").write_text(text)
    return setup


# (id, argv with {d} = the fixture directory and {t} = the test's own, expected text, setup)
TRAIN = ["train", "--steps", "2"]
DATA_FILES = [
    ("nan.npz", "X[3, 1] = nan is not a finite"), ("inf.npz", "X[2, 0] = inf is not a finite"),
    ("bigy.npz", "labels must be class indices in 0..9999, got y[0] = 1000000000000"),
    ("negy.npz", "got y[0] = -1"), ("ids.npz", "labels go up to 139 but there are only 40"),
    ("oneclass.npz", "at least 2 classes"), ("two.npz", "too few for a non-empty train and test"),
    ("obj.npz", "Object arrays"), ("complex.npz", "X must hold real numbers"),
    ("nofeat.npz", "at least one feature"), ("noy.npz", "lacks array(s) ['y']"),
    ("floaty.npz", "y must be integer labels"), ("shorty.npz", "y must be integer labels of shape"),
    ("empty.npz", "is empty"), ("text.npz", "is not an .npz file"),
    ("renamed.npz", "is a single .npy array"), ("truncated.npz", "is truncated"),
    ("dir.npz", "is a directory"), ("missing.npz", "does not exist"),
]
CASES = [
    *[(f"train-data-{f}", [*TRAIN, "--data", f"{{d}}/{f}", "--out", "{t}/m.pt"], e, None)
      for f, e in DATA_FILES],
    ("train-data-npy", [*TRAIN, "--data", "{d}/array.npy", "--out", "{t}/m.pt"],
     "--data must be an .npz file", None),
    ("train-data-unknown", [*TRAIN, "--dataset", "imagenet", "--out", "{t}/m.pt"],
     "--dataset must be one of", None),
    ("train-data-cache", [*TRAIN, "--dataset", "shapes", "--out", "{t}/m.pt"],
     "COMPRESSOR_CACHE", "cache"),
    ("train-path-dir", [*TRAIN, "--out", "{t}"], "must end in .pt", None),
    ("train-path-isdir", [*TRAIN, "--out", "{d}/dir.pt"], "is a directory", None),
    ("train-path-under-file", [*TRAIN, "--out", "{d}/file/m.pt"], "is a file, not a directory",
     None),
    ("train-path-proc", [*TRAIN, "--out", f"{PROC}.pt"], "cannot write in", None),
    ("train-path-ck-is-out", [*TRAIN, "--checkpoint", "{t}/m.pt", "--out", "{t}/m.pt"],
     "--checkpoint and --out are the same file", None),
    ("train-path-ck-under-file", [*TRAIN, "--checkpoint", "{d}/file/c.pt", "--out", "{t}/m.pt"],
     "--checkpoint", None),
    ("train-value-steps", ["train", "--steps", "-1", "--out", "{t}/m.pt"], "steps must be >= 0",
     None),
    ("train-value-steps-float", ["train", "--steps", "1.5", "--out", "{t}/m.pt"],
     "steps must be an integer", None),
    ("train-value-batch", [*TRAIN, "--batch-size", "0", "--out", "{t}/m.pt"],
     "batch_size must be >= 1", None),
    ("train-value-lr-nan", [*TRAIN, "--lr", "nan", "--out", "{t}/m.pt"], "lr must be a finite",
     None),
    ("train-value-lr-inf", [*TRAIN, "--lr", "inf", "--out", "{t}/m.pt"], "lr must be a finite",
     None),
    ("train-value-lr-zero", [*TRAIN, "--lr", "0", "--out", "{t}/m.pt"], "lr must be > 0", None),
    ("train-value-threads", [*TRAIN, "--threads", "0", "--out", "{t}/m.pt"],
     "--threads must be >= 1", None),
    ("train-value-momentum", [*TRAIN, "--optimizer", "sgd", "--momentum", "1", "--out",
                              "{t}/m.pt"], "momentum must be in [0, 1)", None),
    ("train-value-momentum-adam", [*TRAIN, "--momentum", "0.5", "--out", "{t}/m.pt"],
     "--momentum has no effect with --optimizer adam", None),
    ("train-value-model-args", [*TRAIN, "--model-args", "{{bad", "--out", "{t}/m.pt"],
     "--model-args is not JSON", None),
    ("train-value-model-args-list", [*TRAIN, "--model-args", "[1]", "--out", "{t}/m.pt"],
     "--model-args must be a JSON object", None),
    ("train-value-model-args-key", [*TRAIN, "--model-args", '{{"nope": 1}}', "--out",
                                    "{t}/m.pt"], "takes no argument 'nope'", None),
    ("train-value-model", [*TRAIN, "--model", "nosuch", "--out", "{t}/m.pt"],
     "unknown model 'nosuch'", None),
    ("train-value-optimizer", [*TRAIN, "--optimizer", "lbfgs", "--out", "{t}/m.pt"],
     "optimizer must be one of ['adam', 'sgd'], got 'lbfgs'", None),
    ("train-value-unknown-flag", [*TRAIN, "--nope", "--out", "{t}/m.pt"],
     "unrecognized arguments: --nope", None),
    ("train-value-every-alone", [*TRAIN, "--checkpoint-every", "5", "--out", "{t}/m.pt"],
     "--checkpoint-every has no effect without --checkpoint", None),
    ("train-value-every-zero", [*TRAIN, "--checkpoint", "{t}/c.pt", "--checkpoint-every", "0",
                                "--out", "{t}/m.pt"], "--checkpoint-every must be >= 1", None),
    ("train-value-eval-every", [*TRAIN, "--eval-every", "-1", "--out", "{t}/m.pt"],
     "eval_every must be >= 0", None),
    ("train-value-grad-clip", [*TRAIN, "--grad-clip", "0", "--out", "{t}/m.pt"],
     "grad_clip must be > 0", None),
    ("train-ck-garbage", [*TRAIN, "--checkpoint", "{d}/garbage.pt", "--out", "{t}/m.pt"],
     "training checkpoint", None),
    ("train-ck-flipped", [*TRAIN, "--checkpoint", "{d}/flipped.pt", "--out", "{t}/m.pt"],
     "training checkpoint {d}/flipped.pt is corrupted", None),
    ("train-ck-model-file", [*TRAIN, "--checkpoint", "{d}/dense.pt", "--out", "{t}/m.pt"],
     "is not a training checkpoint", None),
    ("train-ck-other-steps", ["train", "--data", "{d}/trdata.npz", "--steps", "5",
                              "--checkpoint", "{d}/train_ck.pt", "--out", "{t}/m.pt"],
     "was made with other training settings", None),
    ("train-ck-other-data", ["train", "--data", "{d}/trdata.npz", "--steps", "4",
                             "--checkpoint", "{d}/train_ck.pt", "--out", "{t}/m.pt"],
     "was made with other data", _changed("trdata.npz")),
]

MODEL_FILES = [("garbage.pt", "not a zip archive"), ("empty.pt", "the file is empty"),
               ("truncated.pt", "truncated: its zip archive"),
               ("flipped.pt", "flipped.pt is corrupted"),
               ("plain.pt", "was not written by compressor"), ("npz.pt", "without torch's"),
               ("dir.pt", "is a directory"), ("missing.pt", "does not exist")]
IN_COMMANDS = {"prune": ["--steps", "1", "--out", "{t}/o.pt"],
               "lottery": ["--rounds", "0", "--steps", "2", "--root", "{t}/lot", "--out",
                           "{t}/o.pt"],
               "quantize": ["--steps-per-stage", "1", "--out", "{t}/o.pt"],
               "sparsify": ["--out", "{t}/o.pt"], "export": ["--out", "{t}/o.onnx"],
               "bench": ["--baseline", "{d}/dense.pt"],
               "robustness": ["--steps", "2", "--checkpoints", "0,1", "--out-dir", "{t}/rob"]}
CASES += [(f"{cmd}-model-{f}", [cmd, f"{{d}}/{f}", *rest], e, None)
          for cmd, rest in IN_COMMANDS.items() for f, e in MODEL_FILES]
CASES += [(f"verify-model-{f}", ["verify", "{d}/garbage.onnx", f"{{d}}/{f}"], e, None)
          for f, e in MODEL_FILES[:4]]
# every command reading IN also reads its data: the model's own (gone bad) or an override
CASES += [(f"{cmd}-data-recorded", [cmd, "{d}/user.pt", *rest], "user.npz: X[3, 1] = nan", None)
          for cmd, rest in IN_COMMANDS.items()]
CASES += [("verify-data-recorded", ["verify", "{d}/garbage.onnx", "{d}/user.pt"],
           "user.npz: X[3, 1] = nan", None)]
CASES += [(f"{cmd}-data-{what}", [cmd, "{d}/dense.pt", "--data", f"{{d}}/{f}", *rest], e, None)
          for cmd in ("prune", "lottery", "quantize") for what, f, e in [
              ("nan", "nan.npz", "X[3, 1] = nan"), ("truncated", "truncated.npz", "truncated"),
              ("misfit", "narrow.npz", "fails on the data's inputs of shape (5,)")]
          for rest in [IN_COMMANDS[cmd]]]

P, L, Q = (["prune", "{d}/dense.pt"], ["lottery", "{d}/dense.pt"], ["quantize", "{d}/dense.pt"])
OUT = ["--out", "{t}/o.pt"]
CASES += [
    ("prune-model-quantized", ["prune", "{d}/q.pt", *OUT], "q.pt is already quantized", None),
    ("quantize-model-quantized", ["quantize", "{d}/q.pt", "--method", "int8", *OUT],
     "q.pt is already quantized", None),
    ("prune-path-in-is-out", [*P, "--out", "{d}/dense.pt"], "is the input file", None),
    ("prune-path-proc", [*P, "--out", f"{PROC}.pt"], "cannot write in", None),
    ("prune-path-suffix", [*P, "--out", "{t}/o.onnx"], "--out must end in .pt", None),
    ("prune-value-sparsity", [*P, "--sparsity", "1", *OUT], "sparsity must be a fraction", None),
    ("prune-value-sparsity-nan", [*P, "--sparsity", "nan", *OUT], "must be a finite", None),
    ("prune-value-nm-sparsity", [*P, "--nm", "2:4", "--sparsity", "0.5", *OUT],
     "--sparsity has no effect with --nm 2:4", None),
    ("prune-value-nm-scope", [*P, "--nm", "2:4", "--scope", "global", *OUT],
     "--scope has no effect with --nm", None),
    ("prune-value-nm-gradual", [*P, "--nm", "2:4", "--schedule", "gradual", *OUT],
     "must be one-shot with nm", None),
    ("prune-value-nm-syntax", [*P, "--nm", "abc", *OUT], "nm must look like 2:4", None),
    ("prune-value-nm-order", [*P, "--nm", "5:4", *OUT], "0 < N < M", None),
    ("prune-value-exclude", [*P, "--exclude", "conv*", *OUT],
     "--exclude pattern 'conv*' matches no prunable weight", None),
    ("prune-value-steps", [*P, "--steps", "-3", *OUT], "steps must be >= 0", None),
    ("prune-value-global-output", [*P, "--scope", "global", "--output-sparsity", "0.2", *OUT],
     "must be 'layerwise'", None),
    ("prune-value-momentum", [*P, "--momentum", "0.5", *OUT], "--momentum has no effect", None),
    ("prune-value-criterion", [*P, "--criterion", "taylor", *OUT],
     "criterion must be one of ['magnitude', 'random'], got 'taylor'", None),
    ("prune-value-structured-sparsity", [*P, "--structured", "--sparsity", "0.5", *OUT],
     "--sparsity has no effect with --structured", None),
    ("prune-value-ratio-unstructured", [*P, "--ratio", "0.5", *OUT],
     "--ratio has no effect without --structured", None),
    ("prune-value-structured-ratio", [*P, "--structured", "--ratio", "1.5", *OUT], "ratio",
     None),
    ("lottery-path-root-file", [*L, "--root", "{d}/file", *OUT],
     "--root {d}/file exists and is not a directory", None),
    ("lottery-path-root-proc", [*L, "--root", PROC, *OUT], "cannot write in", None),
    ("lottery-path-in-is-out", [*L, "--out", "{d}/dense.pt"], "is the input file", None),
    ("lottery-value-rate", [*L, "--rate", "1", *OUT], "rate must be a fraction in (0, 1)", None),
    ("lottery-value-rounds", [*L, "--rounds", "-1", *OUT], "rounds must be >= 0", None),
    ("lottery-value-rewind", [*L, "--steps", "4", "--rewind-step", "5", *OUT],
     "rewind_step must be in [0, steps=4)", None),
    ("lottery-value-controls", [*L, "--controls", "abc", *OUT], "controls must be one of",
     None),
    ("lottery-value-exclude", [*L, "--exclude", "fc*", *OUT], "--exclude pattern 'fc*'", None),
    ("lottery-value-global-output", [*L, "--strategy", "global", "--output-rate", "0.1", *OUT],
     "output_rate needs strategy 'layerwise'", None),
    ("lottery-value-steps", [*L, "--steps", "0", *OUT], "steps must be >= 1", None),
    ("lottery-value-momentum", [*L, "--momentum", "0.5", *OUT], "--momentum has no effect",
     None),
    ("lottery-ck-state-flipped", [*L, "--data", "{d}/lotdata.npz", "--rounds", "0", "--steps",
                                  "2", "--eval-every", "1", "--controls", "", "--root", "{t}/lot",
                                  *OUT], "state.pt is corrupted", _lottery_state),
    ("lottery-ck-other-data", [*L, "--data", "{d}/lotdata.npz", "--rounds", "0", "--steps", "2",
                               "--eval-every", "1", "--controls", "", "--root", "{d}/lot", *OUT],
     "holds a run on other data or another architecture", _changed("lotdata.npz")),
    ("quantize-path-ck-dir", [*Q, "--checkpoint", "{t}", *OUT], "--checkpoint {t} is a directory",
     None),
    ("quantize-path-ck-is-out", [*Q, "--checkpoint", "{t}/o.pt", *OUT],
     "--checkpoint and --out are the same file", None),
    ("quantize-path-ck-is-in", [*Q, "--checkpoint", "{d}/dense.pt", *OUT],
     "--checkpoint {d}/dense.pt is the input file", None),
    ("quantize-path-proc", [*Q, "--out", f"{PROC}.pt"], "cannot write in", None),
    ("quantize-value-portions", [*Q, "--portions", "0.5,abc", *OUT], "portions must be a number",
     None),
    ("quantize-value-portions-order", [*Q, "--portions", "0.5,0.4,1", *OUT],
     "portions must increase strictly", None),
    ("quantize-value-portions-end", [*Q, "--portions", "0.5", *OUT], "must end at 1.0", None),
    ("quantize-value-bits", [*Q, "--bits", "9", *OUT], "bits must be an integer in 2..5", None),
    ("quantize-value-preset-bits", [*Q, "--preset", "paper-4bit", "--bits", "5", *OUT],
     "--bits has no effect with --preset paper-4bit", None),
    ("quantize-value-int8-bits", [*Q, "--method", "int8", "--bits", "4", *OUT],
     "--bits has no effect with --method int8", None),
    ("quantize-value-inq-observer", [*Q, "--observer", "minmax", *OUT],
     "--observer has no effect with --method inq", None),
    ("quantize-value-int8-checkpoint", [*Q, "--method", "int8", "--checkpoint", "{t}/c.pt",
                                        *OUT], "--checkpoint has no effect with --method int8",
     None),
    ("quantize-value-percentile", [*Q, "--method", "int8", "--percentile", "99", *OUT],
     "--percentile has no effect with --observer minmax", None),
    ("quantize-value-steps", [*Q, "--steps-per-stage", "-1", *OUT],
     "steps_per_stage must be >= 0", None),
    ("quantize-value-lr", [*Q, "--lr", "nan", *OUT], "lr must be a finite", None),
    ("quantize-value-momentum", [*Q, "--momentum", "0.5", *OUT],
     "--momentum has no effect with --optimizer adam", None),
    ("quantize-value-calibration", [*Q, "--method", "int8", "--calibration-batches", "0", *OUT],
     "calibration_batches must be >= 1", None),
    ("quantize-ck-garbage", [*Q, "--checkpoint", "{d}/garbage.pt", *OUT], "INQ checkpoint", None),
    ("quantize-ck-flipped", [*Q, "--checkpoint", "{d}/flipped.pt", *OUT],
     "INQ checkpoint {d}/flipped.pt is corrupted", None),
    ("quantize-ck-other-config", [*Q, "--data", "{d}/inqdata.npz", "--portions", "0.5,1",
                                  "--bits", "4", "--checkpoint", "{d}/inq_ck.pt", *OUT],
     "was made by a different config", None),
    ("quantize-ck-other-data", [*Q, "--data", "{d}/inqdata.npz", "--portions", "0.5,1",
                                "--steps-per-stage", "1", "--final-steps", "0", "--batch-size",
                                "8", "--checkpoint", "{d}/inq_ck.pt", *OUT],
     "was made from other data or other starting weights", _changed("inqdata.npz")),
]
S, E = ["sparsify", "{d}/dense.pt"], ["export", "{d}/dense.pt"]
V, B = ["verify", "{d}/garbage.onnx", "{d}/dense.pt"], ["bench", "{d}/dense.pt"]
CASES += [
    ("sparsify-path-proc", [*S, "--out", f"{PROC}.pt"], "cannot write in", None),
    ("sparsify-path-in-is-out", [*S, "--out", "{d}/dense.pt"], "is the input file", None),
    ("sparsify-path-cache", [*S, *OUT], "COMPRESSOR_CACHE", "cache"),
    ("sparsify-value-speedup", [*S, "--min-speedup", "0", *OUT], "min_speedup must be > 0", None),
    ("sparsify-value-speedup-nan", [*S, "--min-speedup", "nan", *OUT], "must be a finite", None),
    ("sparsify-value-batch", [*S, "--batch-size", "0", *OUT], "--batch-size must be >= 1", None),
    ("sparsify-value-threads", [*S, "--threads", "-1", *OUT], "--threads must be >= 1", None),
    ("sparsify-model-onnx", ["sparsify", "{d}/garbage.onnx", *OUT], "not a zip archive", None),
    ("export-path-suffix", [*E, "--out", "{t}/m.pt"], "--out must end in .onnx", None),
    ("export-path-dense-is-out", [*E, "--out", "{t}/m.onnx", "--dense-out", "{t}/m.onnx"],
     "--dense-out and --out are the same file", None),
    ("export-path-dense-proc", [*E, "--out", "{t}/m.onnx", "--dense-out", f"{PROC}.onnx"],
     "--dense-out", None),
    ("export-path-under-file", [*E, "--out", "{d}/file/m.onnx"], "is a file, not a directory",
     None),
    ("export-value-opset", [*E, "--opset", "1000", "--out", "{t}/m.onnx"], "opset must be in 17..",
     None),
    ("export-value-opset-low", [*E, "--opset", "16", "--out", "{t}/m.onnx"], "opset must be in",
     None),
    ("export-value-opset-text", [*E, "--opset", "abc", "--out", "{t}/m.onnx"],
     "opset must be an integer", None),
    ("export-value-rtol", [*E, "--rtol", "nan", "--out", "{t}/m.onnx"], "rtol must be a finite",
     None),
    ("export-value-batch", [*E, "--batch-size", "0", "--out", "{t}/m.onnx"],
     "--batch-size must be >= 1", None),
    ("export-value-encodings", [*E, "--encodings", "zip", "--out", "{t}/m.onnx"],
     "encodings must be one of", None),
    ("export-value-random-inputs", [*E, "--random-inputs", "-1", "--out", "{t}/m.onnx"],
     "random_inputs must be >= 0", None),
    ("verify-value-rtol-nan", [*V, "--rtol", "nan"], "--rtol must be a finite number", None),
    ("verify-value-rtol-inf", [*V, "--rtol", "inf"], "--rtol must be a finite number", None),
    ("verify-value-atol", [*V, "--atol", "-1"], "--atol must be a finite number >= 0", None),
    ("verify-value-batch", [*V, "--batch-size", "0"], "--batch-size must be >= 1", None),
    ("verify-value-threads", [*V, "--threads", "0"], "--threads must be >= 1", None),
    ("verify-path-onnx-missing", ["verify", "{t}/none.onnx", "{d}/dense.pt"], "does not exist",
     None),
    ("verify-path-onnx-suffix", ["verify", "{d}/dense.pt", "{d}/dense.pt"],
     "ONNX must be an .onnx file", None),
    ("verify-model-onnx-garbage", V, "onnxruntime cannot run", None),
    ("bench-path-json-dir", [*B, "--baseline", "{d}/dense.pt", "--json", "{t}"],
     "--json must end in .json", None),
    ("bench-path-json-proc", [*B, "--baseline", "{d}/dense.pt", "--json", f"{PROC}.json"],
     "cannot write in", None),
    ("bench-value-batch", [*B, "--baseline", "{d}/dense.pt", "--batch-size", "0"],
     "--batch-size must be >= 1", None),
    ("bench-value-onnx-alone", [*B, "--baseline", "{d}/dense.pt", "--onnx", "{d}/garbage.onnx"],
     "--onnx and --dense-onnx go together", None),
    ("bench-path-onnx-missing", [*B, "--baseline", "{d}/dense.pt", "--onnx", "{d}/garbage.onnx",
                                 "--dense-onnx", "{t}/none.onnx"], "does not exist", None),
    ("bench-model-baseline-garbage", [*B, "--baseline", "{d}/garbage.pt"], "--baseline model file",
     None),
    ("bench-model-baseline-misfit", [*B, "--baseline", "{d}/tr.pt"],
     "--baseline {d}/tr.pt' outputs (2, 3), but the data has 10 classes", None),
    ("bench-model-onnx-garbage", [*B, "--baseline", "{d}/dense.pt", "--onnx", "{d}/garbage.onnx",
                                  "--dense-onnx", "{d}/garbage.onnx"], "onnxruntime cannot run",
     None),
]
RB = ["robustness", "{d}/dense.pt", "--steps", "2", "--checkpoints", "0,1"]
CASES += [
    ("robustness-path-out-dir-file", [*RB, "--out-dir", "{d}/file"], "exists and is not a dir",
     None),
    ("robustness-path-out-dir-proc", [*RB, "--out-dir", PROC], "cannot write in", None),
    ("robustness-value-checkpoints", [*RB, "--checkpoints", "0,5", "--out-dir", "{t}/r"],
     "is after the last training step", None),
    ("robustness-value-checkpoints-neg", [*RB, "--checkpoints", "-1", "--out-dir", "{t}/r"],
     "checkpoints must be one or more steps >= 0", None),
    ("robustness-value-trials", [*RB, "--trials", "0", "--out-dir", "{t}/r"],
     "trials must be >= 1", None),
    ("robustness-value-momentum", [*RB, "--momentum", "0.5", "--out-dir", "{t}/r"],
     "--momentum has no effect", None),
    ("robustness-data-nan", [*RB, "--data", "{d}/nan.npz", "--out-dir", "{t}/r"],
     "X[3, 1] = nan", None),
]
R = ["run", "--root", "{t}/runs", "--steps", "1"]
CASES += [
    ("run-data-nan", [*R, "--data", "{d}/nan.npz"], "X[3, 1] = nan", None),
    ("run-data-missing", [*R, "--data", "{t}/none.npz"], "does not exist", None),
    ("run-data-misfit-model", [*R, "--model", "digits_cnn", "--data", "{d}/narrow.npz"],
     "digits_cnn: feature_shape must be (1, 8, 8) or (64,), got (5,)", None),
    ("run-value-model-args", [*R, "--model-args", "{{x"], "--model-args is not JSON", None),
    ("run-path-root-file", ["run", "--root", "{d}/file", "--steps", "1"],
     "is a file, not a directory", None),
    ("run-path-root-proc", ["run", "--root", PROC, "--steps", "1"], "cannot write in", None),
    ("run-path-cache", R, "COMPRESSOR_CACHE", "cache"),
    ("run-value-steps", ["run", "--root", "{t}/runs", "--steps", "-1"], "steps must be >= 0",
     None),
    ("run-value-finetune", [*R, "--finetune-steps", "-1"], "--finetune-steps must be >= 0", None),
    ("run-value-prune-none", [*R, "--prune", "none", "--sparsity", "0.3"],
     "--sparsity has no effect with --prune none", None),
    ("run-value-prune-lottery", [*R, "--prune", "lottery", "--finetune-steps", "3"],
     "--finetune-steps has no effect with --prune lottery", None),
    ("run-value-quantize-none", [*R, "--quantize", "none", "--bits", "4"],
     "--bits has no effect with --quantize none", None),
    ("run-value-quantize-int8", [*R, "--quantize", "int8", "--portions", "0.5,1"],
     "--portions has no effect with --quantize int8", None),
    ("run-value-skip-prune", [*R, "--skip", "prune", "--sparsity", "0.5"],
     "--sparsity has no effect with --skip prune", None),
    ("run-value-nm", [*R, "--nm", "2:4", "--sparsity", "0.5"], "--sparsity has no effect", None),
    ("run-value-portions", [*R, "--portions", "0.5,abc"], "portions must be a number", None),
    ("run-value-batch-sizes", [*R, "--batch-sizes", "0"], "batch_sizes must be positive", None),
    ("run-value-threads", [*R, "--threads", "0"], "threads must be >= 1", None),
    ("run-value-skip-train", [*R, "--skip", "train"], "cannot contain 'train'", None),
    ("run-value-only-skipped", [*R, "--only", "bench", "--skip", "bench"],
     "only names a stage this run skips", None),
    ("run-value-skip-unknown", [*R, "--skip", "deploy"], "skip must be one of", None),
    ("run-value-name", [*R, "--name", "a/b"], "name must be a plain directory name", None),
    ("run-value-toml-missing", ["run", "{t}/none.toml", "--root", "{t}/runs"], "does not exist",
     None),
    ("run-value-toml-binary", ["run", "{d}/dense.pt", "--root", "{t}/runs"], "is not valid TOML",
     None),
    ("run-value-toml-typo", ["run", "{t}/c.toml", "--root", "{t}/runs"],
     "did you mean 'sparsity'", _toml("[prune_config]\nsparsty = 0.5\n")),
    ("run-value-toml-section", ["run", "{t}/c.toml", "--root", "{t}/runs"],
     "unknown section [deploy]", _toml("[deploy]\nx = 1\n")),
    ("run-value-toml-unused", ["run", "{t}/c.toml", "--root", "{t}/runs"],
     "[lottery] in {t}/c.toml has no effect with prune = 'magnitude'",
     _toml("[lottery]\nrounds = 1\n")),
    ("run-value-toml-opset", ["run", "{t}/c.toml", "--root", "{t}/runs"], "opset must be in",
     _toml("[export]\nopset = 1000\n")),
    ("run-value-toml-type", ["run", "{t}/c.toml", "--root", "{t}/runs"],
     "threads must be an integer", _toml("threads = 1.5\n")),
    ("run-ck-state-flipped", ["run", "--steps", "2", "--root", "{t}/runs", "--name", "r",
                              "--skip", "prune,quantize,sparsify,export,verify,bench,report"],
     "run state {t}/runs/r/state.pt is corrupted", _run_state),
    ("demo-path-root-file", ["demo", "--root", "{d}/file"], "is a file, not a directory", None),
    ("demo-value-steps", ["demo", "--root", "{t}/runs", "--steps", "-1"], "steps must be >= 0",
     None),
    ("demo-value-prune-none", ["demo", "--root", "{t}/runs", "--prune", "none", "--sparsity",
                               "0.5"], "--sparsity has no effect with --prune none", None),
    ("info-value-unknown-flag", ["info", "--bogus"], "unrecognized arguments: --bogus", None),
    ("onlstm-value-tolerance-nan", ["onlstm-lm", "--tolerance", "nan"],
     "tolerance must be a finite number", None),
    ("onlstm-value-tolerance-neg", ["onlstm-lm", "--tolerance", "-1"], "tolerance must be >= 0",
     None),
    ("onlstm-value-steps", ["onlstm-lm", "--steps", "0"], "--steps must be positive", None),
    ("onlstm-value-steps-text", ["onlstm-lm", "--steps", "abc"], "steps must be an integer",
     None),
    ("onlstm-value-chunk", ["onlstm-lm", "--hidden", "10", "--chunk", "3"],
     "must be a multiple of --chunk 3", None),
    ("onlstm-value-batch", ["onlstm-lm", "--batch", "0"], "--batch must be positive", None),
]
IDS = [c[0] for c in CASES]
assert len(IDS) == len(set(IDS)), "case ids must be unique"


