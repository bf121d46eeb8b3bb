"""The `compressor` command. Each subcommand is a module of compressor.commands providing
`add_arguments(parser)` and `run(args) -> int`; only the chosen one is imported, so `--help` and
`info` stay fast. User mistakes become one line on stderr and exit code 2, never a traceback.
"""

import argparse
import importlib
import sys

DESCRIPTION = ("compressor: prune, quantize, sparsify and export PyTorch models; the commands "
               "chain by model file (IN --out OUT). `compressor COMMAND --help` for each.")

# name -> (module, one-line help); commands chain by model file: IN --out OUT
COMMANDS = {
    "info": ("info", "versions, built kernels and why others were not built"),
    "train": ("train", "train a model on built-in or your data; writes a model file"),
    "prune": ("prune", "prune a model file (one-shot, gradual, N:M) and fine-tune"),
    "lottery": ("lottery", "find a lottery ticket (iterative pruning with rewinding)"),
    "quantize": ("quantize", "quantize a model file (INQ power-of-two or int8)"),
    "sparsify": ("sparsify", "run pruned layers on sparse kernels where measured faster"),
    "export": ("export", "export a model file to compact ONNX, verified in onnxruntime"),
    "verify": ("verify", "check an ONNX file against its model file in onnxruntime"),
    "bench": ("bench", "latency of a model file against its dense baseline"),
    "run": ("run", "the whole pipeline with a report (config.toml and/or flags)"),
    "demo": ("demo", "the main job: `compressor run` on a built-in CNN, report in runs/"),
    "robustness": ("robustness", "per-layer re-initialisation robustness, heatmap, budgets"),
    "onlstm-lm": ("onlstm_lm", "train a small ON-LSTM language model, fused vs reference"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own mistakes: one line and exit 2 as well
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = _Parser(prog="compressor", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=f"compressor.commands.{module}")
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(f"compressor.commands.{module}").add_arguments(cmd)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    from compressor.errors import CompressorError

    try:
        return importlib.import_module(args._module).run(args) or 0
    except CompressorError as exc:
        print(f"compressor {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk filled up or a file vanished mid-run: not a bug of ours
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"compressor {args.command}: error: {where}{exc.strerror or _one_line(exc)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"compressor {args.command}: interrupted (rerun the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
