"""What the commands share: the input model file, the output file, threads, data overrides."""

import argparse

import torch

from compressor.config import add_flags, from_args
from compressor.errors import CompressorError
from compressor.io import check_writable
from compressor.pipeline.inputs import DataConfig, data_of
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
    add_flags(parser, DataConfig, group="data (default: what the model was trained on)")


def set_threads(args) -> int:
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise CompressorError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_out(args, suffix: str = ".pt", flag: str = "--out"):
    path = getattr(args, flag.lstrip("-").replace("-", "_"))
    if path is None:
        return None
    if not str(path).endswith(suffix):
        raise CompressorError(f"{flag} must end in {suffix}, got {path!r}")
    if getattr(args, "input", None) is not None and str(path) == str(args.input):
        raise CompressorError(f"{flag} {path} is the input file; write to another file")
    return check_writable(path, flag)


def read_input(args):
    """(model, ModelFile, data, DataConfig) of the IN argument."""
    model, info = load_model(args.input)
    override = None
    if getattr(args, "dataset", None) is not None or getattr(args, "data", None) is not None:
        override = from_args(DataConfig, args)
    data, data_cfg = data_of(info, override)
    return model, info, data, data_cfg


def write_output(path, model, info: ModelFile, data_cfg: DataConfig, **metadata) -> None:
    info.metadata = {**info.metadata, "data": data_cfg.to_dict(), **metadata}
    save_model(path, model, info)
    print(f"wrote {path}")
