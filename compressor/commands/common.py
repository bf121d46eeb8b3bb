"""What the commands share: the input model file, the output files, threads, data overrides, and
the checks every command makes before any work (outputs writable and distinct from the inputs,
flags the chosen mode would ignore)."""

import argparse
import json
import os
from fnmatch import fnmatchcase
from pathlib import Path

import torch

from compressor.config import add_flags, flag_name, from_args
from compressor.errors import CompressorError
from compressor.history import history
from compressor.io import check_writable
from compressor.pipeline.inputs import DataConfig, check_fits, data_of
from compressor.pipeline.modelfile import ModelFile, load_model, save_model


def add_input(parser: argparse.ArgumentParser, what: str = "model file") -> None:
    parser.add_argument("input", metavar="IN", help=f"the {what} to read (.pt)")


def add_output(parser: argparse.ArgumentParser, suffix: str = ".pt",
               required: bool = True) -> None:
    parser.add_argument("--out", required=required, metavar="OUT",
                        help=f"where to write the result ({suffix})")


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for PyTorch and onnxruntime (default: torch's)")


def add_data_override(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, DataConfig, group="data (default: what the model was trained on)",
              defaults={"dataset": "the model file's", "data": "the model file's"})


def set_threads(args) -> int:
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise CompressorError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_batch_size(args) -> int:
    if args.batch_size < 1:
        raise CompressorError(f"--batch-size must be >= 1, got {args.batch_size}")
    return args.batch_size


# ---- paths -----------------------------------------------------------------------------

def _same(a, b) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(args, outputs: dict[str, str | None], inputs: tuple[str, ...] = ("input",)
                  ) -> None:
    """Every output flag given ({flag: required suffix or None}) is writable now, before any
    work, and is neither an input file nor another output."""
    given = {}
    for flag, suffix in outputs.items():
        path = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if path is None:
            continue
        if suffix and not str(path).endswith(suffix):
            raise CompressorError(f"{flag} must end in {suffix}, got {path!r}")
        for name in inputs:
            source = getattr(args, name, None)
            if source is not None and _same(path, source):
                raise CompressorError(f"{flag} {path} is the input file {source}; write to "
                                      "another file")
        for other, other_path in given.items():
            if _same(path, other_path):
                raise CompressorError(f"{flag} and {other} are the same file {path}; give two "
                                      "paths")
        check_writable(path, flag)
        given[flag] = path


def check_out(args, suffix: str = ".pt", flag: str = "--out"):
    """The one output of a command (see check_outputs)."""
    check_outputs(args, {flag: suffix})
    return getattr(args, flag.lstrip("-").replace("-", "_"))


def check_exists(path, flag: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CompressorError(f"{flag} {path} is a directory, not a file")
    if not path.is_file():
        raise CompressorError(f"{flag} {path} does not exist")
    return path


# ---- per-layer budgets from `compressor robustness` -----------------------------------------

BUDGET_WHAT = {"channels": "channel ratios", "sparsity": "sparsities", "bits": "weight bits"}


def add_budgets(parser: argparse.ArgumentParser, kinds: str) -> None:
    parser.add_argument("--budgets", default=None, metavar="ROBUSTNESS_JSON",
                        help=f"per-layer {kinds} from `compressor robustness` (its "
                             "robustness.json); layers it does not name keep the flags' value")


def read_budgets(args, kind: str) -> dict:
    """{layer pattern: value} of kind 'channels', 'sparsity' or 'bits' from the --budgets file,
    or {} without one."""
    if getattr(args, "budgets", None) is None:
        return {}
    path = check_exists(args.budgets, "--budgets")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CompressorError(f"--budgets {path} is not a JSON file ({err})") from None
    table = doc.get("budgets", {}).get(kind) if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise CompressorError(f"--budgets {path} has no {BUDGET_WHAT[kind]} ('budgets' -> "
                              f"'{kind}'); write it with `compressor robustness`")
    wrong = [k for k, v in table.items()
             if not isinstance(v, (int, float)) or isinstance(v, bool)]
    if wrong:
        raise CompressorError(f"--budgets {path}: {kind} of {wrong[:3]} are not numbers")
    return table


# ---- flags a mode ignores ---------------------------------------------------------------

def given_flags(args, names) -> list[str]:
    """The flags (of field / dest names) the user gave on the command line."""
    return [flag_name(n) for n in names if getattr(args, n, None) is not None]


def reject_given(args, names, reason: str) -> None:
    """A flag the chosen mode would ignore is an error, not silence."""
    flags = given_flags(args, names)
    if flags:
        verb = "has" if len(flags) == 1 else "have"
        raise CompressorError(f"{', '.join(flags)} {verb} no effect {reason}")


def reject_momentum(args, optimizer: str) -> None:
    if optimizer != "sgd":
        reject_given(args, ["momentum"], f"with --optimizer {optimizer} (SGD only)")


def reject_nm_ignored(args, nm: str | None) -> None:
    if nm is not None:
        reject_given(args, ["sparsity", "scope", "output_sparsity", "criterion"],
                     f"with --nm {nm} (N:M keeps the largest N of every M weights)")


def check_patterns(model: torch.nn.Module, patterns, flag: str, names) -> None:
    """Each fnmatch pattern matches at least one of `names` (a typo would prune everything)."""
    names = list(names)
    for pattern in patterns or ():
        if not any(fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise CompressorError(f"{flag} pattern {pattern!r} matches no prunable weight of "
                                  f"the model ({shown})")


# ---- model files ------------------------------------------------------------------------

def read_input(args):
    """(model, ModelFile, data, DataConfig) of the IN argument; data the user names instead
    of the model's own must fit the model."""
    model, info = load_model(args.input)
    override = None
    if getattr(args, "dataset", None) is not None or getattr(args, "data", None) is not None:
        override = from_args(DataConfig, args)
    data, data_cfg = data_of(info, override)
    if override is not None:
        try:
            check_fits(model, data, info.factory)
        except CompressorError as exc:
            raise CompressorError(f"{exc} (the data of --dataset/--data must fit the model of "
                                  f"{args.input})") from None
    return model, info, data, data_cfg


def reject_quantized(model: torch.nn.Module, path, command: str) -> None:
    """Pruning and quantizing work on float weights: a quantized model file is an error naming
    the order, not an obscure failure (or a warning and a wrong result) deep inside."""
    if any(entry.get("stage") == "quantize" for entry in history(model)):
        raise CompressorError(f"{path} is already quantized; {command} the model file it was "
                              "quantized from (prune before quantize, quantize once)")


def write_output(path, model, info: ModelFile, data_cfg: DataConfig, **metadata) -> None:
    info.metadata = {**info.metadata, "data": data_cfg.to_dict(), **metadata}
    save_model(path, model, info)
    print(f"wrote {path}")
