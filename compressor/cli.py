"""The `compressor` command. Each subcommand lives beside the code it drives and provides
`add_arguments(parser)` and `run(args) -> int`; this file only wires them and turns user
mistakes into one-line errors with exit code 2.
"""

import argparse
import importlib
import sys

from compressor.errors import CompressorError

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "info": ("compressor.commands.info", "versions, built kernels and why others were not built"),
    "demo": ("compressor.commands.demo", "run the main pipeline on built-in data"),
    "quantize": ("compressor.commands.quantize", "quantize a model (INQ, ...) and save it"),
    "onlstm-lm": ("compressor.commands.onlstm_lm", "train a small ON-LSTM LM, fused vs reference"),
    "lottery": ("compressor.commands.lottery", "find lottery tickets (iterative pruning, rewind)"),
    "prune": ("compressor.commands.prune", "train, prune (one-shot, gradual or N:M), fine-tune"),
    "export": ("compressor.commands.export", "compact ONNX export, verified in onnxruntime"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except (CompressorError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"compressor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"compressor {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
